//! Body types the proxy streams through: the request body sent upstream (size-limited, counted)
//! and the response body sent to the client (counted, and holding the request's bookkeeping
//! guards until the last byte is written).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

use crate::backend::InFlightGuard;
use crate::exchange::{ResponseBody, StreamingBody};
use crate::metrics::RouteMetrics;
use crate::proxy::ConnContext;

/// Error type of every body the proxy produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit that was crossed.
    pub limit: u64,
}

pin_project! {
    /// Client request body on its way upstream: enforces the route's size limit while streaming
    /// and counts bytes for the route's metrics.
    pub struct UpstreamBody {
        #[pin]
        inner: Option<Incoming>,
        limit: u64,
        seen: u64,
        metrics: Option<Arc<RouteMetrics>>,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(m) = this.metrics.as_ref() {
                m.add_bytes_in(*this.seen);
            }
        }
    }
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, limit: Option<u64>, metrics: Arc<RouteMetrics>) -> Self {
        Self {
            inner: Some(inner),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            metrics: Some(metrics),
        }
    }

    /// An empty body (bodyless requests, which can be re-sent on retry).
    pub(crate) fn empty() -> Self {
        Self {
            inner: None,
            limit: u64::MAX,
            seen: 0,
            metrics: None,
        }
    }
}

/// Most of an unread request body read (and dropped) after an early answer so that the client
/// connection stays open: past it, or a declared length above it, the connection is closed.
const DRAIN_UP_TO: u64 = 1 << 20;
/// How long the rest of an unread request body may take to arrive before the connection is
/// closed instead (nginx's `lingering_timeout` default).
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

impl UpstreamBody {
    /// Read the rest of a request body the backend answered before reading (an early 401, or
    /// an app that replies first), and drop it, in a task of its own.
    ///
    /// hyper closes a connection whose request body is dropped unread unless the rest is
    /// already buffered: a client that writes its body after the head (a second write held
    /// back by Nagle's algorithm) would lose its keep-alive connection on every such request,
    /// and one sending its next request meanwhile would see it cut. The response itself is not
    /// held up: hyper sends it and keeps reading the body into this task. A body declared
    /// longer than [`DRAIN_UP_TO`], growing past it, or slower than [`DRAIN_FOR`] is dropped
    /// instead, and the connection closes as before.
    pub(crate) fn discard_rest(self) {
        if self.is_end_stream() || self.size_hint().lower() > DRAIN_UP_TO {
            return;
        }
        let mut body = self;
        tokio::spawn(async move {
            let mut left = DRAIN_UP_TO;
            let drained = tokio::time::timeout(DRAIN_FOR, async {
                while let Some(Ok(frame)) = body.frame().await {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    let Some(rest) = left.checked_sub(len) else {
                        return;
                    };
                    left = rest;
                }
            });
            let _ = drained.await;
        });
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: *this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Per client connection: how many requests are open and how many finished (so the idle
/// watchdog never closes a connection that is streaming (SSE) or waiting on a backend, without
/// reading the clock on every request), what the framing scanner saw, and the watchdog's request
/// to close.
#[derive(Debug, Default)]
pub(crate) struct ConnActivity {
    open_requests: AtomicUsize,
    finished_requests: AtomicU64,
    /// Raised by the connection's framing scanner when a request head was ambiguous.
    pub(crate) smuggling: AtomicBool,
    /// Raised by the framing scanner when the client speaks HTTP/2.
    pub(crate) http2: AtomicBool,
    /// Raised by the framing scanner when a request asked for a tunnel (CONNECT, `Upgrade`)
    /// and it stopped following the stream: unless that request is answered 101, the
    /// connection closes after the answer, so nothing after it goes unscanned.
    pub(crate) upgrade_asked: AtomicBool,
    /// Set by the watchdog (idle, slow headers, shutdown): a [`Close`] level.
    close: AtomicU8,
    /// The connection task, woken when `close` is raised.
    waker: AtomicWaker,
    /// Deadline for the response head of the HTTP/1 request waiting on a backend, in
    /// microseconds since [`deadline_epoch`] (0: none). Enforced by the connection task with one
    /// timer per connection, moved forward per request (cheap) instead of one timer per request.
    response_deadline: AtomicU64,
    /// Raised by the connection task when `response_deadline` passed.
    response_timed_out: AtomicBool,
    /// Parking of an idle HTTP/1 connection (its hyper state dropped until the client sends
    /// again): [`PARK_NONE`], [`PARK_REQUESTED`] by the watchdog, or [`PARK_PARKED`].
    park: AtomicU8,
    /// What the connection's IO wrapper saw last, so the task can tell when hyper is idle.
    pub(crate) io: IoState,
}

/// Not parked, no request to park.
const PARK_NONE: u8 = 0;
/// The watchdog asks the connection task to park (it saw the connection idle for a while).
const PARK_REQUESTED: u8 = 1;
/// The connection holds no hyper state and waits for the client to send.
const PARK_PARKED: u8 = 2;

/// Last observations of a client connection's IO wrapper ([`crate::framing::FramingGuard`]):
/// plain stores on the request path, read by the connection task only when asked to park.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    /// hyper's last read found nothing to read.
    pub(crate) read_blocked: AtomicBool,
    /// Bytes were written since the last completed flush.
    pub(crate) write_pending: AtomicBool,
    /// The client's bytes so far do not end at a message boundary (part of a head or body
    /// arrived, or the stream is no longer HTTP/1 framed: HTTP/2, upgrade, invalid).
    pub(crate) mid_message: AtomicBool,
    /// hyper asked to shut the connection down.
    pub(crate) shut: AtomicBool,
    /// A park attempt is under way: a shutdown is swallowed (and noted in `swallowed`)
    /// unless bytes move first.
    pub(crate) parking: AtomicBool,
    /// hyper shut the connection down during a park attempt, with no bytes moved.
    pub(crate) swallowed: AtomicBool,
}

/// Time base of [`ConnActivity`] response deadlines.
pub(crate) fn deadline_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Clears a response deadline when the attempt that set it ends (or is dropped).
pub(crate) struct DeadlineGuard<'a>(&'a ConnActivity);

impl Drop for DeadlineGuard<'_> {
    fn drop(&mut self) {
        self.0.response_deadline.store(0, Ordering::Release);
    }
}

impl ConnActivity {
    /// `None` while a request is open, else the number of requests finished so far (a change
    /// since the last look means the connection was not idle meanwhile).
    pub(crate) fn idle_marker(&self) -> Option<u64> {
        if self.open_requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.finished_requests.load(Ordering::Acquire))
    }

    /// Ask the connection task to close the connection (never lowering an earlier request).
    pub(crate) fn request_close(&self, level: Close) {
        self.close.fetch_max(level as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Arm the connection's response deadline `timeout` after `from` (the request's start,
    /// or now for a retry: no clock read on the first attempt), until the guard drops.
    pub(crate) fn set_response_deadline(
        &self,
        from: std::time::Instant,
        timeout: std::time::Duration,
    ) -> DeadlineGuard<'_> {
        let at = from + timeout;
        let micros = at.saturating_duration_since(deadline_epoch()).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX).max(1);
        self.response_timed_out.store(false, Ordering::Release);
        self.response_deadline.store(micros, Ordering::Release);
        DeadlineGuard(self)
    }

    /// The armed response deadline (µs since [`deadline_epoch`]), 0 when none.
    pub(crate) fn response_deadline(&self) -> u64 {
        self.response_deadline.load(Ordering::Acquire)
    }

    pub(crate) fn mark_response_timed_out(&self) {
        self.response_timed_out.store(true, Ordering::Release);
    }

    pub(crate) fn response_timed_out(&self) -> bool {
        self.response_timed_out.load(Ordering::Acquire)
    }

    /// The watchdog saw the connection idle for a whole park period: ask its task to drop
    /// hyper's per-connection state (unless it is parked already or serving HTTP/2).
    pub(crate) fn request_park(&self) {
        if self
            .park
            .compare_exchange(
                PARK_NONE,
                PARK_REQUESTED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Take a pending park request (cheap when there is none: one load).
    pub(crate) fn take_park_request(&self) -> bool {
        if self.park.load(Ordering::Relaxed) != PARK_REQUESTED {
            return false;
        }
        self.park.store(PARK_NONE, Ordering::Relaxed);
        true
    }

    /// Mark the connection parked (no hyper state) or active.
    pub(crate) fn set_parked(&self, parked: bool) {
        let state = if parked { PARK_PARKED } else { PARK_NONE };
        self.park.store(state, Ordering::Release);
    }

    /// Whether the connection looks idle to hyper: no request open, everything written and
    /// flushed, the last read found nothing, and the client's bytes end at a message boundary.
    /// A hint only: hyper itself decides in the park attempt (see `server::drive`).
    pub(crate) fn looks_idle(&self) -> bool {
        let io = &self.io;
        self.open_requests.load(Ordering::Acquire) == 0
            && io.read_blocked.load(Ordering::Relaxed)
            && !io.write_pending.load(Ordering::Relaxed)
            && !io.mid_message.load(Ordering::Relaxed)
            && !io.shut.load(Ordering::Relaxed)
    }

    /// The close requested so far; registers `waker` to hear about a later request.
    pub(crate) fn close_requested(&self, waker: &std::task::Waker) -> Close {
        self.waker.register(waker);
        match self.close.load(Ordering::Acquire) {
            0 => Close::No,
            1 => Close::Graceful,
            _ => Close::Now,
        }
    }
}

/// How a connection should be closed, in increasing order of urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Close {
    No = 0,
    /// Finish what is in flight, then close (HTTP/2 GOAWAY, HTTP/1 after the response).
    Graceful = 1,
    /// Drop the connection now (it ignored a graceful close while sending nothing useful).
    Now = 2,
}

/// Everything a request holds until its response body is finished: connection activity, the
/// backend's in-flight slot and the route's byte/open counters.
pub(crate) struct RequestGuard {
    conn: Arc<ConnContext>,
    pub(crate) route: Option<Arc<RouteMetrics>>,
    pub(crate) backend: Option<InFlightGuard>,
    bytes_out: u64,
}

impl RequestGuard {
    pub(crate) fn new(conn: Arc<ConnContext>) -> Self {
        conn.activity.open_requests.fetch_add(1, Ordering::AcqRel);
        Self {
            conn,
            route: None,
            backend: None,
            bytes_out: 0,
        }
    }

    /// Attach the route so its open gauge and byte counters follow this request.
    pub(crate) fn set_route(&mut self, metrics: Arc<RouteMetrics>) {
        metrics.add_open(1);
        if let Some(old) = self.route.replace(metrics) {
            old.add_open(-1);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(route) = &self.route {
            route.add_bytes_out(self.bytes_out);
            route.add_open(-1);
        }
        let activity = &self.conn.activity;
        activity.finished_requests.fetch_add(1, Ordering::AcqRel);
        activity.open_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Streaming { #[pin] inner: Box<StreamingBody> },
        Hyper { #[pin] inner: Incoming },
        Full { #[pin] inner: Full<Bytes> },
        Boxed { #[pin] inner: UnsyncBoxBody<Bytes, BoxError> },
    }
}

pin_project! {
    /// Response body sent to clients: an upstream stream, a generated page or a static file.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        guard: Option<RequestGuard>,
    }
}

impl ProxyBody {
    /// An upstream response's body (guard attached later with [`Self::set_guard`]).
    pub(crate) fn upstream(body: ResponseBody) -> Self {
        match body {
            ResponseBody::Full(bytes) => Self::full(bytes, None),
            ResponseBody::Streaming(inner) => Self {
                kind: Kind::Streaming { inner },
                guard: None,
            },
        }
    }

    /// The body of a non-101 answer to an upgrade request (sent over hyper's client).
    pub(crate) fn hyper(inner: Incoming) -> Self {
        Self {
            kind: Kind::Hyper { inner },
            guard: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new(), None)
    }

    pub(crate) fn full(bytes: impl Into<Bytes>, guard: Option<RequestGuard>) -> Self {
        Self {
            kind: Kind::Full {
                inner: Full::new(bytes.into()),
            },
            guard,
        }
    }

    pub(crate) fn boxed<B>(body: B, guard: RequestGuard) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Boxed {
                inner: body.map_err(Into::into).boxed_unsync(),
            },
            guard: Some(guard),
        }
    }

    pub(crate) fn set_guard(&mut self, guard: RequestGuard) {
        self.guard = Some(guard);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.kind.project() {
            KindProj::Streaming { inner } => inner.poll_frame(cx),
            KindProj::Hyper { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Full { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Boxed { inner } => inner.poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(guard)) = (frame.data_ref(), this.guard.as_mut()) {
                    guard.bytes_out += data.len() as u64;
                }
            }
            // Release the backend slot and counters as soon as the body is done, not when
            // hyper gets around to dropping it.
            Poll::Ready(None) => {
                this.guard.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Streaming { inner } => inner.is_end_stream(),
            Kind::Hyper { inner } => inner.is_end_stream(),
            Kind::Full { inner } => inner.is_end_stream(),
            Kind::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streaming { inner } => inner.size_hint(),
            Kind::Hyper { inner } => inner.size_hint(),
            Kind::Full { inner } => inner.size_hint(),
            Kind::Boxed { inner } => inner.size_hint(),
        }
    }
}
