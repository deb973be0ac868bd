//! Alert notifications, delivered where people look: Slack-compatible incoming webhooks,
//! generic JSON webhooks signed with HMAC-SHA256 (so a receiver can tell Gilgal sent them),
//! and email over an SMTP relay. No store and no HTTP API: the deployer decides *when* to
//! notify (once on firing, once on resolving); this crate only says it well and delivers it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long one delivery may take before it counts as failed (and is retried later).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` on generic webhooks.
pub const SIGNATURE_HEADER: &str = "X-Gilgal-Signature-256";
/// Header carrying `alert.firing` or `alert.resolved`.
pub const EVENT_HEADER: &str = "X-Gilgal-Event";
/// Header carrying a delivery id stable across retries (`<alert id>.<event>`), so a
/// receiver can drop a retry it already handled.
pub const DELIVERY_HEADER: &str = "X-Gilgal-Delivery";

/// Delivery failures. Every one is retried by the caller until its attempts run out.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The channel's target cannot be used (bad URL or address).
    #[error("{0}")]
    InvalidTarget(String),
    /// The receiver answered with a non-2xx status.
    #[error("the receiver answered {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The receiver could not be reached or did not answer in time.
    #[error("cannot reach the receiver: {0}")]
    Unreachable(String),
    /// The server has no SMTP relay configured.
    #[error("this server has no SMTP relay (start it with --smtp-url and --smtp-from)")]
    NoSmtp,
    /// The SMTP relay refused or failed.
    #[error("SMTP: {0}")]
    Smtp(String),
}

/// Whether an alert started or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The rule's condition held: the alert fired.
    Firing,
    /// The condition no longer holds.
    Resolved,
    /// Sent on request, to check a channel works; no alert behind it.
    Test,
}

impl Event {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Firing => "firing",
            Event::Resolved => "resolved",
            Event::Test => "test",
        }
    }
}

/// Everything a notification says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Firing or resolved.
    pub event: Event,
    /// The alert's id (stable over its firing and resolving).
    pub alert_id: String,
    /// The rule's kind (`error_rate`, …).
    pub rule: String,
    /// The rule's condition ("error rate > 1 % for 5 min").
    pub condition: String,
    /// What fired it, or why it resolved.
    pub message: String,
    /// The value measured when it fired.
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: f64,
    /// Project name.
    pub project: String,
    /// Environment name.
    pub environment: String,
    /// When it fired.
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
    /// When it resolved.
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// The environment's public URL, when it has one.
    pub url: Option<String>,
}

impl Notification {
    /// One line for chat and email subjects: `[FIRING] shop/production: error rate > 1 % …`.
    pub fn headline(&self) -> String {
        format!(
            "[{}] {}/{}: {}",
            self.event.as_str().to_uppercase(),
            self.project,
            self.environment,
            self.condition
        )
    }

    /// The plain-text body of an email (and the details of a chat message).
    pub fn text(&self) -> String {
        let mut out = format!("{}\n\n{}\n\n", self.headline(), self.message);
        out.push_str(&format!("alert     {}\n", self.alert_id));
        out.push_str(&format!("rule      {}\n", self.rule));
        out.push_str(&format!("fired at  {}\n", rfc3339(self.fired_at)));
        if let Some(at) = self.resolved_at {
            out.push_str(&format!("resolved  {}\n", rfc3339(at)));
        }
        if let Some(url) = &self.url {
            out.push_str(&format!("app       {url}\n"));
        }
        out
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Where one channel delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Generic JSON POST, signed with `secret`.
    Webhook {
        /// Receiver URL.
        url: String,
        /// HMAC-SHA256 key.
        secret: String,
    },
    /// Slack (or Mattermost, Discord's `/slack` endpoint, …) incoming webhook.
    Slack {
        /// Incoming webhook URL.
        url: String,
    },
    /// Email through the server's SMTP relay.
    Email {
        /// Recipient address.
        to: String,
    },
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`, as sent in [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The generic webhook's JSON body: the notification's fields.
pub fn webhook_body(notification: &Notification) -> Vec<u8> {
    serde_json::to_vec(notification).unwrap_or_default()
}

/// The Slack-compatible body: `text` (shown everywhere) plus one attachment in the alert's
/// colour.
pub fn slack_body(notification: &Notification) -> Vec<u8> {
    let (icon, color) = match notification.event {
        Event::Firing => (":rotating_light:", "#d00000"),
        Event::Resolved => (":white_check_mark:", "#2eb886"),
        Event::Test => (":wave:", "#439fe0"),
    };
    serde_json::to_vec(&serde_json::json!({
        "text": format!("{icon} {}", notification.headline()),
        "attachments": [{
            "color": color,
            "text": notification.message,
            "footer": format!("Gilgal alert {}", notification.alert_id),
        }],
    }))
    .unwrap_or_default()
}

/// Checks a webhook or Slack URL: `http` or `https`, with a host, without credentials.
/// (Whether the host is on the server's own network is the caller's policy.)
pub fn check_url(url: &str) -> Result<reqwest::Url, NotifyError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| NotifyError::InvalidTarget(format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(NotifyError::InvalidTarget(format!(
            "{url:?}: only http and https URLs can receive notifications"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(NotifyError::InvalidTarget(format!("{url:?} has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(NotifyError::InvalidTarget(
            "put no credentials in the URL (generic webhooks are signed instead)".into(),
        ));
    }
    Ok(parsed)
}

/// A webhook or Slack URL as it may be shown to everyone who can read the environment:
/// scheme, host and port, the rest (which for Slack *is* the credential) elided.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("?");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let elided = if parsed.path() == "/" && parsed.query().is_none() {
                "/"
            } else {
                "/…"
            };
            format!("{}://{host}{port}{elided}", parsed.scheme())
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// Checks an email address (`name@example.com`).
pub fn check_email(address: &str) -> Result<(), NotifyError> {
    address.parse::<lettre::Address>().map(|_| ()).map_err(|e| {
        NotifyError::InvalidTarget(format!("{address:?} is not an email address: {e}"))
    })
}

/// The server's SMTP relay and sender address.
#[derive(Clone)]
pub struct SmtpRelay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpRelay {
    /// A relay from a URL: `smtp://host:port` (plain, for a local relay),
    /// `smtp://host:587?tls=required` (STARTTLS) or `smtps://user:pass@host:465` (TLS), and
    /// the `From` address.
    pub fn from_url(url: &str, from: &str) -> Result<Self, NotifyError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| NotifyError::InvalidTarget(format!("SMTP URL: {e}")))?
            .timeout(Some(DELIVERY_TIMEOUT))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::InvalidTarget(format!("sender {from:?}: {e}")))?;
        Ok(Self { transport, from })
    }
}

/// Delivers notifications over HTTP and SMTP.
#[derive(Debug, Clone)]
pub struct Notifier {
    http: reqwest::Client,
    smtp: Option<SmtpRelay>,
}

impl Notifier {
    /// A notifier; without `smtp`, email channels fail with [`NotifyError::NoSmtp`].
    pub fn new(smtp: Option<SmtpRelay>) -> Result<Self, NotifyError> {
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            // A redirect could point anywhere, the server's own network included.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Gilgal-Alerts/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Unreachable(e.to_string()))?;
        Ok(Self { http, smtp })
    }

    /// Whether email channels can be delivered.
    pub fn has_smtp(&self) -> bool {
        self.smtp.is_some()
    }

    /// Delivers one notification to one channel.
    pub async fn send(
        &self,
        channel: &Channel,
        notification: &Notification,
    ) -> Result<(), NotifyError> {
        match channel {
            Channel::Webhook { url, secret } => {
                let body = webhook_body(notification);
                let request = self
                    .http
                    .post(check_url(url)?)
                    .header(SIGNATURE_HEADER, signature(secret.as_bytes(), &body));
                self.post(request, notification, body).await
            }
            Channel::Slack { url } => {
                let request = self.http.post(check_url(url)?);
                self.post(request, notification, slack_body(notification))
                    .await
            }
            Channel::Email { to } => self.email(to, notification).await,
        }
    }

    async fn post(
        &self,
        request: reqwest::RequestBuilder,
        notification: &Notification,
        body: Vec<u8>,
    ) -> Result<(), NotifyError> {
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                EVENT_HEADER,
                format!("alert.{}", notification.event.as_str()),
            )
            .header(
                DELIVERY_HEADER,
                format!("{}.{}", notification.alert_id, notification.event.as_str()),
            )
            .body(body)
            .send()
            .await
            // Without the URL: a Slack URL is a credential and errors end up in logs.
            .map_err(|e| NotifyError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(NotifyError::Rejected {
            status: status.as_u16(),
            body: text.chars().take(200).collect(),
        })
    }

    async fn email(&self, to: &str, notification: &Notification) -> Result<(), NotifyError> {
        let relay = self.smtp.as_ref().ok_or(NotifyError::NoSmtp)?;
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::InvalidTarget(format!("recipient {to:?}: {e}")))?;
        let message = Message::builder()
            .from(relay.from.clone())
            .to(to)
            .subject(format!("Gilgal {}", notification.headline()))
            .header(ContentType::TEXT_PLAIN)
            .body(notification.text())
            .map_err(|e| NotifyError::Smtp(e.to_string()))?;
        relay
            .transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError::Smtp(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(event: Event) -> Notification {
        Notification {
            event,
            alert_id: "6b1f".into(),
            rule: "error_rate".into(),
            condition: "error rate > 1 % for 5 min".into(),
            message: "error rate 12.50 % over the last 60 s".into(),
            value: Some(0.125),
            threshold: 0.01,
            project: "shop".into(),
            environment: "production".into(),
            fired_at: OffsetDateTime::UNIX_EPOCH,
            resolved_at: None,
            url: Some("http://shop.localhost".into()),
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_carry_the_alert() {
        let firing = notification(Event::Firing);
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(&firing)).unwrap();
        assert_eq!(body["event"], "firing");
        assert_eq!(body["rule"], "error_rate");
        assert_eq!(body["value"], 0.125);
        assert_eq!(body["fired_at"], "1970-01-01T00:00:00Z");
        assert!(body["resolved_at"].is_null());
        let slack: serde_json::Value =
            serde_json::from_slice(&slack_body(&notification(Event::Resolved))).unwrap();
        assert_eq!(
            slack["text"],
            ":white_check_mark: [RESOLVED] shop/production: error rate > 1 % for 5 min"
        );
        assert!(firing.text().contains("app       http://shop.localhost"));
    }

    #[test]
    fn targets_are_checked() {
        assert!(check_url("https://hooks.slack.com/services/T0/B0/x").is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(redact_url("https://x.test/?token=1"), "https://x.test/…");
        assert!(check_email("ops@example.com").is_ok());
        assert!(check_email("ops").is_err());
        assert!(check_email("a@b@c").is_err());
        assert!(
            SmtpRelay::from_url("smtp://127.0.0.1:2525", "Gilgal <alerts@example.com>").is_ok()
        );
        assert!(SmtpRelay::from_url("http://x", "alerts@example.com").is_err());
        assert!(SmtpRelay::from_url("smtp://127.0.0.1:2525", "nobody").is_err());
    }

    #[tokio::test]
    async fn email_without_a_relay_says_how_to_configure_one() {
        let notifier = Notifier::new(None).unwrap();
        let err = notifier
            .send(
                &Channel::Email {
                    to: "ops@example.com".into(),
                },
                &notification(Event::Firing),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--smtp-url"), "{err}");
    }
}
