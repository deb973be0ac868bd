//! gilgal.toml: parsing, validation with line and column, defaults and environment overrides.

use gilgal_build::config::{AppConfig, ConfigError, HealthCheck, ProcessSize};
use gilgal_build::detect::Stack;
use gilgal_build::procfile::ProcessType;

const FULL: &str = r#"
grace_period_secs = 10

[build]
builder = "python"
command = "python manage.py collectstatic --noinput"

[run]
web = "gunicorn -b 0.0.0.0:$PORT app:app"
worker = "celery -A tasks worker"

[healthcheck]
path = "/healthz"
interval_secs = 1
timeout_secs = 3
threshold = 2
boot_deadline_secs = 90

[release]
command = "alembic upgrade head"
timeout_secs = 120

[processes.web]
memory_mb = 512
cpu_shares = 512
count = 2

[static]
dir = "public"

[environments.staging]
grace_period_secs = 5
healthcheck = { path = "/ready" }
processes = { web = { count = 1 } }
run = { worker = "celery -A tasks worker --concurrency 1" }
"#;

fn position(err: &ConfigError) -> (usize, usize) {
    match err {
        ConfigError::Invalid { line, column, .. } => (*line, *column),
        ConfigError::Read { .. } => panic!("unexpected read error"),
    }
}

#[test]
fn parses_every_field_and_merges_environment_overrides() {
    let config = AppConfig::parse(FULL).unwrap();
    let production = config.for_environment("production");
    assert_eq!(production.builder, Some(Stack::Python));
    assert_eq!(production.grace_period_secs, 10);
    assert_eq!(production.healthcheck.path.as_deref(), Some("/healthz"));
    assert_eq!(production.healthcheck.threshold, 2);
    assert_eq!(production.healthcheck.boot_deadline_secs, 90);
    assert_eq!(production.release.timeout_secs, 120);
    assert_eq!(
        production.release.command.as_ref().unwrap().as_str(),
        "alembic upgrade head"
    );
    let web = ProcessType::web();
    assert_eq!(
        production.process_size(&web),
        ProcessSize {
            memory_mb: Some(512),
            cpu_shares: Some(512),
            count: 2
        }
    );
    assert_eq!(
        production.static_dir.as_deref(),
        Some(std::path::Path::new("public"))
    );

    let staging = config.for_environment("staging");
    assert_eq!(staging.environment, "staging");
    assert_eq!(staging.grace_period_secs, 5);
    assert_eq!(staging.healthcheck.path.as_deref(), Some("/ready"));
    assert_eq!(
        staging.healthcheck.interval_secs, 1,
        "unset fields fall through"
    );
    assert_eq!(
        staging.process_size(&web),
        ProcessSize {
            memory_mb: Some(512),
            cpu_shares: Some(512),
            count: 1
        },
        "process sizes merge field by field"
    );
    let worker = ProcessType::new("worker").unwrap();
    assert_eq!(
        staging.run[&worker].as_str(),
        "celery -A tasks worker --concurrency 1"
    );
    assert_eq!(
        staging.run[&web].as_str(),
        "gunicorn -b 0.0.0.0:$PORT app:app"
    );
}

#[test]
fn defaults_apply_without_a_file() {
    let config = AppConfig::parse("").unwrap().for_environment("production");
    assert_eq!(config.healthcheck, HealthCheck::default());
    assert_eq!(
        config.healthcheck.path, None,
        "default check is a TCP connect"
    );
    assert_eq!(config.healthcheck.interval_secs, 2);
    assert_eq!(config.healthcheck.timeout_secs, 2);
    assert_eq!(config.healthcheck.threshold, 1);
    assert_eq!(config.healthcheck.boot_deadline_secs, 60);
    assert_eq!(config.release.timeout_secs, 300);
    assert_eq!(config.grace_period_secs, 30);
    assert_eq!(config.process_size(&ProcessType::web()).count, 1);
    assert!(config.builder.is_none() && config.run.is_empty());

    let missing = tempfile::tempdir().unwrap();
    assert_eq!(
        AppConfig::load(missing.path()).unwrap(),
        AppConfig::default()
    );
}

#[test]
fn errors_carry_line_and_column() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        // Syntax error.
        ("[build]\nbuilder = \n", (2, 11), "string"),
        // Unknown key (typo) in a section.
        (
            "[healthcheck]\npath = \"/\"\nintervall_secs = 3\n",
            (3, 1),
            "unknown field `intervall_secs`",
        ),
        // Unknown top-level section.
        ("\n[deplyo]\nx = 1\n", (2, 2), "unknown field `deplyo`"),
        // Release strategies.
        (
            "[deploy]\nstrategy = \"blue\"\n",
            (2, 12),
            "\"immediate\", \"canary\" or \"blue-green\"",
        ),
        (
            "[deploy]\nstrategy = \"canary\"\ncanary = \"10,50\"\n",
            (3, 10),
            "must be 100",
        ),
        (
            "[deploy]\ninterval_secs = 0\n",
            (2, 17),
            "between 1 and 3600",
        ),
        (
            "[deploy]\nno_traffic = \"wait\"\n",
            (2, 14),
            "\"rollback\" or \"proceed\"",
        ),
        (
            "[deploy]\nsmoke = [\"GET /health 200\", \"POST /x 201\"]\n",
            (2, 29),
            "must not change",
        ),
        // Wrong type.
        (
            "[release]\ntimeout_secs = \"soon\"\n",
            (2, 16),
            "expected a whole number",
        ),
        // Negative number.
        ("grace_period_secs = -1\n", (1, 21), ""),
        // A value where a table belongs, and a number for the builder.
        ("healthcheck = 5\n", (1, 15), "expected a table"),
        ("processes = { web = 3 }\n", (1, 21), "expected a table"),
        ("[build]\nbuilder = 3\n", (2, 11), "\"python\""),
        // Unknown builder.
        (
            "[build]\nbuilder = \"pyhton\"\n",
            (2, 11),
            "unknown variant `pyhton`",
        ),
        // Out of range.
        (
            "[healthcheck]\ninterval_secs = 0\n",
            (2, 17),
            "between 1 and 3600",
        ),
        (
            "[processes.web]\ncount = 101\n",
            (2, 9),
            "between 0 and 100",
        ),
        ("[processes.web]\nmemory_mb = 1\n", (2, 13), "between 16"),
        // Bad path.
        (
            "[healthcheck]\npath = \"healthz\"\n",
            (2, 8),
            "must start with `/`",
        ),
        // Shell syntax in a command.
        ("[run]\nweb = \"npm start && echo done\"\n", (2, 7), "`&&`"),
        (
            "\n\n[release]\ncommand = \"migrate | tee log\"\n",
            (4, 11),
            "`|`",
        ),
        // Bad process type names.
        ("[run]\nWeb = \"x\"\n", (2, 1), "invalid process type `Web`"),
        ("[run]\nrelease = \"x\"\n", (2, 1), "[release] command"),
        // builder = "command" needs a command.
        (
            "[build]\nbuilder = \"command\"\n",
            (2, 11),
            "needs `command`",
        ),
        // Static dir escaping the app.
        ("[static]\ndir = \"../etc\"\n", (2, 7), "relative path"),
        // Environment names and nesting.
        (
            "[environments.Staging]\ngrace_period_secs = 1\n",
            (1, 15),
            "invalid environment name",
        ),
        (
            "[environments.staging.environments.x]\ngrace_period_secs = 1\n",
            (1, 15),
            "cannot be nested",
        ),
        // Errors inside an environment point into it.
        (
            "[healthcheck]\npath = \"/\"\n\n[environments.staging.healthcheck]\nthreshold = 0\n",
            (5, 13),
            "between 1 and 100",
        ),
    ];
    for (text, expected, needle) in cases {
        let err = AppConfig::parse(text).unwrap_err();
        let message = err.to_string();
        assert_eq!(position(&err), *expected, "{text:?}: {message}");
        assert!(message.contains(needle), "{text:?}: {message}");
        assert!(
            message.starts_with(&format!(
                "gilgal.toml line {}, column {}",
                expected.0, expected.1
            )),
            "{message}"
        );
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    let err = AppConfig::parse("# héllo wörld\n[run]\nwéb = \"x\"\n").unwrap_err();
    // The key is quoted-less non-ASCII, which TOML rejects as a bare key at column 2.
    let (line, column) = position(&err);
    assert_eq!(line, 3);
    assert!(column <= 2, "{err}");
}

#[test]
fn a_canary_strategy_fills_in_defaults_and_environments_can_opt_out() {
    let config = AppConfig::parse(
        "[deploy]\nstrategy = \"canary\"\ncanary = \"5,pause,100\"\ninterval_secs = 30\n\n\
         [environments.staging.deploy]\nstrategy = \"immediate\"\n",
    )
    .unwrap();
    let production = config.for_environment("production").canary.unwrap();
    assert_eq!(production.steps, "5,pause,100");
    assert_eq!(production.interval_secs, 30);
    assert_eq!(
        (
            production.min_requests,
            production.traffic_deadline_secs,
            production.no_traffic.as_str(),
            production.sticky
        ),
        (100, 300, "rollback", false)
    );
    assert_eq!(config.for_environment("staging").canary, None);
    assert_eq!(
        AppConfig::parse("").unwrap().for_environment("x").canary,
        None
    );
}

#[test]
fn a_blue_green_strategy_carries_its_smoke_checks() {
    let config = AppConfig::parse(
        "[deploy]\nstrategy = \"blue-green\"\nsmoke = [\"GET /health 200\", \"/ 200\"]\n",
    )
    .unwrap();
    let effective = config.for_environment("production");
    assert_eq!(effective.canary, None);
    assert_eq!(
        effective.blue_green.unwrap().smoke,
        vec!["GET /health 200".to_owned(), "/ 200".to_owned()]
    );
}
