//! The upstream HTTP/1.1 exchange, pinned with raw TCP backends: every response is hand-written
//! bytes, so each framing case (lengths, chunks, close-delimited bodies, bodiless statuses,
//! informational responses, malformed heads) is exact, and the backend records every request
//! the proxy sent it and on which of its connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gilgal_proxy::{Backend, RouteSpec};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const HOST: &str = "app.localhost";
/// Bound on every network wait of these tests.
const WAIT: Duration = Duration::from_secs(5);

/// One request as the raw backend read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    /// Index of the TCP connection it arrived on (0 = the first one accepted).
    conn: usize,
    /// Index of the request on that connection.
    nth: usize,
    method: String,
    target: String,
    /// Names lowercased, values as sent, in wire order.
    headers: Vec<(String, Vec<u8>)>,
    /// The body bytes as sent (chunk framing included).
    wire_body: Vec<u8>,
    /// The body payload (chunked framing decoded).
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// What the raw backend does once it read a request.
struct Reply {
    /// Written one after another, with a short pause between them (each its own TCP segment)
    /// unless `nagled`.
    pieces: Vec<Vec<u8>>,
    /// Write the pieces back to back with Nagle's algorithm on, the way a backend without
    /// `TCP_NODELAY` that writes head and body separately does (Python's `http.server`).
    nagled: bool,
    then: Then,
}

enum Then {
    /// Wait for the next request on the connection.
    KeepAlive,
    /// Close the connection (at once: with unread request bytes, that resets it).
    Close,
    /// Close the connection after this pause (it dies while idle in the proxy's pool).
    CloseAfter(Duration),
    /// Keep the connection open and read nothing more (until the test ends).
    Hold,
}

impl Reply {
    fn send(bytes: impl Into<Vec<u8>>) -> Self {
        Self::pieces(vec![bytes.into()])
    }

    fn pieces(pieces: Vec<Vec<u8>>) -> Self {
        Self {
            pieces,
            nagled: false,
            then: Then::KeepAlive,
        }
    }

    fn nagled(pieces: Vec<Vec<u8>>) -> Self {
        Self {
            nagled: true,
            ..Self::pieces(pieces)
        }
    }

    fn then(mut self, then: Then) -> Self {
        self.then = then;
        self
    }

    fn close_without_answer() -> Self {
        Self::pieces(Vec::new()).then(Then::Close)
    }
}

type Script = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A backend on 127.0.0.1 that parses requests itself and answers with scripted bytes.
struct RawUpstream {
    addr: SocketAddr,
    /// TCP connections accepted so far.
    accepts: Arc<AtomicUsize>,
    /// Connections that ended (closed by either side).
    ended: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawUpstream {
    /// Reads each request with its body, then asks `script` for the reply.
    async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::spawn(Arc::new(script), true).await
    }

    /// Asks `script` for the reply as soon as a request head is read, before any body.
    async fn answering_before_the_body(
        script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::spawn(Arc::new(script), false).await
    }

    async fn spawn(script: Arc<Script>, read_body: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, e, s) = (accepts.clone(), ended.clone(), seen.clone());
        // Tasks end with the test's runtime.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                let (script, seen, ended) = (script.clone(), s.clone(), e.clone());
                tokio::spawn(async move {
                    serve_raw(stream, conn, &*script, read_body, &seen).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepts,
            ended,
            seen,
        }
    }

    fn backend(&self, name: &str) -> Backend {
        Backend::new(name, self.addr)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// (connection, index on it) of every request received, in order.
    fn placement(&self) -> Vec<(usize, usize)> {
        self.seen().iter().map(|s| (s.conn, s.nth)).collect()
    }
}

/// Read more bytes into `buf`; false at EOF or on an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

type Head = (usize, String, String, Vec<(String, Vec<u8>)>);

/// A complete request head at the front of `buf`: its length, method, target and headers.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, httparse::Error> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some((
            len,
            req.method.unwrap_or_default().to_string(),
            req.path.unwrap_or_default().to_string(),
            req.headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        ))),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A complete chunked body at the front of `buf`: (bytes it takes, payload); `Ok(None)` while
/// incomplete; `Err` when malformed.
fn decode_chunked(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut pos = 0;
    let mut payload = Vec::new();
    loop {
        let Some(end) = find_crlf(&buf[pos..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + end]).map_err(|e| e.to_string())?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("{line:?}: {e}"))?;
        pos += end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some(end) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((pos, payload)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        payload.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    conn: usize,
    script: &Script,
    read_body: bool,
    seen: &Mutex<Vec<Seen>>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    for nth in 0.. {
        let (len, method, target, headers) = loop {
            match parse_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("raw upstream: unparsable request head: {e}");
                    return;
                }
            }
        };
        buf.drain(..len);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        };
        let (mut wire_body, mut body) = (Vec::new(), Vec::new());
        if read_body {
            if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
                loop {
                    match decode_chunked(&buf) {
                        Ok(Some((used, payload))) => {
                            wire_body = buf.drain(..used).collect();
                            body = payload;
                            break;
                        }
                        Ok(None) => {
                            if !fill(&mut stream, &mut buf).await {
                                return;
                            }
                        }
                        Err(e) => {
                            eprintln!("raw upstream: malformed chunked request body: {e}");
                            return;
                        }
                    }
                }
            } else if let Some(n) = header("content-length").and_then(|v| v.trim().parse().ok()) {
                while buf.len() < n {
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                }
                wire_body = buf.drain(..n).collect();
                body = wire_body.clone();
            }
        }
        let request = Seen {
            conn,
            nth,
            method,
            target,
            headers,
            wire_body,
            body,
        };
        let reply = script(&request);
        seen.lock().unwrap().push(request);
        let _ = stream.set_nodelay(!reply.nagled);
        for (i, piece) in reply.pieces.iter().enumerate() {
            if i > 0 && !reply.nagled {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => return,
            Then::CloseAfter(pause) => {
                tokio::time::sleep(pause).await;
                return;
            }
            Then::Hold => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        }
    }
}

/// `200 OK` with a Content-Length body.
fn ok(body: impl AsRef<[u8]>) -> Vec<u8> {
    let body = body.as_ref();
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// A proxy with one route for [`HOST`] over `backends`.
async fn proxy_to(backends: Vec<Backend>) -> Proxy {
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![RouteSpec::upstream(
            "raw",
            vec![HOST.into()],
            backends,
        )])
        .unwrap();
    proxy
}

fn request(
    method: &str,
    proxy: &Proxy,
    path: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .header("host", HOST)
        .body(Full::new(body.into()))
        .unwrap()
}

/// A response as the client got it, body as exact bytes.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Send `req` and read the whole response, each within [`WAIT`].
async fn fetch(c: &TestClient, req: Request<Full<Bytes>>) -> Got {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = tokio::time::timeout(WAIT, c.request(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no response within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: body not finished within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: body failed: {e:?}"))
        .to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `n` bytes cycling through every byte value.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn upstream_h1_content_length_responses_keep_one_connection_alive() {
    let small = (0..=255u8).collect::<Vec<u8>>();
    let large = pattern(300_000);
    let (s, l) = (small.clone(), large.clone());
    let up = RawUpstream::start(move |seen| match seen.target.as_str() {
        "/small" => Reply::send(ok(&s)),
        _ => Reply::send(ok(&l)),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    let a = fetch(&c, request("GET", &proxy, "/small", Bytes::new())).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, small);
    assert_eq!(a.header("content-length"), Some("256"));
    let b = fetch(&c, request("GET", &proxy, "/large", Bytes::new())).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body.len(), large.len());
    assert!(b.body == large, "large body differs");

    assert_eq!(
        up.accepts(),
        1,
        "the second request opened a new connection"
    );
    assert_eq!(up.placement(), [(0, 0), (0, 1)]);
}

#[tokio::test]
async fn upstream_h1_chunked_responses_are_dechunked_and_keep_the_connection() {
    // Split at awkward places: inside a size line, its extension and a CRLF.
    let chunked: Vec<Vec<u8>> = [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;fo"[..],
        b"o=bar\r\nhello\r",
        b"\n7\r\n, world\r\nA\r\n0123456789\r\n1",
        b"a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r",
        b"\n\r\n",
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    let up = RawUpstream::start(move |seen| match seen.target.as_str() {
        "/chunked" => Reply::pieces(chunked.clone()),
        // The last chunk with trailer fields (and a `Trailer` announcement).
        "/trailers" => Reply::send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
              4;v=1\r\nwith\r\n9\r\n trailers\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
                .to_vec(),
        ),
        _ => Reply::send(ok("abc")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    let a = fetch(&c, request("GET", &proxy, "/chunked", Bytes::new())).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        &a.body[..],
        b"hello, world0123456789abcdefghijklmnopqrstuvwxyz"
    );
    let b = fetch(&c, request("GET", &proxy, "/again", Bytes::new())).await;
    assert_eq!((b.status, &b.body[..]), (200, &b"abc"[..]));
    assert_eq!(
        up.placement(),
        [(0, 0), (0, 1)],
        "the chunked response's connection was not reused"
    );

    let t = fetch(&c, request("GET", &proxy, "/trailers", Bytes::new())).await;
    assert_eq!((t.status, &t.body[..]), (200, &b"with trailers"[..]));
    assert!(t.header("trailer").is_none(), "Trailer is hop-by-hop");
}

#[tokio::test]
async fn upstream_h1_chunked_response_with_trailers_keeps_the_connection() {
    let up = RawUpstream::start(|seen| match seen.target.as_str() {
        "/trailers" => Reply::send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;foo=bar\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
                .to_vec(),
        ),
        _ => Reply::send(ok("abc")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();
    let a = fetch(&c, request("GET", &proxy, "/trailers", Bytes::new())).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"hello"[..]));
    let b = fetch(&c, request("GET", &proxy, "/again", Bytes::new())).await;
    assert_eq!((b.status, &b.body[..]), (200, &b"abc"[..]));
    assert_eq!(
        up.placement(),
        [(0, 0), (0, 1)],
        "a new connection after the trailers"
    );
}

#[tokio::test]
async fn upstream_h1_close_delimited_body_is_whole_and_the_connection_not_reused() {
    let body = pattern(100_000);
    let b = body.clone();
    let up = RawUpstream::start(move |_| {
        let mut pieces =
            vec![b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec()];
        pieces.extend(b.chunks(30_000).map(<[u8]>::to_vec));
        Reply::pieces(pieces).then(Then::Close)
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    for round in 0..2 {
        let a = fetch(&c, request("GET", &proxy, "/until-close", Bytes::new())).await;
        assert_eq!(a.status, 200, "round {round}");
        assert_eq!(a.body.len(), body.len(), "round {round}");
        assert!(a.body == body, "round {round}: body differs");
    }
    assert_eq!(up.accepts(), 2);
    assert_eq!(up.placement(), [(0, 0), (1, 0)]);
}

#[tokio::test]
async fn upstream_h1_connection_close_response_is_not_reused() {
    // The backend says `Connection: close` yet would serve another request on the socket:
    // only a new connection shows the proxy honoured it.
    let up = RawUpstream::start(|seen| {
        let body = format!("answer {}", seen.conn);
        Reply::send(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    for conn in 0..2 {
        let a = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, format!("answer {conn}"));
        assert!(
            a.header("connection").is_none_or(|v| !v.contains("close")),
            "the backend's Connection: close is hop-by-hop, not for the client"
        );
    }
    assert_eq!(up.placement(), [(0, 0), (1, 0)]);
}

#[tokio::test]
async fn upstream_h1_http10_response_without_keep_alive_is_not_reused() {
    let up = RawUpstream::start(|seen| {
        Reply::send(format!(
            "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nconn {:02}",
            seen.conn
        ))
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();
    for conn in 0..2 {
        let a = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
        assert_eq!(
            (a.status, a.body),
            (200, Bytes::from(format!("conn {conn:02}")))
        );
    }
    assert_eq!(up.placement(), [(0, 0), (1, 0)]);
}

#[tokio::test]
async fn upstream_h1_head_response_length_is_not_waited_for() {
    let up = RawUpstream::start(|seen| match seen.method.as_str() {
        "HEAD" => Reply::send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n".to_vec(),
        ),
        _ => Reply::send(ok("after head")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    let head = fetch(&c, request("HEAD", &proxy, "/doc", Bytes::new())).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(head.body.is_empty());
    let get = fetch(&c, request("GET", &proxy, "/doc", Bytes::new())).await;
    assert_eq!((get.status, &get.body[..]), (200, &b"after head"[..]));

    let seen = up.seen();
    assert_eq!(seen[0].method, "HEAD");
    assert_eq!(
        up.placement(),
        [(0, 0), (0, 1)],
        "the GET did not reuse the connection"
    );
}

#[tokio::test]
async fn upstream_h1_204_and_304_have_no_body_and_keep_the_connection() {
    let up = RawUpstream::start(|seen| match seen.target.as_str() {
        "/nothing" => Reply::send(b"HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n".to_vec()),
        // A 304's Content-Length describes the representation: no body follows.
        "/cached" => Reply::send(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 42\r\n\r\n".to_vec(),
        ),
        _ => Reply::send(ok("fresh")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    let a = fetch(&c, request("DELETE", &proxy, "/nothing", Bytes::new())).await;
    assert_eq!(a.status, 204);
    assert_eq!(a.header("x-done"), Some("yes"));
    assert!(a.body.is_empty());
    let mut cached = request("GET", &proxy, "/cached", Bytes::new());
    cached
        .headers_mut()
        .insert("if-none-match", "\"v1\"".parse().unwrap());
    let b = fetch(&c, cached).await;
    assert_eq!(b.status, 304);
    assert_eq!(b.header("etag"), Some("\"v1\""));
    assert!(b.body.is_empty());
    let d = fetch(&c, request("GET", &proxy, "/fresh", Bytes::new())).await;
    assert_eq!((d.status, &d.body[..]), (200, &b"fresh"[..]));

    assert_eq!(up.placement(), [(0, 0), (0, 1), (0, 2)]);
}

#[tokio::test]
async fn upstream_h1_informational_responses_precede_the_final_one() {
    let up = RawUpstream::start(|seen| match seen.target.as_str() {
        "/continue" => Reply::pieces(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            ok(format!("got {}", String::from_utf8_lossy(&seen.body))),
        ]),
        _ => Reply::pieces(vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nLink: </style.css>; rel=preload\r\n\r\nhints"
                .to_vec(),
        ]),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    let a = fetch(&c, request("POST", &proxy, "/continue", "form")).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"got form"[..]));
    let b = fetch(&c, request("GET", &proxy, "/hints", Bytes::new())).await;
    assert_eq!((b.status, &b.body[..]), (200, &b"hints"[..]));
    assert_eq!(b.header("link"), Some("</style.css>; rel=preload"));
    assert_eq!(up.placement(), [(0, 0), (0, 1)]);
}

#[tokio::test]
async fn upstream_h1_invalid_response_heads_are_502() {
    // The bad answers are followed by silence, not a close: the 502 must come from parsing.
    let up = RawUpstream::start(|seen| match seen.target.as_str() {
        "/bad-status" => Reply::send(b"HTTP/1.1 abc\r\n\r\n".to_vec()).then(Then::Hold),
        "/not-http" => Reply::send(b"FOO\r\n".to_vec()).then(Then::Hold),
        "/two-lengths" => Reply::send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        )
        .then(Then::Hold),
        "/length-list" => {
            Reply::send(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec())
                .then(Then::Hold)
        }
        _ => Reply::send(ok("good")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    for path in ["/bad-status", "/not-http", "/two-lengths", "/length-list"] {
        let a = fetch(&c, request("GET", &proxy, path, Bytes::new())).await;
        assert_eq!(a.status, 502, "{path}: {:?}", a.body);
        assert!(
            a.header("x-request-id")
                .is_some_and(|id| { String::from_utf8_lossy(&a.body).contains(id) }),
            "{path}: the error page names the request id"
        );
        // Still healthy afterwards.
        let good = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
        assert_eq!(
            (good.status, &good.body[..]),
            (200, &b"good"[..]),
            "after {path}"
        );
    }
}

#[tokio::test]
async fn upstream_h1_close_without_answer_fails_a_post_once_but_retries_a_get() {
    // Two backends that read the request and hang up: a retry would be possible.
    let one = RawUpstream::start(|_| Reply::close_without_answer()).await;
    let two = RawUpstream::start(|_| Reply::close_without_answer()).await;
    let proxy = proxy_to(vec![one.backend("one"), two.backend("two")]).await;
    let c = client();

    let a = fetch(&c, request("POST", &proxy, "/order", "payload")).await;
    assert_eq!(a.status, 502);
    let seen: Vec<Seen> = one.seen().into_iter().chain(two.seen()).collect();
    assert_eq!(seen.len(), 1, "a sent POST was re-sent: {seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, b"payload");

    // A bodyless GET that got no answer is idempotent: it is tried on the other backend.
    let b = fetch(&c, request("GET", &proxy, "/status", Bytes::new())).await;
    assert_eq!(b.status, 502);
    let gets = |u: &RawUpstream| u.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!((gets(&one), gets(&two)), (1, 1));
}

#[tokio::test]
async fn upstream_h1_pooled_connection_closed_while_idle_is_replaced() {
    let up = RawUpstream::start(|seen| {
        let body = format!(
            "{} {} on conn {}",
            seen.method,
            String::from_utf8_lossy(&seen.body),
            seen.conn
        );
        // A keep-alive answer, then the backend drops the connection anyway.
        Reply::send(ok(body)).then(Then::CloseAfter(Duration::from_millis(20)))
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    for (conn, (method, body)) in [("GET", ""), ("GET", ""), ("POST", "late")]
        .into_iter()
        .enumerate()
    {
        if conn > 0 {
            let ended = up.ended.clone();
            assert!(
                eventually(WAIT, || ended.load(Ordering::SeqCst) == conn).await,
                "the backend did not close connection {}",
                conn - 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let a = fetch(&c, request(method, &proxy, "/", body)).await;
        assert_eq!(a.status, 200, "request {conn}");
        assert_eq!(a.body, format!("{method} {body} on conn {conn}"));
    }
    assert_eq!(up.placement(), [(0, 0), (1, 0), (2, 0)]);
}

#[tokio::test]
async fn upstream_h1_request_bodies_arrive_exact() {
    let up = RawUpstream::start(|seen| Reply::send(ok(format!("{} bytes", seen.body.len())))).await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();

    // A Content-Length body: byte for byte, with that length.
    let payload = pattern(100_000);
    let a = fetch(&c, request("POST", &proxy, "/upload", payload.clone())).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"100000 bytes"[..]));
    let seen = up.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/upload");
    assert_eq!(seen[0].header("content-length").as_deref(), Some("100000"));
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert!(
        seen[0].wire_body == payload,
        "POST body differs on the wire"
    );

    // A chunked body from the client: re-framed (chunked or with a length), same payload.
    let reply = raw_exchange(
        proxy.addr,
        b"POST /chunked?x=1 HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n1A\r\n\
          abcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("38 bytes"), "{reply}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let chunked = &seen[1];
    assert_eq!(
        (chunked.method.as_str(), chunked.target.as_str()),
        ("POST", "/chunked?x=1")
    );
    assert_eq!(chunked.body, b"hello, worldabcdefghijklmnopqrstuvwxyz");
    match (
        chunked.header("transfer-encoding"),
        chunked.header("content-length"),
    ) {
        (Some(te), None) => assert!(te.eq_ignore_ascii_case("chunked"), "{te}"),
        (None, Some(len)) => {
            assert_eq!(len, "38");
            assert_eq!(chunked.wire_body, chunked.body);
        }
        other => panic!("request body framing {other:?}"),
    }
    // Both went over one upstream connection: the first body ended where it should.
    assert_eq!(up.placement(), [(0, 0), (0, 1)]);
}

#[tokio::test]
async fn upstream_h1_early_413_during_a_large_upload_leaves_the_proxy_healthy() {
    let up = RawUpstream::answering_before_the_body(|_| {
        Reply::send(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
                .to_vec(),
        )
        .then(Then::Close)
    })
    .await;
    let good = Upstream::start("good").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![
            RouteSpec::upstream("raw", vec![HOST.into()], vec![up.backend("raw")]),
            RouteSpec::upstream("good", vec!["good.localhost".into()], vec![good.backend()]),
        ])
        .unwrap();

    let total = 4 << 20;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {total}\r\n\r\n");
        if wr.write_all(head.as_bytes()).await.is_err() {
            return 0;
        }
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            if wr.write_all(&piece).await.is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    let status = text.get(9..12).unwrap_or("");
    assert!(
        text.starts_with("HTTP/1.1 ") && matches!(status, "413" | "502"),
        "client got {text:?}"
    );
    println!("client got {status} while uploading");
    writer.abort();
    assert_eq!(up.seen().len(), 1);

    let c = client();
    let a = tokio::time::timeout(WAIT, get(&c, &proxy, "good.localhost", "/"))
        .await
        .expect("proxy stopped answering");
    assert_eq!((a.status, a.body.as_str()), (200, "good"));
}

#[tokio::test]
async fn upstream_h1_early_answer_before_a_late_body_keeps_the_client_connection() {
    // The backend answers as soon as it has the head; each client body comes only after the
    // answer (as a client's second write does when Nagle's algorithm holds it back).
    let up = RawUpstream::answering_before_the_body(|seen| {
        Reply::send(ok(format!("early {}", seen.target))).then(Then::Close)
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    for i in 0..3 {
        let head = format!("POST /{i} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("request {i} could not be sent: {e}"));
        let answer = format!("early /{i}");
        tokio::time::timeout(WAIT, async {
            while !String::from_utf8_lossy(&got).contains(&answer) {
                assert!(
                    fill(&mut stream, &mut got).await,
                    "the proxy closed the connection before answering request {i}: {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to request {i}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        stream.write_all(b"hello").await.unwrap();
    }
    assert_eq!(up.seen().len(), 3);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_h1_end_to_end_headers_pass_and_hop_by_hop_ones_are_stripped() {
    let up = RawUpstream::start(|_| {
        Reply::send(
            b"HTTP/1.1 200 OK\r\n\
              Content-Length: 2\r\n\
              Set-Cookie: a=1; Path=/; HttpOnly\r\n\
              Set-Cookie: b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\n\
              X-Odd: spaced  out,\tcomma \"quoted\" ;x=\r\n\
              X-Latin1: caf\xe9\r\n\
              X-Empty:\r\n\
              Cache-Control: no-cache, private\r\n\
              Keep-Alive: timeout=5, max=100\r\n\
              Proxy-Connection: keep-alive\r\n\
              Connection: X-Hop\r\n\
              X-Hop: secret\r\n\
              \r\nok"
                .to_vec(),
        )
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();
    let a = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
    let cookies: Vec<&[u8]> = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(
        cookies,
        [
            &b"a=1; Path=/; HttpOnly"[..],
            b"b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
        ]
    );
    assert_eq!(
        a.header("x-odd"),
        Some("spaced  out,\tcomma \"quoted\" ;x=")
    );
    assert_eq!(
        a.headers.get("x-latin1").map(|v| v.as_bytes()),
        Some(&b"caf\xe9"[..])
    );
    assert_eq!(a.header("x-empty"), Some(""));
    assert_eq!(a.header("cache-control"), Some("no-cache, private"));
    for hop in ["keep-alive", "proxy-connection", "x-hop"] {
        assert!(!a.headers.contains_key(hop), "{hop} reached the client");
    }
    assert!(
        a.headers
            .get_all("connection")
            .iter()
            .all(|v| !v.as_bytes().eq_ignore_ascii_case(b"x-hop")),
        "the backend's Connection header reached the client"
    );
}

/// Response head with one header of `value_len` bytes.
fn huge_head(value_len: usize) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Huge: ".to_vec();
    head.resize(head.len() + value_len, b'h');
    head.extend_from_slice(b"\r\n\r\nok");
    head
}

async fn oversized_head_is_502(value_len: usize) {
    let up = RawUpstream::start(move |seen| match seen.target.as_str() {
        "/huge" => Reply::send(huge_head(value_len)).then(Then::Hold),
        _ => Reply::send(ok("small")),
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();
    let a = fetch(&c, request("GET", &proxy, "/huge", Bytes::new())).await;
    assert_eq!(a.status, 502, "head of {value_len} bytes got {}", a.status);
    assert!(a.header("x-huge").is_none());
    let b = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
    assert_eq!((b.status, &b.body[..]), (200, &b"small"[..]));
}

#[tokio::test]
async fn upstream_h1_response_head_of_1_mib_is_502() {
    oversized_head_is_502(1 << 20).await;
}

#[tokio::test]
async fn upstream_h1_response_head_over_64_kib_is_502() {
    oversized_head_is_502(80 * 1024).await;
}

/// A backend that writes the head and then the body with Nagle's algorithm on holds the body
/// until the head is acknowledged; a keep-alive connection whose ACK waited for a reply
/// would stall every request by the 40 ms delayed-ACK timer.
#[tokio::test]
async fn upstream_h1_head_and_body_written_apart_do_not_wait_for_a_delayed_ack() {
    const REQUESTS: u32 = 30;
    let up = RawUpstream::start(|_| {
        Reply::nagled(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            b"hello".to_vec(),
        ])
    })
    .await;
    let proxy = proxy_to(vec![up.backend("raw")]).await;
    let c = client();
    let started = std::time::Instant::now();
    for _ in 0..REQUESTS {
        let got = fetch(&c, request("GET", &proxy, "/", Bytes::new())).await;
        assert_eq!((got.status, &got.body[..]), (200, &b"hello"[..]));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        up.accepts(),
        1,
        "all requests share one upstream connection"
    );
    // Stalled, each request would wait 40 ms: at least 1.2 s in all.
    assert!(
        elapsed < Duration::from_millis(600),
        "{REQUESTS} requests took {elapsed:?}: responses waited for delayed ACKs"
    );
}
