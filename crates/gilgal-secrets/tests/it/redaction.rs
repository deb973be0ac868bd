//! Redaction of secret values from logs and messages.

use std::borrow::Cow;

use gilgal_secrets::{Redactor, REDACTED};

#[test]
fn every_occurrence_of_every_secret_is_replaced() {
    let r = Redactor::new(["hunter22", "s3cr3t-token"]).unwrap();
    assert_eq!(
        r.redact("login hunter22 with s3cr3t-token, again hunter22"),
        format!("login {REDACTED} with {REDACTED}, again {REDACTED}")
    );
}

#[test]
fn overlapping_and_nested_secrets_leak_no_fragment() {
    // "abcdef" and "defghi" overlap; "1234" is inside "x1234y"; "zzzz" repeats into itself.
    let r = Redactor::new(["abcdef", "defghi", "1234", "x1234y", "zzzz"]).unwrap();
    assert_eq!(r.redact("<abcdefghi>"), "<[REDACTED]>");
    assert_eq!(r.redact("<defghi abcdef>"), "<[REDACTED] [REDACTED]>");
    assert_eq!(r.redact("a x1234y b 1234 c"), "a [REDACTED] b [REDACTED] c");
    assert_eq!(r.redact("zzzzzz!"), "[REDACTED]!");
    assert_eq!(r.redact("abcdefghi1234"), "[REDACTED]");
    let out = r.redact("..abcdefghi..");
    for fragment in ["abc", "def", "ghi"] {
        assert!(!out.contains(fragment), "{out}");
    }
}

#[test]
fn non_ascii_secrets_and_text() {
    let r = Redactor::new(["pässwörd"]).unwrap();
    assert_eq!(r.redact("é pässwörd ü"), "é [REDACTED] ü");
}

#[test]
fn a_megabyte_without_secrets_is_borrowed() {
    let line = "2024-05-01T12:00:00Z INFO GET /api/items 200 in 3ms request_id=abc\n";
    let text = line.repeat((1 << 20) / line.len() + 1);
    assert!(text.len() >= 1 << 20);
    let r = Redactor::new(["do-not-print-me", "another secret value"]).unwrap();
    assert!(matches!(r.redact(&text), Cow::Borrowed(t) if std::ptr::eq(t, text.as_str())));

    let empty = Redactor::new(Vec::<String>::new()).unwrap();
    assert!(empty.is_empty());
    assert!(matches!(empty.redact(&text), Cow::Borrowed(_)));

    // And one secret in the middle of that megabyte is found.
    let mut with_secret = text.clone();
    with_secret.insert_str(text.len() / 2, "do-not-print-me");
    let out = r.redact(&with_secret);
    assert!(matches!(out, Cow::Owned(_)));
    assert!(!out.contains("do-not-print-me"));
    assert_eq!(out.len(), text.len() + REDACTED.len());
}

#[test]
fn values_below_the_minimum_length_are_left_alone() {
    let r = Redactor::new(["on", "123", "real-secret"]).unwrap();
    assert_eq!(r.redact("on 123 real-secret"), format!("on 123 {REDACTED}"));
}
