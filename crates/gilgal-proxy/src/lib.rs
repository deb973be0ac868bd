//! Gilgal's edge proxy: every request to every app crosses it.
//!
//! It routes by exact host (`{project}.{base}` / `{project}-{env}.{base}` / custom domains) then
//! longest path prefix, balances across instances with power-of-two-choices on in-flight
//! counts, splits traffic between two releases (optionally sticky by cookie), passes WebSocket
//! and SSE through, terminates TLS with SNI, and swaps its routing table atomically so deploys
//! never drop a request; removed instances drain with a deadline, their WebSockets closed
//! gracefully with a Close frame "1001 Going Away" on both sides.
//!
//! Why hyper (1.x + hyper-util + tokio + rustls/ring) rather than Pingora or Sozu: hyper is the
//! HTTP engine the rest of Gilgal (axum, reqwest) already compiles, so the proxy adds almost no
//! build time or binary size; its HTTP/1.1 + HTTP/2 server and upgrade support cover everything
//! the client side needs, and the routing on top stays small enough to audit. Towards backends
//! the proxy speaks HTTP/1.1 itself (httparse for the parsing, `exchange.rs` for the IO): hyper's
//! client would run a second task per connection and pass every request and response across
//! a channel, which was the largest cost left per proxied request. Upgrades still use hyper's
//! client. Pingora would bring a second runtime model and a long C-heavy build (cmake for its
//! TLS backends, absent here), and Sozu is AGPL, which we must not embed.
//!
//! Entry points: build a [`ProxyHandle`], install routes with [`ProxyHandle::replace`] or
//! [`ProxyHandle::apply`], then run [`serve`] and/or [`serve_tls`] on listeners.

mod access;
mod backend;
mod body;
mod error;
mod exchange;
mod framing;
mod h1;
mod handle;
mod metrics;
mod pool;
mod proxy;
mod rate;
mod server;
mod spec;
mod table;
mod tls;
mod tunnel;
mod ws_frame;

pub use access::AccessLogEntry;
pub use body::{BodyTooLarge, BoxError};
pub use error::ProxyError;
pub use handle::{DrainOutcome, ProxyHandle, UNROUTED};
/// Network ranges, as [`ProxySettings::trusted_proxies`] names trusted peers.
pub use ipnet::IpNet;
pub use metrics::{
    MetricsSnapshot, ReleaseMetricsSnapshot, RouteMetricsSnapshot, LATENCY_BUCKETS_SECONDS,
};
pub use proxy::forwarded_client;
pub use server::{serve, serve_tls};
pub use spec::{
    Backend, CertificatePem, ProxySettings, RateLimit, RouteDiff, RouteLimits, RouteSpec,
    RouteTarget, WeightedSplit,
};
pub use table::RouteTable;
pub use tls::check_certificate;
