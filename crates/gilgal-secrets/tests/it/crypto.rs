//! Envelope encryption: round trips, tampering, associated data, wrong master keys.

use gilgal_secrets::{associated_data, DataKey, MasterKey, SealedValue, SecretsError, WrappedKey};

/// Flips one bit of the decoded payload of a `v1:...` string, keeping it well-formed.
fn flip_payload_byte(text: &str, index: usize) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (head, payload) = text.rsplit_once(':').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    bytes[index] ^= 0x80;
    format!("{head}:{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[test]
fn value_round_trips_through_stored_text() {
    let master = MasterKey::generate();
    let data = DataKey::generate();
    let ad = associated_data("env-1", "DATABASE_URL");
    let value = "postgres://app:s3cr3t@db/app ünïcødé";

    // What the database stores: two strings.
    let wrapped = master.wrap(&data).to_string();
    let sealed = data.seal(value, &ad).unwrap().to_string();

    let data = master
        .unwrap(&wrapped.parse::<WrappedKey>().unwrap())
        .unwrap();
    let opened = data
        .open(&sealed.parse::<SealedValue>().unwrap(), &ad)
        .unwrap();
    assert_eq!(opened.as_str(), value);
    assert!(!sealed.contains("s3cr3t"));
}

#[test]
fn sealing_twice_gives_different_ciphertexts() {
    let data = DataKey::generate();
    let a = data.seal("same", b"ad").unwrap();
    let b = data.seal("same", b"ad").unwrap();
    assert_ne!(a, b);
}

#[test]
fn tampered_value_fails() {
    let data = DataKey::generate();
    let ad = associated_data("env", "TOKEN");
    let sealed = data.seal("a secret token", &ad).unwrap();
    let len = 24 + "a secret token".len() + 16;
    for index in [0, 23, 24, 30, len - 1] {
        let bad = SealedValue::parse(&flip_payload_byte(sealed.as_str(), index)).unwrap();
        assert!(
            matches!(data.open(&bad, &ad), Err(SecretsError::Decrypt { .. })),
            "flip at {index} accepted"
        );
    }
}

#[test]
fn tampered_wrapped_key_fails() {
    let master = MasterKey::generate();
    let wrapped = master.wrap(&DataKey::generate());
    for index in [0, 30, 71] {
        let bad = WrappedKey::parse(&flip_payload_byte(wrapped.as_str(), index)).unwrap();
        assert!(matches!(
            master.unwrap(&bad),
            Err(SecretsError::Decrypt { .. })
        ));
    }
}

#[test]
fn ciphertext_cannot_move_to_another_variable_or_environment() {
    let data = DataKey::generate();
    let sealed = data
        .seal("value", &associated_data("env-a", "API_KEY"))
        .unwrap();
    for (env, name) in [
        ("env-a", "OTHER_KEY"),
        ("env-b", "API_KEY"),
        ("env-aA", "PI_KEY"),
    ] {
        let err = data.open(&sealed, &associated_data(env, name)).unwrap_err();
        assert!(matches!(err, SecretsError::Decrypt { .. }), "{env}/{name}");
        assert!(err.to_string().contains("another environment or variable"));
    }
    // Another environment's data key (same variable name) does not open it either.
    assert!(DataKey::generate()
        .open(&sealed, &associated_data("env-a", "API_KEY"))
        .is_err());
    assert_eq!(
        &*data
            .open(&sealed, &associated_data("env-a", "API_KEY"))
            .unwrap(),
        "value"
    );
}

#[test]
fn wrong_master_key_is_named_in_the_error() {
    let (right, wrong) = (MasterKey::generate(), MasterKey::generate());
    let wrapped = right.wrap(&DataKey::generate());
    let err = wrong.unwrap(&wrapped).unwrap_err();
    match &err {
        SecretsError::WrongMasterKey { found, loaded } => {
            assert_eq!(*found, right.id());
            assert_eq!(loaded, &[wrong.id()]);
        }
        e => panic!("unexpected {e}"),
    }
    let message = err.to_string();
    assert!(message.contains(&right.id().to_string()), "{message}");
    assert!(message.contains(&wrong.id().to_string()), "{message}");
}

#[test]
fn editing_the_key_id_is_detected() {
    // Rewriting the id to the loaded key's id does not make another key's ciphertext open.
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let wrapped = a.wrap(&DataKey::generate()).to_string();
    let forged = wrapped.replacen(&a.id().to_string(), &b.id().to_string(), 1);
    assert!(matches!(
        b.unwrap(&WrappedKey::parse(&forged).unwrap()),
        Err(SecretsError::Decrypt { .. })
    ));
}

#[test]
fn empty_and_large_values_round_trip() {
    let data = DataKey::generate();
    for value in [String::new(), "x".repeat(1 << 20)] {
        let sealed = data.seal(&value, b"ad").unwrap();
        assert_eq!(*data.open(&sealed, b"ad").unwrap(), value);
    }
}
