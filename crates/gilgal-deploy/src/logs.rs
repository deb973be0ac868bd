//! Log ingestion: every line the runtime reads from an instance (web and worker processes,
//! the release phase, one-off and cron runs) goes into the environment's persistent log
//! ([`gilgal_logs::LogStore`]), tagged with release, process type and instance.
//!
//! Tracebacks in that output (Python, Node.js, Rust panics) are detected on the way and
//! counted in the environment's error groups (`gilgal errors`).
//!
//! The proxy's access log (one line per routed request, process type `router`) goes to the
//! same place.
//!
//! The runtime broadcasts lines to subscribers and never waits for them; a subscriber that
//! falls behind loses the oldest lines. Each line carries a per-instance sequence number, so
//! the gap after a loss says exactly how many lines of which instance were missed; they are
//! counted in that environment's log ([`gilgal_logs::LogStore::count_dropped`]) instead of
//! vanishing. The store's own queue does the same when its writer falls behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilgal_logs::LogRecord;
use gilgal_runtime::{LogLine, LogStream};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Platform;

/// Process type of build output in environment logs.
pub const BUILD_PROCESS: &str = "build";

/// How long an unknown (project, environment) pair is remembered as unknown.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// Maps instance labels (and route ids) — a project id and an environment id — to the
/// environment they name, checked against the store with a cache: a line of an environment
/// that no longer exists (or of an instance labelled with names, from before labels were
/// ids) is attributed to nothing.
#[derive(Default)]
pub(crate) struct Environments {
    known: HashMap<(String, String), Uuid>,
    unknown: HashMap<(String, String), Instant>,
}

impl Environments {
    pub(crate) async fn resolve(
        &mut self,
        store: &gilgal_store::Store,
        app: &str,
        env: &str,
    ) -> Option<Uuid> {
        let key = (app.to_owned(), env.to_owned());
        if let Some(id) = self.known.get(&key) {
            return Some(*id);
        }
        if self
            .unknown
            .get(&key)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
        {
            return None;
        }
        let ids = app.parse::<Uuid>().ok().zip(env.parse::<Uuid>().ok());
        let found = match ids {
            Some((project, environment)) => match store.environment_by_id(environment).await {
                Ok(record) => Ok((record.project_id == project).then_some(record.id)),
                Err(gilgal_store::StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        };
        match found {
            Ok(Some(id)) => {
                self.known.insert(key, id);
                Some(id)
            }
            Ok(None) => {
                self.unknown.insert(key, Instant::now());
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the environment of a log line");
                None
            }
        }
    }

    fn forget(&mut self, id: Uuid) {
        self.known.retain(|_, known| *known != id);
    }
}

fn record(line: LogLine) -> LogRecord {
    let at = i64::try_from(line.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let stream = match line.stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    LogRecord::new(at, line.labels.process_type, stream, line.line)
        .from_instance(line.instance.as_str(), Some(line.labels.release))
}

/// Process type of the proxy's access log lines in environment logs.
pub const ROUTER_PROCESS: &str = "router";

/// Access log entries that may wait for the ingester before the proxy drops (and counts) them.
const ACCESS_LOG_QUEUE: usize = 16 * 1024;

/// An access log line: readable text, and the same facts as fields for JSON consumers.
fn access_record(entry: &gilgal_proxy::AccessLogEntry) -> LogRecord {
    let at = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(0);
    let millis = entry.duration.as_secs_f64() * 1000.0;
    let mut record = LogRecord::new(
        at,
        ROUTER_PROCESS,
        "stdout",
        format!(
            "{} {} {} {millis:.1}ms host={} client={}",
            entry.method, entry.path, entry.status, entry.host, entry.client
        ),
    );
    let mut fields = serde_json::Map::new();
    fields.insert("method".into(), entry.method.clone().into());
    fields.insert("path".into(), entry.path.clone().into());
    fields.insert("status".into(), entry.status.into());
    fields.insert("duration_ms".into(), millis.into());
    fields.insert("host".into(), entry.host.clone().into());
    fields.insert("client".into(), entry.client.clone().into());
    record.fields = Some(fields);
    record
}

impl Platform {
    /// The persistent log store.
    pub fn logs(&self) -> &gilgal_logs::LogStore {
        &self.config.logs
    }

    /// Deletes an environment's logs (the environment is being deleted).
    pub async fn remove_logs(&self, environment: Uuid) {
        let logs = self.config.logs.clone();
        let removed =
            tokio::task::spawn_blocking(move || logs.remove_environment(environment)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(%environment, error = %e, "cannot delete the environment's logs");
        }
    }
}

/// The loop that writes the runtime's output and the edge's access log to the log store.
#[derive(Debug)]
pub struct LogIngest {
    pub(crate) platform: Arc<crate::Platform>,
    /// Subscribed at construction, so nothing printed before the loop starts is missed.
    pub(crate) log_lines:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<std::sync::Arc<LogLine>>>>,
}

impl LogIngest {
    pub(crate) fn new(platform: Arc<crate::Platform>) -> Self {
        Self {
            log_lines: std::sync::Mutex::new(Some(platform.runtime.subscribe_logs())),
            platform,
        }
    }

    /// Copies runtime log lines into the log store until `stop`. Call once (later calls
    /// return at once); lines printed since the deployer was created are not missed.
    pub async fn run_log_ingest(self: &Arc<Self>, stop: CancellationToken) {
        let receiver = match self.log_lines.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(mut receiver) = receiver else {
            return;
        };
        let (access_tx, mut access) = tokio::sync::mpsc::channel(ACCESS_LOG_QUEUE);
        self.platform.edge.link().set_access_log(access_tx);
        let mut environments = Environments::default();
        // Last sequence number seen per instance, with its environment.
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut lagged: u64 = 0;
        // Traceback detection per instance and stream (stdout/stderr).
        let mut detectors: HashMap<(String, bool), gilgal_logs::TracebackDetector> = HashMap::new();
        loop {
            let line = tokio::select! {
                _ = stop.cancelled() => break,
                Some(entry) = access.recv() => {
                    let Some((app, env)) = entry.route.split_once('/') else {
                        continue;
                    };
                    if let Some(environment) = environments.resolve(&self.platform.store, app, env).await {
                        self.platform.config.logs.append(environment, access_record(&entry));
                    }
                    continue;
                }
                received = receiver.recv() => match received {
                    Ok(line) => line,
                    Err(RecvError::Lagged(n)) => {
                        // Attributed below, per instance, from the sequence gaps.
                        lagged += n;
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                },
            };
            let Some(environment) = environments
                .resolve(&self.platform.store, &line.labels.app, &line.labels.env)
                .await
            else {
                continue;
            };
            let previous = last_seq.insert(line.instance.as_str().to_owned(), line.seq);
            if let Some(previous) = previous {
                if line.seq > previous + 1 {
                    self.platform
                        .config
                        .logs
                        .count_dropped(environment, line.seq - previous - 1);
                }
            }
            let detector = detectors
                .entry((
                    line.instance.as_str().to_owned(),
                    line.stream == LogStream::Stderr,
                ))
                .or_default();
            if let Some(traceback) = detector.feed(&line.line) {
                if let Err(e) = self
                    .platform
                    .store
                    .record_error(
                        environment,
                        &traceback.signature,
                        &traceback.title,
                        &traceback.text,
                        Some(line.labels.release),
                    )
                    .await
                {
                    tracing::warn!(%environment, error = %e, "cannot record an error group");
                }
            }
            self.platform
                .config
                .logs
                .append(environment, record(std::sync::Arc::unwrap_or_clone(line)));
            if last_seq.len() > 100_000 {
                // Instances come and go; forget them all rather than grow without bound
                // (the next line of each instance starts it over).
                last_seq.clear();
                detectors.clear();
                environments.forget(environment);
            }
        }
        if lagged > 0 {
            tracing::info!(lagged, "log ingestion fell behind the runtime at times (counted in each environment's log)");
        }
    }
}
