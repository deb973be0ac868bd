//! What the edge enforces per environment beyond routing: HTTPS redirect, HSTS and per-client
//! rate limits. Stored as JSON (this module owns the format) and applied to the
//! environment's route every time it is written, so a rollout, a canary split or a domain
//! change never drops them.

use std::time::Duration;

use gilgal_proxy::{RateLimit, RouteSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DeployError, Platform};

/// Most rate limits one environment may have.
pub const MAX_RATE_LIMITS: usize = 16;

/// Longest HSTS max-age accepted (two years, what browsers' preload lists ask for).
pub const MAX_HSTS_SECONDS: u64 = 63_072_000;

/// An environment's edge policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgePolicy {
    /// Redirect plain HTTP to HTTPS (308).
    #[serde(default)]
    pub https_only: bool,
    /// `Strict-Transport-Security: max-age` in seconds, if any.
    #[serde(default)]
    pub hsts_max_age_seconds: Option<u64>,
    /// `includeSubDomains`.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Per-client request budgets.
    #[serde(default)]
    pub rate_limits: Vec<EdgeRateLimit>,
}

/// One per-client budget: `requests` per `per_seconds`, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRateLimit {
    /// Only requests under this path prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Requests per period.
    pub requests: u32,
    /// Period in seconds.
    pub per_seconds: u32,
    /// Requests at once (default: `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl EdgePolicy {
    /// Refuses what the edge could not enforce as meant, naming the field.
    pub fn validate(&self) -> Result<(), DeployError> {
        let invalid = |m: String| Err(DeployError::Rejected(m));
        if let Some(age) = self.hsts_max_age_seconds {
            if age == 0 || age > MAX_HSTS_SECONDS {
                return invalid(format!(
                    "hsts_max_age_seconds must be from 1 to {MAX_HSTS_SECONDS}"
                ));
            }
        } else if self.hsts_include_subdomains {
            return invalid("hsts_include_subdomains needs hsts_max_age_seconds".into());
        }
        if self.rate_limits.len() > MAX_RATE_LIMITS {
            return invalid(format!("at most {MAX_RATE_LIMITS} rate limits"));
        }
        let mut prefixes = std::collections::BTreeSet::new();
        for rule in &self.rate_limits {
            if let Some(prefix) = &rule.path_prefix {
                let valid = prefix.starts_with('/')
                    && prefix.len() <= 256
                    && prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
                if !valid {
                    return invalid(format!(
                        "rate limit path_prefix {prefix:?} must be a URL path like /api (letters, digits, / - _ . ~)"
                    ));
                }
            }
            let key = rule
                .path_prefix
                .as_deref()
                .map(|p| p.trim_end_matches('/'))
                .unwrap_or("");
            if !prefixes.insert(key.to_owned()) {
                return invalid(format!(
                    "two rate limits for {:?}: one per path prefix",
                    rule.path_prefix.as_deref().unwrap_or("/")
                ));
            }
            if !(1..=1_000_000).contains(&rule.requests)
                || !(1..=86_400).contains(&rule.per_seconds)
                || rule.burst.is_some_and(|b| !(1..=1_000_000).contains(&b))
            {
                return invalid(
                    "a rate limit is 1 to 1000000 requests per 1 to 86400 seconds, burst 1 to 1000000"
                        .into(),
                );
            }
            if u64::from(rule.per_seconds) * 1000 < u64::from(rule.requests) {
                return invalid("a rate limit allows at most 1000 requests per second".into());
            }
        }
        Ok(())
    }

    /// Writes the policy into the environment's route.
    pub(crate) fn apply(&self, route: &mut RouteSpec) {
        route.redirect_https = self.https_only;
        route.hsts = self.hsts_max_age_seconds.map(|age| {
            if self.hsts_include_subdomains {
                format!("max-age={age}; includeSubDomains")
            } else {
                format!("max-age={age}")
            }
        });
        route.limits.rate_limits = self
            .rate_limits
            .iter()
            .map(|r| RateLimit {
                path_prefix: r.path_prefix.clone(),
                requests: r.requests,
                period: Duration::from_secs(u64::from(r.per_seconds)),
                burst: r.burst.unwrap_or(r.requests),
            })
            .collect();
    }
}

impl Platform {
    /// The environment's edge policy (the default when none was set or it cannot be read).
    pub(crate) async fn edge_policy(&self, environment: Uuid) -> EdgePolicy {
        match self.store.environment_edge(environment).await {
            Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_else(|e| {
                tracing::warn!(%environment, error = %e, "unreadable edge settings; enforcing none");
                EdgePolicy::default()
            }),
            Ok(None) => EdgePolicy::default(),
            Err(e) => {
                tracing::warn!(%environment, error = %e, "cannot read edge settings");
                EdgePolicy::default()
            }
        }
    }

    /// The edge policy of an environment, as stored.
    pub async fn environment_edge_policy(&self, environment: Uuid) -> EdgePolicy {
        self.edge_policy(environment).await
    }
}

impl crate::Changes {
    /// Replaces an environment's edge policy and re-applies its route at once (no restart,
    /// no new release).
    pub async fn set_edge_policy(
        &self,
        environment: &gilgal_store::EnvironmentRecord,
        policy: &EdgePolicy,
    ) -> Result<(), DeployError> {
        policy.validate()?;
        let json =
            serde_json::to_string(policy).map_err(|e| DeployError::Invalid(e.to_string()))?;
        self.platform
            .store
            .set_environment_edge(environment.id, &json)
            .await?;
        self.refresh_route(environment).await
    }
}
