//! `gilgal addons …`: managed PostgreSQL and Redis per environment.

use std::process::ExitCode;

use anyhow::Context;
use gilgal_client::Client;
use gilgal_types::{Addon, Backup};

use super::apps::environment;
use super::Session;
use crate::cli::{AddonsCommand, Target};

async fn addon_named(client: &Client, target: &Target, name: &str) -> anyhow::Result<Addon> {
    let env = environment(client, target).await?;
    client
        .addons(env.id)
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .with_context(|| {
            format!(
                "{} ({}) has no add-on named {name:?}; see `gilgal addons list`",
                target.project, target.env
            )
        })
}

fn print_backup(backup: &Backup) {
    let at = backup
        .started_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let size = backup
        .size
        .map_or_else(|| "-".to_owned(), |s| format!("{} KiB", s.div_ceil(1024)));
    println!(
        "{}  {at}  {:9} {:9} {size:>10}  {}",
        backup.id,
        backup.cause,
        backup.state,
        backup
            .error
            .clone()
            .or_else(|| backup
                .sha256
                .clone()
                .map(|s| format!("sha256:{}", &s[..16.min(s.len())])))
            .unwrap_or_default()
    );
}

/// Runs an `addons` subcommand.
pub async fn run(
    session: &Session,
    command: AddonsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        AddonsCommand::Create { kind, name, target } => {
            let env = environment(&client, &target).await?;
            eprintln!(
                "Creating a {kind} add-on for {} ({})…",
                target.project, env.name
            );
            let changed = client
                .create_addon(env.id, &gilgal_types::CreateAddonRequest { kind, name })
                .await?;
            if json {
                crate::output::json(&changed)?;
            } else {
                println!(
                    "Created {} ({}); sets {}",
                    changed.addon.name,
                    changed.addon.kind,
                    changed.addon.config_vars.join(", ")
                );
                match changed.deployment {
                    Some(id) => println!("Rolling out a new release with it: deployment {id}"),
                    None => println!("Your next deploy gets it."),
                }
            }
        }
        AddonsCommand::List { target } => {
            let env = environment(&client, &target).await?;
            let addons = client.addons(env.id).await?;
            if json {
                crate::output::json(&addons)?;
            } else {
                for addon in addons {
                    println!(
                        "{:16} {:9} {:6} {}  backups {} (keep {})",
                        addon.name,
                        addon.kind,
                        addon.state,
                        addon.config_vars.join(","),
                        addon.backup_schedule,
                        addon.backup_retention
                    );
                }
            }
        }
        AddonsCommand::Destroy {
            name,
            no_backup,
            target,
        } => {
            let addon = addon_named(&client, &target, &name).await?;
            let changed = client.destroy_addon(addon.id, !no_backup).await?;
            if json {
                crate::output::json(&changed)?;
            } else if no_backup {
                println!("Destroyed {name} (no final backup)");
            } else {
                println!(
                    "Destroyed {name}; its final backup is kept (gilgal addons backups {name})"
                );
            }
        }
        AddonsCommand::Backup { name, target } => {
            let addon = addon_named(&client, &target, &name).await?;
            let backup = client.backup_addon(addon.id).await?;
            if json {
                crate::output::json(&backup)?;
            } else {
                print_backup(&backup);
            }
        }
        AddonsCommand::Backups { name, target } => {
            let addon = addon_named(&client, &target, &name).await?;
            let backups = client.addon_backups(addon.id).await?;
            if json {
                crate::output::json(&backups)?;
            } else {
                backups.iter().for_each(print_backup);
            }
        }
        AddonsCommand::Restore {
            name,
            backup,
            target,
        } => {
            let addon = addon_named(&client, &target, &name).await?;
            client.restore_addon(addon.id, backup).await?;
            if !json {
                println!("Restored backup {backup} into {name}");
            }
        }
        AddonsCommand::BackupPolicy {
            name,
            schedule,
            retention,
            target,
        } => {
            let addon = addon_named(&client, &target, &name).await?;
            let addon = client
                .set_backup_policy(
                    addon.id,
                    &gilgal_types::BackupPolicy {
                        schedule,
                        retention,
                    },
                )
                .await?;
            if json {
                crate::output::json(&addon)?;
            } else {
                println!(
                    "{}: backups {} (UTC), keeping {}",
                    addon.name, addon.backup_schedule, addon.backup_retention
                );
            }
        }
        AddonsCommand::Psql { name, target, args } => {
            let addon = addon_named(&client, &target, &name).await?;
            let url = client.addon_credentials(addon.id).await?.url;
            return connect_psql(&url, &args);
        }
        AddonsCommand::RedisCli { name, target, args } => {
            let addon = addon_named(&client, &target, &name).await?;
            let url = client.addon_credentials(addon.id).await?.url;
            return connect_redis(&url, &args);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits `scheme://user:password@host:port/db` into its parts.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String, String, String)> {
    let rest = url.split_once("://").map(|(_, r)| r).context("not a URL")?;
    let (userinfo, location) = rest.rsplit_once('@').context("no credentials in the URL")?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, db) = location.split_once('/').unwrap_or((location, ""));
    let (host, port) = hostport.rsplit_once(':').context("no port in the URL")?;
    Ok((
        user.to_owned(),
        password.to_owned(),
        host.to_owned(),
        port.to_owned(),
        db.to_owned(),
    ))
}

/// Runs psql with the password in its environment (never on its command line).
fn connect_psql(url: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let (user, password, host, port, db) = url_parts(url)?;
    let status = std::process::Command::new("psql")
        .args(["-h", &host, "-p", &port, "-U", &user, "-d", &db])
        .args(args)
        .env("PGPASSWORD", password)
        .status()
        .context("cannot run psql: install Debian's postgresql-client package")?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// Runs redis-cli with the password in `REDISCLI_AUTH` (never on its command line).
fn connect_redis(url: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let (_, password, host, port, _) = url_parts(url)?;
    let status = std::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port, "--no-auth-warning"])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .status()
        .context("cannot run redis-cli: install Debian's redis-tools package")?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}
