//! Redaction of secret values from build logs, app logs and error messages.

use std::borrow::Cow;
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::SecretsError;

/// What every occurrence of a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secret values shorter than this many bytes once surrounding whitespace is trimmed (and
/// lines of multi-line values shorter than this) are not redacted: replacing every `on`, `1` or `abc` in a log would destroy ordinary text while
/// hiding nothing worth hiding. Such values should not be secrets.
pub const MIN_REDACTED_LEN: usize = 4;

/// Replaces secret values in text with [`REDACTED`]; build one per environment (or app) from
/// its current secret values and run every log line and error message through it.
///
/// For each value of at least [`MIN_REDACTED_LEN`] bytes it matches:
/// * the raw value, and the value with surrounding whitespace trimmed (a pasted value often
///   ends in a newline that the program never prints);
/// * each line of a multi-line value (PEM keys, JSON credentials), since logs are captured
///   line by line;
/// * the value percent-encoded (as it appears in URLs such as `DATABASE_URL` or query
///   strings) and JSON-escaped (as it appears in JSON log lines);
/// * the value base64-encoded (standard and URL-safe alphabets, with or without padding).
///
/// Where occurrences overlap (one secret contains or overlaps another) the whole union is
/// replaced, so no fragment of either leaks. Text is matched as given: a secret split across
/// two separately redacted chunks is not found, so redact whole lines. Redaction is a safety
/// net, not a guarantee: a program can always print a secret in a form not listed here.
///
/// With no secrets, or when a text contains none, [`Redactor::redact`] borrows its input and
/// allocates nothing. The matcher necessarily holds the secrets in memory (not zeroed).
#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    patterns: usize,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The automaton's own Debug would print the secrets.
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Builds a redactor for these secret values. Errs only if the automaton would be
    /// unreasonably large (far beyond any environment's secrets).
    pub fn new<I, S>(secrets: I) -> Result<Self, SecretsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns = Vec::new();
        for secret in secrets {
            add_patterns(&mut patterns, secret.as_ref());
        }
        patterns.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Self::default());
        }
        let matcher = AhoCorasick::builder()
            // Standard semantics are required to report overlapping matches.
            .match_kind(MatchKind::Standard)
            .build(patterns.iter().map(|p| p.as_bytes()))
            .map_err(|e| SecretsError::Redactor(e.to_string()))?;
        Ok(Self {
            matcher: Some(matcher),
            patterns: patterns.len(),
        })
    }

    /// Whether this redactor has nothing to redact (no secret was long enough).
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every occurrence of a secret replaced by [`REDACTED`]; borrowed unchanged
    /// when there is none.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(text);
        };
        let mut matches = matcher.find_overlapping_iter(text);
        let Some(first) = matches.next() else {
            return Cow::Borrowed(text);
        };
        let mut spans: Vec<(usize, usize)> = std::iter::once(first)
            .chain(matches)
            .map(|m| (m.start(), m.end()))
            .collect();
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0; // text[..copied] is dealt with
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            // Merge every span that overlaps or touches this one.
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            // Patterns are valid UTF-8 found in valid UTF-8, so spans fall on char boundaries.
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

fn add_patterns(patterns: &mut Vec<Zeroizing<String>>, secret: &str) {
    if secret.trim().len() < MIN_REDACTED_LEN {
        return;
    }
    let mut forms: Vec<&str> = vec![secret, secret.trim()];
    if secret.trim().contains('\n') {
        forms.extend(secret.lines().map(str::trim));
    }
    for form in forms {
        if form.len() < MIN_REDACTED_LEN {
            continue;
        }
        patterns.push(Zeroizing::new(form.to_owned()));
        patterns.push(Zeroizing::new(percent_encode(form)));
        patterns.push(Zeroizing::new(json_escape(form)));
    }
    for form in [secret, secret.trim()] {
        if form.len() < MIN_REDACTED_LEN {
            continue;
        }
        // Unpadded forms are prefixes of the padded ones, so they cover both.
        patterns.push(Zeroizing::new(STANDARD_NO_PAD.encode(form)));
        patterns.push(Zeroizing::new(URL_SAFE_NO_PAD.encode(form)));
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters, uppercase hex.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inside of a JSON string literal holding `s`, escaped as serde_json (and so
/// tracing-subscriber's JSON logs) writes it.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(secrets: &[&str], text: &str) -> String {
        Redactor::new(secrets).unwrap().redact(text).into_owned()
    }

    #[test]
    fn encoders_match_common_implementations() {
        assert_eq!(percent_encode("p@ss w/rd~-._"), "p%40ss%20w%2Frd~-._");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(json_escape("a\"b\\c\nd\u{1}é"), "a\\\"b\\\\c\\nd\\u0001é");
    }

    #[test]
    fn short_values_are_ignored() {
        let r = Redactor::new(["abc", "", " x \n"]).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.redact("abc x"), "abc x");
        assert_eq!(redact(&["abcd"], "abcd abc"), "[REDACTED] abc");
    }

    #[test]
    fn encoded_forms_are_redacted() {
        let secret = "p@ss w\"rd!";
        let b64 = STANDARD_NO_PAD.encode(secret);
        let text = format!(
            "url=postgres://u:p%40ss%20w%22rd%21@db json={{\"v\":\"p@ss w\\\"rd!\"}} b64={b64}=="
        );
        assert_eq!(
            redact(&[secret], &text),
            "url=postgres://u:[REDACTED]@db json={\"v\":\"[REDACTED]\"} b64=[REDACTED]=="
        );
    }

    #[test]
    fn trimmed_value_and_lines_of_multi_line_values_are_redacted() {
        let pem =
            "-----BEGIN KEY-----\nMIIBVQIBADANBgkqhkiG\nw0BAQEFAASCAT8wggE7\n-----END KEY-----\n";
        assert_eq!(
            redact(&[pem], "line: MIIBVQIBADANBgkqhkiG\n"),
            "line: [REDACTED]\n"
        );
        assert_eq!(
            redact(&["token123\n"], "auth token123."),
            "auth [REDACTED]."
        );
    }

    #[test]
    fn debug_hides_the_secrets() {
        let shown = format!("{:?}", Redactor::new(["supersecret"]).unwrap());
        assert!(!shown.contains("supersecret"), "{shown}");
    }
}
