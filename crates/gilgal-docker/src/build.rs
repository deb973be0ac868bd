//! Image builds through dockerd's build API: the context is streamed as a tar
//! ([`crate::context`]), build output is streamed line by line to the deploy's
//! [`LogSink`], and the daemon's layer cache is used (no `nocache`, no forced pull), so a
//! redeploy that changes only code rebuilds only the layers after `COPY . .`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use gilgal_build::{LogSink, LogStream};

use crate::context::{write_context, ChannelWriter, ContextSpec};
use crate::dockerfile::{GeneratedDockerfile, GENERATED_DOCKERFILE_NAME};
use crate::error::DockerError;
use crate::image::validate_reference;
use crate::labels::LABEL_PREFIX;

/// Which Dockerfile to build with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// A Dockerfile inside the context, by its path relative to the context root
    /// (usually `Dockerfile`).
    InContext(PathBuf),
    /// A generated Dockerfile ([`crate::generate_dockerfile`]), added to the context under
    /// [`GENERATED_DOCKERFILE_NAME`] without touching the source directory.
    Generated(GeneratedDockerfile),
}

/// One image build; exists so the pipeline describes a build without knowing bollard.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The source directory sent as the build context.
    pub context_dir: PathBuf,
    /// The Dockerfile.
    pub dockerfile: DockerfileSource,
    /// The tag to give the image (e.g. [`crate::app_image_tag`]).
    pub tag: String,
    /// `--build-arg`s (registry mirrors and proxies, see
    /// [`registry_build_args_from_env`]). Values are passed to dockerd as data, never through
    /// a shell.
    pub build_args: HashMap<String, String>,
    /// Labels for the image (`dev.gilgal.*` ones identify the app and release).
    pub labels: HashMap<String, String>,
    /// Longest the whole build may take.
    pub timeout: Duration,
}

impl ImageBuild {
    /// A build of `context_dir` with its own `Dockerfile`, tagged `tag`, 30 min limit.
    pub fn new(context_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        ImageBuild {
            context_dir: context_dir.into(),
            dockerfile: DockerfileSource::InContext(PathBuf::from("Dockerfile")),
            tag: tag.into(),
            build_args: HashMap::new(),
            labels: HashMap::new(),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// What a finished build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image id (`sha256:…`), immutable, unlike the tag.
    pub id: String,
    /// The tag it was given.
    pub tag: String,
    /// The image's default command (`CMD`), so a release without a Procfile `web` line can
    /// run what the Dockerfile says; empty when the image has none.
    pub command: Vec<String>,
    /// The image's `ENTRYPOINT` (a Procfile command becomes its arguments, as with
    /// `docker run`); empty when the image has none.
    pub entrypoint: Vec<String>,
    /// The image's `WORKDIR`, where the app's files are (absolute; `/` when unset).
    pub working_dir: String,
}

/// Build args for registry access taken from this server's environment: the proxy variables
/// (Docker passes them to `RUN` steps without an `ARG`) and `PIP_INDEX_URL`,
/// `PIP_EXTRA_INDEX_URL`, `PIP_TRUSTED_HOST`, `NPM_CONFIG_REGISTRY` (declared by generated
/// Dockerfiles). Only variables that are set are returned.
pub fn registry_build_args_from_env() -> HashMap<String, String> {
    const NAMES: &[&str] = &[
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "NPM_CONFIG_REGISTRY",
    ];
    NAMES
        .iter()
        .filter_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .map(|value| ((*name).to_owned(), value))
        })
        .collect()
}

/// Builds an image and returns its id. Every line of build output goes to `log` (stdout:
/// build steps; system: Gilgal's own notes); a failing step fails with its message.
pub async fn build_image(
    docker: &Docker,
    build: &ImageBuild,
    log: &LogSink,
) -> Result<BuiltImage, DockerError> {
    validate_reference(&build.tag)?;
    let (dockerfile_name, context_spec) = match &build.dockerfile {
        DockerfileSource::InContext(path) => {
            let name = relative_dockerfile(&build.context_dir, path)?;
            (
                name.clone(),
                ContextSpec {
                    always_include: vec![name],
                    ..Default::default()
                },
            )
        }
        DockerfileSource::Generated(generated) => {
            log.system(format!(
                "no Dockerfile: building with a generated one for the {} stack",
                generated.stack
            ))
            .await;
            (
                GENERATED_DOCKERFILE_NAME.to_owned(),
                ContextSpec {
                    extra_ignores: generated.ignores.clone(),
                    always_include: Vec::new(),
                    generated: Some((
                        GENERATED_DOCKERFILE_NAME.to_owned(),
                        generated.contents.clone().into_bytes(),
                    )),
                },
            )
        }
    };

    // The tar is written on a blocking thread and streamed to dockerd as it is produced.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let context_dir = build.context_dir.clone();
    let packer = tokio::task::spawn_blocking(move || {
        write_context(&context_dir, &context_spec, ChannelWriter::new(sender))
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });

    let mut labels = build.labels.clone();
    labels
        .entry(format!("{LABEL_PREFIX}managed"))
        .or_insert_with(|| "true".to_owned());
    let options = BuildImageOptions {
        dockerfile: dockerfile_name,
        t: Some(build.tag.clone()),
        rm: true,
        forcerm: true,
        buildargs: (!build.build_args.is_empty()).then(|| build.build_args.clone()),
        labels: Some(labels),
        ..Default::default()
    };
    // The request's own timeout covers the context upload; the stream gets the build limit.
    let docker = docker.clone().with_timeout(build.timeout);
    let mut stream = docker.build_image(options, None, Some(bollard::body_stream(body)));
    let mut image_id = None;
    let mut pending = String::new();
    let outcome = tokio::time::timeout(build.timeout, async {
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(DockerError::Build(error.trim_end().to_owned()))
                }
                Err(err) => return Err(DockerError::api("building the image", err)),
            };
            if let Some(text) = info.stream {
                pending.push_str(&text);
                while let Some(newline) = pending.find('\n') {
                    let line: String = pending.drain(..=newline).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if !line.is_empty() {
                        log.send(LogStream::Stdout, line).await;
                    }
                }
            }
            if let Some(status) = info.status {
                let progress = info.progress_detail.is_some() && info.id.is_some();
                if !progress {
                    log.send(LogStream::Stdout, status).await;
                }
            }
            if let Some(id) = info.aux.and_then(|aux| aux.id) {
                image_id = Some(id);
            }
        }
        Ok(())
    })
    .await;
    if !pending.trim().is_empty() {
        log.send(LogStream::Stdout, pending.trim_end()).await;
    }
    let packed = packer.await;
    match outcome {
        Err(_) => {
            return Err(DockerError::Build(format!(
                "the build did not finish within {:?}",
                build.timeout
            )))
        }
        Ok(Err(err)) => {
            // A context that could not be packed explains a truncated-tar error better.
            if let Ok(Err(pack_err)) = packed {
                return Err(pack_err);
            }
            return Err(err);
        }
        Ok(Ok(())) => {}
    }
    match packed {
        Ok(Ok(entries)) => tracing::debug!(entries, tag = %build.tag, "build context sent"),
        Ok(Err(err)) => return Err(err),
        Err(err) => {
            return Err(DockerError::Build(format!(
                "packing the context panicked: {err}"
            )))
        }
    }
    // The tag is authoritative (older daemons send no aux id).
    let inspected = docker.inspect_image(&build.tag).await.map_err(|err| {
        DockerError::api(format!("inspecting the built image {}", build.tag), err)
    })?;
    let config = inspected.config.clone().unwrap_or_default();
    let working_dir = config
        .working_dir
        .filter(|dir| dir.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());
    let id = inspected
        .id
        .or(image_id)
        .ok_or_else(|| DockerError::Build(format!("dockerd reported no id for {}", build.tag)))?;
    log.system(format!("built image {} ({id})", build.tag))
        .await;
    Ok(BuiltImage {
        id,
        tag: build.tag.clone(),
        command: config.cmd.unwrap_or_default(),
        entrypoint: config.entrypoint.unwrap_or_default(),
        working_dir,
    })
}

/// The Dockerfile's path relative to the context, refusing paths that leave it.
fn relative_dockerfile(context_dir: &Path, path: &Path) -> Result<String, DockerError> {
    let relative = if path.is_absolute() {
        path.strip_prefix(context_dir).map_err(|_| {
            DockerError::Build(format!(
                "the Dockerfile {} is outside the build context {}",
                path.display(),
                context_dir.display()
            ))
        })?
    } else {
        path
    };
    let escapes = relative.components().any(|part| {
        !matches!(
            part,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if escapes || relative.as_os_str().is_empty() {
        return Err(DockerError::Build(format!(
            "the Dockerfile path {} must stay inside the build context",
            path.display()
        )));
    }
    if !context_dir.join(relative).is_file() {
        return Err(DockerError::Build(format!(
            "no Dockerfile at {} in the build context",
            relative.display()
        )));
    }
    Ok(relative.to_string_lossy().into_owned())
}

/// Makes an existing image the image of a release, without a build: `reference` is looked up
/// locally (pulled from its registry when absent and the daemon can reach one), then tagged
/// `tag` so the release keeps it, and pruning can untag it, exactly like a built one. The
/// user's own reference is left as it is.
pub async fn adopt_image(
    docker: &Docker,
    reference: &str,
    tag: &str,
    log: &LogSink,
) -> Result<BuiltImage, DockerError> {
    validate_reference(reference)?;
    validate_reference(tag)?;
    let inspected = match docker.inspect_image(reference).await {
        Ok(inspected) => inspected,
        Err(err) if crate::error::is_not_found(&err) => {
            log.system(format!("{reference} is not on this machine; pulling it"))
                .await;
            let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
                .from_image(reference)
                .build();
            let mut pull = docker.create_image(Some(options), None, None);
            while let Some(progress) = pull.next().await {
                match progress {
                    Ok(info) => {
                        if let Some(status) = info.status {
                            log.system(status).await;
                        }
                    }
                    Err(err) => {
                        return Err(DockerError::Build(format!(
                        "image {reference} is not on this machine and could not be pulled: {err}"
                    )))
                    }
                }
            }
            docker
                .inspect_image(reference)
                .await
                .map_err(|err| DockerError::api(format!("inspecting {reference}"), err))?
        }
        Err(err) => return Err(DockerError::api(format!("inspecting {reference}"), err)),
    };
    let id = inspected
        .id
        .clone()
        .ok_or_else(|| DockerError::Build(format!("dockerd reported no id for {reference}")))?;
    let (repo, version) = tag
        .rsplit_once(':')
        .ok_or_else(|| DockerError::InvalidReference {
            reference: tag.to_owned(),
            reason: "a release tag needs a version".to_owned(),
        })?;
    let options = bollard::query_parameters::TagImageOptions {
        repo: Some(repo.to_owned()),
        tag: Some(version.to_owned()),
    };
    docker
        .tag_image(&id, Some(options))
        .await
        .map_err(|err| DockerError::api(format!("tagging {reference} as {tag}"), err))?;
    log.system(format!("using image {reference} ({id}) as {tag}"))
        .await;
    let config = inspected.config.unwrap_or_default();
    Ok(BuiltImage {
        id,
        tag: tag.to_owned(),
        command: config.cmd.unwrap_or_default(),
        entrypoint: config.entrypoint.unwrap_or_default(),
        working_dir: config
            .working_dir
            .filter(|dir| dir.starts_with('/'))
            .unwrap_or_else(|| "/".to_owned()),
    })
}
