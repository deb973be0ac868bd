//! The master key file: created 0600 once, reloaded identically, refused when exposed or
//! corrupt, never replaced.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use gilgal_secrets::{DataKey, MasterKey, SecretsError};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn created_once_with_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/master.key");
    let first = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read(&path).unwrap().len(), 32);
    let wrapped = first.wrap(&DataKey::generate());

    let second = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(second.id(), first.id());
    second.unwrap(&wrapped).unwrap();
    assert_eq!(MasterKey::load(&path).unwrap().id(), first.id());
}

#[test]
fn group_or_world_readable_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let key = MasterKey::load_or_create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    let err = MasterKey::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, SecretsError::KeyFileExposed { mode: 0o644, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("chmod 600"), "{message}");
    assert!(message.contains("0644"), "{message}");
    // Refused, not replaced and not silently tightened.
    assert_eq!(mode(&path), 0o644);

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(MasterKey::load_or_create(&path).unwrap().id(), key.id());
}

#[test]
fn wrong_length_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    for contents in [&b""[..], &[7u8; 31][..], &[7u8; 33][..]] {
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SecretsError::KeyFileLength { len, expected: 32, .. } if len == contents.len() as u64),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), contents);
    }
}

#[test]
fn load_without_create_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let err = MasterKey::load(&path).unwrap_err();
    assert!(matches!(err, SecretsError::KeyFile { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn concurrent_first_starts_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let ids: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| MasterKey::load_or_create(&path).unwrap().id()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let on_disk = MasterKey::load(&path).unwrap().id();
    assert!(
        ids.iter().all(|id| *id == on_disk),
        "{ids:?} vs {on_disk:?}"
    );
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "temp files left behind");
}
