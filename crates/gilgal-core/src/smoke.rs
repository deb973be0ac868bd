//! Smoke checks of a blue-green deploy: requests the new release must answer as expected on
//! its private hostname before it gets any traffic.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `GET /health 200`: a method, a path, the status it must answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmokeCheck {
    /// `GET` or `HEAD` (a smoke check must not change anything).
    pub method: String,
    /// Absolute path with an optional query.
    pub path: String,
    /// The status it must answer.
    pub status: u16,
}

impl fmt::Display for SmokeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.method, self.path, self.status)
    }
}

/// A smoke check written wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a smoke check like \"GET /health 200\"{1}")]
pub struct InvalidSmokeCheck(String, &'static str);

/// Most smoke checks one deploy may have.
pub const MAX_SMOKE_CHECKS: usize = 20;

/// Parses `GET /health 200` (the method defaults to GET: `/health 200`).
pub fn parse_smoke(text: &str) -> Result<SmokeCheck, InvalidSmokeCheck> {
    let invalid = |why| InvalidSmokeCheck(text.to_owned(), why);
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (method, path, status) = match parts.as_slice() {
        [method, path, status] => (method.to_ascii_uppercase(), *path, *status),
        [path, status] => ("GET".to_owned(), *path, *status),
        _ => return Err(invalid("")),
    };
    if !matches!(method.as_str(), "GET" | "HEAD") {
        return Err(invalid(
            ": only GET and HEAD (a smoke check must not change anything)",
        ));
    }
    let path_ok =
        path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic());
    if !path_ok {
        return Err(invalid(": the path starts with / and has no spaces"));
    }
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| invalid(": the status is a number from 100 to 599"))?;
    Ok(SmokeCheck {
        method,
        path: path.to_owned(),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_checks_parse_and_refuse_what_could_change_something() {
        let check = parse_smoke("get /health?deep=1 200").unwrap();
        assert_eq!(check.to_string(), "GET /health?deep=1 200");
        assert_eq!(parse_smoke("/ 301").unwrap().method, "GET");
        for (bad, says) in [
            ("POST /orders 201", "must not change"),
            ("GET health 200", "starts with /"),
            ("GET /health ok", "100 to 599"),
            ("GET /health 200 extra", "not a smoke check"),
            ("", "not a smoke check"),
        ] {
            let error = parse_smoke(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }
}
