//! Push webhook deliveries for every provider: `verify` with a fixed secret and `parse` with
//! fuzz-chosen headers and body.
//!
//! Input format, so that seeds are readable deliveries: header lines `name: value` up to the
//! first empty line, then the raw body. A header value `@sign` is replaced by the correct
//! `sign(SECRET, body)`, `@secret` by the secret itself, so the fuzzer reaches the code behind
//! a valid signature without having to find an HMAC.
//!
//! Invariants: a parsed push has a ref passing `validate_ref` and, unless deleted, a commit
//! passing `validate_commit` (lower case); `verify` accepts `sign(SECRET, body)` for GitHub and
//! generic, accepts a signature header only if it is that signature (whitespace and hex case
//! aside), and refuses it with one hex digit changed; GitLab accepts exactly the secret.
#![no_main]

use gilgal_webhooks::{
    delivery_id, parse, sign, validate_commit, validate_ref, verify, Event, Provider, WebhookError,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123";
const PROVIDERS: [Provider; 3] = [Provider::GitHub, Provider::GitLab, Provider::Generic];

fn split(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let signature = sign(SECRET, body);
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| {
            let value = value.strip_prefix(' ').unwrap_or(value);
            let value = match value {
                "@sign" => signature.clone(),
                "@secret" => secret.clone(),
                other => other.to_owned(),
            };
            (name.trim().to_ascii_lowercase(), value)
        })
        .collect();
    (headers, body)
}

/// The digest a signature header names, normalised as `verify` reads it.
fn digest_of(header: &str) -> Option<String> {
    header
        .trim()
        .strip_prefix("sha256=")
        .map(str::to_ascii_lowercase)
}

fn check_verify(provider: Provider, headers: &[(String, String)], body: &[u8]) {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let result = verify(provider, SECRET, lookup, body);
    let expected = sign(SECRET, body);
    match provider {
        Provider::GitHub | Provider::Generic => {
            let header = match provider {
                Provider::GitHub => "x-hub-signature-256",
                _ => "x-gilgal-signature-256",
            };
            match lookup(header) {
                None => assert!(matches!(result, Err(WebhookError::MissingHeader(_)))),
                Some(given) => assert_eq!(
                    result.is_ok(),
                    digest_of(given) == digest_of(&expected),
                    "{provider}: signature {given:?} for body {body:?} gave {result:?}"
                ),
            }
            let good = |value: &str| {
                verify(
                    provider,
                    SECRET,
                    |name| (name == header).then_some(value),
                    body,
                )
            };
            assert_eq!(good(&expected), Ok(()), "{provider}: own signature refused");
            // Every single-digit change is refused (a cheap sample: the first and last digit).
            for at in [7, expected.len() - 1] {
                let mut forged = expected.clone().into_bytes();
                forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
                let forged = String::from_utf8(forged).expect("hex stays ASCII");
                assert_eq!(
                    good(&forged),
                    Err(WebhookError::BadSignature),
                    "{provider}: {forged}"
                );
            }
            assert!(good("").is_err() && good("sha256=").is_err());
        }
        Provider::GitLab => match lookup("x-gitlab-token") {
            None => assert!(matches!(result, Err(WebhookError::MissingHeader(_)))),
            Some(token) => assert_eq!(
                result.is_ok(),
                token.as_bytes() == SECRET,
                "token {token:?}"
            ),
        },
    }
}

fn check_parse(provider: Provider, headers: &[(String, String)], body: &[u8]) {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if let Some(id) = delivery_id(provider, lookup) {
        assert!(!id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_graphic()));
    }
    match parse(provider, lookup, body) {
        Ok(Event::Push(push)) => {
            assert_eq!(
                validate_ref(&push.reference),
                Ok(()),
                "{provider}: {push:?}"
            );
            assert!(push.branch().is_some() != push.tag().is_some(), "{push:?}");
            if let Some(commit) = &push.commit {
                assert_eq!(validate_commit(commit), Ok(()), "{provider}: {push:?}");
                assert_eq!(commit, &commit.to_ascii_lowercase());
            }
            if let Some(message) = &push.message {
                assert!(!message.contains('\n') && message.chars().count() <= 200);
            }
            if let Some(pusher) = &push.pusher {
                assert!(pusher.chars().count() <= 100);
            }
            if let Some(url) = &push.repository {
                assert!(url.len() <= 2048);
            }
        }
        Ok(Event::Other(name)) => assert!(name.chars().count() <= 40),
        Ok(Event::Ping) => {}
        Err(WebhookError::InvalidPayload { event, .. }) => assert!(event.chars().count() <= 40),
        Err(WebhookError::MissingHeader(_)) => {}
        Err(WebhookError::BadSignature) => panic!("parse never checks signatures"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = split(data);
    for provider in PROVIDERS {
        check_verify(provider, &headers, body);
        check_parse(provider, &headers, body);
    }
});
