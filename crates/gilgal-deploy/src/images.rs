//! The build step on the Docker runtime: the source becomes an image instead of a host
//! release directory. The source's own `Dockerfile` is used when it has one, else one is
//! generated from the same stack detection as host builds; processes still come from the
//! `Procfile`/`gilgal.toml` (parsed by gilgal-build), with the image's `CMD` as the default
//! `web` process. The release's [`Artifact`] records the image id it runs
//! ([`Artifact::image`]); the release row's artifact column holds the image tag, which is
//! what pruning removes once no release uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use gilgal_build::builder::ARTIFACT_FORMAT_VERSION;
use gilgal_build::{Artifact, CommandLine, DependencyCache, LogSink, Stack};
use gilgal_docker::{
    app_image_tag, generate_dockerfile, registry_build_args_from_env, BaseImages, Docker,
    DockerfileSource, ImageBuild,
};
use gilgal_store::EnvironmentRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigSnapshot;
use crate::pipeline::{forward_build_log, DeployLog, Failure, Prepared};
use crate::Deployments;

/// Where and how releases are built as images (the Docker runtime's build step).
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// The dockerd that builds the images (the one the runtime runs them on).
    pub docker: Docker,
    /// Base images of generated Dockerfiles.
    pub bases: BaseImages,
}

/// Removes a pruned release's image tag; the image itself goes when no tag or container
/// holds it any more (never forced, so a running container keeps its image).
pub(crate) async fn remove_tag(images: &ImageSettings, tag: &str) {
    if !tag.starts_with("gilgal/app-") {
        return;
    }
    let options = gilgal_docker::bollard::query_parameters::RemoveImageOptions {
        force: false,
        noprune: false,
        ..Default::default()
    };
    if let Err(e) = images.docker.remove_image(tag, Some(options), None).await {
        tracing::info!(image = %tag, error = %e, "pruned release's image kept");
    }
}

/// `npm start` when a Node app defines a `start` script or has a `server.js`, as the host
/// builder decides.
fn node_default_web(source: &Path) -> Option<CommandLine> {
    let has_start = std::fs::read(source.join("package.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|package| package["scripts"]["start"].is_string());
    (has_start || source.join("server.js").is_file())
        .then(|| CommandLine::parse("npm start").ok())
        .flatten()
}

impl Deployments {
    /// Builds `source` into the image of the environment's next release.
    pub(crate) async fn build_image(
        &self,
        images: &ImageSettings,
        environment: &EnvironmentRecord,
        source: PathBuf,
        description: String,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<Prepared, Failure> {
        let started = Instant::now();
        let number = self
            .platform
            .store
            .next_release_number(environment.id)
            .await?;
        // Validate what the user wrote (with line numbers) before asking dockerd for anything.
        let bad_source =
            |e: gilgal_build::BuildError| Failure::Failed(format!("build failed: {e}"));
        let checked =
            gilgal_build::plan_source(&source, &environment.name, None).map_err(bad_source)?;
        let own_dockerfile = source.join("Dockerfile").is_file();
        let (dockerfile, stack) = if own_dockerfile {
            let stack =
                gilgal_build::resolve_stack(&source, &checked.config).unwrap_or(Stack::Command);
            log.system("building the image from the app's Dockerfile")
                .await;
            (
                DockerfileSource::InContext(PathBuf::from("Dockerfile")),
                stack,
            )
        } else {
            let stack = gilgal_build::resolve_stack(&source, &checked.config)
                .map_err(|e| Failure::Failed(format!("build failed: {e}")))?;
            let generated = generate_dockerfile(&source, Some(stack), &images.bases)
                .map_err(|e| Failure::Failed(format!("build failed: {e}")))?;
            (DockerfileSource::Generated(generated), stack)
        };
        let tag = app_image_tag(
            &crate::identity::app_label(environment),
            &crate::identity::env_label(environment),
            number,
        );
        let mut build = ImageBuild::new(&source, &tag);
        build.dockerfile = dockerfile;
        build.build_args = registry_build_args_from_env();
        let (lines_tx, lines_rx) = mpsc::channel::<gilgal_build::LogLine>(1024);
        let forward = forward_build_log(lines_rx, log.sender());
        let sink = LogSink::new(lines_tx);
        let built = tokio::select! {
            built = gilgal_docker::build_image(&images.docker, &build, &sink) => Some(built),
            _ = token.cancelled() => None,
        };
        drop(sink);
        let _ = forward.await;
        let built = match built {
            None => return Err(Failure::Cancelled),
            Some(Ok(built)) => built,
            Some(Err(e)) => return Err(Failure::Failed(format!("image build failed: {e}"))),
        };
        // The image's own CMD is the default web process (a static site's generated
        // Dockerfile serves it this way); a Node app without one runs `npm start`.
        let default_web = if !built.command.is_empty() {
            CommandLine::literal(&built.command).ok()
        } else if stack == Stack::Node {
            node_default_web(&source)
        } else {
            None
        };
        let plan = gilgal_build::plan_source(&source, &environment.name, default_web)
            .map_err(bad_source)?;
        if plan.processes.is_empty() {
            return Err(Failure::Failed(format!(
                "build failed: the image has nothing to run; add a Procfile with a `web:` line \
                 (or a CMD to the Dockerfile) for this {stack} app"
            )));
        }
        let build_millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log.system(format!("built image {tag} in {build_millis} ms"))
            .await;
        let artifact = Artifact {
            format_version: ARTIFACT_FORMAT_VERSION,
            stack,
            artifact_dir: PathBuf::from(&built.working_dir),
            app_dir: PathBuf::from(&built.working_dir),
            processes: plan.processes,
            release: plan.release,
            static_dir: None,
            path_prepend: Vec::new(),
            env: BTreeMap::new(),
            config: plan.config,
            dependency_cache: DependencyCache::NotApplicable,
            built_at: SystemTime::now(),
            build_millis,
            image: Some(built.id),
        };
        let records = self.platform.store.config_vars(environment.id).await?;
        Ok(Prepared {
            artifact,
            artifact_dir: PathBuf::from(tag),
            config: ConfigSnapshot::from_records(&records),
            run_release_phase: true,
            description,
        })
    }

    /// Makes an existing image (`repo:tag` or an id) the environment's next release: no build,
    /// the image's CMD is the web process and its config the release's, like a built image
    /// without a Procfile.
    pub(crate) async fn adopt_image(
        &self,
        images: &ImageSettings,
        environment: &EnvironmentRecord,
        reference: &str,
        log: &DeployLog,
    ) -> Result<Prepared, Failure> {
        let started = Instant::now();
        let number = self
            .platform
            .store
            .next_release_number(environment.id)
            .await?;
        let tag = app_image_tag(
            &crate::identity::app_label(environment),
            &crate::identity::env_label(environment),
            number,
        );
        let (lines_tx, lines_rx) = mpsc::channel::<gilgal_build::LogLine>(1024);
        let forward = forward_build_log(lines_rx, log.sender());
        let sink = LogSink::new(lines_tx);
        let adopted = gilgal_docker::adopt_image(&images.docker, reference, &tag, &sink).await;
        drop(sink);
        let _ = forward.await;
        let adopted = adopted.map_err(|e| Failure::Failed(e.to_string()))?;
        let web = CommandLine::literal(&adopted.command).map_err(|_| {
            Failure::Failed(format!(
                "image {reference} has no CMD to run as the web process; give it one (CMD [\"…\"]) or deploy its source with a Procfile"
            ))
        })?;
        // No source: the plan of an empty directory with the image's CMD as `web`.
        tokio::fs::create_dir_all(&self.platform.config.work_dir).await?;
        let empty = tempfile::tempdir_in(&self.platform.config.work_dir)?;
        let plan = gilgal_build::plan_source(empty.path(), &environment.name, Some(web))
            .map_err(|e| Failure::Failed(format!("cannot plan the image's processes: {e}")))?;
        let build_millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let artifact = Artifact {
            format_version: ARTIFACT_FORMAT_VERSION,
            stack: Stack::Command,
            artifact_dir: PathBuf::from(&adopted.working_dir),
            app_dir: PathBuf::from(&adopted.working_dir),
            processes: plan.processes,
            release: plan.release,
            static_dir: None,
            path_prepend: Vec::new(),
            env: BTreeMap::new(),
            config: plan.config,
            dependency_cache: DependencyCache::NotApplicable,
            built_at: SystemTime::now(),
            build_millis,
            image: Some(adopted.id),
        };
        let records = self.platform.store.config_vars(environment.id).await?;
        Ok(Prepared {
            artifact,
            artifact_dir: PathBuf::from(tag),
            config: ConfigSnapshot::from_records(&records),
            run_release_phase: true,
            description: format!("Deploy image {reference}"),
        })
    }
}
