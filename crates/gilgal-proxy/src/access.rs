//! Access log: one [`AccessLogEntry`] per routed request, handed to whoever installed a sink
//! with [`crate::ProxyHandle::set_access_log`]. The request path never waits for the sink: when
//! its queue is full the entry is dropped and counted ([`crate::ProxyHandle::access_log_dropped`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// One request the proxy answered for a route, logged when the response head is ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessLogEntry {
    /// The route's id (`RouteSpec::id`).
    pub route: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Host the client asked for.
    pub host: String,
    /// Status sent to the client.
    pub status: u16,
    /// Time until the response head was ready.
    pub duration: Duration,
    /// Client address.
    pub client: String,
}

/// The installed sink and its drop counter.
#[derive(Debug, Default)]
pub(crate) struct AccessLog {
    pub sink: arc_swap::ArcSwapOption<mpsc::Sender<AccessLogEntry>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    pub(crate) fn enabled(&self) -> bool {
        self.sink.load().is_some()
    }

    pub(crate) fn send(&self, entry: AccessLogEntry) {
        if let Some(sink) = self.sink.load().as_ref() {
            if sink.try_send(entry).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
