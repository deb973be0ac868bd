//! Fixed-count load for profiling the proxy under `valgrind --tool=callgrind` (instruction
//! counts stay comparable on a busy machine, unlike wall-clock runs).
//!
//! ```text
//! bench_load upstream --listen 127.0.0.1:18000
//! bench_load client --connect 127.0.0.1:18080 --host bench.localhost --connections 50 \
//!     --requests 200 [--tls-ca cert.pem]
//! ```
//! `upstream` answers every request like the bench's nginx (`200`, `hello world\n`, keep-alive).
//! `client` opens the connections, sends `--requests` sequential keep-alive GETs on each (wrk's
//! request shape) and prints `requests=N errors=E seconds=S`. With `--tls-ca` it speaks TLS 1.3,
//! trusting that certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn required<T: std::str::FromStr>(args: &[String], name: &str) -> T {
    match flag(args, name).and_then(|v| v.parse().ok()) {
        Some(v) => v,
        None => {
            eprintln!("bench_load: {name} is required");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.first().map(String::as_str) {
        Some("upstream") => runtime.block_on(upstream(required(&args, "--listen"))),
        Some("client") => runtime.block_on(client(
            required(&args, "--connect"),
            required(&args, "--host"),
            required(&args, "--connections"),
            required(&args, "--requests"),
            flag(&args, "--tls-ca"),
        )),
        _ => {
            eprintln!("usage: bench_load upstream|client ...");
            std::process::exit(2);
        }
    }
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Sun, 22 Nov 2026 02:34:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
Connection: keep-alive\r\n\r\nhello world\n";

/// Index just past the first `\r\n\r\n` in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn upstream(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    println!("ready");
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // Requests carry no body: answer each complete head.
                while let Some(end) = head_end(&buf) {
                    buf.drain(..end);
                    if stream.write_all(RESPONSE).await.is_err() {
                        return;
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

/// Content-Length of a response head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn run_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    requests: usize,
) -> (usize, usize) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..requests {
        if stream.write_all(request).await.is_err() {
            return (ok, errors + 1);
        }
        let (end, len) = loop {
            if let Some(end) = head_end(&buf) {
                break (end, content_length(&buf[..end]));
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return (ok, errors + 1),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < end + len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return (ok, errors + 1),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if buf.starts_with(b"HTTP/1.1 200") {
            ok += 1;
        } else {
            errors += 1;
        }
        buf.drain(..end + len);
    }
    (ok, errors)
}

fn tls_connector(ca: &str) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca).expect("read --tls-ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("certificate PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn client(
    connect: SocketAddr,
    host: String,
    connections: usize,
    requests: usize,
    tls_ca: Option<String>,
) {
    let request: Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .into_bytes()
        .into();
    let tls = tls_ca.as_deref().map(tls_connector);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        let tls = tls.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(connect).await else {
                return (0, requests);
            };
            let _ = stream.set_nodelay(true);
            match tls {
                None => run_connection(stream, &request, requests).await,
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host).expect("host name");
                    match tls.connect(name, stream).await {
                        Ok(s) => run_connection(s, &request, requests).await,
                        Err(e) => {
                            eprintln!("bench_load: TLS handshake: {e}");
                            (0, requests)
                        }
                    }
                }
            }
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap_or((0, requests));
        ok += o;
        errors += e;
    }
    println!(
        "requests={ok} errors={errors} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
}
