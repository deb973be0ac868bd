//! Push webhooks without IO: who may trigger a deploy, and what was pushed.
//!
//! A git host calls Gilgal's receiver URL on every push. Before anything is believed, the
//! delivery is authenticated against the webhook's shared secret ([`verify`]): GitHub and the
//! generic sender sign the raw body with HMAC-SHA256 (`X-Hub-Signature-256`,
//! `X-Gilgal-Signature-256`), GitLab sends the secret itself (`X-Gitlab-Token`); both checks
//! are constant-time. Only then is the body parsed ([`parse`]) into an [`Event`]: a ping, a
//! push of one ref to one commit, or something Gilgal ignores. Parsing is strict about what
//! it uses (ref names and commit ids are validated here, so they can be handed to git as
//! single arguments) and lenient about everything else, because hosts add fields over time.
//!
//! The crate takes headers through a lookup function so that it knows no HTTP library, and
//! is the target of the `webhook_payload` fuzzer.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Largest delivery body accepted; GitHub caps payloads at 25 MiB, but a push that large
/// carries thousands of commits Gilgal does not read.
pub const MAX_PAYLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Who sends the deliveries; decides the headers, the authentication and the payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// GitHub (and GitHub Enterprise, Gitea/Forgejo, which send the same headers).
    GitHub,
    /// GitLab (self-managed or gitlab.com).
    GitLab,
    /// Any CI or script: `{"ref": …, "commit": …}` signed like GitHub, with Gilgal's headers.
    Generic,
}

impl Provider {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
            Self::Generic => "generic",
        }
    }

    /// Parses a stored or wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "github" => Some(Self::GitHub),
            "gitlab" => Some(Self::GitLab),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }

    /// The header naming the event type.
    fn event_header(self) -> &'static str {
        match self {
            Self::GitHub => "x-github-event",
            Self::GitLab => "x-gitlab-event",
            Self::Generic => "x-gilgal-event",
        }
    }

    /// The header carrying the sender's id of this delivery, used to ignore redeliveries.
    fn delivery_header(self) -> &'static [&'static str] {
        match self {
            Self::GitHub => &["x-github-delivery"],
            Self::GitLab => &["x-gitlab-event-uuid", "idempotency-key"],
            Self::Generic => &["x-gilgal-delivery"],
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// A header the provider always sends is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The signature or token does not match the webhook's secret.
    #[error("the signature does not match this webhook's secret")]
    BadSignature,
    /// The body is not a payload of the announced event.
    #[error("invalid {event} payload: {reason}")]
    InvalidPayload {
        /// The event the headers announced.
        event: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The host checking that the URL answers (GitHub's `ping`, sent on creation).
    Ping,
    /// A ref moved.
    Push(PushEvent),
    /// Any other event (issues, merge requests, …): acknowledged and ignored.
    Other(String),
}

/// One ref moved to one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1.2`.
    pub reference: String,
    /// The commit the ref now points at; `None` when the ref was deleted.
    pub commit: Option<String>,
    /// The repository's clone URL as the sender reports it (informational: Gilgal fetches
    /// from the URL stored with the webhook, never from the payload).
    pub repository: Option<String>,
    /// Who pushed, as the sender names them.
    pub pusher: Option<String>,
    /// The head commit's message, first line, for the deployment's description.
    pub message: Option<String>,
}

impl PushEvent {
    /// The branch name when a branch was pushed (`refs/heads/<name>`).
    pub fn branch(&self) -> Option<&str> {
        self.reference.strip_prefix("refs/heads/")
    }

    /// The tag name when a tag was pushed (`refs/tags/<name>`).
    pub fn tag(&self) -> Option<&str> {
        self.reference.strip_prefix("refs/tags/")
    }
}

/// Checks that a delivery comes from someone holding `secret`. `header` looks up a request
/// header by lower-case name.
pub fn verify<'h>(
    provider: Provider,
    secret: &[u8],
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    match provider {
        Provider::GitHub => verify_hmac(secret, header("x-hub-signature-256"), body)
            .map_err(|e| missing_as(e, "X-Hub-Signature-256")),
        Provider::Generic => verify_hmac(secret, header("x-gilgal-signature-256"), body)
            .map_err(|e| missing_as(e, "X-Gilgal-Signature-256")),
        Provider::GitLab => {
            let token =
                header("x-gitlab-token").ok_or(WebhookError::MissingHeader("X-Gitlab-Token"))?;
            if bool::from(token.as_bytes().ct_eq(secret)) {
                Ok(())
            } else {
                Err(WebhookError::BadSignature)
            }
        }
    }
}

fn missing_as(err: WebhookError, name: &'static str) -> WebhookError {
    match err {
        WebhookError::MissingHeader(_) => WebhookError::MissingHeader(name),
        other => other,
    }
}

/// `sha256=<hex>` over the raw body, compared in constant time.
fn verify_hmac(secret: &[u8], signature: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
    let signature = signature.ok_or(WebhookError::MissingHeader("signature"))?;
    let hex_digest = signature
        .trim()
        .strip_prefix("sha256=")
        .ok_or(WebhookError::BadSignature)?;
    let expected = hex::decode(hex_digest).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::BadSignature)
}

/// The `sha256=<hex>` signature of `body` under `secret`, as GitHub and the generic sender
/// send it; for senders written against Gilgal and for tests.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The sender's id of this delivery (GitHub's `X-GitHub-Delivery`, GitLab's event UUID), if
/// it sent a plausible one: at most 100 visible ASCII characters.
pub fn delivery_id<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<String> {
    provider
        .delivery_header()
        .iter()
        .find_map(|name| header(name))
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

/// Parses a verified delivery. Call [`verify`] first: an unauthenticated body is never
/// worth parsing.
pub fn parse<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<Event, WebhookError> {
    let event_header = provider.event_header();
    let event = header(event_header)
        .map(str::trim)
        .ok_or(WebhookError::MissingHeader(match provider {
            Provider::GitHub => "X-GitHub-Event",
            Provider::GitLab => "X-Gitlab-Event",
            Provider::Generic => "X-Gilgal-Event",
        }))?;
    let invalid = |reason: String| WebhookError::InvalidPayload {
        event: event.chars().take(40).collect(),
        reason,
    };
    match (provider, event) {
        (Provider::GitHub, "ping") | (Provider::Generic, "ping") => Ok(Event::Ping),
        (Provider::GitHub, "push") => {
            let payload: GitHubPush =
                serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
            let deleted = payload.deleted || is_null_commit(&payload.after);
            push_event(
                payload.reference,
                (!deleted).then_some(payload.after),
                payload.repository.and_then(|r| r.clone_url),
                payload.pusher.and_then(|p| p.name),
                payload.head_commit.and_then(|c| c.message),
            )
            .map_err(invalid)
        }
        (Provider::GitLab, "Push Hook") | (Provider::GitLab, "Tag Push Hook") => {
            let payload: GitLabPush =
                serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
            let commit = payload
                .checkout_sha
                .filter(|sha| !is_null_commit(sha))
                .or_else(|| payload.after.filter(|sha| !is_null_commit(sha)));
            let message = payload.commits.last().and_then(|c| c.message.clone());
            push_event(
                payload.reference,
                commit,
                payload.repository.and_then(|r| r.git_http_url),
                payload.user_username,
                message,
            )
            .map_err(invalid)
        }
        (Provider::Generic, "push") => {
            let payload: GenericPush =
                serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
            let reference = if payload.reference.starts_with("refs/") {
                payload.reference
            } else {
                format!("refs/heads/{}", payload.reference)
            };
            push_event(reference, Some(payload.commit), None, None, payload.message)
                .map_err(invalid)
        }
        (_, other) => Ok(Event::Other(other.chars().take(40).collect())),
    }
}

fn push_event(
    reference: String,
    commit: Option<String>,
    repository: Option<String>,
    pusher: Option<String>,
    message: Option<String>,
) -> Result<Event, String> {
    validate_ref(&reference)?;
    if let Some(commit) = &commit {
        validate_commit(commit)?;
    }
    Ok(Event::Push(PushEvent {
        reference,
        commit: commit.map(|c| c.to_ascii_lowercase()),
        repository: repository.filter(|url| url.len() <= 2048),
        pusher: pusher.map(|p| p.chars().take(100).collect()),
        message: message.map(|m| {
            m.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect()
        }),
    }))
}

/// A full ref under `refs/heads/` or `refs/tags/` made of the characters git and Gilgal
/// both accept, so that the branch name can be compared and passed on safely.
pub fn validate_ref(reference: &str) -> Result<(), String> {
    let name = reference
        .strip_prefix("refs/heads/")
        .or_else(|| reference.strip_prefix("refs/tags/"))
        .ok_or_else(|| format!("ref {:?} is not a branch or tag", truncate(reference)))?;
    let plausible = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with(".lock")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if plausible {
        Ok(())
    } else {
        Err(format!(
            "ref {:?} has an unsupported name",
            truncate(reference)
        ))
    }
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn validate_commit(commit: &str) -> Result<(), String> {
    if matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "commit {:?} is not a full commit id",
            truncate(commit)
        ))
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

fn is_null_commit(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

#[derive(Deserialize)]
struct GitHubPush {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    repository: Option<GitHubRepository>,
    #[serde(default)]
    pusher: Option<GitHubPusher>,
    #[serde(default)]
    head_commit: Option<Commit>,
}

#[derive(Deserialize)]
struct GitHubRepository {
    #[serde(default)]
    clone_url: Option<String>,
}

#[derive(Deserialize)]
struct GitHubPusher {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct GitLabPush {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default)]
    repository: Option<GitLabRepository>,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Deserialize)]
struct GitLabRepository {
    #[serde(default)]
    git_http_url: Option<String>,
}

#[derive(Deserialize)]
struct GenericPush {
    #[serde(rename = "ref")]
    reference: String,
    commit: String,
    #[serde(default)]
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn github_signature_is_checked_over_the_raw_body() {
        let body = br#"{"zen":"hi"}"#;
        let good = sign(b"s3cret", body);
        let h = [("x-hub-signature-256", good.as_str())];
        assert_eq!(
            verify(Provider::GitHub, b"s3cret", headers(&h), body),
            Ok(())
        );
        assert_eq!(
            verify(Provider::GitHub, b"other", headers(&h), body),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitHub, b"s3cret", headers(&h), br#"{"zen":"ho"}"#),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitHub, b"s3cret", headers(&[]), body),
            Err(WebhookError::MissingHeader("X-Hub-Signature-256"))
        );
        let sha1 = [("x-hub-signature-256", "sha1=abcd")];
        assert_eq!(
            verify(Provider::GitHub, b"s3cret", headers(&sha1), body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn gitlab_token_must_match_exactly() {
        let h = [("x-gitlab-token", "tok")];
        assert_eq!(verify(Provider::GitLab, b"tok", headers(&h), b"{}"), Ok(()));
        assert_eq!(
            verify(Provider::GitLab, b"tok2", headers(&h), b"{}"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(Provider::GitLab, b"to", headers(&h), b"{}"),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn github_push_and_ping() {
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"{z}","after":"{SHA}","deleted":false,
                "repository":{{"clone_url":"https://example.com/a/b.git"}},
                "pusher":{{"name":"ada"}},"head_commit":{{"id":"{SHA}","message":"Fix it\n\nbody"}},
                "unknown":[1,2,3]}}"#,
            z = "0".repeat(40)
        );
        let h = [("x-github-event", "push")];
        let Ok(Event::Push(push)) = parse(Provider::GitHub, headers(&h), body.as_bytes()) else {
            panic!("not a push");
        };
        assert_eq!(push.branch(), Some("main"));
        assert_eq!(push.commit.as_deref(), Some(SHA));
        assert_eq!(push.message.as_deref(), Some("Fix it"));
        assert_eq!(push.pusher.as_deref(), Some("ada"));
        let ping = [("x-github-event", "ping")];
        assert_eq!(
            parse(Provider::GitHub, headers(&ping), b"{}"),
            Ok(Event::Ping)
        );
        let issues = [("x-github-event", "issues")];
        assert_eq!(
            parse(Provider::GitHub, headers(&issues), b"not json"),
            Ok(Event::Other("issues".into()))
        );
    }

    #[test]
    fn deleted_branches_have_no_commit() {
        let body = format!(
            r#"{{"ref":"refs/heads/gone","after":"{}","deleted":true}}"#,
            "0".repeat(40)
        );
        let h = [("x-github-event", "push")];
        let Ok(Event::Push(push)) = parse(Provider::GitHub, headers(&h), body.as_bytes()) else {
            panic!("not a push");
        };
        assert_eq!(push.commit, None);
    }

    #[test]
    fn gitlab_push() {
        let body = format!(
            r#"{{"object_kind":"push","ref":"refs/heads/release/1.x","after":"{SHA}",
                "checkout_sha":"{SHA}","user_username":"bob",
                "repository":{{"git_http_url":"https://gitlab.example/a/b.git"}},
                "commits":[{{"message":"one"}},{{"message":"two"}}]}}"#
        );
        let h = [("x-gitlab-event", "Push Hook")];
        let Ok(Event::Push(push)) = parse(Provider::GitLab, headers(&h), body.as_bytes()) else {
            panic!("not a push");
        };
        assert_eq!(push.branch(), Some("release/1.x"));
        assert_eq!(push.commit.as_deref(), Some(SHA));
        assert_eq!(push.message.as_deref(), Some("two"));
    }

    #[test]
    fn generic_push_accepts_short_branch_names() {
        let body = format!(r#"{{"ref":"main","commit":"{}"}}"#, SHA.to_uppercase());
        let h = [("x-gilgal-event", "push")];
        let Ok(Event::Push(push)) = parse(Provider::Generic, headers(&h), body.as_bytes()) else {
            panic!("not a push");
        };
        assert_eq!(push.reference, "refs/heads/main");
        assert_eq!(push.commit.as_deref(), Some(SHA));
    }

    #[test]
    fn hostile_refs_and_commits_are_refused() {
        let h = [("x-gilgal-event", "push")];
        for (reference, commit) in [
            ("refs/heads/-rf", SHA),
            ("refs/heads/a;touch x", SHA),
            ("refs/heads/$(id)", SHA),
            ("refs/heads/../../etc", SHA),
            ("refs/remotes/origin/main", SHA),
            ("main", "--upload-pack=touch"),
            ("main", "abc"),
        ] {
            let body = serde_json::json!({"ref": reference, "commit": commit}).to_string();
            let result = parse(Provider::Generic, headers(&h), body.as_bytes());
            assert!(
                matches!(result, Err(WebhookError::InvalidPayload { .. })),
                "{reference} {commit}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let h = [("x-github-event", "push")];
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"ref":1}"#,
            &[0xff, 0xfe],
        ] {
            assert!(parse(Provider::GitHub, headers(&h), body).is_err());
        }
        assert_eq!(
            parse(Provider::GitHub, headers(&[]), b"{}"),
            Err(WebhookError::MissingHeader("X-GitHub-Event"))
        );
    }

    #[test]
    fn delivery_ids_are_bounded() {
        let h = [("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
        assert_eq!(
            delivery_id(Provider::GitHub, headers(&h)).as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        let long = "x".repeat(101);
        let h = [("x-gilgal-delivery", long.as_str())];
        assert_eq!(delivery_id(Provider::Generic, headers(&h)), None);
    }
}
