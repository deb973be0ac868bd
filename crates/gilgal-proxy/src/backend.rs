//! Live state of one upstream instance: in-flight count, passive ejection and draining.
//!
//! The state outlives routing tables (the handle keeps a registry by backend id), so a table swap
//! neither resets connection counts nor loses track of requests that a drain must wait for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::pool::ConnPool;
use crate::spec::ProxySettings;

/// Shared, mutable state of one backend instance.
#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) id: Arc<str>,
    pub(crate) addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` until which the backend is avoided (0 = healthy).
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    draining: AtomicBool,
    idle: Notify,
    /// Fired when a drain deadline passes: in-flight requests answer 504, tunnels close.
    pub(crate) cut: Signal,
    /// Fired when a drain begins (the instance is about to stop): WebSocket tunnels close
    /// gracefully with 1001 Going Away instead of waiting for `cut`. Requests are unaffected.
    pub(crate) going_away: Signal,
    /// Idle keep-alive connections to this instance.
    pub(crate) pool: ConnPool,
}

impl BackendState {
    pub(crate) fn new(id: Arc<str>, addr: SocketAddr, settings: &ProxySettings) -> Self {
        Self {
            pool: ConnPool::new(
                addr,
                settings.upstream_max_idle_per_backend,
                settings.upstream_idle_timeout,
            ),
            id,
            addr,
            in_flight: AtomicUsize::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            cut: Signal::default(),
            going_away: Signal::default(),
        }
    }

    /// Requests (and tunnels) currently using this backend.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// False while the backend is passively ejected after a connection failure.
    pub(crate) fn is_available(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// Avoid this backend for `period` (it refused or timed out a connection).
    pub(crate) fn eject(&self, period: Duration) {
        let until = self.now_ms() + u64::try_from(period.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Mark the backend as leaving: it is already out of the table, this only arms drain waits.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.idle.notify_waiters();
    }

    /// Put a drained backend back in service (it re-appeared in a table).
    pub(crate) fn stop_draining(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    /// True once the instance was told to go away or cut: it must not be routed to again, so a
    /// route naming it gets a fresh state instead.
    pub(crate) fn is_retired(&self) -> bool {
        self.going_away.is_fired() || self.cut.is_fired()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Wait until nothing is in flight; returns immediately if already idle.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A one-way, clonable signal (drain began, drain deadline passed): a cancellation token to
/// await, plus a flag that is cheap to read on every poll (`CancellationToken::is_cancelled`
/// takes a lock).
#[derive(Debug, Default, Clone)]
pub(crate) struct Signal {
    fired: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Signal {
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes when the signal fires (borrowed, so it costs no allocation; register it once
    /// and read [`Signal::is_fired`] on later polls, as [`SignalWatch`] does).
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A watcher for polling the signal from one task many times over.
    pub(crate) fn watch(&self) -> SignalWatch {
        SignalWatch {
            signal: self.clone(),
            wait: Box::pin(self.token.clone().cancelled_owned()),
            registered: false,
        }
    }
}

/// Polls a [`Signal`] cheaply: the task's waker is registered with the token once, later polls
/// only read the flag. (A task's waker stays valid for the task's life, so one registration
/// is enough to be woken when the signal fires.)
pub(crate) struct SignalWatch {
    signal: Signal,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    registered: bool,
}

impl SignalWatch {
    /// True once the signal fired; otherwise the task will be woken when it does.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.signal.is_fired() {
            return true;
        }
        if !self.registered {
            if self.wait.as_mut().poll(cx).is_ready() {
                return true;
            }
            self.registered = true;
        }
        false
    }
}

/// Counts one request against a backend for as long as it lives (RAII).
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    backend: Arc<BackendState>,
}

impl InFlightGuard {
    pub(crate) fn new(backend: Arc<BackendState>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        Self { backend }
    }

    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let before = self.backend.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.backend.draining.load(Ordering::SeqCst) {
            self.backend.idle.notify_waiters();
        }
    }
}

/// Power-of-two-choices over the candidates: pick two at random, keep the less loaded one.
/// Ejected backends are skipped unless every candidate is ejected.
pub(crate) fn pick_backend<'a>(
    candidates: &'a [Arc<BackendState>],
    exclude: Option<&BackendState>,
) -> Option<&'a Arc<BackendState>> {
    let usable = |b: &&Arc<BackendState>| {
        b.is_available() && exclude.is_none_or(|e| !std::ptr::eq(e, b.as_ref()))
    };
    match candidates.len() {
        0 => None,
        1 => {
            let only = &candidates[0];
            exclude
                .is_none_or(|e| !std::ptr::eq(e, only.as_ref()))
                .then_some(only)
        }
        n => {
            let a = &candidates[fast_random(n)];
            let mut b = &candidates[fast_random(n)];
            if std::ptr::eq(a, b) {
                b = &candidates[(fast_random(n - 1) + 1 + index_of(candidates, a)) % n];
            }
            let pick = match (usable(&a), usable(&b)) {
                (true, true) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
                (true, false) => Some(a),
                (false, true) => Some(b),
                (false, false) => None,
            };
            pick.or_else(|| candidates.iter().find(usable)).or_else(|| {
                candidates
                    .iter()
                    .find(|b| exclude.is_none_or(|e| !std::ptr::eq(e, b.as_ref())))
            })
        }
    }
}

fn index_of(candidates: &[Arc<BackendState>], item: &Arc<BackendState>) -> usize {
    candidates
        .iter()
        .position(|c| std::ptr::eq(c, item))
        .unwrap_or(0)
}

/// Uniform index in `0..n` from a thread-local xorshift generator (cheap; not for secrets).
pub(crate) fn fast_random(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        // Multiply-shift maps the 64-bit value onto 0..n without modulo bias worth caring about.
        ((u128::from(x) * n as u128) >> 64) as usize
    })
}
