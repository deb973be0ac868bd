//! Per-backend pool of HTTP/1.1 keep-alive connections, built on hyper's low-level client.
//!
//! A proxy talks to few backends over many requests, so a LIFO stack of ready `SendRequest`
//! handles per backend is all the pooling it needs: no per-request task spawn, no shared
//! authority-keyed map. A connection goes back to the stack only after its response body ended
//! cleanly; a request that a reused connection could not send is handed back by hyper and
//! re-sent on a fresh connection.

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
use crate::body::UpstreamBody;

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The exchange failed after the connection was open.
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
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
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

/// A connection lent to one request; give it back with [`ConnPool::put_back`].
pub(crate) struct Lease {
    sender: http1::SendRequest<UpstreamBody>,
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
    fn take_idle(&self, now: Instant) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            let age = now.saturating_duration_since(entry.since);
            if entry.sender.is_ready() && age < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Return a connection whose response finished cleanly, for the next request.
    pub(crate) fn put_back(&self, lease: Lease) {
        if lease.sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender: lease.sender,
            since: Instant::now(),
        });
    }

    async fn connect(
        &self,
        timeout: Duration,
        upgrades: bool,
        cut: &Signal,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // Past a drain deadline the backend's connections are dropped: requests waiting on
        // them fail at once and are answered 504 by the caller.
        let cut = cut.clone();
        if upgrades {
            tokio::spawn(run_until_cut(conn.with_upgrades(), cut));
        } else {
            tokio::spawn(run_until_cut(conn, cut));
        }
        Ok(sender)
    }

    /// Send the request in `req` on a pooled connection (or a new one; `now` is a recent
    /// instant for the idle check), returning the response
    /// and the lease to give back once the response body is done. On failure the request is
    /// back in `req` if none of it was sent (safe to retry, body included). Upgrade requests
    /// always use a fresh, never-pooled connection.
    pub(crate) async fn send(
        &self,
        now: Instant,
        req: &mut Option<Request<UpstreamBody>>,
        connect_timeout: Duration,
        upgrade: bool,
        cut: &Signal,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        if !upgrade {
            while let Some(mut sender) = self.take_idle(now) {
                let Some(request) = req.take() else {
                    return Err(UpstreamError::NoRequest);
                };
                match sender.try_send_request(request).await {
                    Ok(resp) => return Ok((resp, Lease { sender })),
                    Err(mut e) => match e.take_message() {
                        // Never written (the connection died while idle): try another one.
                        Some(unsent) => *req = Some(unsent),
                        None => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
        }
        // Boxed: connecting is rare on a warm pool, and its future would otherwise grow every
        // request's future.
        let mut sender = Box::pin(self.connect(connect_timeout, upgrade, cut)).await?;
        let Some(request) = req.take() else {
            return Err(UpstreamError::NoRequest);
        };
        match sender.try_send_request(request).await {
            Ok(resp) => Ok((resp, Lease { sender })),
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
