//! WebSocket and idle-connection helpers for `bench/proxy/run`.
//!
//! ```text
//! bench_ws echo   --listen 127.0.0.1:18001
//! bench_ws client --connect 127.0.0.1:18080 --host ws.localhost --connections 50 --seconds 5
//! bench_ws client --connect 127.0.0.1:18080 --host ws.localhost --connections 50 --messages 200
//! bench_ws idle   --connect 127.0.0.1:18080 --host bench.localhost --connections 1000 --hold-seconds 4
//! ```
//! `client` prints `messages=N p50_us=X p99_us=Y`; `idle` opens keep-alive connections (one
//! request each), prints `open=N` and holds them so the caller can read the proxy's RSS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn required<T: std::str::FromStr>(args: &[String], name: &str) -> T {
    match flag(args, name).and_then(|v| v.parse().ok()) {
        Some(v) => v,
        None => {
            eprintln!("bench_ws: {name} is required");
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
        Some("echo") => runtime.block_on(echo(required(&args, "--listen"))),
        Some("client") => runtime.block_on(client(
            required(&args, "--connect"),
            required(&args, "--host"),
            required(&args, "--connections"),
            flag(&args, "--seconds").and_then(|v| v.parse().ok()),
            flag(&args, "--messages").and_then(|v| v.parse().ok()),
        )),
        Some("idle") => runtime.block_on(idle(
            required(&args, "--connect"),
            required(&args, "--host"),
            required(&args, "--connections"),
            required(&args, "--hold-seconds"),
        )),
        _ => {
            eprintln!("usage: bench_ws echo|client|idle ...");
            std::process::exit(2);
        }
    }
}

async fn echo(listen: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("ready");
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn client(
    connect: SocketAddr,
    host: String,
    connections: usize,
    seconds: Option<u64>,
    messages: Option<usize>,
) {
    if seconds.is_none() && messages.is_none() {
        eprintln!("bench_ws: client needs --seconds or --messages (per connection)");
        std::process::exit(2);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds.unwrap_or(3600));
    let limit = messages.unwrap_or(usize::MAX);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(connect)
                .await
                .expect("connect");
            let _ = stream.set_nodelay(true);
            let mut req = format!("ws://{host}/")
                .into_client_request()
                .expect("request");
            req.headers_mut()
                .insert("host", host.parse().expect("host header"));
            let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
                .await
                .expect("websocket handshake");
            let mut samples = Vec::with_capacity(100_000);
            let payload = "x".repeat(64);
            while Instant::now() < deadline && samples.len() < limit {
                let t = Instant::now();
                if ws.send(Message::text(payload.clone())).await.is_err() {
                    break;
                }
                match ws.next().await {
                    Some(Ok(_)) => samples.push(t.elapsed().as_micros() as u64),
                    _ => break,
                }
            }
            let _ = ws.close(None).await;
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            all.extend(s);
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "messages={} p50_us={} p99_us={}",
        all.len(),
        pct(0.50),
        pct(0.99)
    );
}

async fn idle(connect: SocketAddr, host: String, connections: usize, hold: u64) {
    let mut open = Vec::with_capacity(connections);
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for _ in 0..connections {
        let Ok(mut stream) = tokio::net::TcpStream::connect(connect).await else {
            break;
        };
        if stream.write_all(request.as_bytes()).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if stream.read(&mut buf).await.unwrap_or(0) == 0 {
            break;
        }
        open.push(stream);
    }
    println!("open={}", open.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(open);
}
