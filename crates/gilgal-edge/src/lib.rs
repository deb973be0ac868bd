//! The edge proxy as its own process (`gilgal edge`), so that the requests it holds survive
//! the control plane: a `kill -9`, crash or upgrade of `gilgal server` leaves every client
//! connection open and served, as app instances already outlive it. The server spawns the
//! edge once, hands it the listening sockets, and re-adopts it after a restart, reading back
//! the routes it serves so nothing is re-routed from scratch.
//!
//! The control plane talks to the edge through its admin API, HTTP/1.1 over a Unix socket
//! (`DATA_DIR/edge/admin.sock`, 0600; as Caddy's and Traefik's admin APIs): route diffs,
//! certificates, drains, metrics and a streamed access log. [`EdgeLink`] is what the rest of
//! Gilgal holds: the same calls whether the proxy runs in this process (tests, `--edge
//! in-process`) or in the edge process.

mod admin;
mod client;
mod error;
mod link;
mod process;

pub use admin::{serve_admin, EdgeStatus, EDGE_PROTOCOL};
pub use client::EdgeClient;
pub use error::EdgeError;
pub use link::EdgeLink;
pub use process::{
    binary_identity, listener_from_fd, run_edge, spawn_edge, EdgeListeners, EdgePaths,
    LISTENERS_ENV, SETTINGS_ENV,
};
