//! `gilgal deploy`: pack, upload with a progress bar, stream the build log, print the URL.

use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use gilgal_types::{Deployment, DeploymentLogLine};
use indicatif::{ProgressBar, ProgressStyle};

use super::Session;
use crate::cli::DeployArgs;

/// Runs a deploy; exits non-zero when the deployment does not go live.
pub async fn run(session: &Session, args: DeployArgs, json: bool) -> anyhow::Result<ExitCode> {
    let canary = args.canary_options()?;
    if let Some(steps) = canary.as_ref().and_then(|o| o.canary.as_ref()) {
        // Refused here with the server's own words before anything is packed.
        gilgal_core::canary::parse_steps(steps)
            .map_err(|e| anyhow::anyhow!("--canary {steps}: {e}"))?;
    }
    let canary = canary.as_ref();
    let client = session.authenticated()?;
    let project = client.project_by_name(&args.project).await?;
    let accepted = if let Some(image) = &args.image {
        Some(
            client
                .create_image_deployment(project.id, &args.env, canary, image)
                .await?,
        )
    } else if let Some(url) = args.git {
        Some(
            client
                .create_git_deployment(
                    project.id,
                    &args.env,
                    canary,
                    &gilgal_types::GitDeployRequest {
                        url,
                        reference: args.reference,
                    },
                )
                .await?,
        )
    } else {
        None
    };
    if let Some(deployment) = accepted {
        eprintln!(
            "Deployment {} accepted for {} ({})",
            deployment.id, project.name, deployment.environment
        );
        if args.no_follow {
            return finish(deployment, json);
        }
        return follow(&client, deployment, json).await;
    }
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );

    let packed = tempfile_path()?;
    let (dir, target) = (args.dir.clone(), packed.clone());
    let summary =
        tokio::task::spawn_blocking(move || -> anyhow::Result<gilgal_build::PackSummary> {
            let file = std::fs::File::create(&target)?;
            Ok(gilgal_build::pack_dir(&dir, std::io::BufWriter::new(file))?)
        })
        .await??;
    let size = std::fs::metadata(&packed)?.len();
    eprintln!(
        "Packed {} files ({} KiB) from {}",
        summary.files,
        size.div_ceil(1024),
        args.dir.display()
    );
    if !summary.left_out.is_empty() {
        const SHOWN: usize = 5;
        let mut names = summary.left_out[..summary.left_out.len().min(SHOWN)].join(", ");
        if summary.left_out.len() > SHOWN {
            names.push_str(&format!(" and {} more", summary.left_out.len() - SHOWN));
        }
        eprintln!(
            "Left out {names}: local secrets and what the build recreates are never uploaded (re-include one with `!NAME` in .gilgalignore)"
        );
    }

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("Uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let file = tokio::fs::File::open(&packed).await?;
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.inc(bytes.len() as u64);
        }
    });
    let created = client
        .create_deployment(project.id, &args.env, canary, reqwest_body(stream))
        .await;
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&packed);
    let deployment = created?;
    eprintln!(
        "Deployment {} accepted for {} ({})",
        deployment.id, project.name, deployment.environment
    );
    if args.no_follow {
        return finish(deployment, json);
    }
    follow(&client, deployment, json).await
}

/// Streams a deployment's log until it settles, then reports how it ended (the exit code
/// says whether it went live).
pub async fn follow(
    client: &gilgal_client::Client,
    deployment: Deployment,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let response = client.deployment_logs(deployment.id, true).await?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.context("the log stream broke off; `gilgal` can show the result with the API")?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(entry) = serde_json::from_slice::<DeploymentLogLine>(&line) {
                if json {
                    continue;
                }
                match entry.stream.as_str() {
                    "system" => eprintln!("{}", entry.line),
                    _ => eprintln!("       {}", entry.line),
                }
            }
        }
    }
    // The server may end the stream before the deployment settles (a restart, a re-check it
    // could not make): the outcome is then read until it is known, never guessed.
    let mut deployment = client.deployment(deployment.id).await?;
    let mut said = false;
    while IN_PROGRESS.contains(&deployment.state.as_str()) {
        if !said && !json {
            eprintln!(
                "the log stream ended while the deployment is {}; waiting for its outcome",
                deployment.state
            );
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        deployment = client.deployment(deployment.id).await?;
    }
    finish(deployment, json)
}

/// The states of a deployment that has not settled yet.
const IN_PROGRESS: [&str; 6] = [
    "pending",
    "building",
    "releasing",
    "starting",
    "healthy",
    "canary",
];

/// `gilgal deployments …`.
pub async fn deployments(
    session: &Session,
    command: crate::cli::DeploymentsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        crate::cli::DeploymentsCommand::Cancel { deployment } => {
            let id = deployment
                .parse()
                .with_context(|| format!("{deployment:?} is not a deployment id"))?;
            let mut deployment = client.cancel_deployment(id).await?;
            // Cancelling is asynchronous: the step in progress stops and cleans up first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while IN_PROGRESS.contains(&deployment.state.as_str())
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                deployment = client.deployment(id).await?;
            }
            if json {
                crate::output::json(&deployment)?;
                return Ok(ExitCode::SUCCESS);
            }
            match deployment.state.as_str() {
                "cancelled" => {
                    println!(
                        "Cancelled deployment {id}; what was live in {} keeps serving",
                        deployment.environment
                    );
                    Ok(ExitCode::SUCCESS)
                }
                other => {
                    eprintln!(
                        "error: deployment {id} is {other}: it was past its last step before the cancel reached it"
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

pub fn finish(deployment: Deployment, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        crate::output::json(&deployment)?;
    }
    match deployment.state.as_str() {
        "live" => {
            if !json {
                let release = deployment
                    .release
                    .map(|r| format!("v{r}"))
                    .unwrap_or_default();
                println!(
                    "Deployed {release} to {}: {}",
                    deployment.environment,
                    deployment.url.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "failed" | "cancelled" => {
            if !json {
                eprintln!(
                    "error: deployment {}: {}",
                    deployment.state,
                    deployment
                        .failure
                        .unwrap_or_else(|| "no reason recorded".to_owned())
                );
            }
            Ok(ExitCode::FAILURE)
        }
        other => {
            if !json {
                println!("Deployment {} is {other}", deployment.id);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn reqwest_body<S>(stream: S) -> reqwest::Body
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
{
    reqwest::Body::wrap_stream(stream)
}

fn tempfile_path() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir();
    Ok(dir.join(format!("gilgal-deploy-{}.tar.gz", uuid::Uuid::new_v4())))
}

fn describe(figures: &gilgal_types::CanaryFigures) -> String {
    let p99 = figures
        .p99_seconds
        .map(|s| format!(", p99 ≤ {:.0} ms", s * 1000.0))
        .unwrap_or_default();
    format!(
        "{} requests, {:.1} % 5xx{p99}",
        figures.requests,
        figures.error_rate * 100.0
    )
}

/// `gilgal canary …`.
pub async fn canary(
    session: &Session,
    command: crate::cli::CanaryCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::cli::CanaryCommand;
    let client = session.authenticated()?;
    let (target, action) = match command {
        CanaryCommand::Status { target } => (target, None),
        CanaryCommand::Promote { full, target } => (target, Some(Some(full))),
        CanaryCommand::Abort { target } => (target, Some(None)),
    };
    let env = super::apps::environment(&client, &target).await?;
    let status = match action {
        None => client.canary_status(env.id).await?.with_context(|| {
            format!(
                "no canary is in progress in {}/{} (start one with `gilgal deploy --canary 10,25,50,100`)",
                target.project, target.env
            )
        })?,
        Some(Some(full)) => client.promote_canary(env.id, full).await?,
        Some(None) => {
            let mut deployment = client.abort_canary(env.id).await?;
            // The rollback is asynchronous: the canary drains and stops first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while IN_PROGRESS.contains(&deployment.state.as_str())
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                deployment = client.deployment(deployment.id).await?;
            }
            if json {
                crate::output::json(&deployment)?;
            } else if deployment.state == "cancelled" {
                println!(
                    "Aborted the canary of {}/{}: all traffic is back on the live release, the canary's instances are stopped",
                    target.project, target.env
                );
            } else {
                eprintln!(
                    "error: the canary's deployment {} is {}: it was past its last step before the abort reached it",
                    deployment.id, deployment.state
                );
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        crate::output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(full) = action.flatten() {
        println!(
            "Promoted the canary v{}{}",
            status.release,
            if full {
                " to live"
            } else {
                " past its current step"
            }
        );
    }
    println!(
        "canary v{} against v{}: step {} of [{}], {} % of new requests, {} ({} s)",
        status.release,
        status.stable_release,
        status.step + 1,
        status.steps,
        status.weight,
        status.phase,
        status.step_seconds
    );
    println!("  v{}  {}", status.release, describe(&status.canary));
    println!("  v{}  {}", status.stable_release, describe(&status.stable));
    Ok(ExitCode::SUCCESS)
}
