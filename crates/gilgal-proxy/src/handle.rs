//! [`ProxyHandle`]: the control plane's grip on a running proxy (routes, drains, certificates,
//! metrics). Cheap to clone; every listener serving the same handle sees the same state.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::BackendState;
use crate::error::ProxyError;
use crate::metrics::{MetricsSnapshot, ReleaseMetricsSnapshot, RouteMetrics};
use crate::spec::{CertificatePem, ProxySettings, RouteDiff, RouteSpec};
use crate::table::{compile_route, CompiledRoute, CompiledTarget, Registry, RouteTable};
use crate::tls::SniResolver;

/// Metrics id of traffic that matched no route (404s, malformed requests).
pub const UNROUTED: &str = "_unrouted";

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DrainOutcome {
    /// Every in-flight request finished before the deadline (or none was open). WebSockets
    /// count as finished once the proxy closed them with 1001 Going Away.
    Drained,
    /// The deadline passed; this many requests or tunnels were cut (504, or closed without a
    /// WebSocket closing handshake).
    DeadlineExceeded {
        /// Requests still open at the deadline.
        cut: usize,
    },
    /// The backend is still referenced by the current table, so it cannot drain.
    StillRouted,
}

/// Shared state behind a [`ProxyHandle`].
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) settings: ProxySettings,
    pub(crate) certs: Arc<SniResolver>,
    pub(crate) unrouted: Arc<RouteMetrics>,
    pub(crate) open_client_connections: AtomicI64,
    /// HTTP/1 client connections parked between requests (no hyper state held).
    pub(crate) parked_client_connections: AtomicI64,
    pub(crate) access_log: crate::access::AccessLog,
    control: Mutex<Control>,
}

/// Control-plane-only state (never touched by the request path).
struct Control {
    specs: BTreeMap<String, RouteSpec>,
    /// Compiled form of every spec, reused across swaps while the spec is unchanged.
    compiled: HashMap<String, Arc<CompiledRoute>>,
    backends: HashMap<String, Arc<BackendState>>,
    /// Routes referencing each backend id (and its address): a count reaching zero starts
    /// the backend's drain.
    backend_refs: HashMap<Arc<str>, (usize, SocketAddr)>,
    /// Backends whose drain started and that are still remembered.
    draining: Vec<Arc<str>>,
    route_metrics: BTreeMap<String, Arc<RouteMetrics>>,
    /// Per route id, its releases' counters, oldest first (at most [`RELEASES_KEPT`]).
    release_metrics: BTreeMap<String, Vec<(String, Arc<RouteMetrics>)>>,
    /// Per route id, the buckets of each of its rate limits (rules no route has any more
    /// are dropped when their route is next compiled).
    rate_limiters: HashMap<String, Vec<(crate::spec::RateLimit, Arc<crate::rate::ClientLimiter>)>>,
    settings: ProxySettings,
}

/// Releases per route whose counters are kept: enough for a canary, a blue-green window and
/// a few rollbacks; older ones are forgotten (the route's own totals keep counting them).
pub(crate) const RELEASES_KEPT: usize = 8;

fn backends_of(route: &CompiledRoute) -> &[Arc<BackendState>] {
    match &route.target {
        CompiledTarget::Upstream { all, .. } => all,
        CompiledTarget::Static { .. } => &[],
    }
}

fn conflict(id: &str, first: SocketAddr, second: SocketAddr) -> ProxyError {
    ProxyError::ConflictingBackend {
        id: id.to_string(),
        first,
        second,
    }
}

impl Control {
    /// Start draining backends no route references any more; forget those already idle
    /// (including earlier drains that finished without anyone waiting for them).
    fn drain(&mut self, gone: &[Arc<str>]) {
        for id in gone {
            if let Some(state) = self.backends.get(&**id) {
                state.start_draining();
                self.draining.push(id.clone());
            }
        }
        let (backends, refs) = (&mut self.backends, &self.backend_refs);
        self.draining.retain(|id| {
            let finished = !refs.contains_key(id)
                && backends
                    .get(&**id)
                    .is_none_or(|s| s.is_draining() && s.in_flight() == 0);
            if finished {
                backends.remove(&**id);
            }
            !finished
        });
    }

    /// The compiled route for `spec`: the existing one if the spec is unchanged.
    fn compile_or_reuse(&mut self, spec: &RouteSpec) -> Result<Arc<CompiledRoute>, ProxyError> {
        if let (Some(old), Some(compiled)) = (self.specs.get(&spec.id), self.compiled.get(&spec.id))
        {
            let backends_alive = match &compiled.target {
                CompiledTarget::Upstream { all, .. } => all.iter().all(|b| !b.is_retired()),
                CompiledTarget::Static { .. } => true,
            };
            if old == spec && backends_alive {
                return Ok(compiled.clone());
            }
        }
        compile_route(spec, self)
    }
}

impl Registry for Control {
    fn backend(&mut self, id: &str, addr: SocketAddr) -> Arc<BackendState> {
        if let Some(existing) = self.backends.get(id) {
            if existing.addr == addr && !existing.is_retired() {
                existing.stop_draining();
                return existing.clone();
            }
        }
        let fresh = Arc::new(BackendState::new(id.into(), addr, &self.settings));
        self.backends.insert(id.to_string(), fresh.clone());
        fresh
    }

    fn route_metrics(&mut self, id: &str) -> Arc<RouteMetrics> {
        self.route_metrics
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn rate_limiter(
        &mut self,
        id: &str,
        rule: &crate::spec::RateLimit,
    ) -> Result<Arc<crate::rate::ClientLimiter>, String> {
        let rules = self.rate_limiters.entry(id.to_string()).or_default();
        if let Some((_, limiter)) = rules.iter().find(|(r, _)| r == rule) {
            return Ok(limiter.clone());
        }
        let limiter = Arc::new(crate::rate::ClientLimiter::new(rule)?);
        // A route has a few rules; those it no longer names are dropped beyond that.
        if rules.len() >= 16 {
            rules.remove(0);
        }
        rules.push((rule.clone(), limiter.clone()));
        Ok(limiter)
    }

    fn release_metrics(&mut self, id: &str, release: &str) -> Arc<RouteMetrics> {
        let releases = self.release_metrics.entry(id.to_string()).or_default();
        if let Some(i) = releases.iter().position(|(r, _)| r == release) {
            // Most recently used last, so the oldest are the ones forgotten.
            let entry = releases.remove(i);
            let metrics = entry.1.clone();
            releases.push(entry);
            return metrics;
        }
        if releases.len() >= RELEASES_KEPT {
            releases.remove(0);
        }
        let metrics = Arc::new(RouteMetrics::default());
        releases.push((release.to_string(), metrics.clone()));
        metrics
    }
}

/// The control plane's handle on the proxy: swap routes, drain backends, install certificates,
/// read metrics. Clone it freely; pass a clone to [`crate::serve`] / [`crate::serve_tls`].
#[derive(Clone)]
pub struct ProxyHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("table", &**self.shared.table.load())
            .finish()
    }
}

impl Default for ProxyHandle {
    fn default() -> Self {
        Self::new(ProxySettings::default())
    }
}

impl ProxyHandle {
    /// A proxy with an empty table (every request answers 404 until routes are installed).
    pub fn new(settings: ProxySettings) -> Self {
        let control = Control {
            specs: BTreeMap::new(),
            compiled: HashMap::new(),
            backends: HashMap::new(),
            backend_refs: HashMap::new(),
            draining: Vec::new(),
            route_metrics: BTreeMap::new(),
            release_metrics: BTreeMap::new(),
            rate_limiters: HashMap::new(),
            settings: settings.clone(),
        };
        Self {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(RouteTable::default()),
                settings,
                certs: Arc::new(SniResolver::default()),
                unrouted: Arc::new(RouteMetrics::default()),
                open_client_connections: AtomicI64::new(0),
                parked_client_connections: AtomicI64::new(0),
                access_log: crate::access::AccessLog::default(),
                control: Mutex::new(control),
            }),
        }
    }

    /// Sends an [`crate::AccessLogEntry`] for every routed request to `sink` from now on
    /// (replacing any previous sink). Entries that do not fit in the channel are dropped and
    /// counted, never waited for.
    pub fn set_access_log(&self, sink: tokio::sync::mpsc::Sender<crate::AccessLogEntry>) {
        self.shared.access_log.sink.store(Some(Arc::new(sink)));
    }

    /// Access log entries dropped because the sink was full.
    pub fn access_log_dropped(&self) -> u64 {
        self.shared
            .access_log
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Settings the proxy was created with.
    pub fn settings(&self) -> &ProxySettings {
        &self.shared.settings
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing all further configuration, so recover the guard.
        self.shared
            .control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replace the whole routing table with `routes` (one atomic swap). Routes whose spec did
    /// not change keep their compiled form.
    pub fn replace(&self, routes: Vec<RouteSpec>) -> Result<(), ProxyError> {
        let mut control = self.control();
        let mut specs = BTreeMap::new();
        let mut compiled = HashMap::with_capacity(routes.len());
        for spec in routes {
            if specs.contains_key(&spec.id) {
                return Err(ProxyError::DuplicateRouteId(spec.id));
            }
            let route = control.compile_or_reuse(&spec)?;
            compiled.insert(spec.id.clone(), route);
            specs.insert(spec.id.clone(), spec);
        }
        let mut refs: HashMap<Arc<str>, (usize, SocketAddr)> = HashMap::new();
        for backend in compiled.values().flat_map(|r| backends_of(r)) {
            let entry = refs.entry(backend.id.clone()).or_insert((0, backend.addr));
            if entry.1 != backend.addr {
                return Err(conflict(&backend.id, entry.1, backend.addr));
            }
            entry.0 += 1;
        }
        let table = RouteTable::assemble(compiled.values())?;
        self.shared.table.store(Arc::new(table));
        let gone: Vec<Arc<str>> = control
            .backend_refs
            .keys()
            .filter(|id| !refs.contains_key(*id))
            .cloned()
            .collect();
        control.backend_refs = refs;
        control.drain(&gone);
        control.specs = specs;
        control.compiled = compiled;
        Ok(())
    }

    /// Apply a small change (upserts and removals by route id) as one atomic swap. Only the
    /// upserted routes are compiled and only the table shards holding their hosts are copied,
    /// so the cost does not grow with the size of the table.
    pub fn apply(&self, diff: RouteDiff) -> Result<(), ProxyError> {
        let mut control = self.control();
        let mut incoming = Vec::with_capacity(diff.upsert.len());
        let mut upserted = std::collections::HashSet::new();
        for spec in &diff.upsert {
            if !upserted.insert(spec.id.as_str()) {
                return Err(ProxyError::DuplicateRouteId(spec.id.clone()));
            }
            incoming.push(control.compile_or_reuse(spec)?);
        }
        let outgoing: Vec<Arc<CompiledRoute>> = upserted
            .iter()
            .copied()
            .chain(diff.remove.iter().map(String::as_str))
            .filter_map(|id| control.compiled.get(id).cloned())
            .collect();
        // A backend id must keep one address across the routes that remain.
        let mut leaving: HashMap<&str, usize> = HashMap::new();
        for b in outgoing.iter().flat_map(|r| backends_of(r)) {
            *leaving.entry(&b.id).or_default() += 1;
        }
        let mut arriving: HashMap<&str, SocketAddr> = HashMap::new();
        for b in incoming.iter().flat_map(|r| backends_of(r)) {
            if let Some(first) = arriving.insert(&b.id, b.addr) {
                if first != b.addr {
                    return Err(conflict(&b.id, first, b.addr));
                }
            }
            if let Some((count, addr)) = control.backend_refs.get(&*b.id) {
                let staying = count - leaving.get(&*b.id).copied().unwrap_or(0).min(*count);
                if staying > 0 && *addr != b.addr {
                    return Err(conflict(&b.id, *addr, b.addr));
                }
            }
        }
        let table = self
            .shared
            .table
            .load()
            .with_changes(&outgoing, &incoming)?;
        self.shared.table.store(Arc::new(table));

        let mut gone = Vec::new();
        for b in outgoing.iter().flat_map(|r| backends_of(r)) {
            if let Some(entry) = control.backend_refs.get_mut(&*b.id) {
                entry.0 = entry.0.saturating_sub(1);
                if entry.0 == 0 {
                    gone.push(b.id.clone());
                }
            }
        }
        for b in incoming.iter().flat_map(|r| backends_of(r)) {
            let entry = control
                .backend_refs
                .entry(b.id.clone())
                .or_insert((0, b.addr));
            entry.0 += 1;
            entry.1 = b.addr;
        }
        gone.retain(|id| control.backend_refs.get(id).is_some_and(|e| e.0 == 0));
        for id in &gone {
            control.backend_refs.remove(id);
        }
        control.drain(&gone);
        for id in &diff.remove {
            control.specs.remove(id);
            control.compiled.remove(id);
        }
        for (spec, route) in diff.upsert.into_iter().zip(incoming) {
            control.compiled.insert(spec.id.clone(), route);
            control.specs.insert(spec.id.clone(), spec);
        }
        Ok(())
    }

    /// The route specs currently installed, in id order.
    pub fn routes(&self) -> Vec<RouteSpec> {
        self.control().specs.values().cloned().collect()
    }

    /// The current compiled snapshot (for diagnostics: `route_id_for`, `len`).
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    /// Requests currently open against a backend id (0 if unknown).
    pub fn in_flight(&self, backend_id: &str) -> usize {
        self.control()
            .backends
            .get(backend_id)
            .map_or(0, |b| b.in_flight())
    }

    /// Wait until a backend removed from the table has no request in flight, so the caller can
    /// stop the instance. Calling it says the instance is going away: its WebSockets are closed
    /// at once with a Close frame "1001 Going Away" to both peers (clients reconnect to the
    /// instances still routed), while plain requests may finish. Past `deadline`, remaining
    /// requests get a 504 and any other tunnel is closed.
    ///
    /// A backend re-added to the table after this call gets a fresh state, so new connections
    /// are not closed by this drain.
    pub async fn wait_drained(&self, backend_id: &str, deadline: Duration) -> DrainOutcome {
        let state = {
            let control = self.control();
            if control.backend_refs.contains_key(backend_id) {
                return DrainOutcome::StillRouted;
            }
            match control.backends.get(backend_id) {
                Some(state) => {
                    // Under the control lock, so no route can pick this state up again after
                    // it was told to go away (`Registry::backend` skips retired states).
                    state.going_away.fire();
                    state.clone()
                }
                // Never known, or already drained and forgotten: nothing is in flight.
                None => return DrainOutcome::Drained,
            }
        };
        let outcome = match tokio::time::timeout(deadline, state.wait_idle()).await {
            Ok(()) => DrainOutcome::Drained,
            Err(_) => {
                let cut = state.in_flight();
                state.cut.fire();
                // Cut requests answer at once; give them a moment to release their slots.
                let _ = tokio::time::timeout(Duration::from_secs(2), state.wait_idle()).await;
                DrainOutcome::DeadlineExceeded { cut }
            }
        };
        let mut control = self.control();
        if !control.backend_refs.contains_key(backend_id) {
            if let Some(current) = control.backends.get(backend_id) {
                if Arc::ptr_eq(current, &state) {
                    control.backends.remove(backend_id);
                }
            }
        }
        outcome
    }

    /// Install the full set of TLS certificates (all parsed first, then swapped atomically).
    pub fn set_certificates(&self, certs: Vec<CertificatePem>) -> Result<(), ProxyError> {
        self.shared.certs.replace(&certs)
    }

    /// Domains that currently have a certificate.
    pub fn certificate_domains(&self) -> Vec<String> {
        self.shared.certs.domains()
    }

    /// Copy of all per-route counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        let control = self.control();
        let mut routes: Vec<_> = control
            .route_metrics
            .iter()
            .map(|(id, m)| (id.clone(), m.snapshot()))
            .collect();
        routes.push((UNROUTED.to_string(), self.shared.unrouted.snapshot()));
        let releases = control
            .release_metrics
            .iter()
            .flat_map(|(route, releases)| {
                releases.iter().map(|(release, m)| ReleaseMetricsSnapshot {
                    route: route.clone(),
                    release: release.clone(),
                    metrics: m.snapshot(),
                })
            })
            .collect();
        MetricsSnapshot {
            routes,
            releases,
            open_client_connections: self
                .shared
                .open_client_connections
                .load(Ordering::Relaxed)
                .max(0) as u64,
        }
    }
}
