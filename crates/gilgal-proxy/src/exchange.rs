//! The upstream HTTP/1.1 exchange of ordinary (non-upgrade) requests, driven inside the
//! request's own task over a pooled keep-alive connection.
//!
//! hyper's client runs every connection as a task of its own and hands each request and
//! response across a channel; at the edge, where every request is one upstream exchange, that
//! second task and its wake-ups were the largest cost left per request. Here the request's task
//! writes the head, streams the body, parses the answer ([`crate::h1`]) and, for small
//! responses, reads the whole body before handing the response to hyper's server, then puts
//! the connection straight back in its pool. Larger and streamed bodies hold the connection
//! until their last byte and return it then. Upgrades (WebSockets) keep hyper's client, whose
//! upgrade support the tunnel builds on.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::backend::{BackendState, SignalWatch};
use crate::body::{BoxError, UpstreamBody};
use crate::h1::{self, ChunkedDecoder, Decoded, Framing, HeadScratch, ResponseError, ResponseHead};
use crate::pool::UpstreamError;

/// Free space below which the read buffer grows by [`READ_CHUNK`] before a read.
const READ_SPARE: usize = 1024;
/// How much a connection's read buffer grows at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Response bodies up to this size are read together with the head, so the connection is
/// back in its pool before the response is even handed to the client side.
const BUFFER_BODY_UP_TO: u64 = 16 * 1024;

/// One keep-alive connection to a backend, with its read buffer and parse scratch (reused by
/// every request it carries).
pub(crate) struct UpstreamConn {
    stream: TcpStream,
    buf: BytesMut,
    scratch: HeadScratch,
    /// Whether this exchange already forced out the ACK for what the backend sent.
    acked: bool,
}

impl UpstreamConn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scratch: HeadScratch::default(),
            acked: false,
        }
    }

    /// Whether a connection that idled in the pool can carry another request: nothing arrived
    /// meanwhile (an EOF, a reset or stray bytes all rule it out). Costs no system call unless
    /// the socket is flagged readable, because reads that drain the socket clear the flag.
    pub(crate) fn is_reusable_after_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read what the backend sent into the buffer. Through `AsyncRead` (not `try_read`), so a
    /// short read clears the socket's readiness and the idle check above stays free.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SPARE {
            self.buf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// [`Self::poll_fill`] for the rest of a response whose first bytes came. A backend that
    /// writes head and body separately without `TCP_NODELAY` (Python's `http.server`) holds
    /// the body back until the head is acknowledged, while a keep-alive socket delays that
    /// ACK by 40 ms hoping to piggyback it on a reply that never comes. So the first time
    /// such a read must wait, the pending ACK goes out at once (one system call, and none when
    /// the whole response came in one read).
    fn poll_fill_rest(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let poll = self.poll_fill(cx);
        if poll.is_pending() && !self.acked {
            self.acked = true;
            self.ack_now();
        }
        poll
    }

    #[cfg(target_os = "linux")]
    fn ack_now(&self) {
        // Setting TCP_QUICKACK leaves the delayed-ACK mode and sends a scheduled ACK now; a
        // failure only costs the delay it tried to avoid.
        let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
    }

    #[cfg(not(target_os = "linux"))]
    fn ack_now(&self) {}

    /// The next final response head in the buffer (1xx interim responses are skipped).
    fn next_head(&mut self, method: &Method) -> Result<Option<ResponseHead>, UpstreamError> {
        while !self.buf.is_empty() {
            let Some(head) = h1::parse_response_head(&mut self.buf, method, &mut self.scratch)?
            else {
                return Ok(None);
            };
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Err(
                    ResponseError::Head("101 Switching Protocols without an upgrade").into(),
                );
            }
            if !head.status.is_informational() {
                return Ok(Some(head));
            }
        }
        Ok(None)
    }

    /// Write all of `bytes`, noting in `sent` once any of it left.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &mut Bytes,
        sent: &mut bool,
    ) -> Poll<io::Result<()>> {
        while !bytes.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent = true;
            bytes.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

/// A request encoded for the upstream: its head is kept as bytes, so a retry re-sends it
/// without rebuilding anything.
pub(crate) struct OutgoingRequest {
    method: Method,
    head: Bytes,
    /// `None` for a bodyless request (or once the body started streaming); after an early
    /// answer, what the client has yet to send.
    body: Option<UpstreamBody>,
    /// The body has no declared length and goes out chunked.
    chunked: bool,
    /// Some of the request reached a socket: resending it could repeat its effect.
    pub(crate) sent: bool,
}

impl OutgoingRequest {
    /// Once a response arrived: the rest of a request body the backend answered before
    /// reading (see [`UpstreamBody::discard_rest`]); the exchange took the body otherwise.
    pub(crate) fn take_unread_body(&mut self) -> Option<UpstreamBody> {
        self.body.take()
    }

    /// Encode `method target` with `headers` (hop-by-hop ones removed already) and the
    /// forwarding fields in `set`, which replace any of the same name. A body without
    /// `Content-Length` is sent chunked.
    pub(crate) fn new(
        method: Method,
        target: &str,
        headers: &HeaderMap,
        set: &[(&HeaderName, &HeaderValue)],
        body: Option<UpstreamBody>,
    ) -> Self {
        let chunked = body.is_some() && !headers.contains_key(header::CONTENT_LENGTH);
        let mut head = Vec::new();
        h1::encode_request_head(&method, target, headers, set, chunked, &mut head);
        Self {
            method,
            head: Bytes::from(head),
            body,
            chunked,
            sent: false,
        }
    }
}

/// Body of an upstream response: read already, or streamed from the connection.
pub(crate) enum ResponseBody {
    Full(Bytes),
    /// Boxed: streamed bodies are the rare case, and a response is moved several times on its
    /// way to hyper.
    Streaming(Box<StreamingBody>),
}

/// Send `req` to `backend` on its most recently used idle connection, or a new one, and read
/// the response head (and a small body). A reused connection that turns out dead before
/// anything was sent, or before any answer for a request that `resend_ok` (bodyless and
/// idempotent), is dropped and the next one tried. `now` is a recent instant for the idle
/// check.
pub(crate) async fn exchange(
    backend: &Arc<BackendState>,
    now: Instant,
    req: &mut OutgoingRequest,
    resend_ok: bool,
    connect_timeout: Duration,
) -> Result<(ResponseHead, ResponseBody), UpstreamError> {
    while let Some(conn) = backend.pool.take_idle(now) {
        match exchange_on(conn, backend, req).await {
            // Nothing was written yet, or the request is bodyless and safe to repeat.
            Err(e) if e.is_dead_connection() && (!req.sent || resend_ok) => {
                tracing::trace!(backend = %backend.id, error = %e, "pooled connection was dead, trying another");
            }
            done => return done,
        }
    }
    // Boxed: connecting is rare on a warm pool, and its future would otherwise grow every
    // request's future.
    let stream = Box::pin(backend.pool.connect(connect_timeout)).await?;
    exchange_on(UpstreamConn::new(stream), backend, req).await
}

async fn exchange_on(
    mut conn: UpstreamConn,
    backend: &Arc<BackendState>,
    req: &mut OutgoingRequest,
) -> Result<(ResponseHead, ResponseBody), UpstreamError> {
    conn.acked = false;
    let mut head_bytes = req.head.clone();
    let sent = &mut req.sent;
    poll_fn(|cx| conn.poll_write_all(cx, &mut head_bytes, sent))
        .await
        .map_err(UpstreamError::Io)?;
    let mut complete = true;
    let early = match req.body.take() {
        Some(mut body) => {
            let early = send_body(&mut conn, &mut body, req.chunked, &req.method).await?;
            complete = early.is_none();
            if early.is_some() {
                // What the client may still be sending is kept, so the client connection can
                // read it to the end and stay open (`UpstreamBody::discard_rest`).
                req.body = Some(body);
            }
            early
        }
        None => None,
    };
    let head = match early {
        Some(head) => head,
        None => {
            poll_fn(|cx| loop {
                if let Some(head) = conn.next_head(&req.method)? {
                    return Poll::Ready(Ok(head));
                }
                let had_bytes = !conn.buf.is_empty();
                let filled = if had_bytes {
                    conn.poll_fill_rest(cx)
                } else {
                    conn.poll_fill(cx)
                };
                match ready!(filled) {
                    Ok(0) if had_bytes => {
                        return Poll::Ready(Err(ResponseError::Head("truncated").into()))
                    }
                    Ok(0) => return Poll::Ready(Err(UpstreamError::Closed)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
                }
            })
            .await?
        }
    };
    // Reusable once this response is read: the backend keeps the connection, the whole
    // request went out, and nothing beyond the response arrives.
    let reusable = head.keep_alive && complete;
    let small = match head.framing {
        Framing::Empty => Some(0),
        Framing::Length(n) if n <= BUFFER_BODY_UP_TO => Some(n as usize),
        _ => None,
    };
    if let Some(len) = small {
        poll_fn(|cx| {
            while conn.buf.len() < len {
                match ready!(conn.poll_fill_rest(cx)) {
                    Ok(0) => return Poll::Ready(Err(UpstreamError::TruncatedBody)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        let body = conn.buf.split_to(len).freeze();
        if reusable && conn.buf.is_empty() {
            backend.pool.put_back(conn);
        }
        return Ok((head, ResponseBody::Full(body)));
    }
    let remaining = match head.framing {
        Framing::Length(n) => Remaining::Length(n),
        Framing::Chunked => Remaining::Chunked(ChunkedDecoder::new()),
        Framing::UntilClose | Framing::Empty => Remaining::UntilClose,
    };
    let body = StreamingBody {
        conn: Some(conn),
        remaining,
        reusable: reusable && head.framing != Framing::UntilClose,
        backend: Arc::clone(backend),
        cut: None,
    };
    Ok((head, ResponseBody::Streaming(Box::new(body))))
}

/// Stream the request body upstream, chunk-encoding it when it has no declared length. Reads
/// while it writes: a backend that answers early (a 413 to a large upload) gets its answer
/// relayed instead of the proxy blocking on a body nobody reads. `Some(head)` is such an early
/// answer.
async fn send_body(
    conn: &mut UpstreamConn,
    body: &mut UpstreamBody,
    chunked: bool,
    method: &Method,
) -> Result<Option<ResponseHead>, UpstreamError> {
    let mut body = Pin::new(body);
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    let mut finished = false;
    let mut sent = true;
    poll_fn(|cx| loop {
        if let Poll::Ready(read) = conn.poll_fill(cx) {
            match read {
                Ok(0) => return Poll::Ready(Err(UpstreamError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
            }
            if let Some(head) = conn.next_head(method)? {
                return Poll::Ready(Ok(Some(head)));
            }
            continue;
        }
        while let Some(front) = queue.front_mut() {
            ready!(conn.poll_write_all(cx, front, &mut sent)).map_err(UpstreamError::Io)?;
            queue.pop_front();
        }
        if finished {
            return Poll::Ready(Ok(None));
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // request trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    queue.push_back(Bytes::from(h1::chunk_prefix(data.len())));
                    queue.push_back(data);
                    queue.push_back(Bytes::from_static(b"\r\n"));
                } else {
                    queue.push_back(data);
                }
            }
            Some(Err(e)) => return Poll::Ready(Err(UpstreamError::Body(e))),
            None => {
                finished = true;
                if chunked {
                    queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
        }
    })
    .await
}

/// What is left of a streamed response body.
enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A response body read from its connection as the client side asks for it; the connection
/// goes back to its backend's pool when the body ends cleanly (and is closed otherwise).
pub(crate) struct StreamingBody {
    conn: Option<UpstreamConn>,
    remaining: Remaining,
    reusable: bool,
    backend: Arc<BackendState>,
    /// Past the backend's drain deadline the stream ends (registered on first poll).
    cut: Option<SignalWatch>,
}

/// A backend was cut off (drain deadline) while its response was streaming.
#[derive(Debug, thiserror::Error)]
#[error("the app instance was stopped while streaming its response")]
struct StreamCut;

/// A backend closed the connection in the middle of a response body.
#[derive(Debug, thiserror::Error)]
#[error("the app closed the connection in the middle of the response body")]
struct BodyTruncated;

impl StreamingBody {
    /// The body ended cleanly: give the connection back if it can carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.backend.pool.put_back(conn);
            }
        }
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let backend = &this.backend;
            if this
                .cut
                .get_or_insert_with(|| backend.cut.watch())
                .poll_fired(cx)
            {
                return this.fail(Box::new(StreamCut));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.remaining {
                Remaining::Length(left) => {
                    if conn.buf.is_empty() {
                        None
                    } else {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        *left -= take as u64;
                        let data = conn.buf.split_to(take).freeze();
                        if *left == 0 {
                            // hyper stops polling once a sized body reports its end, so the
                            // last frame is where the connection goes back.
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Remaining::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => Some(data),
                    Ok(Decoded::NeedMore) => None,
                    Ok(Decoded::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.fail(Box::new(e)),
                },
                Remaining::UntilClose => (!conn.buf.is_empty()).then(|| conn.buf.split().freeze()),
            };
            if let Some(data) = data {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match ready!(conn.poll_fill_rest(cx)) {
                Ok(0) => {
                    if matches!(this.remaining, Remaining::UntilClose) {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(Box::new(BodyTruncated));
                }
                Ok(_) => {}
                Err(e) => return this.fail(Box::new(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.remaining, Remaining::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
