//! Strict identifier types validated once, at the API edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Why a name or email was refused; the message is shown to users verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The value is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The value is longer than allowed.
    #[error("{what} must be at most {max} characters")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The value contains characters outside the allowed set or breaks a shape rule.
    #[error("{what} {rule}")]
    Invalid {
        /// Which kind of name.
        what: &'static str,
        /// The rule that was broken, phrased to follow the name.
        rule: &'static str,
    },
}

/// A DNS label (RFC 1123): lowercase letters, digits and inner hyphens, 1 to 63 characters.
///
/// Project and environment names become hostnames (`{project}.{base_domain}`) and Unix user
/// names, so they are validated with this one strict type and never reach a shell unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[schema(value_type = String, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", example = "billing-api")]
#[serde(transparent)]
pub struct DnsLabel(String);

impl DnsLabel {
    /// Longest label DNS allows.
    pub const MAX_LEN: usize = 63;

    /// Validates `value` as a DNS label, naming the kind of thing in errors.
    pub fn parse_as(value: &str, what: &'static str) -> Result<Self, NameError> {
        if value.is_empty() {
            return Err(NameError::Empty { what });
        }
        if value.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what,
                max: Self::MAX_LEN,
            });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(NameError::Invalid {
                what,
                rule: "may contain only lowercase letters, digits and hyphens",
            });
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(NameError::Invalid {
                what,
                rule: "must start and end with a letter or digit",
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A project's name: a [`DnsLabel`] that also forms its default hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[schema(value_type = String, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", example = "billing-api")]
#[serde(transparent)]
pub struct ProjectName(DnsLabel);

impl ProjectName {
    /// The validated text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for ProjectName {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        DnsLabel::parse_as(value, "project name").map(Self)
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ProjectName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// An email address, trimmed and lowercased so that lookups are case-insensitive.
///
/// Only the shape is checked (one `@`, non-empty parts, a dot in the domain, no spaces or
/// control characters); ownership is proven later by invitations, not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[schema(value_type = String, pattern = "^\\s*[^\\s@\\x00-\\x1f\\x7f-\\x9f]+@[^\\s@.\\x00-\\x1f\\x7f-\\x9f][^\\s@\\x00-\\x1f\\x7f-\\x9f]*\\.[^\\s@\\x00-\\x1f\\x7f-\\x9f]*[^\\s@.\\x00-\\x1f\\x7f-\\x9f]\\s*$", example = "ada@example.com")]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Longest address accepted (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "email";
        let value = value.trim().to_lowercase();
        if value.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        // Characters, as the OpenAPI document's maxLength counts them.
        if value.chars().count() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what: WHAT,
                max: Self::MAX_LEN,
            });
        }
        let well_formed = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
        if !well_formed || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NameError::Invalid {
                what: WHAT,
                rule: "must look like name@example.com",
            });
        }
        Ok(Self(value))
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A fully qualified hostname (lowercase DNS labels joined by dots), optionally a `*.` wildcard.
///
/// Used for custom domains and TLS certificates; each label follows [`DnsLabel`]'s rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[schema(value_type = String, pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$", example = "api.example.com")]
#[serde(transparent)]
pub struct Hostname(String);

impl Hostname {
    /// Longest hostname DNS allows.
    pub const MAX_LEN: usize = 253;

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "hostname";
        let lowered = value.trim_end_matches('.').to_ascii_lowercase();
        if lowered.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if lowered.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what: WHAT,
                max: Self::MAX_LEN,
            });
        }
        let rest = lowered.strip_prefix("*.").unwrap_or(&lowered);
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() < 2 && rest != "localhost" {
            return Err(NameError::Invalid {
                what: WHAT,
                rule: "must have at least two labels, like example.com",
            });
        }
        for label in labels {
            DnsLabel::parse_as(label, "each hostname label").map_err(|e| match e {
                NameError::Empty { .. } => NameError::Invalid {
                    what: WHAT,
                    rule: "must not contain empty labels",
                },
                other => other,
            })?;
        }
        Ok(Self(lowered))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_project(input: &str, expect: Result<(), &str>) {
        let got = input
            .parse::<ProjectName>()
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(str::to_owned), "input {input:?}");
    }

    #[test]
    fn project_names_are_dns_labels() {
        check_project("api", Ok(()));
        check_project("billing-api-2", Ok(()));
        check_project("a", Ok(()));
        check_project(&"a".repeat(63), Ok(()));
        check_project("", Err("project name must not be empty"));
        check_project(
            &"a".repeat(64),
            Err("project name must be at most 63 characters"),
        );
        check_project(
            "Api",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
        check_project(
            "a_b",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
        check_project(
            "a.b",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
        check_project(
            "-rm",
            Err("project name must start and end with a letter or digit"),
        );
        check_project(
            "x-",
            Err("project name must start and end with a letter or digit"),
        );
        check_project(
            "a;b",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
        check_project(
            "$(id)",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
        check_project(
            "é",
            Err("project name may contain only lowercase letters, digits and hyphens"),
        );
    }

    #[test]
    fn emails_are_normalised_and_shape_checked() {
        let email: Email = "  Ada@Example.COM ".parse().unwrap();
        assert_eq!(email.as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "a@.com",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hostnames_are_dotted_labels_with_optional_wildcard() {
        for good in [
            "example.com",
            "API.Example.com",
            "*.apps.example.com",
            "a-1.b.c",
            "example.com.",
        ] {
            assert!(good.parse::<Hostname>().is_ok(), "{good:?} should pass");
        }
        assert_eq!(
            "API.Example.com.".parse::<Hostname>().unwrap().as_str(),
            "api.example.com"
        );
        for bad in [
            "",
            "com",
            "a..b",
            "-a.com",
            "a_b.com",
            "*.",
            "a.*.com",
            "exa mple.com",
            "x.com/../etc",
        ] {
            assert!(
                bad.parse::<Hostname>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn names_deserialize_through_validation() {
        let err = serde_json::from_str::<ProjectName>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        let ok: ProjectName = serde_json::from_str("\"good-name\"").unwrap();
        assert_eq!(ok.as_str(), "good-name");
    }
}
