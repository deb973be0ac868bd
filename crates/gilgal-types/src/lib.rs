//! Wire types shared by the API server, the typed client and the CLI.
//!
//! This crate does no IO. It owns the JSON shapes of every request and response, the single
//! error body (`{"error":{"code","message","request_id"}}`), and the strict identifier types
//! (such as [`ProjectName`]) that reject bad input at the edge, so that no other layer has to.

mod addons;
mod alerts;
mod auth;
mod deployments;
mod environments;
mod error;
mod logs;
mod names;
mod projects;
mod webhooks;

pub use addons::*;
pub use alerts::*;
pub use auth::*;
pub use deployments::*;
pub use environments::*;
pub use error::*;
pub use logs::*;
pub use names::*;
pub use projects::*;
pub use webhooks::*;

/// Timestamps travel as RFC 3339 strings; this alias documents that in signatures.
pub type Timestamp = time::OffsetDateTime;
