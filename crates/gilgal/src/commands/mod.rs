//! Client subcommands: each turns arguments into API calls through `gilgal-client`.

mod account;
mod addons;
mod alerts;
mod apps;
mod deploy;
mod edge;
mod link;
mod logs;
pub(crate) mod metrics;
mod projects;
mod tokens;

use std::process::ExitCode;

use anyhow::Context;
use gilgal_client::{Client, ClientError};

use crate::cli::{Command, GlobalArgs};
use crate::credentials::{self, Credentials, DEFAULT_SERVER, TOKEN_VAR};

/// Runs one client command.
pub async fn run(global: GlobalArgs, command: Command) -> anyhow::Result<ExitCode> {
    let session = Session::resolve(&global)?;
    match command {
        Command::Server(_) | Command::Edge(_) => {
            unreachable!(
                "`gilgal server` and `gilgal edge` are dispatched before the client runtime starts"
            )
        }
        Command::Register(args) => account::register(&session, args).await,
        Command::Login(args) => account::login(&session, args).await,
        Command::Logout => account::logout(&session).await,
        Command::Whoami => account::whoami(&session, global.json).await,
        Command::Link(args) => link::link(&session, args, global.json).await,
        Command::Unlink => link::unlink(),
        Command::Projects(cmd) => projects::run(&session, cmd, global.json).await,
        Command::Deploy(args) => return deploy::run(&session, args, global.json).await,
        Command::Tokens(cmd) => tokens::run(&session, cmd, global.json).await,
        Command::Env(cmd) => return apps::env(&session, cmd, global.json).await,
        Command::Environments(cmd) => return apps::environments(&session, cmd, global.json).await,
        Command::Releases { target } => return apps::releases(&session, target, global.json).await,
        Command::Canary(cmd) => return deploy::canary(&session, cmd, global.json).await,
        Command::Https {
            state,
            hsts,
            include_subdomains,
            target,
        } => {
            return edge::https(
                &session,
                state,
                hsts,
                include_subdomains,
                target,
                global.json,
            )
            .await
        }
        Command::Ratelimit(cmd) => return edge::ratelimit(&session, cmd, global.json).await,
        Command::Rollback {
            release,
            run_release_phase,
            target,
        } => {
            return apps::rollback(&session, release, run_release_phase, target, global.json).await
        }
        Command::Promote { project, from, to } => {
            return apps::promote(&session, project, from, to, global.json).await
        }
        Command::Redeploy {
            deployment,
            run_release_phase,
        } => return apps::redeploy(&session, deployment, run_release_phase, global.json).await,
        Command::Scale {
            counts,
            memory,
            cpu,
            target,
        } => return apps::scale(&session, counts, memory, cpu, target, global.json).await,
        Command::Run { command, target } => {
            return apps::run(&session, command, target, global.json).await
        }
        Command::Logs(args) => return logs::logs(&session, args, global.json).await,
        Command::Events { lines, target } => {
            return logs::events(&session, lines, target, global.json).await
        }
        Command::Errors { target } => return logs::errors(&session, target, global.json).await,
        Command::Metrics {
            window,
            release,
            target,
        } => return metrics::metrics(&session, &window, release, target, global.json).await,
        Command::Cron(cmd) => return apps::cron(&session, cmd, global.json).await,
        Command::Domains(cmd) => return apps::domains(&session, cmd, global.json).await,
        Command::Webhooks(cmd) => return apps::webhooks(&session, cmd, global.json).await,
        Command::Deployments(cmd) => return deploy::deployments(&session, cmd, global.json).await,
        Command::Alerts(cmd) => return alerts::run(&session, cmd, global.json).await,
        Command::Addons(cmd) => return addons::run(&session, cmd, global.json).await,
        Command::Audit {
            action,
            since,
            limit,
        } => return apps::audit(&session, action, since, limit, global.json).await,
        Command::Admin(cmd) => return apps::admin(&session, cmd, global.json).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Which server to talk to and with which token, from flags, env and the stored login.
pub struct Session {
    /// Server URL.
    pub server: String,
    /// Bearer token, if any: `GILGAL_TOKEN` wins over the stored login.
    pub token: Option<String>,
    /// The stored login, if it belongs to this server.
    pub stored: Option<Credentials>,
}

impl Session {
    fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let stored = credentials::load()?;
        let server = global
            .server
            .clone()
            .or_else(|| stored.as_ref().map(|c| c.server.clone()))
            .or_else(credentials::remembered_server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let server = server.trim_end_matches('/').to_owned();
        let stored = stored.filter(|c| c.server.trim_end_matches('/') == server);
        let token = std::env::var(TOKEN_VAR)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| stored.as_ref().map(|c| c.token.clone()));
        Ok(Self {
            server,
            token,
            stored,
        })
    }

    /// An anonymous client.
    pub fn anonymous(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.server)?)
    }

    /// A client with the token, or a "log in first" error.
    pub fn authenticated(&self) -> anyhow::Result<Client> {
        let token = self.token.clone().ok_or(NotLoggedIn)?;
        Ok(self.anonymous()?.with_token(token))
    }
}

/// No token anywhere.
#[derive(Debug)]
pub struct NotLoggedIn;

impl std::error::Error for NotLoggedIn {}

impl std::fmt::Display for NotLoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not logged in: run `gilgal login` (or set {TOKEN_VAR})")
    }
}

/// One line for the user: what went wrong and what to do next.
pub fn describe_error(err: &anyhow::Error) -> String {
    if let Some(client_error) = err.downcast_ref::<ClientError>() {
        return match client_error {
            ClientError::Api { code, message, .. } => match code.as_str() {
                "invalid_token" | "token_expired" | "session_revoked" | "unauthenticated" => format!(
                    "your login is no longer valid ({message}): run `gilgal login`, or check {TOKEN_VAR}"
                ),
                "invalid_credentials" => "wrong email or password".to_owned(),
                _ => client_error.to_string(),
            },
            ClientError::Unreachable { url, reason } => format!(
                "cannot reach the Gilgal server at {url} ({reason}): is `gilgal server` running there? \
                 Point the CLI elsewhere with --server or GILGAL_SERVER"
            ),
            other => other.to_string(),
        };
    }
    format!("{err:#}")
}

/// Reads a secret: one line from stdin with `--password-stdin`, else a hidden prompt.
pub fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        return Ok(password);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("no terminal to prompt for a password: pass --password-stdin and pipe it in");
    }
    rpassword::prompt_password(prompt).context("cannot read the password")
}

/// Reads a line from a terminal prompt, refusing when there is no terminal.
pub fn prompt_line(prompt: &str, flag_hint: &str) -> anyhow::Result<String> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("no terminal to prompt on: pass {flag_hint}");
    }
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}
