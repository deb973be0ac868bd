//! Gilgal's domain rules, with no IO (no tokio, no sqlx, no axum).
//!
//! - [`lifecycle`]: the deployment state machine (Pending → Building → Releasing → Starting →
//!   Healthy → Live, then Draining → Retired, or Failed / Cancelled) and which transitions are
//!   legal, so the store can refuse an illegal one and no deploy stays "in progress" forever.
//! - [`desired`]: desired state as a value and its `diff` against what runs, so start-up and
//!   every later change go through one code path (start-up is a diff from nothing).
//! - [`hostnames`]: the default hostnames of a project's environments.
//! - [`exposition`]: Prometheus text from apps, relabelled strictly (untrusted input).
//! - [`alerts`]: alert rules, their defaults and validation, and when a rule is breached
//!   (windowed rates, histogram quantiles, the pending period).

pub mod alerts;
pub mod canary;
pub mod desired;
pub mod exposition;
pub mod hostnames;
pub mod lifecycle;
pub mod smoke;
