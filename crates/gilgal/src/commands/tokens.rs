//! `gilgal tokens …`.

use gilgal_types::CreateApiTokenRequest;

use super::Session;
use crate::cli::TokensCommand;
use crate::output;

/// Runs a tokens subcommand.
pub async fn run(session: &Session, command: TokensCommand, json: bool) -> anyhow::Result<()> {
    let client = session.authenticated()?;
    match command {
        TokensCommand::Create {
            name,
            expires_in_days,
            scope,
            project,
            env,
        } => {
            let mut project_id = None;
            let mut environment_id = None;
            if let Some(project) = project {
                let found = client.project_by_name(&project).await?;
                project_id = Some(found.id);
                if let Some(env) = env {
                    environment_id = Some(client.environment_by_name(found.id, &env).await?.id);
                }
            }
            let scope = match scope.as_str() {
                "full" => gilgal_types::TokenScope::Full,
                "read" => gilgal_types::TokenScope::Read,
                "deploy" => gilgal_types::TokenScope::Deploy,
                other => anyhow::bail!("unknown scope {other:?}: use full, read or deploy"),
            };
            let created = client
                .create_token(&CreateApiTokenRequest {
                    name,
                    expires_in_days,
                    scope,
                    project_id,
                    environment_id,
                })
                .await?;
            if json {
                return output::json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "Token {} created. This is the only time its secret is shown: store it now.",
                created.info.id
            );
        }
        TokensCommand::List => {
            let tokens = client.list_tokens().await?;
            if json {
                return output::json(&tokens);
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.name.clone(),
                        format!("{}…", t.prefix),
                        output::when(&t.created_at),
                        t.last_used_at
                            .as_ref()
                            .map(output::when)
                            .unwrap_or_else(|| "never".to_owned()),
                        t.expires_at
                            .as_ref()
                            .map(output::when)
                            .unwrap_or_else(|| "never".to_owned()),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "EXPIRES"],
                &rows,
            );
        }
        TokensCommand::Revoke { id } => {
            let id = uuid::Uuid::parse_str(&id).map_err(|_| {
                anyhow::anyhow!("{id:?} is not a token id; see `gilgal tokens list`")
            })?;
            client.revoke_token(id).await?;
            println!("Revoked token {id}");
        }
    }
    Ok(())
}
