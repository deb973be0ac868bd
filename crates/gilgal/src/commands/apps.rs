//! Day-two commands: config and secrets, environments, releases, rollback, promotion,
//! redeploy, scale, one-off runs, cron and key rotation.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use gilgal_client::Client;
use gilgal_types::{
    ConfigUpdate, CronJobRequest, DeploymentLogLine, Environment, FormationUpdate, ProcessSize,
    PromoteRequest, RedeployRequest, RollbackRequest,
};

use super::Session;
use crate::cli::{
    AdminCommand, CronCommand, DomainsCommand, EnvCommand, EnvironmentsCommand, Target,
    WebhooksCommand,
};

pub(crate) async fn environment(client: &Client, target: &Target) -> anyhow::Result<Environment> {
    let project = client.project_by_name(&target.project).await?;
    Ok(client.environment_by_name(project.id, &target.env).await?)
}

/// Splits `KEY=VALUE` (the value may contain `=`).
fn assignment(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text
        .split_once('=')
        .with_context(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}

/// Parses a `.env` file: `KEY=VALUE` lines, `#` comments, blank lines, an optional `export `
/// prefix, and values in single quotes (literal) or double quotes (`\n`, `\"`, `\\` escapes).
pub fn parse_dotenv(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("line {}: expected KEY=VALUE", number + 1))?;
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            inner
                .strip_suffix('\'')
                .with_context(|| format!("line {}: unterminated single quote", number + 1))?
                .to_owned()
        } else if let Some(inner) = value.strip_prefix('"') {
            let inner = inner
                .strip_suffix('"')
                .with_context(|| format!("line {}: unterminated double quote", number + 1))?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => out.push('\n'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    }
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            // Unquoted: a ` #` starts a comment.
            match value.find(" #") {
                Some(at) => value[..at].trim_end().to_owned(),
                None => value.to_owned(),
            }
        };
        vars.push((key.trim().to_owned(), value));
    }
    Ok(vars)
}

async fn apply_config(
    client: &Client,
    target: &Target,
    update: ConfigUpdate,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let env = environment(client, target).await?;
    let changed = client.change_config(env.id, &update).await?;
    if json {
        crate::output::json(&changed)?;
    }
    match changed.deployment {
        Some(id) => {
            eprintln!("Config changed; rolling out a new release");
            let deployment = client.deployment(id).await?;
            super::deploy::follow(client, deployment, json).await
        }
        None => {
            if !json {
                println!("Config changed; it applies to the next deploy");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gilgal env …`.
pub async fn env(session: &Session, command: EnvCommand, json: bool) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        EnvCommand::Set {
            assignments,
            secret,
            target,
        } => {
            let mut vars = BTreeMap::new();
            for text in &assignments {
                let (key, value) = assignment(text)?;
                vars.insert(key, value);
            }
            let update = if secret {
                ConfigUpdate {
                    set_secret: vars,
                    ..ConfigUpdate::default()
                }
            } else {
                ConfigUpdate {
                    set: vars,
                    ..ConfigUpdate::default()
                }
            };
            apply_config(&client, &target, update, json).await
        }
        EnvCommand::Unset { names, target } => {
            let update = ConfigUpdate {
                unset: names,
                ..ConfigUpdate::default()
            };
            apply_config(&client, &target, update, json).await
        }
        EnvCommand::Import {
            file,
            secret,
            target,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let vars: BTreeMap<String, String> = parse_dotenv(&text)
                .with_context(|| format!("{}", file.display()))?
                .into_iter()
                .collect();
            if vars.is_empty() {
                bail!("{} has no variables", file.display());
            }
            let update = if secret {
                ConfigUpdate {
                    set_secret: vars,
                    ..ConfigUpdate::default()
                }
            } else {
                ConfigUpdate {
                    set: vars,
                    ..ConfigUpdate::default()
                }
            };
            apply_config(&client, &target, update, json).await
        }
        EnvCommand::List { target } => {
            let env = environment(&client, &target).await?;
            let vars = client.config(env.id).await?;
            if json {
                crate::output::json(&vars)?;
            } else {
                for var in vars {
                    match var.value {
                        Some(value) => println!("{}={value}", var.name),
                        None => println!("{}=******** (secret)", var.name),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gilgal environments …`.
pub async fn environments(
    session: &Session,
    command: EnvironmentsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        EnvironmentsCommand::Create { name, project } => {
            let project = client.project_by_name(&project).await?;
            let created = client.create_environment(project.id, &name).await?;
            if json {
                crate::output::json(&created)?;
            } else {
                println!("Created {} ({})", created.name, created.url);
            }
        }
        EnvironmentsCommand::List { project } => {
            let project = client.project_by_name(&project).await?;
            let list = client.environments(project.id).await?;
            if json {
                crate::output::json(&list)?;
            } else {
                for env in list {
                    let live = env
                        .live_release
                        .map(|n| format!("v{n}"))
                        .unwrap_or_else(|| "-".to_owned());
                    println!("{:<20} {:<6} {}", env.name, live, env.url);
                }
            }
        }
        EnvironmentsCommand::Delete { name, project, yes } => {
            if !yes {
                bail!("deleting {name} stops what it runs and removes its history; pass --yes");
            }
            let project = client.project_by_name(&project).await?;
            let env = client.environment_by_name(project.id, &name).await?;
            client.delete_environment(env.id).await?;
            if !json {
                println!("Deleted {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal releases`.
pub async fn releases(session: &Session, target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = environment(&client, &target).await?;
    let list = client.releases(env.id).await?;
    if json {
        crate::output::json(&list)?;
    } else {
        for release in list {
            let outcome = release.outcome.label();
            let marks = if release.pruned && !release.live {
                format!("{outcome}, pruned")
            } else {
                outcome.to_owned()
            };
            // The deployment id is what `gilgal redeploy` and `metrics --release` go by.
            let deployment = release
                .deployment_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "v{:<5} {:<19} {}  {deployment}  {}",
                release.number,
                marks,
                release
                    .created_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                release.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal rollback`.
pub async fn rollback(
    session: &Session,
    release: Option<String>,
    run_release_phase: bool,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = environment(&client, &target).await?;
    let release = release
        .map(|r| {
            r.trim_start_matches('v')
                .parse::<u64>()
                .with_context(|| format!("{r:?} is not a release like v3"))
        })
        .transpose()?;
    let deployment = client
        .rollback(
            env.id,
            &RollbackRequest {
                release,
                run_release_phase,
            },
        )
        .await?;
    super::deploy::follow(&client, deployment, json).await
}

/// `gilgal promote`.
pub async fn promote(
    session: &Session,
    project: String,
    from: String,
    to: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = environment(&client, &Target { project, env: to }).await?;
    let deployment = client.promote(env.id, &PromoteRequest { from }).await?;
    super::deploy::follow(&client, deployment, json).await
}

/// `gilgal redeploy`.
pub async fn redeploy(
    session: &Session,
    deployment: String,
    run_release_phase: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let id = deployment
        .parse()
        .with_context(|| format!("{deployment:?} is not a deployment id"))?;
    let deployment = client
        .redeploy(id, &RedeployRequest { run_release_phase })
        .await?;
    super::deploy::follow(&client, deployment, json).await
}

fn pairs(texts: &[String], what: &str) -> anyhow::Result<Vec<(String, u64)>> {
    texts
        .iter()
        .map(|text| {
            let (key, value) = assignment(text)?;
            let value = value
                .trim()
                .trim_end_matches(['M', 'm'])
                .parse::<u64>()
                .with_context(|| format!("{text:?}: {what} must be a number"))?;
            Ok((key, value))
        })
        .collect()
}

/// `gilgal scale`.
pub async fn scale(
    session: &Session,
    counts: Vec<String>,
    memory: Vec<String>,
    cpu: Vec<String>,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = environment(&client, &target).await?;
    if counts.is_empty() && memory.is_empty() && cpu.is_empty() {
        let formation = client.formation(env.id).await?;
        if json {
            crate::output::json(&formation)?;
        } else {
            for (name, count) in &formation.counts {
                println!("{name}={count}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut update = FormationUpdate::default();
    for (name, count) in pairs(&counts, "the count")? {
        update.counts.insert(
            name,
            u32::try_from(count).context("the count is too large")?,
        );
    }
    for (name, mb) in pairs(&memory, "memory (MB)")? {
        update
            .sizes
            .entry(name)
            .or_insert_with(ProcessSize::default)
            .memory_mb = Some(mb);
    }
    for (name, milli) in pairs(&cpu, "CPU (millicores)")? {
        update
            .sizes
            .entry(name)
            .or_insert_with(ProcessSize::default)
            .cpu_millicores = Some(milli);
    }
    let formation = client.scale(env.id, &update).await?;
    if let Some(id) = formation.deployment {
        let deployment = client.deployment(id).await?;
        return super::deploy::follow(&client, deployment, json).await;
    }
    if json {
        crate::output::json(&formation)?;
    } else {
        for (name, count) in &formation.counts {
            println!("{name}={count}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal run`: streams the output, exits with the command's status.
pub async fn run(
    session: &Session,
    command: Vec<String>,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = environment(&client, &target).await?;
    let run = client.start_run(env.id, command).await?;
    let response = client.run_logs(run.id, true).await?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the output stream broke off")?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(entry) = serde_json::from_slice::<DeploymentLogLine>(&line) {
                if json {
                    continue;
                }
                if entry.stream == "stderr" {
                    eprintln!("{}", entry.line);
                } else {
                    println!("{}", entry.line);
                }
            }
        }
    }
    let finished = client.run(run.id).await?;
    if json {
        crate::output::json(&finished)?;
    }
    if finished.state == "succeeded" {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(reason) = &finished.failure {
        eprintln!("error: {reason}");
    }
    let code = finished
        .exit_code
        .and_then(|c| u8::try_from(c).ok())
        .filter(|c| *c != 0)
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}

/// `gilgal cron …`.
pub async fn cron(session: &Session, command: CronCommand, json: bool) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        CronCommand::Add {
            schedule,
            command,
            allow_overlap,
            target,
        } => {
            let env = environment(&client, &target).await?;
            let job = client
                .create_cron_job(
                    env.id,
                    &CronJobRequest {
                        schedule,
                        command,
                        allow_overlap,
                    },
                )
                .await?;
            if json {
                crate::output::json(&job)?;
            } else {
                println!("Scheduled {} ({})", job.id, job.schedule);
            }
        }
        CronCommand::List { target } => {
            let env = environment(&client, &target).await?;
            let jobs = client.cron_jobs(env.id).await?;
            if json {
                crate::output::json(&jobs)?;
            } else {
                for job in jobs {
                    println!("{}  {:<16} {}", job.id, job.schedule, job.command.join(" "));
                }
            }
        }
        CronCommand::Remove { id } => {
            let id = id
                .parse()
                .with_context(|| format!("{id:?} is not a job id"))?;
            client.delete_cron_job(id).await?;
            if !json {
                println!("Removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal domains …`.
pub async fn domains(
    session: &Session,
    command: DomainsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        DomainsCommand::Add { hostname, target } => {
            let env = environment(&client, &target).await?;
            let domain = client.add_domain(env.id, &hostname).await?;
            if json {
                crate::output::json(&domain)?;
            } else {
                println!(
                    "{} now serves {} ({})",
                    domain.hostname, target.project, env.name
                );
            }
        }
        DomainsCommand::List { target } => {
            let env = environment(&client, &target).await?;
            let domains = client.domains(env.id).await?;
            if json {
                crate::output::json(&domains)?;
            } else {
                for domain in domains {
                    println!("{}", domain.hostname);
                }
            }
        }
        DomainsCommand::Remove { hostname, target } => {
            let env = environment(&client, &target).await?;
            client.remove_domain(env.id, &hostname).await?;
            if !json {
                println!("Removed {hostname}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal audit`.
pub async fn audit(
    session: &Session,
    action: Option<String>,
    since: Option<String>,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let rows = client
        .audit(action.as_deref(), since.as_deref(), limit)
        .await?;
    if json {
        crate::output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for row in rows {
        println!(
            "{}  {:<24} {:<15} {} {}  {}",
            row.at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            row.actor_email.as_deref().unwrap_or("-"),
            row.ip.as_deref().unwrap_or("-"),
            row.status,
            row.action,
            if row.details.as_object().is_some_and(|o| !o.is_empty()) {
                row.details.to_string()
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal admin …`.
pub async fn admin(
    session: &Session,
    command: AdminCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        AdminCommand::RotateKey => {
            let outcome = client.rotate_key().await?;
            if json {
                crate::output::json(&outcome)?;
            } else {
                println!(
                    "Master key rotated; {} data keys re-wrapped",
                    outcome["rewrapped"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal webhooks …`.
pub async fn webhooks(
    session: &Session,
    command: WebhooksCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        WebhooksCommand::Add {
            provider,
            repo,
            branch,
            target,
        } => {
            let project = client.project_by_name(&target.project).await?;
            let created = client
                .create_webhook(&gilgal_types::CreateWebhookRequest {
                    project_id: project.id,
                    environment: Some(target.env.clone()),
                    provider: provider.clone(),
                    repo_url: repo,
                    branch: Some(branch.clone()),
                })
                .await?;
            if json {
                crate::output::json(&created)?;
            } else {
                let url = format!("{}{}", session.server, created.webhook.receiver_path);
                println!(
                    "Pushes to {branch} now deploy {} ({}).",
                    target.project, target.env
                );
                println!("Payload URL:  {url}");
                println!("Secret:       {}   (shown once)", created.secret);
                match provider.as_str() {
                    "github" => println!(
                        "In GitHub: Settings → Webhooks → Add webhook; content type application/json, the secret above, \"Just the push event\"."
                    ),
                    "gitlab" => println!(
                        "In GitLab: Settings → Webhooks; the URL, the secret above as \"Secret token\", trigger \"Push events\"."
                    ),
                    _ => println!(
                        "Send {{\"ref\":\"{branch}\",\"commit\":\"<full sha>\"}} with headers X-Gilgal-Event: push and X-Gilgal-Signature-256: sha256=<HMAC-SHA256 of the body under the secret>."
                    ),
                }
            }
        }
        WebhooksCommand::List { project } => {
            let project = client.project_by_name(&project).await?;
            let hooks = client.webhooks(project.id).await?;
            if json {
                crate::output::json(&hooks)?;
            } else {
                for hook in hooks {
                    println!(
                        "{}  {:8} {} → {} ({})",
                        hook.id, hook.provider, hook.branch, hook.environment, hook.repo_url
                    );
                }
            }
        }
        WebhooksCommand::Deliveries { id, limit } => {
            let deliveries = client.webhook_deliveries(id, limit).await?;
            if json {
                crate::output::json(&deliveries)?;
            } else {
                for d in deliveries {
                    let at = d
                        .received_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    let commit = d.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
                    println!(
                        "{at}  {:6} {:10} {commit:12} {}",
                        d.event,
                        d.outcome,
                        d.detail
                            .or(d.deployment_id.map(|id| format!("deployment {id}")))
                            .unwrap_or_default()
                    );
                }
            }
        }
        WebhooksCommand::Remove { id } => {
            client.delete_webhook(id).await?;
            if !json {
                println!("Removed webhook {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_files_parse_like_other_tools() {
        let vars = parse_dotenv(
            "# comment\n\nexport A=1\nB='x y # z'\nC=\"line\\nnext \\\"q\\\"\"\nD=plain # trailing\nE=a=b\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x y # z".to_owned()),
                ("C".to_owned(), "line\nnext \"q\"".to_owned()),
                ("D".to_owned(), "plain".to_owned()),
                ("E".to_owned(), "a=b".to_owned()),
            ]
        );
        assert!(parse_dotenv("NOEQUALS\n").is_err());
        assert!(parse_dotenv("A='open\n").is_err());
    }
}
