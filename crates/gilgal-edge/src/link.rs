//! [`EdgeLink`]: the one handle the control plane holds on the edge, wherever it runs.

use std::time::Duration;

use gilgal_proxy::{
    AccessLogEntry, CertificatePem, DrainOutcome, MetricsSnapshot, ProxyHandle, RouteDiff,
    RouteSpec,
};

use crate::{EdgeClient, EdgeError};

/// How long the access log forwarder waits before reconnecting to a restarted edge.
const ACCESS_RECONNECT: Duration = Duration::from_millis(500);

/// The control plane's handle on the edge: the proxy in this process, or the edge process
/// (which outlives this one). Cheap to clone.
#[derive(Debug, Clone)]
pub enum EdgeLink {
    /// The proxy runs inside this process (tests, `gilgal server --edge in-process`).
    InProcess(ProxyHandle),
    /// The proxy runs in the edge process behind this admin client.
    Process(EdgeClient),
}

impl From<ProxyHandle> for EdgeLink {
    fn from(proxy: ProxyHandle) -> Self {
        Self::InProcess(proxy)
    }
}

impl EdgeLink {
    /// Applies a route diff atomically (all of it or, refused, none).
    pub async fn apply(&self, diff: RouteDiff) -> Result<(), EdgeError> {
        match self {
            Self::InProcess(proxy) => Ok(proxy.apply(diff)?),
            Self::Process(edge) => edge.apply(&diff).await,
        }
    }

    /// Replaces every certificate (all parsed before any is swapped in).
    pub async fn set_certificates(
        &self,
        certificates: Vec<CertificatePem>,
    ) -> Result<(), EdgeError> {
        match self {
            Self::InProcess(proxy) => Ok(proxy.set_certificates(certificates)?),
            Self::Process(edge) => edge.set_certificates(&certificates).await,
        }
    }

    /// Every route the edge serves now.
    pub async fn routes(&self) -> Result<Vec<RouteSpec>, EdgeError> {
        match self {
            Self::InProcess(proxy) => Ok(proxy.routes()),
            Self::Process(edge) => edge.routes().await,
        }
    }

    /// Waits until a backend no route references has no request in flight, up to
    /// `deadline`.
    pub async fn wait_drained(
        &self,
        backend: &str,
        deadline: Duration,
    ) -> Result<DrainOutcome, EdgeError> {
        match self {
            Self::InProcess(proxy) => Ok(proxy.wait_drained(backend, deadline).await),
            Self::Process(edge) => edge.wait_drained(backend, deadline).await,
        }
    }

    /// A copy of every route's counters.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, EdgeError> {
        match self {
            Self::InProcess(proxy) => Ok(proxy.metrics()),
            Self::Process(edge) => edge.metrics().await,
        }
    }

    /// Sends every access log entry to `sink` from now on. With an edge process, a task
    /// forwards its stream, reconnecting when the edge restarts, until `sink` closes.
    pub fn set_access_log(&self, sink: tokio::sync::mpsc::Sender<AccessLogEntry>) {
        match self {
            Self::InProcess(proxy) => proxy.set_access_log(sink),
            Self::Process(edge) => {
                let edge = edge.clone();
                tokio::spawn(async move {
                    while !sink.is_closed() {
                        if let Err(e) = edge.forward_access_log(&sink).await {
                            tracing::debug!(error = %e, "access log stream from the edge ended");
                        }
                        tokio::time::sleep(ACCESS_RECONNECT).await;
                    }
                });
            }
        }
    }
}
