//! Procfile parsing and its line-numbered errors.

use gilgal_build::procfile::{ProcessType, Procfile, ProcfileError};

#[test]
fn parses_types_in_order_with_comments_and_blank_lines() {
    let procfile = Procfile::parse(
        "# processes\n\nweb: gunicorn -b 0.0.0.0:$PORT app:app\nworker:   celery -A tasks worker\nrelease: alembic upgrade head\nclock_2-x: python clock.py\n",
    )
    .unwrap();
    let names: Vec<&str> = procfile
        .entries
        .iter()
        .map(|entry| entry.process_type.as_str())
        .collect();
    assert_eq!(names, ["web", "worker", "release", "clock_2-x"]);
    assert_eq!(procfile.entries[0].line, 3);
    let web = procfile.get(&ProcessType::web()).unwrap();
    let port = |name: &str| (name == "PORT").then(|| "8000".to_owned());
    assert_eq!(
        web.expand(&port),
        ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]
    );
    assert!(procfile.get(&ProcessType::release()).is_some());
}

#[test]
fn tolerates_windows_line_endings_and_a_byte_order_mark() {
    let procfile =
        Procfile::parse("\u{feff}web: python app.py\r\nworker: python w.py\r\n").unwrap();
    assert_eq!(procfile.entries.len(), 2);
    assert_eq!(procfile.entries[1].command.words(), ["python", "w.py"]);
}

#[test]
fn a_worker_only_procfile_is_valid() {
    let procfile = Procfile::parse("worker: python worker.py\n").unwrap();
    assert!(procfile.get(&ProcessType::web()).is_none());
    assert_eq!(procfile.entries.len(), 1);
}

#[test]
fn errors_name_the_line() {
    let cases = [
        (
            "web: ok\nthis line has no colon\n",
            2,
            "expected `name: command`",
        ),
        (
            "web: ok\n\nWeb: python x.py\n",
            3,
            "invalid process type `Web`",
        ),
        ("1web: x\n", 1, "invalid process type"),
        (
            "a-very-long-process-type-name-over-30: x\n",
            1,
            "invalid process type",
        ),
        (
            "web: a\nworker: b\nweb: c\n",
            3,
            "already defined on line 1",
        ),
        ("web: gunicorn app && rm -rf /\n", 1, "`&&`"),
        ("web: python app.py > log.txt\n", 1, "`>`"),
        ("# c\nworker:   \n", 2, "empty"),
        ("web: echo 'unclosed\n", 1, "unbalanced quoting"),
    ];
    for (text, line, needle) in cases {
        let err = Procfile::parse(text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("Procfile line {line}")),
            "{text:?}: {message}"
        );
        assert!(message.contains(needle), "{text:?}: {message}");
        let reported = match err {
            ProcfileError::MissingColon { line }
            | ProcfileError::InvalidName { line, .. }
            | ProcfileError::Duplicate { line, .. }
            | ProcfileError::InvalidCommand { line, .. } => line,
        };
        assert_eq!(reported, line);
    }
}
