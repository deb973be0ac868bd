//! The control plane's client of an edge process's admin API (HTTP/1.1 over its Unix
//! socket, one short connection per call).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use gilgal_proxy::{
    AccessLogEntry, CertificatePem, DrainOutcome, MetricsSnapshot, RouteDiff, RouteSpec,
};

use crate::admin::{DrainRequest, EdgeStatus};
use crate::EdgeError;

/// How long a call other than a drain may take: the edge answers from memory.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on one edge process's admin socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EdgeClient {
    socket: PathBuf,
}

impl EdgeClient {
    /// A client of the edge whose admin socket is `socket` (nothing is opened yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The admin socket this client calls.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens one HTTP/1.1 connection to the admin socket and sends `request`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, EdgeError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            EdgeError::Unreachable(format!("{}: {e}", self.socket.display()))
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "gilgal-edge");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))
    }

    /// One call: the answer's body when it succeeded, `Refused` with the edge's reason when
    /// it refused the change.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, EdgeError> {
        let exchange = async {
            let response = self.send(method, path, body).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| EdgeError::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, EdgeError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| EdgeError::Unreachable(format!("{path} took over {timeout:?}")))??;
        match status {
            s if s.is_success() => Ok(bytes),
            StatusCode::CONFLICT => Err(EdgeError::Refused(
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
            s => Err(EdgeError::Unreachable(format!(
                "{path} answered {s}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, EdgeError> {
        let bytes = self.call(Method::GET, path, None, CALL_TIMEOUT).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EdgeError::Unreachable(format!("{path} answered malformed JSON: {e}")))
    }

    fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, EdgeError> {
        serde_json::to_vec(value).map_err(|e| EdgeError::Refused(e.to_string()))
    }

    /// What the edge says about itself (fails when no edge listens on the socket).
    pub async fn status(&self) -> Result<EdgeStatus, EdgeError> {
        self.get_json("/v1/status").await
    }

    /// Every route the edge serves now.
    pub async fn routes(&self) -> Result<Vec<RouteSpec>, EdgeError> {
        self.get_json("/v1/routes").await
    }

    /// Applies a route diff atomically (all of it or, refused, none).
    pub async fn apply(&self, diff: &RouteDiff) -> Result<(), EdgeError> {
        self.call(
            Method::POST,
            "/v1/routes",
            Some(Self::encode(diff)?),
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Replaces every certificate (all parsed before any is swapped in).
    pub async fn set_certificates(&self, certificates: &[CertificatePem]) -> Result<(), EdgeError> {
        self.call(
            Method::PUT,
            "/v1/certificates",
            Some(Self::encode(&certificates)?),
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Waits until the backend has no request in flight, up to `deadline`.
    pub async fn wait_drained(
        &self,
        backend: &str,
        deadline: Duration,
    ) -> Result<DrainOutcome, EdgeError> {
        let request = DrainRequest {
            backend: backend.to_owned(),
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        };
        let bytes = self
            .call(
                Method::POST,
                "/v1/drain",
                Some(Self::encode(&request)?),
                deadline + CALL_TIMEOUT,
            )
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EdgeError::Unreachable(format!("/v1/drain answered malformed JSON: {e}")))
    }

    /// A copy of every route's counters.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, EdgeError> {
        self.get_json("/v1/metrics").await
    }

    /// Lets a new edge accept connections (until then they wait in the accept queue, so
    /// none meets a 404 before the control plane has routed what runs).
    pub async fn open(&self) -> Result<(), EdgeError> {
        self.call(Method::POST, "/v1/open", None, CALL_TIMEOUT)
            .await
            .map(drop)
    }

    /// Asks the edge to stop: it stops accepting at once and drains what is in flight.
    pub async fn shutdown(&self) -> Result<(), EdgeError> {
        self.call(Method::POST, "/v1/shutdown", None, CALL_TIMEOUT)
            .await
            .map(drop)
    }

    /// Forwards the edge's access log into `sink` until the stream ends (the edge stopped,
    /// or another reader took over) or `sink` closes.
    pub async fn forward_access_log(
        &self,
        sink: &tokio::sync::mpsc::Sender<AccessLogEntry>,
    ) -> Result<(), EdgeError> {
        let response = self.send(Method::GET, "/v1/access", None).await?;
        if !response.status().is_success() {
            return Err(EdgeError::Unreachable(format!(
                "/v1/access answered {}",
                response.status()
            )));
        }
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| EdgeError::Unreachable(format!("access log stream: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<AccessLogEntry>(&line) {
                    Ok(entry) => {
                        if sink.send(entry).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping a malformed access log line"),
                }
            }
        }
        Ok(())
    }
}
