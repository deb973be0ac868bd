//! Master key rotation, including crashes at every step of the protocol.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gilgal_secrets::{
    associated_data, pending_key_path, DataKey, KeyRing, MasterKey, Rotation, SecretsError,
    WrappedKey,
};

/// A stand-in for the database: wrapped data keys per environment and one sealed value each.
struct Db {
    envs: Vec<(String, WrappedKey, gilgal_secrets::SealedValue)>,
}

impl Db {
    fn new(ring: &KeyRing, n: usize) -> Self {
        let envs = (0..n)
            .map(|i| {
                let env = format!("env-{i}");
                let data = DataKey::generate();
                let sealed = data
                    .seal(&format!("secret-{i}"), &associated_data(&env, "TOKEN"))
                    .unwrap();
                (env, ring.wrap(&data), sealed)
            })
            .collect();
        Self { envs }
    }

    fn wrapped(&self) -> impl Iterator<Item = &WrappedKey> {
        self.envs.iter().map(|(_, w, _)| w)
    }

    /// Every value is readable with the master keys a restarted server would load.
    fn assert_readable(&self, path: &Path) {
        let ring = KeyRing::load_or_create(path).unwrap();
        for (i, (env, wrapped, sealed)) in self.envs.iter().enumerate() {
            let data = ring.unwrap(wrapped).unwrap();
            let value = data.open(sealed, &associated_data(env, "TOKEN")).unwrap();
            assert_eq!(*value, format!("secret-{i}"));
        }
    }
}

#[test]
fn full_rotation_rewraps_keys_and_keeps_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let ring = KeyRing::load_or_create(&path).unwrap();
    assert!(!ring.rotation_pending());
    let old_id = ring.primary().id();
    let mut db = Db::new(&ring, 5);
    let sealed_before: Vec<_> = db.envs.iter().map(|(_, _, s)| s.clone()).collect();

    let rotation = Rotation::begin(&path).unwrap();
    assert_eq!(rotation.old_key().id(), old_id);
    assert_ne!(rotation.new_key().id(), old_id);
    for (_, wrapped, _) in &mut db.envs {
        *wrapped = rotation.rewrap(wrapped).unwrap();
    }
    let new = rotation.commit(db.wrapped()).unwrap();

    assert!(!pending_key_path(&path).exists());
    assert_eq!(MasterKey::load(&path).unwrap().id(), new.id());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(db.wrapped().all(|w| w.key_id() == new.id()));
    // Values were not re-sealed: same ciphertexts, still readable.
    let sealed_after: Vec<_> = db.envs.iter().map(|(_, _, s)| s.clone()).collect();
    assert_eq!(sealed_before, sealed_after);
    db.assert_readable(&path);

    // The old key is gone: a leftover key ring names both ids in its error.
    let err = ring.unwrap(&db.envs[0].1).unwrap_err();
    assert!(matches!(err, SecretsError::WrongMasterKey { .. }), "{err}");
}

#[test]
fn crash_after_next_is_written_keeps_everything_readable_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let ring = KeyRing::load_or_create(&path).unwrap();
    let mut db = Db::new(&ring, 4);
    drop(ring);

    // Rotation begins, rewraps half the keys and stores them, then the process dies.
    let rotation = Rotation::begin(&path).unwrap();
    let new_id = rotation.new_key().id();
    for (_, wrapped, _) in db.envs.iter_mut().take(2) {
        *wrapped = rotation.rewrap(wrapped).unwrap();
    }
    drop(rotation); // crash: no commit

    // Both key files exist; a restarted server reads old- and new-wrapped keys alike.
    assert!(pending_key_path(&path).exists());
    let ring = KeyRing::load_or_create(&path).unwrap();
    assert!(ring.rotation_pending());
    assert_eq!(
        ring.primary().id(),
        new_id,
        "new data keys use the next key"
    );
    db.assert_readable(&path);
    // A data key created meanwhile goes under the next key, so it survives the commit.
    let data = DataKey::generate();
    let late = ring.wrap(&data);
    assert_eq!(late.key_id(), new_id);
    db.envs.push((
        "env-late".into(),
        late,
        data.seal("secret-4", &associated_data("env-late", "TOKEN"))
            .unwrap(),
    ));

    // Running the rotation again resumes with the same next key and finishes.
    let rotation = Rotation::begin(&path).unwrap();
    assert_eq!(rotation.new_key().id(), new_id);
    for (_, wrapped, _) in &mut db.envs {
        *wrapped = rotation.rewrap(wrapped).unwrap();
    }
    rotation.commit(db.wrapped()).unwrap();
    assert!(!pending_key_path(&path).exists());
    db.assert_readable(&path);
    assert!(!KeyRing::load_or_create(&path).unwrap().rotation_pending());
}

#[test]
fn crash_right_after_begin_before_any_rewrap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let db = Db::new(&KeyRing::load_or_create(&path).unwrap(), 3);
    drop(Rotation::begin(&path).unwrap());
    db.assert_readable(&path);
    let next = pending_key_path(&path);
    assert_eq!(
        fs::metadata(&next).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn commit_refuses_while_keys_remain_under_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let mut db = Db::new(&KeyRing::load_or_create(&path).unwrap(), 3);
    let rotation = Rotation::begin(&path).unwrap();
    let old_id = rotation.old_key().id();
    db.envs[0].1 = rotation.rewrap(&db.envs[0].1).unwrap();

    let err = rotation.commit(db.wrapped()).unwrap_err();
    match &err {
        SecretsError::RotationIncomplete { remaining, old } => {
            assert_eq!(*remaining, 2);
            assert_eq!(*old, old_id);
        }
        e => panic!("unexpected {e}"),
    }
    // Nothing changed on disk; all data still readable.
    assert!(pending_key_path(&path).exists());
    assert_eq!(MasterKey::load(&path).unwrap().id(), old_id);
    db.assert_readable(&path);
}

#[test]
fn commit_refuses_a_key_from_an_unknown_master() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::load_or_create(&path).unwrap();
    let stranger = MasterKey::generate().wrap(&DataKey::generate());
    let rotation = Rotation::begin(&path).unwrap();
    assert!(matches!(
        rotation.commit([&stranger]),
        Err(SecretsError::WrongMasterKey { .. })
    ));
    assert!(pending_key_path(&path).exists());
}

#[test]
fn rotation_needs_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    assert!(matches!(
        Rotation::begin(&path),
        Err(SecretsError::KeyFile { .. })
    ));
    assert!(!pending_key_path(&path).exists());
}

#[test]
fn next_without_current_is_refused_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::load_or_create(&pending_key_path(&path)).unwrap();
    let err = KeyRing::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, SecretsError::CurrentKeyMissing { .. }),
        "{err}"
    );
    assert!(!path.exists(), "must not create a fresh current key");
    assert!(matches!(
        Rotation::begin(&path),
        Err(SecretsError::CurrentKeyMissing { .. })
    ));
}

#[test]
fn exposed_next_key_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::load_or_create(&path).unwrap();
    drop(Rotation::begin(&path).unwrap());
    let next = pending_key_path(&path);
    fs::set_permissions(&next, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        KeyRing::load_or_create(&path),
        Err(SecretsError::KeyFileExposed { .. })
    ));
}
