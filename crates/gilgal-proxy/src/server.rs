//! Listeners: accept loops for plain HTTP (HTTP/1.1 + h2c) and TLS (ALPN h2 + http/1.1), with
//! slowloris/idle protection per connection and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::body::ConnActivity;
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

fn connection_builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let settings = &shared.settings;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_request_head_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(settings.max_request_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn run(
    listener: TcpListener,
    handle: ProxyHandle,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsAcceptor>,
) -> Result<(), ProxyError> {
    let shared = handle.shared.clone();
    let builder = Arc::new(connection_builder(&shared));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
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
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            shared
                .open_client_connections
                .fetch_add(1, Ordering::Relaxed);
            accept_one(stream, peer, &shared, &builder, stop, tls).await;
            shared
                .open_client_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
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
    stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    // Each branch is boxed so a plain connection's task is not sized for the TLS state.
    match tls {
        None => Box::pin(serve_connection(stream, peer, false, shared, builder, stop)).await,
        Some(acceptor) => {
            let timeout = shared.settings.tls_handshake_timeout;
            let handshake = Box::pin(tokio::time::timeout(timeout, acceptor.accept(stream)));
            match handshake.await {
                Ok(Ok(tls_stream)) => {
                    Box::pin(serve_connection(
                        tls_stream, peer, true, shared, builder, stop,
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
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity::default());
    let smuggling = Arc::new(AtomicBool::new(false));
    let io = FramingGuard::new(io, smuggling.clone());
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        client_ip: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
        https,
        activity: activity.clone(),
        smuggling,
    });
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_timeout = shared.settings.idle_timeout;
    // Checked every half timeout: a connection is closed once it has been seen with no open
    // request and the same finished count for a whole timeout.
    let check_every = idle_timeout / 2;
    let idle_check = tokio::time::sleep(check_every);
    tokio::pin!(idle_check);
    let mut last_marker: Option<u64> = None;
    let mut idle_since = tokio::time::Instant::now();
    let mut closing = false;
    let mut stop_open = !*stop.borrow();
    if !stop_open {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "client connection ended with error");
                }
                break;
            }
            changed = stop.changed(), if stop_open => {
                stop_open = false;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = &mut idle_check, if !closing => {
                let now = tokio::time::Instant::now();
                let marker = activity.idle_marker();
                if marker.is_none() || marker != last_marker {
                    last_marker = marker;
                    idle_since = now;
                } else if now.duration_since(idle_since) >= idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                idle_check.as_mut().reset(now + check_every);
            }
        }
    }
}
