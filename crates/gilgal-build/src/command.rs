//! Command lines for app processes, parsed without ever involving a shell.
//!
//! Gilgal never hands a user's command to `sh -c`. A command line (from a Procfile,
//! `gilgal.toml` or a release phase) is split into an argument vector with POSIX-shell-like
//! quoting rules (`'single'`, `"double"`, `\` escapes, `#` comments), and `$VAR`, `${VAR}`
//! and `${VAR:-default}` are expanded *inside* words from the instance environment.
//!
//! The contract, which is also the user-facing documentation:
//! - Quoting works as in a shell; single quotes keep `$` literal, `\$` is a literal `$`.
//! - A variable expands within its word and never splits it into several arguments; an
//!   unset variable expands to the empty string. `$1`, `$?`, `$$`, globs (`*`) and `~`
//!   are *not* special and stay literal.
//! - Shell operators that would silently mean something else without a shell are
//!   rejected with an error when unquoted: `|`, `||`, `&`, `&&`, `;`, `<`, `>`, `(`, `)`,
//!   a newline, and command substitution (backticks or `$(`, also inside double quotes).
//! - Who really needs a shell writes it explicitly in their own Procfile:
//!   `web: sh -c 'exec gunicorn -b 0.0.0.0:$PORT app:app 2>&1 | tee log'`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Stands in for a `$` that must stay literal (single-quoted or backslash-escaped).
/// NUL can never appear in an argument vector, so it cannot collide with user text.
const LITERAL_DOLLAR: char = '\0';

/// Why a command line was rejected; every variant says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command line has no words at all.
    #[error("the command is empty")]
    Empty,
    /// An unquoted shell operator was found; without a shell it would be passed as a
    /// literal argument, which is never what the author meant.
    #[error(
        "`{operator}` at column {column} is a shell operator, but commands run without a shell; \
         quote it to pass it literally, or write `sh -c '...'` explicitly"
    )]
    ShellOperator {
        /// The operator as written, e.g. `&&`.
        operator: String,
        /// 1-based character column within the command.
        column: usize,
    },
    /// Quotes or a trailing backslash are not closed.
    #[error("unbalanced quoting: {0}")]
    Quoting(String),
    /// A `${...}` expansion is malformed.
    #[error("bad variable expansion `{expansion}`: {reason}")]
    BadExpansion {
        /// The offending text.
        expansion: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A NUL byte cannot be part of a process argument.
    #[error("the command contains a NUL character")]
    Nul,
}

/// A parsed, shell-free command line; exists so commands are validated once (at parse time,
/// where the error can name its Procfile or gilgal.toml line) and expanded per instance.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandLine {
    source: String,
    words: Vec<String>,
}

impl CommandLine {
    /// Parses `text` into words, rejecting shell syntax that cannot work without a shell.
    pub fn parse(text: &str) -> Result<Self, CommandError> {
        // Split exactly the text that is kept as the source: the source is what a stored
        // release re-parses, and whitespace that `trim` drops but `shell_words` does not
        // (form feed, no-break space, an escaped trailing space) must not change the words.
        let text = text.trim();
        let scanned = scan(text)?;
        let words =
            shell_words::split(&scanned).map_err(|err| CommandError::Quoting(err.to_string()))?;
        if words.is_empty() {
            return Err(CommandError::Empty);
        }
        for word in &words {
            expand_word(word, &|_: &str| None)?;
        }
        Ok(Self {
            source: text.to_owned(),
            words,
        })
    }

    /// A command that runs `argv` exactly, with no expansion (each word single-quoted), e.g.
    /// a container image's own `CMD`, which was written for the image's shell rules.
    pub fn literal(argv: &[String]) -> Result<Self, CommandError> {
        let quoted: Vec<String> = argv
            .iter()
            .map(|word| format!("'{}'", word.replace('\'', "'\\''")))
            .collect();
        Self::parse(&quoted.join(" "))
    }

    /// The command as the user wrote it (trimmed); what logs and the API should show.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The argument vector before expansion, with `$` shown literally; for display and tests.
    pub fn words(&self) -> Vec<String> {
        self.words
            .iter()
            .map(|word| word.replace(LITERAL_DOLLAR, "$"))
            .collect()
    }

    /// The argument vector for one instance: `$VAR`, `${VAR}` and `${VAR:-default}` are looked
    /// up with `env` (unset means empty, or the default). The first element is the program.
    pub fn expand(&self, env: &impl Fn(&str) -> Option<String>) -> Vec<String> {
        self.words
            .iter()
            .map(|word| {
                // Validated at parse time, so expansion cannot fail here; fall back to the
                // literal word rather than panicking if that invariant were ever broken.
                expand_word(word, env).unwrap_or_else(|_| word.replace(LITERAL_DOLLAR, "$"))
            })
            .collect()
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CommandLine").field(&self.source).finish()
    }
}

impl std::str::FromStr for CommandLine {
    type Err = CommandError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for CommandLine {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Rejects shell operators and marks literal dollars, leaving quoting for `shell_words`.
fn scan(text: &str) -> Result<String, CommandError> {
    if text.contains('\0') {
        return Err(CommandError::Nul);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut quote = Quote::None;
    let mut index = 0;
    let operator = |op: &str, at: usize| CommandError::ShellOperator {
        operator: op.to_owned(),
        column: at + 1,
    };
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                }
                out.push(if c == '$' { LITERAL_DOLLAR } else { c });
            }
            Quote::Double => match c {
                '"' => {
                    quote = Quote::None;
                    out.push(c);
                }
                '\\' if next == Some('$') => {
                    out.push(LITERAL_DOLLAR);
                    index += 1;
                }
                '\\' => {
                    out.push(c);
                    if let Some(escaped) = next {
                        out.push(escaped);
                        index += 1;
                    }
                }
                '`' => return Err(operator("`", index)),
                '$' if next == Some('(') => return Err(operator("$(", index)),
                _ => out.push(c),
            },
            Quote::None => match c {
                '\'' => {
                    quote = Quote::Single;
                    out.push(c);
                }
                '"' => {
                    quote = Quote::Double;
                    out.push(c);
                }
                '\\' if next == Some('$') => {
                    out.push(LITERAL_DOLLAR);
                    index += 1;
                }
                '\\' => {
                    out.push(c);
                    if let Some(escaped) = next {
                        out.push(escaped);
                        index += 1;
                    }
                }
                '#' if index == 0 || chars[index - 1].is_whitespace() => {
                    // A comment runs to the end of the line, exactly as shell_words reads it.
                    break;
                }
                '|' | '&' => {
                    let op = if next == Some(c) {
                        format!("{c}{c}")
                    } else {
                        c.to_string()
                    };
                    return Err(operator(&op, index));
                }
                ';' | '<' | '>' | '(' | ')' | '`' => return Err(operator(&c.to_string(), index)),
                '\n' | '\r' => return Err(operator("newline", index)),
                '$' if next == Some('(') => return Err(operator("$(", index)),
                _ => out.push(c),
            },
        }
        index += 1;
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands variables in one word; errors only for malformed `${...}`.
fn expand_word(word: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, CommandError> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::with_capacity(word.len());
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c == LITERAL_DOLLAR {
            out.push('$');
            index += 1;
            continue;
        }
        if c != '$' {
            out.push(c);
            index += 1;
            continue;
        }
        match chars.get(index + 1) {
            Some('{') => {
                let start = index;
                let close = chars[index + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .map(|offset| index + 2 + offset);
                let Some(close) = close else {
                    return Err(CommandError::BadExpansion {
                        expansion: chars[start..]
                            .iter()
                            .collect::<String>()
                            .replace(LITERAL_DOLLAR, "$"),
                        reason: "missing closing `}`",
                    });
                };
                let inner: String = chars[index + 2..close].iter().collect();
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name.to_owned(), Some(default.to_owned())),
                    None => (inner.clone(), None),
                };
                let valid = name.chars().next().is_some_and(is_name_start)
                    && name.chars().all(is_name_char);
                if !valid {
                    return Err(CommandError::BadExpansion {
                        expansion: chars[start..=close]
                            .iter()
                            .collect::<String>()
                            .replace(LITERAL_DOLLAR, "$"),
                        reason:
                            "expected ${NAME} or ${NAME:-default}, NAME being letters, digits and _",
                    });
                }
                let value = env(&name).filter(|value| !value.is_empty());
                // A `\$` in the default is a literal dollar, never the NUL that marks it.
                let default = default.map(|text| text.replace(LITERAL_DOLLAR, "$"));
                let value = value.or(default).unwrap_or_default();
                out.push_str(&value);
                index = close + 1;
            }
            Some(&first) if is_name_start(first) => {
                let mut end = index + 1;
                while end < chars.len() && is_name_char(chars[end]) {
                    end += 1;
                }
                let name: String = chars[index + 1..end].iter().collect();
                out.push_str(&env(&name).unwrap_or_default());
                index = end;
            }
            _ => {
                out.push('$');
                index += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_keeps_every_word_as_is() {
        let argv: Vec<String> = ["sh", "-c", "exec x \"${PORT:-8080}\" it's $HOME | y"]
            .map(str::to_owned)
            .to_vec();
        let command = CommandLine::literal(&argv).expect("parses");
        assert_eq!(command.expand(&|_| Some("EXPANDED".to_owned())), argv);
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("5000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_inside_words_and_respects_single_quotes() {
        let command = CommandLine::parse(
            r#"gunicorn -b 0.0.0.0:$PORT '$PORT' "${PORT}x" \$PORT ${MISSING:-8} ${EMPTY:-d} $MISSING"#,
        )
        .unwrap();
        assert_eq!(
            command.expand(&env),
            [
                "gunicorn",
                "-b",
                "0.0.0.0:5000",
                "$PORT",
                "5000x",
                "$PORT",
                "8",
                "d",
                ""
            ]
        );
    }

    #[test]
    fn rejects_operators_but_allows_them_quoted() {
        for (text, op) in [
            ("a | b", "|"),
            ("a || b", "||"),
            ("a && b", "&&"),
            ("a &", "&"),
            ("a; b", ";"),
            ("a > f", ">"),
            ("a < f", "<"),
            ("a `b`", "`"),
            ("a \"`b`\"", "`"),
            ("a $(b)", "$("),
            ("a \"$(b)\"", "$("),
            ("a\nb", "newline"),
        ] {
            match CommandLine::parse(text) {
                Err(CommandError::ShellOperator { operator, .. }) => assert_eq!(operator, op),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        let quoted = CommandLine::parse("sh -c 'a | b && c; `d` $(e)' # a comment | here").unwrap();
        assert_eq!(quoted.expand(&env), ["sh", "-c", "a | b && c; `d` $(e)"]);
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(CommandLine::parse("  "), Err(CommandError::Empty));
        assert!(matches!(
            CommandLine::parse("echo 'open"),
            Err(CommandError::Quoting(_))
        ));
        assert!(matches!(
            CommandLine::parse("echo ${PORT"),
            Err(CommandError::BadExpansion { .. })
        ));
        assert!(matches!(
            CommandLine::parse("echo ${1x}"),
            Err(CommandError::BadExpansion { .. })
        ));
        assert_eq!(CommandLine::parse("a\0b"), Err(CommandError::Nul));
    }

    #[test]
    fn words_come_from_the_kept_source() {
        // Found by the procfile_parse fuzzer: `trim` dropped a leading form feed from the
        // source but the word kept it, so a stored command re-parsed to another program.
        for text in ["\x0cprog a", "prog a\u{a0}", "\u{2003}prog", "prog\x0b"] {
            let command = CommandLine::parse(text).unwrap();
            assert_eq!(
                command.words(),
                ["prog", "a"][..command.words().len()],
                "{text:?}"
            );
            assert_eq!(CommandLine::parse(command.as_str()), Ok(command.clone()));
            let json = serde_json::to_string(&command).unwrap();
            assert_eq!(serde_json::from_str::<CommandLine>(&json).unwrap(), command);
        }
        // An escaped trailing space is trimmed like any other; the backslash stays literal.
        let escaped_space = CommandLine::parse("prog \\ ").unwrap();
        assert_eq!(escaped_space.words(), ["prog", "\\"]);
        assert_eq!(
            CommandLine::parse(escaped_space.as_str()),
            Ok(escaped_space)
        );
    }

    #[test]
    fn escaped_dollars_in_defaults_stay_dollars() {
        // Found by the procfile_parse fuzzer: the default of `${NAME:-...}` kept the NUL that
        // marks an escaped `$`, so the argument vector held a NUL and the process could not
        // be spawned.
        let command = CommandLine::parse(r#"echo ${X:-\$5} "${Y:-a\$b}" '${Z:-c}'"#).unwrap();
        assert_eq!(command.expand(&env), ["echo", "$5", "a$b", "${Z:-c}"]);
        assert!(matches!(
            CommandLine::parse(r"echo ${X:-\$"),
            Err(CommandError::BadExpansion { expansion, .. }) if expansion == "${X:-$"
        ));
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let command = CommandLine::parse("npm start").unwrap();
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(json, "\"npm start\"");
        let back: CommandLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, command);
    }
}
