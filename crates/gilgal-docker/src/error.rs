//! Errors of the Docker side of Gilgal: [`DockerError`] for connecting and building images
//! (the deploy pipeline shows them in the build log), and the conversion of dockerd failures
//! into the runtime crate's [`RuntimeError`] for the [`gilgal_runtime::Runtime`] methods.

use std::path::PathBuf;

use gilgal_runtime::RuntimeError;

/// Everything connecting to dockerd or building an image can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// dockerd could not be reached (not installed, not running, no permission on the socket).
    #[error(
        "cannot reach dockerd: {0}; is it running (scripts/docker-base-images starts it) and \
         is /var/run/docker.sock accessible to this user?"
    )]
    Connect(#[source] bollard::errors::Error),
    /// dockerd answered with an error.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// bollard's error (it carries dockerd's message).
        #[source]
        source: bollard::errors::Error,
    },
    /// The image build failed (a step exited non-zero, a bad Dockerfile...).
    #[error("image build failed: {0}")]
    Build(String),
    /// The build context could not be read or packed.
    #[error("build context {path}: {source}")]
    Context {
        /// File or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No Dockerfile can be generated for this source tree.
    #[error("cannot generate a Dockerfile: {0}")]
    Generate(String),
    /// An image reference is not valid for Docker.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DockerError {
    /// Wraps a dockerd error with a short description of what was being attempted.
    pub(crate) fn api(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        DockerError::Api {
            context: context.into(),
            source,
        }
    }
}

/// Turns a dockerd failure into the runtime error type the `Runtime` trait returns.
pub(crate) fn runtime_error(
    context: impl Into<String>,
    err: bollard::errors::Error,
) -> RuntimeError {
    RuntimeError::Io {
        context: context.into(),
        source: std::io::Error::other(err),
    }
}

/// True when dockerd said "no such container/image" (HTTP 404).
pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when dockerd said the container is already stopped (HTTP 304 on stop is success in
/// bollard, but some versions answer 409 on conflicts).
pub(crate) fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}
