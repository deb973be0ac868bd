//! `gilgal projects …`.

use gilgal_types::{CreateProjectRequest, ProjectName};

use super::{prompt_line, Session};
use crate::cli::ProjectsCommand;
use crate::output;

/// Runs a projects subcommand.
pub async fn run(session: &Session, command: ProjectsCommand, json: bool) -> anyhow::Result<()> {
    let client = session.authenticated()?;
    match command {
        ProjectsCommand::Create { name, description } => {
            let name: ProjectName = name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let project = client
                .create_project(&CreateProjectRequest { name, description })
                .await?;
            if json {
                return output::json(&project);
            }
            println!("Created project {} ({})", project.name, project.id);
        }
        ProjectsCommand::List => {
            let projects = client.list_projects().await?;
            if json {
                return output::json(&projects);
            }
            if projects.is_empty() {
                println!("No projects yet: create one with `gilgal projects create NAME`");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = projects
                .iter()
                .map(|p| {
                    vec![
                        p.name.to_string(),
                        output::when(&p.created_at),
                        p.description.clone(),
                    ]
                })
                .collect();
            output::table(&["NAME", "CREATED", "DESCRIPTION"], &rows);
        }
        ProjectsCommand::Show { name } => {
            let project = client.project_by_name(&name).await?;
            if json {
                return output::json(&project);
            }
            println!("name:        {}", project.name);
            println!("id:          {}", project.id);
            println!("description: {}", project.description);
            println!("created:     {}", output::when(&project.created_at));
            println!("updated:     {}", output::when(&project.updated_at));
        }
        ProjectsCommand::Delete { name, yes } => {
            let project = client.project_by_name(&name).await?;
            if !yes {
                let typed = prompt_line(
                    &format!("This deletes project {name} and everything in it. Type its name to confirm: "),
                    "--yes to delete without a prompt",
                )?;
                anyhow::ensure!(typed == name, "confirmation did not match; nothing deleted");
            }
            client.delete_project(project.id).await?;
            println!("Deleted project {name}");
        }
    }
    Ok(())
}
