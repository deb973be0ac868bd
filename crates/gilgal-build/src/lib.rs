//! The "source → artifact" half of Gilgal's deploy pipeline.
//!
//! - [`archive`]: safe intake of uploaded tarballs and packing of a directory for upload.
//! - [`procfile`], [`command`], [`config`]: what to run and how, validated with line numbers.
//! - [`detect`]: which builder an app needs.
//! - [`git`]: fetching source from a repository URL and ref instead of an upload.
//! - [`builder`]: turning a source tree into an immutable, self-contained release directory.

#![warn(missing_docs)]

pub mod archive;
pub mod builder;
pub mod command;
pub mod config;
pub mod detect;
pub mod git;
pub mod procfile;

pub use archive::{
    inspect_tree, pack_dir, unpack_tar_gz, ArchiveError, PackSummary, UnpackLimits, UnpackSummary,
};
pub use builder::{
    build, plan_source, Artifact, BuildError, BuildRequest, BuildSandbox, BuildUser,
    DependencyCache, LogLine, LogSink, LogStream, ProcessSpec, ReleasePhase, SourcePlan,
};
pub use command::{CommandError, CommandLine};
pub use config::{
    AppConfig, ConfigError, EffectiveConfig, HealthCheck, ProcessSize, ReleaseSettings,
};
pub use detect::{detect_stack, resolve_stack, DetectError, Stack};
pub use git::{fetch_git, GitCheckout, GitError, GitFetchOptions, GitSource};
pub use procfile::{ProcessType, Procfile, ProcfileError};
