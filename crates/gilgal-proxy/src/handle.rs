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
use crate::metrics::{MetricsSnapshot, RouteMetrics};
use crate::spec::{CertificatePem, ProxySettings, RouteDiff, RouteSpec};
use crate::table::{compile_route, CompiledRoute, CompiledTarget, Registry, RouteTable};
use crate::tls::SniResolver;

/// Metrics id of traffic that matched no route (404s, malformed requests).
pub const UNROUTED: &str = "_unrouted";

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request finished before the deadline (or none was open).
    Drained,
    /// The deadline passed; this many requests or tunnels were cut (504 or closed).
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
    control: Mutex<Control>,
}

/// Control-plane-only state (never touched by the request path).
struct Control {
    specs: BTreeMap<String, RouteSpec>,
    /// Compiled form of every spec, reused across swaps while the spec is unchanged.
    compiled: HashMap<String, Arc<CompiledRoute>>,
    backends: HashMap<String, Arc<BackendState>>,
    routed_backends: std::collections::HashSet<Arc<str>>,
    route_metrics: BTreeMap<String, Arc<RouteMetrics>>,
    settings: ProxySettings,
}

impl Control {
    /// The compiled route for `spec`: the existing one if the spec is unchanged.
    fn compile_or_reuse(&mut self, spec: &RouteSpec) -> Result<Arc<CompiledRoute>, ProxyError> {
        if let (Some(old), Some(compiled)) = (self.specs.get(&spec.id), self.compiled.get(&spec.id))
        {
            let backends_alive = match &compiled.target {
                CompiledTarget::Upstream { all, .. } => all.iter().all(|b| !b.cut.is_cancelled()),
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
            if existing.addr == addr && !existing.cut.is_cancelled() {
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
            routed_backends: Default::default(),
            route_metrics: BTreeMap::new(),
            settings: settings.clone(),
        };
        Self {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(RouteTable::default()),
                settings,
                certs: Arc::new(SniResolver::default()),
                unrouted: Arc::new(RouteMetrics::default()),
                open_client_connections: AtomicI64::new(0),
                control: Mutex::new(control),
            }),
        }
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
    /// not change keep their compiled form, so large tables swap quickly.
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
        let table = RouteTable::assemble(compiled.values())?;
        self.install(&mut control, table);
        control.specs = specs;
        control.compiled = compiled;
        Ok(())
    }

    /// Apply a small change (upserts and removals by route id) as one atomic swap; only the
    /// upserted routes are compiled.
    pub fn apply(&self, diff: RouteDiff) -> Result<(), ProxyError> {
        let mut control = self.control();
        let mut fresh = HashMap::with_capacity(diff.upsert.len());
        for spec in &diff.upsert {
            let route = control.compile_or_reuse(spec)?;
            if fresh.insert(spec.id.as_str(), route).is_some() {
                return Err(ProxyError::DuplicateRouteId(spec.id.clone()));
            }
        }
        let kept = control.compiled.iter().filter(|(id, _)| {
            !fresh.contains_key(id.as_str()) && !diff.remove.iter().any(|r| r == *id)
        });
        let table = RouteTable::assemble(kept.map(|(_, r)| r).chain(fresh.values()))?;
        self.install(&mut control, table);
        for id in &diff.remove {
            control.specs.remove(id);
            control.compiled.remove(id);
        }
        let fresh: Vec<(String, Arc<CompiledRoute>)> = fresh
            .into_iter()
            .map(|(id, r)| (id.to_string(), r))
            .collect();
        control.compiled.extend(fresh);
        for spec in diff.upsert {
            control.specs.insert(spec.id.clone(), spec);
        }
        Ok(())
    }

    /// Publish `table` and start draining backends it no longer references.
    fn install(&self, control: &mut Control, table: RouteTable) {
        let now_routed = table.backend_ids();
        self.shared.table.store(Arc::new(table));
        for gone in control.routed_backends.difference(&now_routed) {
            if let Some(state) = control.backends.get(&**gone) {
                state.start_draining();
            }
        }
        // Forget drained backends nobody is waiting for, so the registry does not grow forever.
        control.backends.retain(|id, state| {
            now_routed.contains(id.as_str()) || state.in_flight() > 0 || !state.is_draining()
        });
        control.routed_backends = now_routed;
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
    /// stop the instance. Past `deadline`, its remaining requests get a 504 (tunnels are closed).
    pub async fn wait_drained(&self, backend_id: &str, deadline: Duration) -> DrainOutcome {
        let state = {
            let control = self.control();
            if control.routed_backends.contains(backend_id) {
                return DrainOutcome::StillRouted;
            }
            match control.backends.get(backend_id) {
                Some(state) => state.clone(),
                // Never known, or already drained and forgotten: nothing is in flight.
                None => return DrainOutcome::Drained,
            }
        };
        let outcome = match tokio::time::timeout(deadline, state.wait_idle()).await {
            Ok(()) => DrainOutcome::Drained,
            Err(_) => {
                let cut = state.in_flight();
                state.cut.cancel();
                // Cut requests answer at once; give them a moment to release their slots.
                let _ = tokio::time::timeout(Duration::from_secs(2), state.wait_idle()).await;
                DrainOutcome::DeadlineExceeded { cut }
            }
        };
        let mut control = self.control();
        if !control.routed_backends.contains(backend_id) {
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
        MetricsSnapshot {
            routes,
            open_client_connections: self
                .shared
                .open_client_connections
                .load(Ordering::Relaxed)
                .max(0) as u64,
        }
    }
}
