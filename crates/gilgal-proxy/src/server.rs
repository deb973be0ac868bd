//! Listeners: accept loops for plain HTTP (HTTP/1.1 + h2c) and TLS (ALPN h2 + http/1.1), with
//! slowloris/idle protection per connection and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::body::{Close, ConnActivity};
use crate::error::ProxyError;
use crate::framing::{FramingGuard, ReadReady};
use crate::handle::{ProxyHandle, Shared};
use crate::proxy::{handle, ConnContext};

/// Serve plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) on `listener` until `shutdown`
/// resolves; then stop accepting, let in-flight requests finish (up to the shutdown grace
/// period) and return.
pub async fn serve(
    listener: TcpListener,
    handle: ProxyHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    run(listener, handle, shutdown, None).await
}

/// Serve HTTPS on `listener`: TLS terminated with the certificates installed through
/// [`ProxyHandle::set_certificates`] (chosen by SNI), ALPN `h2` and `http/1.1`.
pub async fn serve_tls(
    listener: TcpListener,
    handle: ProxyHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let config = crate::tls::server_config(handle.shared.certs.clone())?;
    run(listener, handle, shutdown, Some(TlsAcceptor::from(config))).await
}

/// A listener's HTTP/1 and HTTP/2 connection settings.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

fn builders(settings: &crate::spec::ProxySettings, tls: bool) -> Builders {
    let mut http1 = http1::Builder::new();
    // No hyper timer for HTTP/1: its header read timeout arms (and allocates) a timer for every
    // request. The per-listener watchdog enforces `header_read_timeout` instead.
    http1
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(settings.max_request_head_bytes.max(8192));
    if tls {
        // rustls encrypts into its own buffer anyway (and allocates a slice list for every
        // vectored write): hand it one flat buffer per write instead.
        http1.writev(false);
    }
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(settings.max_request_head_bytes).unwrap_or(u32::MAX));
    Builders { http1, http2 }
}

async fn run(
    listener: TcpListener,
    handle: ProxyHandle,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsAcceptor>,
) -> Result<(), ProxyError> {
    let shared = handle.shared.clone();
    let builders = Arc::new(builders(&shared.settings, tls.is_some()));
    let watchdog = Arc::new(Watchdog::new(&shared.settings));
    let tracker = TaskTracker::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(watchdog.clone().run(stop_rx));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builders = builders.clone();
        let watchdog = watchdog.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            shared
                .open_client_connections
                .fetch_add(1, Ordering::Relaxed);
            accept_one(stream, peer, &shared, &builders, &watchdog, tls).await;
            shared
                .open_client_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    watchdog.stop();
    drop(stop_tx);
    tracker.close();
    let grace = shared.settings.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("proxy shutdown grace period elapsed with connections still open");
    }
    Ok(())
}

async fn accept_one(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    builders: &Builders,
    watchdog: &Watchdog,
    tls: Option<TlsAcceptor>,
) {
    // Boxed, each in its own future, so the task (which lives as long as the connection, idle
    // or not) holds neither the TLS handshake's state nor the connection's.
    match tls {
        None => {
            Box::pin(serve_connection(
                stream, peer, false, shared, builders, watchdog,
            ))
            .await
        }
        Some(acceptor) => {
            Box::pin(handshake_then_serve(
                stream, acceptor, peer, shared, builders, watchdog,
            ))
            .await
        }
    }
}

async fn handshake_then_serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    builders: &Builders,
    watchdog: &Watchdog,
) {
    let timeout = shared.settings.tls_handshake_timeout;
    // Boxed: freed once done instead of sizing this future for the connection's lifetime.
    let handshake = Box::pin(tokio::time::timeout(timeout, acceptor.accept(stream)));
    let tls_stream = match handshake.await {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    Box::pin(serve_connection(
        tls_stream, peer, true, shared, builders, watchdog,
    ))
    .await
}

/// The HTTP/2 connection preface a prior-knowledge (or ALPN h2) client starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve one client connection. Until the client sends its first bytes, and again whenever
/// an HTTP/1 connection is parked (see [`Watchdog`]), the task holds only the socket and the
/// connection context: hyper's state (two 8 KiB buffers and the request future) exists only
/// while the connection is in use.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    https: bool,
    shared: &Arc<Shared>,
    builders: &Builders,
    watchdog: &Watchdog,
) where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`: apps and trust rules
    // see them as the IPv4 addresses they are.
    let ip = peer.ip().to_canonical();
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        client_ip: HeaderValue::from_str(&ip.to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
        trusted_peer: shared.settings.is_trusted(ip),
        https,
        activity: ConnActivity::default(),
    });
    let mut io = FramingGuard::new(io, ctx.clone());
    let _watched = watchdog.watch(ctx.clone());
    let h2 = match sniff_protocol(&ctx, &mut io).await {
        Ok(Some(h2)) => h2,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "client connection ended before a request");
            return;
        }
    };
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| handle(service_ctx.clone(), req).map(Ok::<_, Infallible>));
    if h2 {
        ctx.activity.http2.store(true, Ordering::Relaxed);
        // Boxed: an HTTP/2 connection's state would otherwise size every connection's future.
        let mut conn = Box::pin(builders.http2.serve_connection(TokioIo::new(io), service));
        let step = drive(&ctx, conn.as_mut(), |c| c.graceful_shutdown(), false).await;
        log_end(peer, step);
        return;
    }
    loop {
        // Boxed: taken apart (by value) when the connection parks.
        let mut conn = Box::new(
            builders
                .http1
                .serve_connection(TokioIo::new(io), service.clone())
                .with_upgrades(),
        );
        let step = drive(&ctx, Pin::new(&mut *conn), |c| c.graceful_shutdown(), true).await;
        let parts = match step {
            Step::Parked => conn.into_parts(),
            other => {
                log_end(peer, other);
                return;
            }
        };
        let Some(parts) = parts else {
            return;
        };
        PARKED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed);
        io = parts.io.into_inner();
        io.release();
        if !parts.read_buf.is_empty() {
            io.set_replay(&parts.read_buf);
        }
        drop(parts.read_buf);
        if !io.has_replay() {
            let parked = &shared.parked_client_connections;
            parked.fetch_add(1, Ordering::Relaxed);
            let woke = wait_readable(&ctx, &mut io).await;
            parked.fetch_sub(1, Ordering::Relaxed);
            if !woke {
                return;
            }
        }
    }
}

fn log_end(peer: SocketAddr, step: Step) {
    match step {
        Step::Ended(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client connection ended with error")
        }
        Step::Cut => {
            tracing::debug!(%peer, "client connection cut (idle, or request head too slow)")
        }
        Step::Ended(Ok(())) | Step::Parked => {}
    }
}

/// Read the first bytes (up to the HTTP/2 preface's length, stopping at the first byte that
/// differs from it) into the replay buffer: `Some(true)` for HTTP/2, `Some(false)` for
/// HTTP/1, `None` if the client closed or was cut before sending anything.
async fn sniff_protocol<I>(
    ctx: &ConnContext,
    io: &mut FramingGuard<I>,
) -> std::io::Result<Option<bool>>
where
    I: AsyncRead + Unpin,
{
    ctx.activity.set_parked(true);
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let result = std::future::poll_fn(|cx| loop {
        if ctx.activity.close_requested(cx.waker()) != Close::No {
            return Poll::Ready(Ok(None));
        }
        let mut read = ReadBuf::new(&mut buf[filled..]);
        std::task::ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok((filled > 0).then_some(false)));
        }
        let end = filled + n;
        if buf[filled..end] != H2_PREFACE[filled..end] {
            filled = end;
            return Poll::Ready(Ok(Some(false)));
        }
        filled = end;
        if filled == H2_PREFACE.len() {
            return Poll::Ready(Ok(Some(true)));
        }
    })
    .await;
    ctx.activity.set_parked(false);
    io.set_replay(&buf[..filled]);
    result
}

/// Wait, holding no HTTP state, until the client sends again (true) or the connection is asked
/// to close (false; an idle connection closes at once, gracefully unless cut).
async fn wait_readable<I>(ctx: &ConnContext, io: &mut FramingGuard<I>) -> bool
where
    I: AsyncWrite + ReadReady + Unpin,
{
    ctx.activity.set_parked(true);
    let woke = std::future::poll_fn(|cx| {
        match ctx.activity.close_requested(cx.waker()) {
            Close::No => {}
            level => return Poll::Ready(Some(level)),
        }
        io.poll_read_ready(cx).map(|_| None)
    })
    .await;
    ctx.activity.set_parked(false);
    match woke {
        None => true,
        Some(level) => {
            if level == Close::Graceful {
                // Nothing is buffered: this completes at once (or is skipped).
                let _ = tokio::io::AsyncWriteExt::shutdown(io).now_or_never();
            }
            false
        }
    }
}

/// How driving a hyper connection ended.
enum Step {
    /// hyper finished (the client closed, an error, an upgrade, a graceful close).
    Ended(Result<(), hyper::Error>),
    /// The watchdog cut the connection.
    Cut,
    /// hyper closed the idle HTTP/1 connection on request, leaving the socket open.
    Parked,
}

/// Drive a hyper connection, applying the watchdog's close requests and the HTTP/1 response
/// deadline. With `parkable`, a park request from the watchdog is tried when the connection
/// looks idle: hyper is asked for a graceful shutdown, which it completes at once (without a
/// byte moving) only when it is really between requests; the shutdown is then kept from the
/// socket and the connection parks. If hyper was busy after all, it closes the connection after
/// the exchange under way, like any graceful close.
async fn drive<C>(
    ctx: &ConnContext,
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    parkable: bool,
) -> Step
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let activity = &ctx.activity;
    let mut closing = false;
    let mut response_timer = ResponseTimer::default();
    std::future::poll_fn(|cx| {
        match activity.close_requested(cx.waker()) {
            Close::No => {}
            Close::Graceful => {
                if !closing {
                    graceful(conn.as_mut());
                    closing = true;
                }
            }
            Close::Now => return Poll::Ready(Step::Cut),
        }
        // Before polling the connection, so a timed-out request sees it in this very poll.
        response_timer.check(activity, cx);
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Step::Ended(result));
        }
        if parkable && activity.take_park_request() && !closing && activity.looks_idle() {
            let io = &activity.io;
            io.swallowed.store(false, Ordering::Relaxed);
            io.parking.store(true, Ordering::Relaxed);
            graceful(conn.as_mut());
            let polled = conn.as_mut().poll(cx);
            let clean = io.parking.swap(false, Ordering::Relaxed);
            let swallowed = io.swallowed.load(Ordering::Relaxed);
            match polled {
                Poll::Ready(Ok(())) if clean && swallowed => return Poll::Ready(Step::Parked),
                Poll::Ready(result) => return Poll::Ready(Step::Ended(result)),
                Poll::Pending => closing = true,
            }
        }
        Poll::Pending
    })
    .await
}

/// The connection's timer for HTTP/1 response deadlines ([`ConnActivity`]): created on the
/// first request, then moved forward per request, which tokio does without touching its timer
/// wheel until the old deadline comes round.
#[derive(Default)]
struct ResponseTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline the timer is armed for (0: none).
    armed: u64,
}

impl ResponseTimer {
    fn check(&mut self, activity: &ConnActivity, cx: &mut std::task::Context<'_>) {
        let deadline = activity.response_deadline();
        if deadline == 0 {
            return;
        }
        if deadline != self.armed {
            self.armed = deadline;
            let at = crate::body::deadline_epoch() + Duration::from_micros(deadline);
            let at = tokio::time::Instant::from_std(at);
            match self.sleep.as_mut() {
                Some(sleep) => {
                    // A timer that has not fired keeps this task's waker across a reset.
                    let registered = !sleep.is_elapsed();
                    sleep.as_mut().reset(at);
                    if registered {
                        return;
                    }
                }
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        } else if self.sleep.as_ref().is_some_and(|s| !s.is_elapsed()) {
            // Armed and registered with this task at the first poll: nothing to do.
            return;
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                activity.mark_response_timed_out();
            }
        }
    }
}

/// How often the watchdog looks for HTTP/1 connections to park: one idle for a whole period
/// (between 0.5 and 1 s without a request) drops its hyper state until the client sends again.
/// Rebuilding that state costs a few microseconds, so only connections idle this long pay it.
const PARK_TICK: Duration = Duration::from_millis(500);

/// Connections parked (on any listener) since freed heap was last handed back to the kernel.
static PARKED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);

/// Parks (about 16 KiB of hyper buffers freed each) worth handing freed heap back for.
const TRIM_AFTER_PARKS: usize = 64;

/// glibc keeps freed heap resident unless it borders the top of the heap, and the buffers of
/// parked connections sit between the small allocations of connections that stay open: after
/// enough parks, ask it to return whole free pages to the kernel (`madvise`), so idle
/// connections stop counting in the RSS. At most once per park sweep; it walks the free lists
/// only, with nothing to do on other allocators or platforms.
fn release_freed_heap() {
    if PARKED_SINCE_TRIM.load(Ordering::Relaxed) < TRIM_AFTER_PARKS {
        return;
    }
    PARKED_SINCE_TRIM.store(0, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One task per listener closes connections that sat idle (or sent a request head too slowly)
/// for too long, and closes them all gracefully at shutdown: cheaper than a timer per
/// connection (and far cheaper than one per request), and nothing to poll per request.
///
/// A connection counts as idle while no request is open and none finished since the last look.
/// An HTTP/1 connection idle for `header_read_timeout` (waiting for, or slowly receiving, a
/// request head) or `idle_timeout`, whichever is shorter, is closed; an HTTP/2 connection after
/// `idle_timeout`. Checks run every half of the shortest timeout, so a connection is closed
/// gracefully between one and one and a half timeouts after its last activity, and dropped at
/// the next check if it is still there and still idle (e.g. a slowloris head never completes).
struct Watchdog {
    h1_timeout: Duration,
    h2_timeout: Duration,
    every: Duration,
    state: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    stopping: bool,
    slots: Vec<Option<WatchedConn>>,
    free: Vec<usize>,
}

struct WatchedConn {
    conn: Arc<ConnContext>,
    last_marker: Option<u64>,
    /// The idle marker at the last park sweep.
    park_marker: Option<u64>,
    idle_since: Instant,
    /// A graceful close was requested for idleness.
    asked: bool,
}

/// Removes a connection from the watchdog when its task ends.
struct WatchGuard<'a> {
    watchdog: &'a Watchdog,
    slot: usize,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.watchdog.lock();
        state.slots[self.slot] = None;
        state.free.push(self.slot);
    }
}

impl Watchdog {
    fn new(settings: &crate::spec::ProxySettings) -> Self {
        let h1_timeout = settings.header_read_timeout.min(settings.idle_timeout);
        let h2_timeout = settings.idle_timeout;
        Self {
            h1_timeout,
            h2_timeout,
            every: (h1_timeout.min(h2_timeout) / 2).max(Duration::from_millis(1)),
            state: Mutex::new(Watched::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, conn: Arc<ConnContext>) -> WatchGuard<'_> {
        let mut state = self.lock();
        if state.stopping {
            conn.activity.request_close(Close::Graceful);
        }
        let entry = WatchedConn {
            last_marker: conn.activity.idle_marker(),
            park_marker: None,
            conn,
            idle_since: Instant::now(),
            asked: false,
        };
        let slot = match state.free.pop() {
            Some(slot) => {
                state.slots[slot] = Some(entry);
                slot
            }
            None => {
                state.slots.push(Some(entry));
                state.slots.len() - 1
            }
        };
        WatchGuard {
            watchdog: self,
            slot,
        }
    }

    /// Close every connection gracefully (the listener is shutting down).
    fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        for entry in state.slots.iter().flatten() {
            entry.conn.activity.request_close(Close::Graceful);
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        for entry in state.slots.iter_mut().flatten() {
            let activity = &entry.conn.activity;
            let marker = activity.idle_marker();
            if marker.is_none() || marker != entry.last_marker {
                entry.last_marker = marker;
                entry.idle_since = now;
                entry.asked = false;
                continue;
            }
            let timeout = if activity.http2.load(Ordering::Relaxed) {
                self.h2_timeout
            } else {
                self.h1_timeout
            };
            if now.duration_since(entry.idle_since) >= timeout {
                let level = if entry.asked {
                    Close::Now
                } else {
                    Close::Graceful
                };
                entry.asked = true;
                activity.request_close(level);
            }
        }
    }

    /// Ask HTTP/1 connections that stayed idle since the last park sweep (no request open,
    /// none finished) to park.
    fn park_sweep(&self) {
        release_freed_heap();
        let mut state = self.lock();
        for entry in state.slots.iter_mut().flatten() {
            let activity = &entry.conn.activity;
            let marker = activity.idle_marker();
            if marker.is_some()
                && marker == entry.park_marker
                && !activity.http2.load(Ordering::Relaxed)
            {
                activity.request_park();
            }
            entry.park_marker = marker;
        }
    }

    async fn run(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut park_ticks = tokio::time::interval(PARK_TICK);
        park_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => self.sweep(),
                _ = park_ticks.tick() => self.park_sweep(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::{Backend, ProxyHandle, ProxySettings, RouteSpec};

    /// An upstream answering `<path> <request body length>`.
    async fn upstream() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!(
                                "{path} {}",
                                body.len()
                            )))))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// A proxy routing `app.localhost` to a fresh [`upstream`].
    async fn routed(settings: ProxySettings) -> ProxyHandle {
        let up = upstream().await;
        let handle = ProxyHandle::new(settings);
        handle
            .replace(vec![RouteSpec::upstream(
                "r",
                vec!["app.localhost".into()],
                vec![Backend::new("b", up)],
            )])
            .unwrap();
        handle
    }

    async fn proxy(settings: ProxySettings) -> (ProxyHandle, std::net::SocketAddr) {
        let handle = routed(settings).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(super::serve(
            listener,
            handle.clone(),
            std::future::pending(),
        ));
        (handle, addr)
    }

    fn parked(handle: &ProxyHandle) -> i64 {
        handle
            .shared
            .parked_client_connections
            .load(Ordering::Relaxed)
    }

    async fn until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check()
    }

    /// Read one response (status line + body, by its Content-Length).
    async fn response<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> (u16, String) {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed mid-response");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return (status, body);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("response timed out")
                .unwrap();
            assert!(n > 0, "closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: app.localhost\r\n\r\n";

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        buf: &mut Vec<u8>,
        request: &[u8],
    ) -> (u16, String) {
        stream.write_all(request).await.unwrap();
        response(stream, buf).await
    }

    #[tokio::test]
    async fn idle_http1_connection_parks_and_serves_what_comes_next() {
        let (handle, addr) = proxy(ProxySettings::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            exchange(&mut s, &mut buf, GET_A).await,
            (200, "/a 0".into())
        );
        assert!(
            until(Duration::from_secs(3), || parked(&handle) == 1).await,
            "never parked"
        );

        // Pipelined requests in one write, right after the park.
        let both = [GET_A, GET_B].concat();
        s.write_all(&both).await.unwrap();
        assert_eq!(response(&mut s, &mut buf).await, (200, "/a 0".into()));
        assert_eq!(response(&mut s, &mut buf).await, (200, "/b 0".into()));
        assert_eq!(parked(&handle), 0);
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);

        // A head arriving in pieces.
        s.write_all(b"GET /split HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            exchange(&mut s, &mut buf, b"st: app.localhost\r\n\r\n").await,
            (200, "/split 0".into())
        );
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);

        // A request with a body, then smuggling is still caught on the same connection.
        let post = b"POST /p HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(exchange(&mut s, &mut buf, post).await, (200, "/p 5".into()));
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);
        let smuggled = b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (status, _) = exchange(&mut s, &mut buf, smuggled).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn busy_connections_do_not_park_and_idle_parked_ones_still_close() {
        let settings = ProxySettings {
            header_read_timeout: Duration::from_millis(1500),
            ..ProxySettings::default()
        };
        let (handle, addr) = proxy(settings).await;
        // A connection sending a request every 100 ms never looks idle for a park period.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..15 {
            assert_eq!(exchange(&mut busy, &mut buf, GET_A).await.0, 200);
            assert_eq!(parked(&handle), 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(busy);

        // A parked connection is still closed by the idle (header read) timeout.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(exchange(&mut idle, &mut buf, GET_A).await.0, 200);
        let started = tokio::time::Instant::now();
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);
        let mut byte = [0u8; 1];
        let eof = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte)).await;
        assert!(
            matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
            "parked connection stayed open"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "closed too early"
        );
        assert!(until(Duration::from_secs(1), || parked(&handle) == 0).await);
    }

    #[tokio::test]
    async fn shutdown_closes_parked_connections_at_once() {
        let handle = routed(ProxySettings::default()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve(listener, handle.clone(), async {
            let _ = stopped.await;
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(exchange(&mut s, &mut buf, GET_A).await.0, 200);
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);
        let _ = stop.send(());
        let mut byte = [0u8; 1];
        let eof = tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await;
        assert!(
            matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
            "parked connection not closed"
        );
        let done = tokio::time::timeout(Duration::from_secs(2), server).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "listener did not finish");
    }

    /// A connection's task and its boxed state live as long as the connection, idle or not:
    /// they must not grow back to hold HTTP/2 or TLS handshake state (2 KB and 1.4 KB before).
    #[tokio::test]
    async fn per_connection_futures_stay_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = ProxyHandle::new(ProxySettings::default());
        let builders = super::builders(&handle.shared.settings, false);
        let watchdog = super::Watchdog::new(&handle.shared.settings);
        let stream = TcpStream::connect(addr).await.unwrap();
        let task = super::accept_one(stream, addr, &handle.shared, &builders, &watchdog, None);
        assert!(
            std::mem::size_of_val(&task) <= 256,
            "{}",
            std::mem::size_of_val(&task)
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let config = crate::tls::server_config(handle.shared.certs.clone()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = super::handshake_then_serve(
            stream,
            acceptor,
            addr,
            &handle.shared,
            &builders,
            &watchdog,
        );
        assert!(
            std::mem::size_of_val(&tls) <= 256,
            "{}",
            std::mem::size_of_val(&tls)
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        let conn =
            super::serve_connection(stream, addr, false, &handle.shared, &builders, &watchdog);
        assert!(
            std::mem::size_of_val(&conn) <= 1024,
            "{}",
            std::mem::size_of_val(&conn)
        );
    }

    #[tokio::test]
    async fn tls_connection_parks_and_serves_its_next_request() {
        let handle = routed(ProxySettings::default()).await;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app.localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        handle
            .set_certificates(vec![crate::CertificatePem {
                domain: "app.localhost".into(),
                cert_chain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }])
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(super::serve_tls(
            listener,
            handle.clone(),
            std::future::pending(),
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("app.localhost").unwrap();
        let mut s = connector.connect(name, tcp).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            exchange(&mut s, &mut buf, GET_A).await,
            (200, "/a 0".into())
        );
        assert!(
            until(Duration::from_secs(3), || parked(&handle) == 1).await,
            "never parked"
        );
        assert_eq!(
            exchange(&mut s, &mut buf, GET_B).await,
            (200, "/b 0".into())
        );
        assert!(until(Duration::from_secs(3), || parked(&handle) == 1).await);
        assert_eq!(
            exchange(&mut s, &mut buf, GET_A).await,
            (200, "/a 0".into())
        );
    }
}
