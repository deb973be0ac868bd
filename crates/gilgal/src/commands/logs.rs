//! `gilgal logs`: print (and follow) an environment's persistent log; `gilgal events`: its
//! uptime and timeline; `gilgal errors`: its traceback groups.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use gilgal_types::EnvironmentLogLine;

use super::Session;
use crate::cli::{LogsArgs, Target};

/// One line for people: time, process type and release, then the text.
fn human(line: &EnvironmentLogLine) -> String {
    let at = line
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let release = line.release.map(|r| format!(" v{r}")).unwrap_or_default();
    format!("{at} {}{release}: {}", line.process_type, line.line)
}

/// `gilgal logs`.
pub async fn logs(session: &Session, args: LogsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let project = client.project_by_name(&args.target.project).await?;
    let env = client
        .environment_by_name(project.id, &args.target.env)
        .await?;
    let mut filters: Vec<(&str, String)> = vec![("limit", args.lines.to_string())];
    for (name, value) in [
        ("type", args.process_type),
        ("release", args.release),
        ("since", args.since),
        ("grep", args.grep),
    ] {
        if let Some(value) = value {
            filters.push((name, value));
        }
    }
    let response = client
        .environment_logs(env.id, &filters, args.follow)
        .await?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the log stream broke off; run the command again")?;
        pending.extend_from_slice(&chunk);
        let mut out = stdout.lock();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let Ok(line) = serde_json::from_slice::<EnvironmentLogLine>(&raw) else {
                continue; // keep-alive
            };
            let text = if json {
                serde_json::to_string(&line)?
            } else {
                human(&line)
            };
            if writeln!(out, "{text}").is_err() {
                // The reader went away (`gilgal logs | head`): not an error.
                return Ok(ExitCode::SUCCESS);
            }
        }
        let _ = out.flush();
    }
    Ok(ExitCode::SUCCESS)
}

fn percent(value: Option<f64>) -> String {
    value
        .map(|p| format!("{p:.2} %"))
        .unwrap_or_else(|| "-".to_owned())
}

/// `gilgal events`.
pub async fn events(
    session: &Session,
    lines: u32,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let project = client.project_by_name(&target.project).await?;
    let env = client.environment_by_name(project.id, &target.env).await?;
    let uptime = client.environment_uptime(env.id).await?;
    let events = client.environment_events(env.id, lines).await?;
    if json {
        crate::output::json(&serde_json::json!({ "uptime": uptime, "events": events }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "uptime  24 h {}, 7 d {}, 30 d {}",
        percent(uptime.last_24h),
        percent(uptime.last_7d),
        percent(uptime.last_30d)
    );
    for event in events {
        let at = event
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!("{at} {:<8} {}", event.kind, event.message);
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal errors`.
pub async fn errors(session: &Session, target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let project = client.project_by_name(&target.project).await?;
    let env = client.environment_by_name(project.id, &target.env).await?;
    let groups = client.environment_errors(env.id).await?;
    if json {
        crate::output::json(&groups)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rfc = |at: &time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let release = |r: Option<u64>| r.map(|r| format!("v{r}")).unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.count.to_string(),
                g.title.clone(),
                rfc(&g.first_seen),
                rfc(&g.last_seen),
                format!("{}..{}", release(g.first_release), release(g.last_release)),
            ]
        })
        .collect();
    crate::output::table(
        &["COUNT", "ERROR", "FIRST SEEN", "LAST SEEN", "RELEASES"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
