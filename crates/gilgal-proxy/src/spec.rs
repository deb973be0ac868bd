//! Plain-data description of the routing table, as the control plane writes it.
//!
//! Everything here is `serde`-friendly data with no runtime state, so the API and the deploy
//! pipeline can build, store and diff it freely; [`crate::RouteTable`] compiles it into the
//! lookup structure the hot path reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One upstream instance a route can send traffic to.
///
/// `id` is stable across table swaps: it keys connection counts, draining and
/// [`crate::ProxyHandle::wait_drained`]; the `group` names the release it belongs to, for splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Stable identity of the instance (e.g. the runtime's instance id).
    pub id: String,
    /// Where the instance listens (plain HTTP/1.1).
    pub addr: SocketAddr,
    /// The release this instance serves; only meaningful with a [`WeightedSplit`].
    #[serde(default)]
    pub group: String,
}

impl Backend {
    /// Shorthand for a backend outside any split group.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            addr,
            group: String::new(),
        }
    }

    /// Shorthand for a backend belonging to release `group`.
    pub fn in_group(id: impl Into<String>, addr: SocketAddr, group: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            addr,
            group: group.into(),
        }
    }
}

/// A canary split between two releases of the same route.
///
/// `canary_percent` of new clients go to `canary_group`, the rest to `primary_group`; with a
/// `sticky_cookie`, the choice is remembered per client so a user does not flip between releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedSplit {
    /// Group that receives the remaining traffic (the current release).
    pub primary_group: String,
    /// Group under test (the new release).
    pub canary_group: String,
    /// Share of requests for the canary, in basis points (0..=10_000; 1_000 = 10 %).
    pub canary_basis_points: u32,
    /// Cookie name used to pin a client to the group it first got; `None` = no stickiness.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
}

/// Per-route protection limits; the defaults suit a typical web app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteLimits {
    /// Largest request body accepted (413 above it); `None` = unlimited.
    pub max_body_bytes: Option<u64>,
    /// Largest total size of request header names + values (431 above it).
    pub max_header_bytes: usize,
    /// Largest number of request headers (431 above it).
    pub max_header_count: usize,
    /// Time allowed to open a TCP connection to a backend before trying another one.
    pub connect_timeout: Duration,
    /// Time allowed for a backend to send response headers (504 past it).
    pub response_timeout: Duration,
    /// Per-client request budgets (429 with `Retry-After` past them); the one with the
    /// longest matching path prefix applies.
    pub rate_limits: Vec<RateLimit>,
}

impl Default for RouteLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: Some(100 * 1024 * 1024),
            max_header_bytes: 32 * 1024,
            max_header_count: 100,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(60),
            rate_limits: Vec::new(),
        }
    }
}

/// A request budget per client address: `requests` per `period` sustained, with up to
/// `burst` at once (a token bucket, GCRA). Clients are told when to come back (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Only requests under this path prefix count against it (`None`: every request).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Sustained requests per period (at least 1).
    pub requests: u32,
    /// The period (at least 1 ms).
    pub period: Duration,
    /// Requests a client may make at once (at least 1).
    pub burst: u32,
}

/// What a route does with a matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteTarget {
    /// Reverse-proxy to the listed backends (load-balanced, optionally split).
    Upstream {
        /// Instances that may receive requests (only healthy ones should be listed).
        backends: Vec<Backend>,
        /// Optional canary split between two backend groups.
        #[serde(default)]
        split: Option<WeightedSplit>,
    },
    /// Serve files from a directory (static sites built by the deploy pipeline).
    Static {
        /// Directory whose files are served; nothing outside it is reachable.
        root: PathBuf,
        /// File served for paths that match nothing (single-page apps), relative to `root`.
        #[serde(default)]
        fallback: Option<String>,
    },
}

/// One routing rule: which requests it matches and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Stable identity used by diffs and metrics (e.g. `"{project}/{env}"` or `"{project}/{env}/v2"`).
    pub id: String,
    /// Exact hostnames this route answers (case-insensitive, no port).
    pub hosts: Vec<String>,
    /// Path prefix this route is restricted to (`"/v2"` matches `/v2` and `/v2/...`); `None` = all.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Where matching requests go.
    pub target: RouteTarget,
    /// Protection limits for this route.
    #[serde(default)]
    pub limits: RouteLimits,
    /// Answer plain-HTTP requests with a permanent redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value added to every HTTPS answer (e.g.
    /// `max-age=31536000; includeSubDomains`), unless the app sent its own.
    #[serde(default)]
    pub hsts: Option<String>,
}

impl RouteSpec {
    /// A proxy route over `backends` for `hosts`, with default limits and no prefix.
    pub fn upstream(id: impl Into<String>, hosts: Vec<String>, backends: Vec<Backend>) -> Self {
        Self {
            id: id.into(),
            hosts,
            path_prefix: None,
            target: RouteTarget::Upstream {
                backends,
                split: None,
            },
            limits: RouteLimits::default(),
            redirect_https: false,
            hsts: None,
        }
    }
}

/// A small change to the routing table: routes to add or replace (by id) and ids to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDiff {
    /// Routes inserted, or replacing the route with the same id.
    #[serde(default)]
    pub upsert: Vec<RouteSpec>,
    /// Ids of routes to delete (unknown ids are ignored).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A PEM certificate chain and private key for one domain (or `*.domain` wildcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatePem {
    /// Domain served with this certificate (`example.com` or `*.example.com`).
    pub domain: String,
    /// Leaf certificate first, then intermediates.
    pub cert_chain_pem: String,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key_pem: String,
}

/// Process-wide proxy settings (per-connection behaviour that no single route owns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// Time a client has to send complete request headers (slowloris protection).
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Largest HTTP/1 read buffer, bounding the request head size for every route (min 8192).
    pub max_request_head_bytes: usize,
    /// Port named in HTTP→HTTPS redirects (443 is left implicit).
    pub https_port: u16,
    /// Idle upstream connections kept per backend.
    pub upstream_max_idle_per_backend: usize,
    /// How long an idle upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// How long a backend that refused a connection is avoided.
    pub backend_ejection: Duration,
    /// How long `serve` waits for in-flight requests after its shutdown future resolves.
    pub shutdown_grace: Duration,
    /// Peers whose forwarding headers are believed: load balancers in front of Gilgal. From
    /// any other peer `X-Forwarded-For`/`-Proto`/`-Host` and `X-Real-IP` are replaced and
    /// `Forwarded`/`X-Forwarded-Port` removed, so a client cannot make an app log or trust an
    /// address it made up. Empty (the default): Gilgal is the edge and believes no one.
    pub trusted_proxies: Vec<IpNet>,
}

impl ProxySettings {
    /// Whether `ip` is one of [`Self::trusted_proxies`].
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        is_trusted_by(&self.trusted_proxies, ip)
    }
}

/// Whether `ip` (IPv4-mapped addresses as IPv4) is in one of `trusted_proxies`.
pub(crate) fn is_trusted_by(trusted_proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted_proxies.iter().any(|net| net.contains(&ip))
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            tls_handshake_timeout: Duration::from_secs(10),
            max_request_head_bytes: 64 * 1024,
            https_port: 443,
            upstream_max_idle_per_backend: 256,
            upstream_idle_timeout: Duration::from_secs(90),
            backend_ejection: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_match_ranges_and_ipv4_mapped_peers() {
        let settings = ProxySettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..ProxySettings::default()
        };
        let trusted = |ip: &str| settings.is_trusted(ip.parse().unwrap());
        assert!(trusted("10.1.2.3"));
        // A dual-stack listener reports IPv4 peers in their IPv6-mapped form.
        assert!(trusted("::ffff:10.1.2.3"));
        assert!(trusted("fd12::1"));
        assert!(!trusted("11.0.0.1"));
        assert!(!trusted("::ffff:11.0.0.1"));
        assert!(!ProxySettings::default().is_trusted("127.0.0.1".parse().unwrap()));
    }
}
