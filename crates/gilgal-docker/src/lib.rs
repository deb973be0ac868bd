//! Gilgal on Docker: [`DockerRuntime`], a second implementation of
//! [`gilgal_runtime::Runtime`] that runs every instance as a container, and image builds
//! ([`build_image`], [`generate_dockerfile`]) that turn an app's source into the image it runs.
//! dockerd is reached only through its API (bollard over the Unix socket); user values (argv,
//! env, paths, build args) travel as JSON/tar data, never through a shell.
//!
//! # How the pieces fit the pipeline
//! 1. Build: `Dockerfile` in the source → [`ImageBuild`] with
//!    [`DockerfileSource::InContext`]; otherwise [`generate_dockerfile`] from the detected
//!    stack → [`DockerfileSource::Generated`]. Tag it [`app_image_tag`]`(app, env, release)`.
//! 2. Run: [`DockerRuntime`] runs `InstanceSpec::image` (the pipeline passes the release's
//!    image id, so a reused release runs exactly the image it was built as); without one it
//!    maps the labels to a tag through [`DockerRuntimeConfig::image_template`].
//! 3. The proxy connects to `127.0.0.1:<port>`, where each web container's `$PORT` is
//!    published.
//!
//! # Base images
//! `scripts/docker-base-images` builds `gilgal/base:bookworm` (debootstrap + `docker import`,
//! with the host's custom CA certificates), `gilgal/python:bookworm` and
//! `gilgal/node:bookworm` without any registry; [`BaseImages`] names them for generated
//! Dockerfiles and can point elsewhere.
//!
//! # Health checks and Docker's userland proxy
//! With dockerd's default `userland-proxy: true`, the published `127.0.0.1:<port>` accepts
//! TCP connections even before the app listens (the proxy process accepts, then closes), so
//! a bare TCP probe there passes too early. Either probe over HTTP, or probe
//! [`DockerRuntime::container_addr`] (the container's own address), or run dockerd with
//! `--userland-proxy=false` (then loopback traffic is NATed straight to the container,
//! which is also faster). `scripts/docker-base-images` writes that setting to
//! `/etc/docker/daemon.json` when the machine has none.
//!
//! # Use
//! ```no_run
//! use std::time::Duration;
//! use gilgal_docker::*;
//! use gilgal_runtime::{InstanceLabels, InstanceSpec, Runtime};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let docker = connect().await?;
//! let source = std::path::Path::new("/srv/gilgal/builds/billing-12");
//! let dockerfile = match source.join("Dockerfile").is_file() {
//!     true => DockerfileSource::InContext("Dockerfile".into()),
//!     false => DockerfileSource::Generated(generate_dockerfile(source, None, &BaseImages::default())?),
//! };
//! let mut build = ImageBuild::new(source, app_image_tag("billing", "production", 12));
//! build.dockerfile = dockerfile;
//! build.build_args = registry_build_args_from_env();
//! build_image(&docker, &build, &gilgal_build::LogSink::discard()).await?;
//!
//! let runtime = DockerRuntime::new(docker, "/var/lib/gilgal/docker", DockerRuntimeConfig::default()).await?;
//! let labels = InstanceLabels { app: "billing".into(), env: "production".into(), release: 12, process_type: "web".into(), index: 0 };
//! let mut spec = InstanceSpec::new(labels, vec!["gunicorn".into(), "--bind".into(), "0.0.0.0:20001".into(), "app:app".into()], "/app");
//! spec.port = Some(20_001);
//! let id = runtime.start(spec).await?;
//! runtime.stop(&id, Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod build;
mod context;
mod dockerfile;
mod error;
mod image;
pub mod labels;
mod logs;
mod record;
mod runtime;

use std::time::Duration;

pub use build::{
    adopt_image, build_image, registry_build_args_from_env, BuiltImage, DockerfileSource,
    ImageBuild,
};
pub use context::{dockerignore_matcher, write_context, ContextSpec};
pub use dockerfile::{
    generate_dockerfile, BaseImages, GeneratedDockerfile, GENERATED_DOCKERFILE_NAME,
};
pub use error::DockerError;
pub use image::{app_image_tag, render_image_template, validate_reference, DEFAULT_IMAGE_TEMPLATE};
pub use runtime::{DockerRuntime, DockerRuntimeConfig, WorkingDirMode};

/// The bollard version this crate speaks, for callers that need more of dockerd's API
/// (listing containers in tests, custom connections) without a second bollard dependency.
pub use bollard;
/// Re-exported so callers can hold a client without depending on bollard themselves.
pub use bollard::Docker;

/// Connects to the local dockerd (`DOCKER_HOST` or `/var/run/docker.sock`), negotiates the
/// API version down to what the daemon speaks (Debian 12's docker.io speaks 1.41), and checks
/// it answers, so a missing daemon is reported once, at start-up, with what to do.
pub async fn connect() -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
    let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
        .await
        .map_err(|_| DockerError::Connect(bollard::errors::Error::RequestTimeoutError))?
        .map_err(DockerError::Connect)?;
    docker.ping().await.map_err(DockerError::Connect)?;
    Ok(docker)
}

/// The host's address on Docker's default bridge (what `host.docker.internal` resolves to
/// in Gilgal's containers): add-on servers listen there too so containers reach them. The
/// gateway when dockerd reports one, else the first address of the bridge's IPv4 subnet
/// (where dockerd puts it by default).
pub async fn bridge_gateway(docker: &Docker) -> Option<std::net::IpAddr> {
    let network = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .ok()?;
    let configs = network.ipam?.config?;
    if let Some(gateway) = configs
        .iter()
        .find_map(|c| c.gateway.as_deref()?.parse::<std::net::IpAddr>().ok())
    {
        return Some(gateway);
    }
    configs.iter().find_map(|c| {
        let (base, _) = c.subnet.as_deref()?.split_once('/')?;
        let base: std::net::Ipv4Addr = base.parse().ok()?;
        Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(base).checked_add(1)?,
        )))
    })
}
