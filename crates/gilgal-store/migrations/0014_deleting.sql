-- A project or environment being deleted is marked first: its teardown (instances, routes,
-- add-ons, artifacts) then runs, and only then is the row deleted. A server that crashes
-- half-way finishes the deletion at start instead of bringing the instances back.
ALTER TABLE projects ADD COLUMN deleting_at BIGINT;
ALTER TABLE environments ADD COLUMN deleting_at BIGINT;
