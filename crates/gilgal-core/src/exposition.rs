//! Prometheus text exposition, as far as Gilgal rewrites it: an app's own `/metrics` gets
//! the environment's labels added to every sample before it is passed on. The text comes
//! from the app (untrusted), so every line is parsed strictly: what does not parse is
//! dropped and counted, never passed on half-rewritten, and nothing panics (fuzzed by
//! `fuzz/fuzz_targets/prometheus_relabel.rs`).

use std::collections::HashSet;
use std::fmt::Write as _;

/// A label value escaped for the exposition format (backslash, quote, newline).
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// The label pairs of a sample (`a="1",b="x\"y"` without braces), values kept escaped.
fn parse_labels(inner: &str) -> Option<Vec<(&str, &str)>> {
    let mut labels = Vec::new();
    let mut rest = inner.trim_start_matches([' ', ',']);
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let after = after.trim_start().strip_prefix('"')?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        labels.push((name, &after[..end]));
        rest = after[end + 1..].trim_start_matches([' ', ',']);
    }
    Some(labels)
}

/// The part after a sample's name and labels: ` value [timestamp]`, nothing else.
fn is_value_part(rest: &str) -> bool {
    let words = rest.split_whitespace().count();
    rest.starts_with([' ', '\t'])
        && (1..=2).contains(&words)
        && !rest.contains(['{', '}', '"', '#'])
}

/// Appends an app's exposition to `out` with `extra` labels (names and unescaped values) on
/// every sample. A label the app already uses is kept as `exported_<name>` (Prometheus'
/// rule for conflicting target labels); `# TYPE`/`# HELP` lines are kept once per metric
/// across calls sharing `seen_meta`; other comments are dropped silently. Samples that do
/// not parse, and every line once `out` is longer than `max_output`, are dropped. Returns
/// how many sample lines were dropped.
pub fn relabel(
    text: &str,
    extra: &[(&str, String)],
    out: &mut String,
    seen_meta: &mut HashSet<String>,
    max_output: usize,
) -> usize {
    let prefix: Vec<String> = extra
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    let mut dropped = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if out.len() > max_output {
            dropped += 1;
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().take(2).collect();
            if matches!(words.first(), Some(&"TYPE") | Some(&"HELP"))
                && words.get(1).is_some_and(|n| is_name(n))
                && seen_meta.insert(words.join(" "))
            {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        let (own, rest) = if line[name_end..].starts_with('{') {
            // The closing brace is searched after the name, never before it (`a}{ 1`).
            let Some(close) = line[name_end..].rfind('}').map(|i| name_end + i) else {
                dropped += 1;
                continue;
            };
            match parse_labels(&line[name_end + 1..close]) {
                Some(labels) => (labels, &line[close + 1..]),
                None => {
                    dropped += 1;
                    continue;
                }
            }
        } else {
            (Vec::new(), &line[name_end..])
        };
        if !is_name(name) || !is_value_part(rest) {
            dropped += 1;
            continue;
        }
        let mut labels = prefix.clone();
        for (k, v) in own {
            if extra.iter().any(|(e, _)| *e == k) {
                labels.push(format!("exported_{k}=\"{v}\""));
            } else {
                labels.push(format!("{k}=\"{v}\""));
            }
        }
        let _ = writeln!(out, "{name}{{{}}}{rest}", labels.join(","));
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_get_environment_labels_and_keep_their_own() {
        let text = "# HELP hits_total Hits.\n# TYPE hits_total counter\n\
                    hits_total{path=\"/a\",instance=\"x\"} 3\nup 1 1700000000\n# a comment\n\
                    broken{path=\"/a\" 1\na}{ 1\nno_value\ntrailing{a=\"1\"} 1 }\n\
                    msg{text=\"a \\\"q\\\" }\"} 2\n";
        let extra = [("app", "shop".to_owned()), ("instance", "web.1".to_owned())];
        let mut out = String::new();
        let mut seen = HashSet::new();
        assert_eq!(
            relabel(text, &extra, &mut out, &mut seen, 1 << 20),
            4,
            "{out}"
        );
        assert_eq!(
            out,
            "# HELP hits_total Hits.\n# TYPE hits_total counter\n\
             hits_total{app=\"shop\",instance=\"web.1\",path=\"/a\",exported_instance=\"x\"} 3\n\
             up{app=\"shop\",instance=\"web.1\"} 1 1700000000\n\
             msg{app=\"shop\",instance=\"web.1\",text=\"a \\\"q\\\" }\"} 2\n"
        );
        // A second instance adds its samples but not the metadata again.
        let mut again = String::new();
        relabel(text, &extra, &mut again, &mut seen, 1 << 20);
        assert!(!again.contains("# TYPE"), "{again}");
        // What was written parses again, unchanged.
        let mut reparsed = String::new();
        assert_eq!(
            relabel(&out, &[], &mut reparsed, &mut HashSet::new(), 1 << 20),
            0
        );
        assert_eq!(reparsed, out);
    }

    #[test]
    fn output_is_bounded() {
        let text = "a 1\n".repeat(1000);
        let mut out = String::new();
        let dropped = relabel(
            &text,
            &[("app", "x".into())],
            &mut out,
            &mut HashSet::new(),
            100,
        );
        assert!(out.len() < 200, "{}", out.len());
        assert!(dropped > 900);
    }
}
