//! Where the CLI keeps its login: `~/.config/gilgal/credentials.json`, mode 0600.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Env var with a token that overrides the stored one (for CI).
pub const TOKEN_VAR: &str = "GILGAL_TOKEN";
/// Server used when none is given or stored.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// What `gilgal login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The server logged in to.
    pub server: String,
    /// The account's email, for messages.
    pub email: String,
    /// A personal API token created for this CLI.
    pub token: String,
    /// That token's id, so logout can revoke it even if the server changed its mind about names.
    pub token_id: uuid::Uuid,
}

/// The CLI's config directory: `GILGAL_CONFIG_DIR`, else `~/.config/gilgal`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    Ok(match std::env::var_os("GILGAL_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => dirs::config_dir()
            .context("cannot find a config directory; set GILGAL_CONFIG_DIR")?
            .join("gilgal"),
    })
}

fn path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("credentials.json"))
}

/// The stored login, if any.
pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; delete it and run `gilgal login`",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Stores a login atomically with mode 0600.
pub fn save(credentials: &Credentials) -> anyhow::Result<PathBuf> {
    let path = path()?;
    let bytes = serde_json::to_vec_pretty(credentials)?;
    gilgal_auth::keys::write_secret_file(&path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Forgets the stored login.
pub fn remove() -> anyhow::Result<()> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Where `gilgal logout` leaves the server it logged out of, for the next `login`.
fn server_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("server"))
}

/// Remembers the server after a logout, so the next `gilgal login` needs no `--server`.
pub fn remember_server(server: &str) -> anyhow::Result<()> {
    let path = server_path()?;
    gilgal_auth::keys::write_secret_file(&path, server.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The server remembered by the last logout, if any.
pub fn remembered_server() -> Option<String> {
    let text = std::fs::read_to_string(server_path().ok()?).ok()?;
    let server = text.trim();
    (!server.is_empty()).then(|| server.to_owned())
}
