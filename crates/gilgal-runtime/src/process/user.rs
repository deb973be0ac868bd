//! Per-app Unix users: `gilgal-<app>`, a system user with no home and no login shell, created
//! with `useradd` through an argument vector. Running each app as its own user keeps apps out
//! of each other's files and out of Gilgal's root-only data directory.

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

/// The Unix user name for an app: `gilgal-<app>`, shortened with a hash when too long.
pub fn app_user_name(app: &str) -> String {
    let full = format!("gilgal-{app}");
    if full.len() <= MAX_USER_NAME {
        return full;
    }
    let digest = hex::encode(Sha256::digest(app.as_bytes()));
    // "gilgal-" (7) + 16 chars of the name + "-" + 8 hex = 32.
    let head: String = app.chars().take(16).collect();
    format!("gilgal-{}-{}", head.trim_end_matches('-'), &digest[..8])
}

/// Looks up a user by name in the passwd database.
fn lookup(name: &str) -> Result<Option<AppIdentity>> {
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
        Ok(Some(AppIdentity {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }))
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
    if let Some(identity) = lookup(&name)? {
        return Ok(identity);
    }
    let _guard = USERADD_LOCK.lock().await;
    for attempt in 0..5u32 {
        if let Some(identity) = lookup(&name)? {
            return Ok(identity);
        }
        let mut useradd = Command::new("useradd");
        useradd
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--",
            ])
            .arg(&name)
            .kill_on_drop(true);
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
    lookup(&name)?.ok_or_else(|| {
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
}
