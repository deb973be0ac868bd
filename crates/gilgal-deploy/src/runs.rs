//! One-off runs of the live release (`gilgal run`, cron) and the cron scheduler.
//!
//! A run is a one-off instance of the environment's live release with its config: its output
//! is kept (secrets redacted) and its exit status recorded. Cron ticks are claimed in the store
//! before a run starts — `(job, tick)` is unique — so a tick never runs twice, across restarts
//! too; a tick that finds the previous run still going is recorded as skipped unless the job
//! allows overlap. Missed ticks are not replayed: after downtime only the latest due tick runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use gilgal_runtime::{InstanceLabels, InstanceSpec, RestartPolicy};
use gilgal_store::{CronJobRecord, EnvironmentRecord};
use uuid::Uuid;

use crate::config::ConfigSnapshot;
use crate::pipeline::release_env;
use crate::DeployError;

/// Process type of one-off instances in labels and logs.
pub(crate) const RUN_PROCESS: &str = "run";
/// How often the scheduler looks for due ticks.
const CRON_POLL: Duration = Duration::from_millis(500);

/// A one-off run to start.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The command and its arguments (never through a shell).
    pub argv: Vec<String>,
    /// The cron job and tick (Unix seconds) it runs for, if any.
    pub cron: Option<(Uuid, i64)>,
}

/// How a run ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// `succeeded` or `failed`.
    pub state: String,
    /// Exit code, if the process exited.
    pub exit_code: Option<i64>,
}

/// Parses a cron schedule: five fields (minute hour day month weekday, UTC), or six with
/// seconds first.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    let nickname = schedule.trim_start().starts_with('@');
    let fields = schedule.split_whitespace().count();
    if !nickname && fields != 5 {
        return Err(format!(
            "invalid cron schedule {schedule:?}: a schedule has exactly 5 fields (minute hour day-of-month month day-of-week) and runs at most once a minute; seconds and years are not accepted"
        ));
    }
    croner::Cron::new(schedule)
        .parse()
        .map_err(|e| format!("invalid cron schedule {schedule:?}: {e}"))
}

/// The latest tick of `cron` in `(after, now]`, in Unix seconds.
pub(crate) fn latest_due_tick(cron: &croner::Cron, after: i64, now: DateTime<Utc>) -> Option<i64> {
    let start = Utc.timestamp_opt(after, 0).single()?;
    let mut latest = None;
    for tick in cron.iter_after(start).take(10_000) {
        if tick > now {
            break;
        }
        latest = Some(tick.timestamp());
    }
    latest
}

/// One-off runs (a command in a fresh instance of the live release) and the cron scheduler
/// that starts them on schedule.
#[derive(Debug)]
pub struct Runs {
    pub(crate) platform: Arc<crate::Platform>,
}

impl Runs {
    pub(crate) fn new(platform: Arc<crate::Platform>) -> Self {
        Self { platform }
    }

    /// Starts a one-off instance of the environment's live release running `request.argv`
    /// and returns the run's id at once; output goes to the run's log. For a cron tick that
    /// was already claimed, returns `Ok(None)`.
    pub async fn start_run(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        request: RunRequest,
    ) -> Result<Option<Uuid>, DeployError> {
        let Some(number) = environment.live_release else {
            return Err(DeployError::Invalid(
                "the environment has no live release yet; deploy first".to_owned(),
            ));
        };
        if request.argv.is_empty() {
            return Err(DeployError::Invalid("the command is empty".to_owned()));
        }
        let release = self.platform.store.release(environment.id, number).await?;
        let artifact: gilgal_build::Artifact = serde_json::from_str(&release.artifact_json)
            .map_err(|e| DeployError::Invalid(format!("release v{number} is unreadable: {e}")))?;
        let snapshot = ConfigSnapshot::parse(&release.config_json)?;
        let config = self
            .platform
            .vault
            .resolve(environment.id, &snapshot)
            .await?;
        let command_json = serde_json::to_string(&request.argv).unwrap_or_default();
        let Some(run_id) = self
            .platform
            .store
            .create_run(
                environment.id,
                request.cron,
                Some(number),
                &command_json,
                "running",
            )
            .await?
        else {
            return Ok(None);
        };
        let mut env = release_env(&artifact, &config.vars, number);
        env.insert("GILGAL_APP".to_owned(), environment.project_name.clone());
        env.insert("GILGAL_ENV".to_owned(), environment.name.clone());
        let labels = InstanceLabels {
            app: crate::identity::app_label(environment),
            env: crate::identity::env_label(environment),
            release: number,
            process_type: RUN_PROCESS.to_owned(),
            index: 0,
        };
        let mut spec = InstanceSpec::new(labels, request.argv.clone(), artifact.app_dir.clone());
        spec.env = env;
        spec.restart = RestartPolicy::Never;
        spec.run_as = self.platform.run_as();
        spec.image = artifact.image.clone();
        let handle = match self.platform.runtime.run_oneoff(spec).await {
            Ok(handle) => handle,
            Err(e) => {
                let reason = config.redactor.redact(&e.to_string()).into_owned();
                self.platform
                    .store
                    .finish_run(run_id, "failed", None, Some(&reason))
                    .await?;
                return Ok(Some(run_id));
            }
        };
        let store = self.platform.store.clone();
        let redactor = config.redactor;
        tokio::spawn(async move {
            let mut handle = handle;
            let mut batch: Vec<(i64, String, String)> = Vec::new();
            loop {
                let next =
                    tokio::time::timeout(Duration::from_millis(200), handle.next_line()).await;
                match next {
                    Ok(Some(line)) => {
                        let at = line.at.unix_timestamp_nanos() / 1_000_000;
                        let stream = match line.stream {
                            gilgal_runtime::LogStream::Stdout => "stdout",
                            gilgal_runtime::LogStream::Stderr => "stderr",
                        };
                        let text = redactor.redact(&line.line).into_owned();
                        batch.push((i64::try_from(at).unwrap_or(0), stream.to_owned(), text));
                        if batch.len() < 200 {
                            continue;
                        }
                    }
                    Ok(None) => {
                        flush(&store, run_id, &mut batch).await;
                        break;
                    }
                    Err(_) => {}
                }
                flush(&store, run_id, &mut batch).await;
            }
            let (state, code, failure) = match handle.wait(None).await {
                Ok(exit) => {
                    let code = exit.code.map(i64::from);
                    if exit.success() {
                        ("succeeded", code, None)
                    } else {
                        ("failed", code, Some(exit.describe()))
                    }
                }
                Err(e) => ("failed", None, Some(e.to_string())),
            };
            if let Err(e) = store
                .finish_run(run_id, state, code, failure.as_deref())
                .await
            {
                tracing::error!(run = %run_id, error = %e, "could not record a run's end");
            }
        });
        Ok(Some(run_id))
    }

    /// Fails runs that were going when the server stopped (their processes are gone).
    pub(crate) async fn recover_runs(&self) -> Result<(), DeployError> {
        for run in self.platform.store.running_runs().await? {
            self.platform
                .store
                .finish_run(
                    run.id,
                    "failed",
                    None,
                    Some("the server restarted during this run"),
                )
                .await?;
        }
        Ok(())
    }

    /// Runs the cron scheduler until `shutdown` fires.
    pub async fn run_cron(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.cron_pass(Utc::now()).await {
                tracing::warn!(error = %e, "cron pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CRON_POLL) => {}
            }
        }
    }

    /// Starts (or records as skipped) every job's latest due tick not yet claimed.
    async fn cron_pass(self: &Arc<Self>, now: DateTime<Utc>) -> Result<(), DeployError> {
        for job in self.platform.store.cron_jobs(None).await? {
            if let Err(e) = self.cron_job_pass(&job, now).await {
                tracing::warn!(job = %job.id, error = %e, "cron job could not run");
            }
        }
        Ok(())
    }

    async fn cron_job_pass(
        self: &Arc<Self>,
        job: &CronJobRecord,
        now: DateTime<Utc>,
    ) -> Result<(), DeployError> {
        let cron = parse_schedule(&job.schedule).map_err(DeployError::Invalid)?;
        let created = job.created_at.unix_timestamp();
        let after = self
            .platform
            .store
            .last_cron_tick(job.id)
            .await?
            .unwrap_or(created)
            .max(created);
        let Some(tick) = latest_due_tick(&cron, after, now) else {
            return Ok(());
        };
        let environment = self
            .platform
            .store
            .environment_by_id(job.environment_id)
            .await?;
        if environment.live_release.is_none() {
            return Ok(());
        }
        if !job.allow_overlap && self.platform.store.cron_job_running(job.id).await? {
            let claimed = self
                .platform
                .store
                .create_run(
                    environment.id,
                    Some((job.id, tick)),
                    environment.live_release,
                    &job.command,
                    "skipped",
                )
                .await?;
            if let Some(run) = claimed {
                self.platform
                    .store
                    .finish_run(
                        run,
                        "skipped",
                        None,
                        Some("the previous run was still going"),
                    )
                    .await?;
            }
            return Ok(());
        }
        let argv: Vec<String> = serde_json::from_str(&job.command)
            .map_err(|e| DeployError::Invalid(format!("stored cron command: {e}")))?;
        self.start_run(
            &environment,
            RunRequest {
                argv,
                cron: Some((job.id, tick)),
            },
        )
        .await?;
        Ok(())
    }
}

async fn flush(store: &gilgal_store::Store, run: Uuid, batch: &mut Vec<(i64, String, String)>) {
    if batch.is_empty() {
        return;
    }
    let rows: Vec<(i64, &str, &str)> = batch
        .iter()
        .map(|(at, s, l)| (*at, s.as_str(), l.as_str()))
        .collect();
    if let Err(e) = store.append_run_logs(run, &rows).await {
        tracing::warn!(%run, error = %e, "could not store run output");
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_five_field_schedules_parse() {
        assert!(parse_schedule("0 * * * *").is_ok());
        // Minute resolution only: a seconds (or years) field would run every supervisor tick.
        for too_fine in ["*/2 * * * * *", "* * * * * *", "0 0 * * * * 2030"] {
            let refused = parse_schedule(too_fine).unwrap_err();
            assert!(refused.contains("exactly 5 fields"), "{refused}");
        }
        assert!(parse_schedule("@hourly").is_ok());
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("not cron").is_err());
    }

    #[test]
    fn latest_due_tick_skips_missed_ones() {
        let hourly = parse_schedule("0 * * * *").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 3, 10, 0).unwrap();
        let tick = latest_due_tick(&hourly, start.timestamp(), now).unwrap();
        assert_eq!(
            tick,
            Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0)
                .unwrap()
                .timestamp()
        );
        // Nothing new is due once the latest tick was claimed.
        assert_eq!(latest_due_tick(&hourly, tick, now), None);
    }
}
