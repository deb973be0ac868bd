//! Test fixtures: real upstream servers, a running proxy, and small HTTP clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use gilgal_proxy::{serve, serve_tls, ProxyHandle, ProxySettings};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A real HTTP/1.1 upstream on 127.0.0.1 that answers with its name and knows a few tricks.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests served so far.
    pub requests: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let name_owned = name.to_string();
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => break,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let name = name_owned.clone();
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        answer(name.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            connections,
            requests,
            _stop: stop_tx,
        }
    }

    pub fn backend(&self) -> gilgal_proxy::Backend {
        gilgal_proxy::Backend::new(self.name.clone(), self.addr)
    }

    pub fn backend_in(&self, group: &str) -> gilgal_proxy::Backend {
        gilgal_proxy::Backend::in_group(self.name.clone(), self.addr, group)
    }
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn answer(name: String, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    let mut builder = Response::builder().header("x-upstream", name.as_str());
    let body = match path.as_str() {
        "/slow" => {
            let ms = query_num(&req, "ms").unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(name)
        }
        "/echo-headers" => {
            let mut lines = format!("uri={}\n", req.uri());
            for (k, v) in req.headers() {
                lines.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            full(lines)
        }
        "/body" => {
            let collected = req.into_body().collect().await;
            match collected {
                Ok(c) => full(format!("{} bytes", c.to_bytes().len())),
                Err(e) => full(format!("error {e}")),
            }
        }
        "/sse" => {
            let events = query_num(&req, "events").unwrap_or(5);
            let every = query_num(&req, "every_ms").unwrap_or(100);
            builder = builder.header("content-type", "text/event-stream");
            let s = stream::unfold(0u64, move |i| async move {
                if i >= events {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(every)).await;
                let frame = Frame::data(Bytes::from(format!("data: event {i}\n\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            StreamBody::new(s).boxed()
        }
        _ => full(name),
    };
    Ok(builder.body(body).unwrap())
}

/// A WebSocket echo upstream (tokio-tungstenite).
pub async fn start_ws_echo(name: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}:{}", msg.to_text().unwrap());
                        if ws.send(reply.into()).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy serving plain HTTP on a free port; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub handle: ProxyHandle,
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        Self::with_settings(ProxySettings::default()).await
    }

    pub async fn with_settings(settings: ProxySettings) -> Proxy {
        let handle = ProxyHandle::new(settings);
        Self::serving(handle, false).await
    }

    pub async fn serving(handle: ProxyHandle, tls: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let h = handle.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            if tls {
                serve_tls(listener, h, shutdown).await.unwrap();
            } else {
                serve(listener, h, shutdown).await.unwrap();
            }
        });
        Proxy {
            addr,
            handle,
            _stop: stop_tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A pooled HTTP/1.1 test client.
pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A simple answer: status, headers and body text.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = client.request(req).await.expect("request failed");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &TestClient, proxy: &Proxy, host: &str, path: &str) -> Answer {
    let req = Request::get(proxy.url(path))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

/// Send raw bytes on a fresh connection and read until the server closes it (or 3 s pass).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `check` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
