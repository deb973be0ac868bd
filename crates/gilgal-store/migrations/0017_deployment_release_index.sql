-- A release names the deployment that made it (release lists, per-release metrics): looked up
-- by environment and release number.
CREATE INDEX deployments_release ON deployments(environment_id, release_number);
