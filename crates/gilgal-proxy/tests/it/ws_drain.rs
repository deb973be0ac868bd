//! Draining a backend closes its WebSockets gracefully: both peers get a Close frame
//! "1001 Going Away" at a frame boundary, and the drain ends as soon as they have answered.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gilgal_proxy::{Backend, DrainOutcome, RouteDiff, RouteSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

/// Long enough that a drain returning early can only be the graceful close at work.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

fn ws_route(backend: Backend) -> RouteSpec {
    RouteSpec::upstream("ws", vec!["ws.localhost".into()], vec![backend])
}

/// A TCP stream that counts the bytes read from it, to know how far a transfer has got
/// without disturbing the WebSocket library reading through it.
struct CountingStream {
    inner: TcpStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.read.fetch_add(read, Ordering::SeqCst);
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A real WebSocket backend (tokio-tungstenite) for one connection: echoes text messages,
/// reports every message it receives (Close frames included), and can write raw bytes on
/// command (to send one frame in pieces).
struct ScriptedBackend {
    addr: SocketAddr,
    /// Bytes the backend has read from the proxy, handshake included.
    read: Arc<AtomicUsize>,
    received: mpsc::UnboundedReceiver<Message>,
    write_raw: mpsc::UnboundedSender<Vec<u8>>,
}

impl ScriptedBackend {
    async fn start() -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let (received_tx, received) = mpsc::unbounded_channel();
        let (write_raw, mut raw_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let counter = read.clone();
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stream = CountingStream {
                inner: stream,
                read: counter,
            };
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            loop {
                tokio::select! {
                    // Cancel safe: the stream keeps a partly read frame for the next poll.
                    msg = ws.next() => {
                        let Some(Ok(msg)) = msg else { break };
                        if let Message::Text(text) = &msg {
                            let _ = ws.send(Message::text(format!("echo:{}", text.as_str()))).await;
                        }
                        // Keep polling after a Close: that flushes the library's answer to it.
                        let _ = received_tx.send(msg);
                    }
                    Some(raw) = raw_rx.recv() => {
                        let stream = ws.get_mut();
                        if stream.inner.write_all(&raw).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        ScriptedBackend {
            addr,
            read,
            received,
            write_raw,
        }
    }

    async fn next_received(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("the backend received nothing within 10 s")
            .expect("the backend connection ended without the expected message")
    }
}

/// A WebSocket client through the proxy, reading through a byte counter.
async fn connect(proxy: &Proxy) -> (WebSocketStream<CountingStream>, Arc<AtomicUsize>) {
    let read = Arc::new(AtomicUsize::new(0));
    let stream = CountingStream {
        inner: TcpStream::connect(proxy.addr).await.unwrap(),
        read: read.clone(),
    };
    let mut req = "ws://ws.localhost/socket".into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "ws.localhost".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    (ws, read)
}

/// Next message the client receives (within 10 s).
async fn client_next(ws: &mut WebSocketStream<CountingStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the client received nothing within 10 s")
        .expect("the connection ended")
        .expect("the connection failed")
}

/// Keep reading until the connection ends, which sends the library's answer to a Close frame.
async fn finish_closing(ws: &mut WebSocketStream<CountingStream>) {
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut after_close = Vec::new();
        while let Some(Ok(msg)) = ws.next().await {
            after_close.push(msg);
        }
        after_close
    })
    .await
    .expect("the proxy did not close the connection");
    assert!(rest.is_empty(), "messages after the Close: {rest:?}");
}

fn assert_going_away(msg: &Message) {
    match msg {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Away, "close frame {frame:?}");
            assert!(!frame.reason.is_empty(), "the Close frame says why");
        }
        other => panic!("expected a Close frame 1001, got {other:?}"),
    }
}

/// A frame as a WebSocket peer sends it (FIN, 64-bit length), masked if `mask` is given.
fn binary_frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = vec![0x82, if mask.is_some() { 0x80 | 127 } else { 127 }];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

#[tokio::test]
async fn draining_backend_closes_websockets_with_going_away() {
    let mut backend = ScriptedBackend::start().await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![ws_route(Backend::new("ws-old", backend.addr))])
        .unwrap();
    let (mut ws, _) = connect(&proxy).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(client_next(&mut ws).await.to_text().unwrap(), "echo:hello");
    assert_eq!(backend.next_received().await, Message::text("hello"));
    assert_eq!(proxy.handle.in_flight("ws-old"), 1);

    proxy
        .handle
        .apply(RouteDiff {
            upsert: vec![],
            remove: vec!["ws".into()],
        })
        .unwrap();
    let started = Instant::now();
    let drain = {
        let handle = proxy.handle.clone();
        tokio::spawn(async move { handle.wait_drained("ws-old", DRAIN_DEADLINE).await })
    };

    // The client is told the server is going away, and answers (the library does it).
    assert_going_away(&client_next(&mut ws).await);
    finish_closing(&mut ws).await;
    // The backend is told too, with a frame it accepted (tungstenite rejects unmasked ones).
    assert_going_away(&backend.next_received().await);

    let outcome = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("wait_drained still waiting after 10 s")
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Drained);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    assert_eq!(proxy.handle.in_flight("ws-old"), 0);
    assert_eq!(
        proxy.handle.metrics().route("ws").unwrap().open_connections,
        0
    );
}

#[tokio::test]
async fn message_in_flight_when_draining_starts_arrives_whole_before_the_close() {
    let mut backend = ScriptedBackend::start().await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![ws_route(Backend::new("ws-big", backend.addr))])
        .unwrap();
    let (mut ws, client_read) = connect(&proxy).await;
    // Handshake bytes each side has read so far.
    let client_base = client_read.load(Ordering::SeqCst);
    let backend_base = backend.read.load(Ordering::SeqCst);

    // 200 KB each way, far more than one read, sent as one frame in two pieces.
    let to_client: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let to_backend: Vec<u8> = (0..200 * 1024).map(|i| (i % 241) as u8).collect();
    let down = binary_frame(&to_client, None);
    let up = binary_frame(&to_backend, Some([0x1f, 0x2e, 0x3d, 0x4c]));
    let (down_first, down_rest) = down.split_at(100 * 1024);
    let (up_first, up_rest) = up.split_at(100 * 1024);

    backend.write_raw.send(down_first.to_vec()).unwrap();
    ws.get_mut().inner.write_all(up_first).await.unwrap();
    // Wait until each first piece went through the proxy, so both frames are mid-flight there.
    // The client has to be reading for that; its partly read frame stays buffered in `ws`.
    let both_halfway = {
        let backend_read = backend.read.clone();
        let client_read = client_read.clone();
        eventually(Duration::from_secs(10), move || {
            client_read.load(Ordering::SeqCst) >= client_base + down_first.len()
                && backend_read.load(Ordering::SeqCst) >= backend_base + up_first.len()
        })
    };
    tokio::select! {
        msg = ws.next() => panic!("a whole message arrived early: {msg:?}"),
        reached = both_halfway => assert!(reached, "the first pieces did not cross the proxy"),
    }

    proxy.handle.replace(vec![]).unwrap();
    let started = Instant::now();
    let drain = {
        let handle = proxy.handle.clone();
        tokio::spawn(async move { handle.wait_drained("ws-big", DRAIN_DEADLINE).await })
    };
    // Let the proxy see the drain while both frames are still incomplete.
    tokio::time::sleep(Duration::from_millis(200)).await;
    backend.write_raw.send(down_rest.to_vec()).unwrap();
    ws.get_mut().inner.write_all(up_rest).await.unwrap();

    // Each side gets the whole message first, then the Close.
    match client_next(&mut ws).await {
        Message::Binary(data) => assert!(data[..] == to_client[..], "client message corrupted"),
        other => panic!("expected the 200 KB message, got {other:?}"),
    }
    assert_going_away(&client_next(&mut ws).await);
    finish_closing(&mut ws).await;
    match backend.next_received().await {
        Message::Binary(data) => assert!(data[..] == to_backend[..], "backend message corrupted"),
        other => panic!("expected the 200 KB message, got {other:?}"),
    }
    assert_going_away(&backend.next_received().await);

    let outcome = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("wait_drained still waiting after 10 s")
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Drained);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A backend speaking a made-up upgraded protocol: answers 101, then echoes bytes forever.
async fn start_raw_upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = "HTTP/1.1 101 Switching Protocols\r\n\
                              connection: upgrade\r\nupgrade: echo-proto\r\n\r\n";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn other_upgrades_are_left_alone_until_the_deadline() {
    let backend = start_raw_upgrade_echo().await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![ws_route(Backend::new("raw", backend))])
        .unwrap();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /tunnel HTTP/1.1\r\nhost: ws.localhost\r\n\
              connection: upgrade\r\nupgrade: echo-proto\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    client.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    proxy.handle.replace(vec![]).unwrap();
    let outcome = proxy
        .handle
        .wait_drained("raw", Duration::from_millis(300))
        .await;
    // Nothing graceful to do for an unknown protocol: the tunnel stays open until the deadline
    // cuts it, and nothing is written into it.
    assert_eq!(outcome, DrainOutcome::DeadlineExceeded { cut: 1 });
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty(),
        "bytes injected into an opaque tunnel: {rest:?}"
    );
}

#[tokio::test]
async fn frame_that_never_completes_is_given_up_after_a_bounded_wait() {
    let mut backend = ScriptedBackend::start().await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![ws_route(Backend::new("ws-stall", backend.addr))])
        .unwrap();
    let (mut ws, client_read) = connect(&proxy).await;
    let client_base = client_read.load(Ordering::SeqCst);
    // The backend starts a 200 KB frame and stalls halfway through it.
    let frame = binary_frame(&[7u8; 200 * 1024], None);
    let half = &frame[..100 * 1024];
    backend.write_raw.send(half.to_vec()).unwrap();
    let halfway = eventually(Duration::from_secs(10), {
        let client_read = client_read.clone();
        move || client_read.load(Ordering::SeqCst) >= client_base + half.len()
    });
    tokio::select! {
        msg = ws.next() => panic!("a whole message arrived early: {msg:?}"),
        reached = halfway => assert!(reached, "the first piece did not cross the proxy"),
    }

    proxy.handle.replace(vec![]).unwrap();
    let started = Instant::now();
    let drain = {
        let handle = proxy.handle.clone();
        tokio::spawn(async move { handle.wait_drained("ws-stall", DRAIN_DEADLINE).await })
    };
    // The backend side is between frames, so it is told at once.
    assert_going_away(&backend.next_received().await);
    // The client cannot be sent a Close inside the stalled frame; after the bounded wait the
    // proxy hangs up instead of corrupting the frame or holding the drain until the deadline.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the proxy did not give up on the stalled frame");
    assert!(
        !matches!(end, Some(Ok(_))),
        "expected the connection to end, got {end:?}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("wait_drained still waiting after 10 s")
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Drained);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "gave up after {took:?}, expected the 5 s close-handshake bound"
    );
}
