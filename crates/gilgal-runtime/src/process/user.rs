//! Per-app Unix users: a system user with no home and no login shell per app label, created
//! with `useradd` through an argument vector. Running each app as its own user keeps apps out
//! of each other's files and out of Gilgal's root-only data directory.
//!
//! Gilgal labels apps with their project's immutable id, never a name (a name can be renamed
//! away and taken by another tenant): the user is `gilgal-` + the id's first 24 hex digits,
//! and its comment (GECOS) holds the whole id, checked on every lookup, so two ids sharing
//! that prefix can never share a user. Other labels (tests, instances from before ids) keep
//! the `gilgal-<label>` name.

use std::ffi::CStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::error::{Result, RuntimeError};

/// The uid/gid an instance runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppIdentity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Serialises `useradd` calls within this process (it takes a lock on /etc/passwd anyway).
static USERADD_LOCK: Mutex<()> = Mutex::const_new(());

/// Longest a `useradd` may take.
const USERADD_TIMEOUT: Duration = Duration::from_secs(30);

/// Linux user names are at most 32 characters.
const MAX_USER_NAME: usize = 32;

/// Hex digits of an id kept in its user's name ("gilgal-" + 24 = 31 characters).
const ID_DIGITS_IN_NAME: usize = 24;

/// The comment (GECOS) of the user of app label `app` when it is an id: what proves the
/// user is that id's and not another's sharing the name's prefix.
fn id_comment(app: &str) -> Option<String> {
    let id = uuid::Uuid::parse_str(app).ok()?;
    Some(format!("gilgal app {}", id.hyphenated()))
}

/// The Unix user name for an app label: `gilgal-<24 hex digits of the id>` for an id,
/// otherwise `gilgal-<app>`, shortened with a hash when too long.
pub fn app_user_name(app: &str) -> String {
    if let Ok(id) = uuid::Uuid::parse_str(app) {
        let hex = id.simple().to_string();
        return format!("gilgal-{}", &hex[..ID_DIGITS_IN_NAME]);
    }
    let full = format!("gilgal-{app}");
    if full.len() <= MAX_USER_NAME {
        return full;
    }
    let digest = hex::encode(Sha256::digest(app.as_bytes()));
    // "gilgal-" (7) + 16 chars of the name + "-" + 8 hex = 32.
    let head: String = app.chars().take(16).collect();
    format!("gilgal-{}-{}", head.trim_end_matches('-'), &digest[..8])
}

/// Looks up an app's user by name in the passwd database; with `comment`, a user whose
/// comment differs is someone else's and refused.
fn lookup_owned(name: &str, comment: Option<&str>) -> Result<Option<AppIdentity>> {
    let Some((identity, found)) = lookup(name)? else {
        return Ok(None);
    };
    match comment {
        Some(wanted) if found != wanted => Err(RuntimeError::UserIsolation(format!(
            "user {name} exists but belongs to something else ({found:?}); refusing to run an app as it"
        ))),
        _ => Ok(Some(identity)),
    }
}

/// Looks up a user by name in the passwd database: its identity and comment (GECOS).
fn lookup(name: &str) -> Result<Option<(AppIdentity, String)>> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| RuntimeError::UserIsolation(format!("bad user name {name:?}")))?;
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r writes into `entry` and `buffer`, both valid
    // for the sizes passed, and sets `result` to null or to `&entry`.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(RuntimeError::io(
                format!("looking up user {name}"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Ok(None);
        }
        debug_assert_eq!(CStr::from_ptr(entry.pw_name).to_bytes(), name.as_bytes());
        let comment = if entry.pw_gecos.is_null() {
            String::new()
        } else {
            CStr::from_ptr(entry.pw_gecos)
                .to_string_lossy()
                .into_owned()
        };
        Ok(Some((
            AppIdentity {
                uid: entry.pw_uid,
                gid: entry.pw_gid,
            },
            comment,
        )))
    }
}

/// Returns the identity of the app's user, creating the user if needed. Needs root.
pub(crate) async fn ensure_app_user(app: &str) -> Result<AppIdentity> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RuntimeError::UserIsolation(
            "running apps as their own user needs the server to run as root".into(),
        ));
    }
    let name = app_user_name(app);
    let comment = id_comment(app);
    if let Some(identity) = lookup_owned(&name, comment.as_deref())? {
        return Ok(identity);
    }
    let _guard = USERADD_LOCK.lock().await;
    for attempt in 0..5u32 {
        if let Some(identity) = lookup_owned(&name, comment.as_deref())? {
            return Ok(identity);
        }
        let mut useradd = Command::new("useradd");
        useradd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if let Some(comment) = &comment {
            useradd.arg("--comment").arg(comment);
        }
        useradd.arg("--").arg(&name).kill_on_drop(true);
        let output = tokio::time::timeout(USERADD_TIMEOUT, useradd.output())
            .await
            .map_err(|_| {
                RuntimeError::UserIsolation(format!("useradd {name} did not finish in time"))
            })?
            .map_err(|err| RuntimeError::io("running useradd", err))?;
        if output.status.success() {
            break;
        }
        // Exit code 9: the user appeared meanwhile (another Gilgal process); 10: passwd lock busy.
        match output.status.code() {
            Some(9) => break,
            Some(10) if attempt < 4 => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
            _ => {
                return Err(RuntimeError::UserIsolation(format!(
                    "useradd {name} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )))
            }
        }
    }
    lookup_owned(&name, comment.as_deref())?.ok_or_else(|| {
        RuntimeError::UserIsolation(format!("user {name} still missing after useradd"))
    })
}

/// The uid and gid of an app's Unix user, creating the user if needed (needs root). The deploy
/// pipeline uses it to give the app's group read access to its own release files only.
pub async fn app_user_ids(app: &str) -> Result<(u32, u32)> {
    let identity = ensure_app_user(app).await?;
    Ok((identity.uid, identity.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_fit_linux_limit() {
        assert_eq!(app_user_name("billing"), "gilgal-billing");
        let long = app_user_name("a-very-long-application-name-that-goes-on");
        assert!(long.len() <= MAX_USER_NAME, "{long}");
        assert!(long.starts_with("gilgal-a-very-long-app"));
        assert_ne!(
            long,
            app_user_name("a-very-long-application-name-that-goes-om")
        );
    }

    #[test]
    fn ids_name_short_distinct_users_that_carry_the_whole_id() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let name = app_user_name(id);
        assert_eq!(name, "gilgal-0f8fad5bd9cb469fa1657086");
        assert!(name.len() <= MAX_USER_NAME);
        // Ids sharing the name's prefix share the name, never the comment lookups check.
        let sibling = "0f8fad5b-d9cb-469f-a165-70867728950f";
        assert_eq!(app_user_name(sibling), name);
        assert_ne!(id_comment(sibling), id_comment(id));
        assert_eq!(
            id_comment(id).as_deref(),
            Some("gilgal app 0f8fad5b-d9cb-469f-a165-70867728950e")
        );
        assert_eq!(id_comment("billing"), None);
    }
}
