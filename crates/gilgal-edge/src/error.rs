//! Why a call to the edge failed.

/// What can go wrong between the control plane and the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The edge refused the change (an invalid route or certificate); nothing changed.
    #[error("the edge refused the change: {0}")]
    Refused(String),
    /// The edge process cannot be reached or answered something unexpected.
    #[error("the edge process is unreachable: {0}")]
    Unreachable(String),
    /// The edge process could not be started or set up.
    #[error("cannot start the edge: {0}")]
    Start(String),
    /// The in-process proxy refused the change.
    #[error(transparent)]
    Proxy(#[from] gilgal_proxy::ProxyError),
    /// A socket or file operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
