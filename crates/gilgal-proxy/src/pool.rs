//! Per-backend pool of HTTP/1.1 keep-alive connections, and the hyper client path that
//! upgrade requests (WebSockets) still take.
//!
//! A proxy talks to few backends over many requests, so a LIFO stack of idle connections per
//! backend is all the pooling it needs: no per-request task spawn, no shared authority-keyed
//! map. A connection goes back to the stack only after its response ended cleanly (see
//! [`crate::exchange`]); one that died while idle is noticed when taken, without a system call
//! in the common case.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::Signal;
use crate::body::{BoxError, UpstreamBody};
use crate::exchange::UpstreamConn;
use crate::h1::ResponseError;

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Reading from or writing to the open connection failed.
    #[error("upstream connection: {0}")]
    Io(#[source] std::io::Error),
    /// The backend closed the connection without sending a byte of an answer.
    #[error("the backend closed the connection before answering")]
    Closed,
    /// The backend's answer is not valid HTTP/1.1.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The backend closed the connection before the (buffered) response body was complete.
    #[error("the backend closed the connection in the middle of the response body")]
    TruncatedBody,
    /// The client's request body failed (too large, or the client went away).
    #[error("request body: {0}")]
    Body(#[source] BoxError),
    /// The hyper client exchange of an upgrade request failed after the connection was open.
    #[error("upstream exchange: {0}")]
    Http(#[from] hyper::Error),
    /// There was no request to send (a caller bug; reported instead of panicking).
    #[error("no request to send")]
    NoRequest,
}

impl UpstreamError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// The connection was dead (reset, closed) before any answer: a pooled connection that the
    /// backend closed while it idled, typically.
    pub(crate) fn is_dead_connection(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Closed)
    }
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// Idle keep-alive connections to one backend.
pub(crate) struct ConnPool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ConnPool {
    pub(crate) fn new(addr: SocketAddr, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently returned live connection; `now` is a recent instant (the request's
    /// start) rather than a fresh clock read.
    pub(crate) fn take_idle(&self, now: Instant) -> Option<UpstreamConn> {
        loop {
            let mut entry = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            let age = now.saturating_duration_since(entry.since);
            if age < self.idle_timeout && entry.conn.is_reusable_after_idle() {
                return Some(entry.conn);
            }
        }
    }

    /// Return a connection whose response finished cleanly, for the next request.
    pub(crate) fn put_back(&self, conn: UpstreamConn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Open a new connection to the backend (Nagle off: heads and bodies go out at once).
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<TcpStream, UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            addr: self.addr,
            source,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_err(e)),
            Err(_) => {
                return Err(connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Send an upgrade request over hyper's client on a fresh, never-pooled connection,
    /// returning the response (a 101 carries the upgrade for the tunnel). On failure the
    /// request is back in `req` if none of it was sent.
    pub(crate) async fn send_upgrade(
        &self,
        req: &mut Option<Request<UpstreamBody>>,
        connect_timeout: Duration,
        cut: &Signal,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Boxed: upgrades are rare, and this future would otherwise grow every request's.
        let stream = Box::pin(self.connect(connect_timeout)).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // Past a drain deadline the backend's connections are dropped: a request waiting on
        // one fails at once and is answered 504 by the caller.
        tokio::spawn(run_until_cut(conn.with_upgrades(), cut.clone()));
        let Some(request) = req.take() else {
            return Err(UpstreamError::NoRequest);
        };
        match sender.try_send_request(request).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                *req = e.take_message();
                Err(UpstreamError::Http(e.into_error()))
            }
        }
    }
}
/// Drive an upstream connection until it ends or `cut` fires (checked cheaply on every wake-up
/// of a busy connection, see [`crate::backend::SignalWatch`]).
async fn run_until_cut<C: Future>(conn: C, cut: Signal) {
    let mut cut = cut.watch();
    tokio::pin!(conn);
    std::future::poll_fn(|cx| {
        if cut.poll_fired(cx) {
            return Poll::Ready(());
        }
        conn.as_mut().poll(cx).map(drop)
    })
    .await;
}
