//! Runs the Gilgal proxy standalone for `bench/proxy/run`: one host route to fixed upstreams,
//! optional TLS, on a single-threaded runtime (one core, like the other proxies in the bench).
//!
//! ```text
//! bench_proxy --listen 127.0.0.1:18080 --route bench.localhost=127.0.0.1:18000 \
//!     [--route ws.localhost=127.0.0.1:18001] [--tls-listen 127.0.0.1:18443 --cert c.pem --key k.pem] \
//!     [--threads 1]
//! ```

use std::net::SocketAddr;

use gilgal_proxy::{Backend, CertificatePem, ProxyHandle, ProxySettings, RouteSpec};

struct Args {
    listen: SocketAddr,
    routes: Vec<(String, SocketAddr)>,
    tls_listen: Option<SocketAddr>,
    cert: Option<String>,
    key: Option<String>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut listen = None;
    let mut routes = Vec::new();
    let mut tls_listen = None;
    let (mut cert, mut key) = (None, None);
    let mut threads = 1;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--route" => {
                let v = value()?;
                let (host, addr) = v.split_once('=').ok_or("--route HOST=ADDR")?;
                routes.push((
                    host.to_string(),
                    addr.parse().map_err(|e| format!("--route: {e}"))?,
                ));
            }
            "--tls-listen" => {
                tls_listen = Some(value()?.parse().map_err(|e| format!("--tls-listen: {e}"))?)
            }
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        routes,
        tls_listen,
        cert,
        key,
        threads,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_proxy: {e}");
            std::process::exit(2);
        }
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = runtime.expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("bench_proxy: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let handle = ProxyHandle::new(ProxySettings::default());
    let routes = args
        .routes
        .iter()
        .enumerate()
        .map(|(i, (host, addr))| {
            RouteSpec::upstream(
                format!("route{i}"),
                vec![host.clone()],
                // Labelled with a release, as Gilgal routes apps: its figures are counted too.
                vec![Backend::in_group(format!("upstream{i}"), *addr, "v1")],
            )
        })
        .collect();
    handle.replace(routes)?;
    let plain = tokio::net::TcpListener::bind(args.listen).await?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(gilgal_proxy::serve(
        plain,
        handle.clone(),
        std::future::pending(),
    )));
    if let Some(addr) = args.tls_listen {
        let (cert, key) = (
            args.cert.ok_or("--cert is required with --tls-listen")?,
            args.key.ok_or("--key is required with --tls-listen")?,
        );
        let domain = args
            .routes
            .first()
            .map_or_else(|| "localhost".to_string(), |r| r.0.clone());
        handle.set_certificates(vec![CertificatePem {
            domain,
            cert_chain_pem: std::fs::read_to_string(cert)?,
            key_pem: std::fs::read_to_string(key)?,
        }])?;
        let tls = tokio::net::TcpListener::bind(addr).await?;
        tasks.push(tokio::spawn(gilgal_proxy::serve_tls(
            tls,
            handle.clone(),
            std::future::pending(),
        )));
    }
    println!("ready");
    for t in tasks {
        t.await??;
    }
    Ok(())
}
