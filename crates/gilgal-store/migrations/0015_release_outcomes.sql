-- What became of each release (pending, live, failed, superseded, rolled_back), recorded at
-- each transition so the history shows it and a plain rollback picks the last release that
-- was actually live before the current one (not merely the previous number).
ALTER TABLE releases ADD COLUMN outcome TEXT NOT NULL DEFAULT 'pending';

-- Existing rows: the environment's live release is live; a release whose deployment went
-- live and was later drained was superseded; one whose deployment failed or was cancelled
-- failed.
UPDATE releases SET outcome = 'superseded'
WHERE EXISTS (
    SELECT 1 FROM deployments d
    WHERE d.environment_id = releases.environment_id
      AND d.release_number = releases.number
      AND d.state IN ('live', 'draining', 'retired')
);
UPDATE releases SET outcome = 'failed'
WHERE outcome = 'pending' AND EXISTS (
    SELECT 1 FROM deployments d
    WHERE d.environment_id = releases.environment_id
      AND d.release_number = releases.number
      AND d.state IN ('failed', 'cancelled')
);
UPDATE releases SET outcome = 'live'
WHERE EXISTS (
    SELECT 1 FROM environments e
    WHERE e.id = releases.environment_id AND e.live_release = releases.number
);
