//! Listeners: accept loops for plain HTTP (HTTP/1.1 + h2c) and TLS (ALPN h2 + http/1.1), with
//! slowloris/idle protection per connection and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::body::{Close, ConnActivity};
use crate::error::ProxyError;
use crate::framing::FramingGuard;
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

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper timer for HTTP/1: its header read timeout arms (and allocates) a timer for every
    // request. The per-listener watchdog enforces `header_read_timeout` instead.
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

fn configure(builder: &mut auto::Builder<TokioExecutor>, settings: &crate::spec::ProxySettings) {
    builder
        .http1()
        .max_buf_size(settings.max_request_head_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(u32::try_from(settings.max_request_head_bytes).unwrap_or(u32::MAX));
}

async fn run(
    listener: TcpListener,
    handle: ProxyHandle,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsAcceptor>,
) -> Result<(), ProxyError> {
    let shared = handle.shared.clone();
    let mut builder = connection_builder();
    configure(&mut builder, &shared.settings);
    if tls.is_some() {
        // rustls encrypts into its own buffer anyway (and allocates a slice list for every
        // vectored write): hand it one flat buffer per write instead.
        builder.http1().writev(false);
    }
    let builder = Arc::new(builder);
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
        let builder = builder.clone();
        let watchdog = watchdog.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            shared
                .open_client_connections
                .fetch_add(1, Ordering::Relaxed);
            accept_one(stream, peer, &shared, &builder, &watchdog, tls).await;
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
    builder: &auto::Builder<TokioExecutor>,
    watchdog: &Watchdog,
    tls: Option<TlsAcceptor>,
) {
    // Each branch is boxed so a plain connection's task is not sized for the TLS state.
    match tls {
        None => {
            Box::pin(serve_connection(
                stream, peer, false, shared, builder, watchdog,
            ))
            .await
        }
        Some(acceptor) => {
            let timeout = shared.settings.tls_handshake_timeout;
            let handshake = Box::pin(tokio::time::timeout(timeout, acceptor.accept(stream)));
            match handshake.await {
                Ok(Ok(tls_stream)) => {
                    Box::pin(serve_connection(
                        tls_stream, peer, true, shared, builder, watchdog,
                    ))
                    .await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    https: bool,
    shared: &Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    watchdog: &Watchdog,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        client_ip: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
        https,
        activity: ConnActivity::default(),
    });
    let io = FramingGuard::new(io, ctx.clone());
    let _watched = watchdog.watch(ctx.clone());
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| handle(service_ctx.clone(), req).map(Ok::<_, Infallible>));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut response_timer = ResponseTimer::default();
    let result = std::future::poll_fn(|cx| {
        match ctx.activity.close_requested(cx.waker()) {
            Close::No => {}
            Close::Graceful => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            Close::Now => return Poll::Ready(None),
        }
        // Before polling the connection, so a timed-out request sees it in this very poll.
        response_timer.check(&ctx.activity, cx);
        conn.as_mut().poll(cx).map(Some)
    })
    .await;
    match result {
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "client connection ended with error"),
        None => tracing::debug!(%peer, "client connection cut (idle, or request head too slow)"),
        Some(Ok(())) => {}
    }
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

    async fn run(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => self.sweep(),
            }
        }
    }
}
