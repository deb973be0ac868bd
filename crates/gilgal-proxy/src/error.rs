//! Errors the control plane can get back from the proxy (bad routes, bad certificates, I/O).

use std::net::SocketAddr;

/// Everything that can go wrong when configuring or starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Two routes claim the same host and path prefix, so lookups would be ambiguous.
    #[error("routes {first:?} and {second:?} both claim host {host:?} with prefix {prefix:?}")]
    DuplicateRoute {
        /// Host claimed twice.
        host: String,
        /// Path prefix claimed twice ("" for none).
        prefix: String,
        /// Route that claimed it first.
        first: String,
        /// Route that claimed it again.
        second: String,
    },
    /// Two route specs share an id, so diffs could not address them.
    #[error("route id {0:?} is used twice")]
    DuplicateRouteId(String),
    /// A route is malformed (empty host, prefix without a leading slash, bad split...).
    #[error("route {route:?} is invalid: {reason}")]
    InvalidRoute {
        /// Offending route id.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One backend id is used with two different addresses.
    #[error("backend {id:?} is declared with two addresses ({first} and {second})")]
    ConflictingBackend {
        /// Offending backend id.
        id: String,
        /// First address seen.
        first: SocketAddr,
        /// Second address seen.
        second: SocketAddr,
    },
    /// A certificate or key could not be parsed or does not fit rustls.
    #[error("certificate for {domain:?} is invalid: {reason}")]
    InvalidCertificate {
        /// Domain of the offending certificate.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
