//! `gilgal link` and `gilgal unlink` (see `crate::link`).

use super::Session;
use crate::cli::LinkArgs;
use crate::link::{self, Link};

/// Links the working directory to a project (and environment) that exist on the server, or
/// shows the current link.
pub async fn link(session: &Session, args: LinkArgs, json: bool) -> anyhow::Result<()> {
    let dir = link::current_dir()?;
    let mut links = link::load_all()?;
    let Some(project) = args.project else {
        match link::find(&links, &dir) {
            Some((linked_dir, found)) => {
                let env = found.env.as_deref().unwrap_or("production");
                let text = format!(
                    "{} is linked to {} ({env})",
                    linked_dir.display(),
                    found.project
                );
                print_link(&linked_dir, &found.project, env, json, &text);
            }
            None => anyhow::bail!(
                "{} is not linked; run `gilgal link -p PROJECT [-e ENV]`",
                dir.display()
            ),
        }
        return Ok(());
    };
    let client = session.authenticated()?;
    let found = client.project_by_name(&project).await?;
    if let Some(env) = &args.env {
        client.environment_by_name(found.id, env).await?;
    }
    let env = args.env.clone().unwrap_or_else(|| "production".to_owned());
    links.insert(
        dir.clone(),
        Link {
            project: found.name.to_string(),
            env: args.env,
        },
    );
    link::save_all(&links)?;
    let project = found.name.to_string();
    let text = format!(
        "Linked {} to {project} ({env}): commands run here need no -p/-e",
        dir.display()
    );
    print_link(&dir, &project, &env, json, &text);
    Ok(())
}

/// Prints a link as JSON (`dir`, `project`, `env`) or as `text`.
fn print_link(dir: &std::path::Path, project: &str, env: &str, json: bool, text: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({"dir": dir, "project": project, "env": env})
        );
    } else {
        println!("{text}");
    }
}

/// Removes the link of the working directory (or of the linked directory it is in).
pub fn unlink() -> anyhow::Result<()> {
    let dir = link::current_dir()?;
    let mut links = link::load_all()?;
    let Some((linked_dir, found)) = link::find(&links, &dir) else {
        anyhow::bail!("{} is not linked", dir.display());
    };
    links.remove(&linked_dir);
    link::save_all(&links)?;
    println!("Unlinked {} from {}", linked_dir.display(), found.project);
    Ok(())
}
