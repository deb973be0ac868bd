//! The compiled, immutable routing snapshot the hot path reads.
//!
//! Lookup is an exact-host `HashMap` probe followed by a scan of that host's few path prefixes
//! (longest first), so its cost does not grow with the number of hosts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::BackendState;
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;
use crate::spec::{RouteLimits, RouteSpec, RouteTarget};

/// One route ready to serve: resolved backends, metrics and limits.
pub(crate) struct CompiledRoute {
    pub(crate) id: Arc<str>,
    /// Normalized hosts (lowercase, no port).
    pub(crate) hosts: Box<[Box<str>]>,
    pub(crate) prefix: Option<Box<str>>,
    pub(crate) target: CompiledTarget,
    pub(crate) limits: RouteLimits,
    pub(crate) redirect_https: bool,
    /// `Strict-Transport-Security` for HTTPS answers.
    pub(crate) hsts: Option<http::HeaderValue>,
    /// Per-client request budgets, longest path prefix first.
    pub(crate) rate: Box<[crate::rate::CompiledRate]>,
    pub(crate) metrics: Arc<RouteMetrics>,
}

impl CompiledRoute {
    /// Counters of the release that `group` names on this route, if its backends name one.
    pub(crate) fn release_metrics(&self, group: crate::proxy::Group) -> Option<&RouteMetrics> {
        let CompiledTarget::Upstream { release, split, .. } = &self.target else {
            return None;
        };
        match (group, split) {
            (crate::proxy::Group::Primary, Some(split)) => Some(&split.primary_metrics),
            (crate::proxy::Group::Canary, Some(split)) => Some(&split.canary_metrics),
            _ => release.as_deref(),
        }
    }
}

/// Where a compiled route sends requests.
pub(crate) enum CompiledTarget {
    Upstream {
        all: Vec<Arc<BackendState>>,
        /// Counters of the one release every backend belongs to (`None` when the backends
        /// name no release, or several without a split).
        release: Option<Arc<RouteMetrics>>,
        split: Option<CompiledSplit>,
    },
    Static {
        root: PathBuf,
        fallback: Option<PathBuf>,
    },
}

/// A canary split with its two backend groups resolved.
pub(crate) struct CompiledSplit {
    pub(crate) primary_group: Box<str>,
    pub(crate) primary: Vec<Arc<BackendState>>,
    pub(crate) primary_metrics: Arc<RouteMetrics>,
    pub(crate) canary_group: Box<str>,
    pub(crate) canary: Vec<Arc<BackendState>>,
    pub(crate) canary_metrics: Arc<RouteMetrics>,
    pub(crate) canary_basis_points: u32,
    pub(crate) sticky_cookie: Option<Box<str>>,
}

/// Number of host shards: a diff copies only the shards it touches, so swapping a
/// 10,000-host table costs about as much as swapping a small one.
const SHARDS: usize = 64;

/// Routes for the hosts of one shard, most specific prefix first.
type Shard = HashMap<Box<str>, Vec<Arc<CompiledRoute>>>;

/// Immutable routing snapshot, swapped atomically by [`crate::ProxyHandle`].
pub struct RouteTable {
    shards: Box<[Arc<Shard>]>,
    route_count: usize,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::new())).collect(),
            route_count: 0,
        }
    }
}

/// FNV-1a over the host's bytes, to pick its shard.
fn shard_of(host: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

fn sort_by_prefix(routes: &mut [Arc<CompiledRoute>]) {
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.as_deref().map_or(0, str::len)));
}

/// Add `route` under each of its hosts, refusing a second route with the same host + prefix.
fn insert_route(shards: &mut [Shard], route: &Arc<CompiledRoute>) -> Result<(), ProxyError> {
    for host in route.hosts.iter() {
        let entry = shards[shard_of(host)].entry(host.clone()).or_default();
        if let Some(other) = entry.iter().find(|r| r.prefix == route.prefix) {
            return Err(ProxyError::DuplicateRoute {
                host: host.to_string(),
                prefix: route.prefix.as_deref().unwrap_or("").to_string(),
                first: other.id.to_string(),
                second: route.id.to_string(),
            });
        }
        entry.push(route.clone());
        sort_by_prefix(entry);
    }
    Ok(())
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("hosts", &self.shards.iter().map(|s| s.len()).sum::<usize>())
            .field("routes", &self.route_count)
            .finish()
    }
}

/// Things table compilation needs from the handle: stable per-id state.
pub(crate) trait Registry {
    fn backend(&mut self, id: &str, addr: std::net::SocketAddr) -> Arc<BackendState>;
    fn route_metrics(&mut self, id: &str) -> Arc<RouteMetrics>;
    /// Counters of one release (backend group) of route `id`; they outlive table swaps too.
    fn release_metrics(&mut self, id: &str, release: &str) -> Arc<RouteMetrics>;
    /// The buckets of one rate limit of route `id` (the same rule keeps its buckets).
    fn rate_limiter(
        &mut self,
        id: &str,
        rule: &crate::spec::RateLimit,
    ) -> Result<Arc<crate::rate::ClientLimiter>, String>;
}

/// Validate one spec and resolve it against the registry (backend state, metrics).
pub(crate) fn compile_route(
    spec: &RouteSpec,
    registry: &mut impl Registry,
) -> Result<Arc<CompiledRoute>, ProxyError> {
    let invalid = |reason: &str| ProxyError::InvalidRoute {
        route: spec.id.clone(),
        reason: reason.to_string(),
    };
    if spec.hosts.is_empty() {
        return Err(invalid("no hosts"));
    }
    let prefix = match spec.path_prefix.as_deref() {
        None | Some("") | Some("/") => None,
        Some(p) if !p.starts_with('/') => return Err(invalid("path prefix must start with '/'")),
        Some(p) => Some(p.trim_end_matches('/').into()),
    };
    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for host in &spec.hosts {
        let host = normalize_host(host);
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(invalid("empty or malformed host"));
        }
        hosts.push(host.into_boxed_str());
    }
    let target = compile_target(spec, registry).map_err(|r| invalid(&r))?;
    let hsts = match &spec.hsts {
        None => None,
        Some(value) => Some(
            http::HeaderValue::from_str(value)
                .ok()
                .filter(|_| value.starts_with("max-age="))
                .ok_or_else(|| invalid("hsts must be a header value starting with max-age="))?,
        ),
    };
    let mut rate = Vec::with_capacity(spec.limits.rate_limits.len());
    for rule in &spec.limits.rate_limits {
        let prefix: Option<Box<str>> = match rule.path_prefix.as_deref() {
            None | Some("") | Some("/") => None,
            Some(p) if !p.starts_with('/') => {
                return Err(invalid("rate limit path prefix must start with '/'"))
            }
            Some(p) => Some(p.trim_end_matches('/').into()),
        };
        if rate
            .iter()
            .any(|r: &crate::rate::CompiledRate| r.prefix == prefix)
        {
            return Err(invalid("two rate limits for the same path prefix"));
        }
        let limiter = registry
            .rate_limiter(&spec.id, rule)
            .map_err(|r| invalid(&r))?;
        rate.push(crate::rate::CompiledRate { prefix, limiter });
    }
    rate.sort_by_key(|r| std::cmp::Reverse(r.prefix.as_deref().map_or(0, str::len)));
    Ok(Arc::new(CompiledRoute {
        id: spec.id.as_str().into(),
        hosts: hosts.into_boxed_slice(),
        prefix,
        target,
        limits: spec.limits.clone(),
        redirect_https: spec.redirect_https,
        hsts,
        rate: rate.into_boxed_slice(),
        metrics: registry.route_metrics(&spec.id),
    }))
}

impl RouteTable {
    /// Assemble compiled routes into a lookup table, rejecting ambiguous host/prefix pairs.
    pub(crate) fn assemble<'a>(
        routes: impl IntoIterator<Item = &'a Arc<CompiledRoute>>,
    ) -> Result<Self, ProxyError> {
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
        let mut route_count = 0;
        for route in routes {
            route_count += 1;
            insert_route(&mut shards, route)?;
        }
        Ok(Self {
            shards: shards.into_iter().map(Arc::new).collect(),
            route_count,
        })
    }

    /// A copy of this table with `outgoing` routes taken out and `incoming` ones added; only
    /// the shards holding their hosts are copied.
    pub(crate) fn with_changes(
        &self,
        outgoing: &[Arc<CompiledRoute>],
        incoming: &[Arc<CompiledRoute>],
    ) -> Result<Self, ProxyError> {
        let mut touched: Vec<Option<Shard>> = (0..SHARDS).map(|_| None).collect();
        let hosts = outgoing.iter().chain(incoming).flat_map(|r| r.hosts.iter());
        for host in hosts {
            let i = shard_of(host);
            if touched[i].is_none() {
                touched[i] = Some((*self.shards[i]).clone());
            }
        }
        for route in outgoing {
            for host in route.hosts.iter() {
                if let Some(shard) = touched[shard_of(host)].as_mut() {
                    if let Some(list) = shard.get_mut(host) {
                        list.retain(|r| !Arc::ptr_eq(r, route));
                        if list.is_empty() {
                            shard.remove(host);
                        }
                    }
                }
            }
        }
        for route in incoming {
            for host in route.hosts.iter() {
                let i = shard_of(host);
                let shard = touched[i].get_or_insert_with(|| (*self.shards[i]).clone());
                let entry = shard.entry(host.clone()).or_default();
                if let Some(other) = entry.iter().find(|r| r.prefix == route.prefix) {
                    return Err(ProxyError::DuplicateRoute {
                        host: host.to_string(),
                        prefix: route.prefix.as_deref().unwrap_or("").to_string(),
                        first: other.id.to_string(),
                        second: route.id.to_string(),
                    });
                }
                entry.push(route.clone());
                sort_by_prefix(entry);
            }
        }
        let shards = touched
            .into_iter()
            .zip(self.shards.iter())
            .map(|(new, old)| new.map_or_else(|| old.clone(), Arc::new))
            .collect();
        Ok(Self {
            shards,
            route_count: (self.route_count + incoming.len()).saturating_sub(outgoing.len()),
        })
    }

    /// Number of routes in the snapshot.
    pub fn len(&self) -> usize {
        self.route_count
    }

    /// True when no route is configured (every request gets a 404).
    pub fn is_empty(&self) -> bool {
        self.route_count == 0
    }

    /// Which route id would serve `host` (case-insensitive, port allowed) and `path`; for
    /// diagnostics and tests of routing rules.
    pub fn route_id_for(&self, host: &str, path: &str) -> Option<&str> {
        let host = normalize_host(host);
        self.lookup(&host, path).map(|r| &*r.id)
    }

    /// Exact host, then longest matching path prefix. `host` must already be normalized.
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Arc<CompiledRoute>> {
        let routes = self.shards[shard_of(host)].get(host)?;
        routes.iter().find(|r| match r.prefix.as_deref() {
            None => true,
            Some(prefix) => prefix_matches(prefix, path),
        })
    }
}

/// `/v2` matches `/v2`, `/v2/` and `/v2/x`, but not `/v2x`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lowercase and drop any `:port` (IPv6 literals keep their brackets).
pub(crate) fn normalize_host(host: &str) -> String {
    let without_port = strip_port(host);
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Host without its port, borrowing when possible (hot path).
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

fn compile_target(
    spec: &RouteSpec,
    registry: &mut impl Registry,
) -> Result<CompiledTarget, String> {
    match &spec.target {
        RouteTarget::Static { root, fallback } => {
            let fallback = match fallback {
                None => None,
                Some(f) => {
                    let rel = std::path::Path::new(f.trim_start_matches('/'));
                    if rel
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err("static fallback must be a plain relative path".into());
                    }
                    Some(root.join(rel))
                }
            };
            Ok(CompiledTarget::Static {
                root: root.clone(),
                fallback,
            })
        }
        RouteTarget::Upstream { backends, split } => {
            let all: Vec<_> = backends
                .iter()
                .map(|b| registry.backend(&b.id, b.addr))
                .collect();
            let split = match split {
                None => None,
                Some(s) => {
                    if s.canary_basis_points > 10_000 {
                        return Err("canary_basis_points must be at most 10000".into());
                    }
                    if s.primary_group == s.canary_group {
                        return Err("split groups must differ".into());
                    }
                    for g in [&s.primary_group, &s.canary_group] {
                        if g.is_empty() || !g.bytes().all(is_cookie_safe) {
                            return Err(format!("split group {g:?} must be [A-Za-z0-9._-]+"));
                        }
                    }
                    if let Some(c) = &s.sticky_cookie {
                        if c.is_empty() || !c.bytes().all(is_cookie_safe) {
                            return Err("sticky cookie name must be [A-Za-z0-9._-]+".into());
                        }
                    }
                    let members = |group: &str| -> Vec<Arc<BackendState>> {
                        backends
                            .iter()
                            .zip(&all)
                            .filter(|(b, _)| b.group == group)
                            .map(|(_, s)| s.clone())
                            .collect()
                    };
                    Some(CompiledSplit {
                        primary_group: s.primary_group.as_str().into(),
                        primary: members(&s.primary_group),
                        primary_metrics: registry.release_metrics(&spec.id, &s.primary_group),
                        canary_group: s.canary_group.as_str().into(),
                        canary: members(&s.canary_group),
                        canary_metrics: registry.release_metrics(&spec.id, &s.canary_group),
                        canary_basis_points: s.canary_basis_points,
                        sticky_cookie: s.sticky_cookie.as_deref().map(Into::into),
                    })
                }
            };
            // Without a split, the backends' common release (if they name one) gets the figures.
            let release = match backends.split_first() {
                Some((first, rest))
                    if split.is_none()
                        && !first.group.is_empty()
                        && rest.iter().all(|b| b.group == first.group) =>
                {
                    Some(registry.release_metrics(&spec.id, &first.group))
                }
                _ => None,
            };
            Ok(CompiledTarget::Upstream {
                all,
                release,
                split,
            })
        }
    }
}

fn is_cookie_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}
