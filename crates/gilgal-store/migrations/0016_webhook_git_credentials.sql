-- A credential given in a webhook's repository URL (https://user:token@host/…) is kept sealed
-- with the environment's data key, apart from the URL, which is stored without it.
ALTER TABLE webhooks ADD COLUMN git_credential_sealed TEXT;
