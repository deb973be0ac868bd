//! What an environment is known by outside the store. Runtime labels (and so instance ids'
//! owners, Docker container labels and per-app Unix users), proxy route ids, artifact and
//! build cache directories and image tags are keyed by the project's and the environment's
//! immutable ids, never by their names: a name changes on rename and is free for anyone to
//! take after a rename or a delete, so anything keyed by it could be taken over by another
//! tenant. Names are only for hostnames and display.

use std::path::{Path, PathBuf};

use gilgal_runtime::InstanceLabels;
use gilgal_store::EnvironmentRecord;
use uuid::Uuid;

/// The runtime's `app` label of an environment's instances: its project's id.
pub(crate) fn app_label(environment: &EnvironmentRecord) -> String {
    environment.project_id.to_string()
}

/// The runtime's `env` label of an environment's instances: the environment's id.
pub(crate) fn env_label(environment: &EnvironmentRecord) -> String {
    environment.id.to_string()
}

/// Whether an instance with `labels` belongs to `environment` (its labels carry the
/// environment's ids; names would match a renamed project's successor).
pub fn owns(environment: &EnvironmentRecord, labels: &InstanceLabels) -> bool {
    labels.app == app_label(environment) && labels.env == env_label(environment)
}

/// The environment an instance belongs to, from its labels: `None` for labels that are not
/// ids (instances started before labels were ids, see [`Recovery::recover`](crate::Recovery::recover)).
pub(crate) fn owner_of(labels: &InstanceLabels) -> Option<(Uuid, Uuid)> {
    Some((labels.app.parse().ok()?, labels.env.parse().ok()?))
}

/// The proxy route id of an environment: `<project id>/<environment id>`.
pub(crate) fn route_id(environment: &EnvironmentRecord) -> String {
    format!("{}/{}", environment.project_id, environment.id)
}

/// The environment a route id names (the inverse of [`route_id`]).
pub(crate) fn route_owner(route_id: &str) -> Option<(Uuid, Uuid)> {
    let (project, environment) = route_id.split_once('/')?;
    Some((project.parse().ok()?, environment.parse().ok()?))
}

/// The project's directory under `root` (releases, build caches): `root/<project id>`.
pub(crate) fn project_dir(root: &Path, environment: &EnvironmentRecord) -> PathBuf {
    root.join(environment.project_id.to_string())
}

/// The environment's directory under `root`: `root/<project id>/<environment id>`.
pub(crate) fn environment_dir(root: &Path, environment: &EnvironmentRecord) -> PathBuf {
    project_dir(root, environment).join(environment.id.to_string())
}

/// The backend group (and metrics label) of release `number` at the edge: `v7`. The edge
/// counts each group's answers apart, which is what per-release figures and canaries read.
pub fn release_group(number: u64) -> String {
    format!("v{number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(project: &str, name: &str) -> EnvironmentRecord {
        EnvironmentRecord {
            id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            project_name: project.to_owned(),
            name: name.to_owned(),
            live_release: None,
            formation: Default::default(),
            sizes: Default::default(),
        }
    }

    #[test]
    fn same_names_never_share_an_identity() {
        let renamed_away = environment("alpha", "production");
        let newcomer = environment("alpha", "production");
        assert_ne!(route_id(&renamed_away), route_id(&newcomer));
        let root = Path::new("/data/releases");
        assert_ne!(
            environment_dir(root, &renamed_away),
            environment_dir(root, &newcomer)
        );
        let labels = InstanceLabels {
            app: app_label(&renamed_away),
            env: env_label(&renamed_away),
            release: 1,
            process_type: "web".to_owned(),
            index: 0,
        };
        assert!(owns(&renamed_away, &labels));
        assert!(!owns(&newcomer, &labels));
        assert_eq!(
            owner_of(&labels),
            Some((renamed_away.project_id, renamed_away.id))
        );
    }
}
