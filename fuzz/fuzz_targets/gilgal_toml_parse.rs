//! `AppConfig::parse` on any text: no panic; errors point at a line and column inside the
//! text; a config that parses yields, for every environment, settings within the documented
//! ranges, valid names and commands, and an `EffectiveConfig` that survives the JSON round
//! trip it takes when stored with a release.
#![no_main]

use std::path::Component;

use gilgal_build::{AppConfig, CommandLine, ConfigError, EffectiveConfig, ProcessType};
use libfuzzer_sys::fuzz_target;

fn check_command(command: &CommandLine) {
    let argv = command.expand(&|_: &str| None);
    assert!(!argv.is_empty(), "{command:?} expands to nothing");
    assert!(
        argv.iter().all(|arg| !arg.contains('\0')),
        "{command:?}: {argv:?}"
    );
}

fn check_effective(config: &EffectiveConfig) {
    assert!(config.grace_period_secs <= 3600);
    let health = &config.healthcheck;
    assert!((1..=3600).contains(&health.interval_secs));
    assert!((1..=3600).contains(&health.timeout_secs));
    assert!((1..=100).contains(&health.threshold));
    assert!((1..=3600).contains(&health.boot_deadline_secs));
    if let Some(path) = &health.path {
        assert!(path.starts_with('/') && !path.chars().any(char::is_whitespace));
    }
    assert!((1..=86_400).contains(&config.release.timeout_secs));
    for command in config
        .build_command
        .iter()
        .chain(config.release.command.iter())
        .chain(config.run.values())
    {
        check_command(command);
    }
    for name in config.run.keys() {
        assert!(!name.is_release(), "release in [run]");
        assert_eq!(ProcessType::new(name.as_str()).as_ref(), Ok(name));
    }
    for (name, size) in &config.processes {
        assert!(!name.is_release(), "release in [processes]");
        assert!(size.count <= 100);
        assert!(size
            .memory_mb
            .is_none_or(|mb| (16..=1_048_576).contains(&mb)));
        assert!(size.cpu_shares.is_none_or(|s| (2..=262_144).contains(&s)));
    }
    if let Some(dir) = &config.static_dir {
        assert!(dir
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)));
    }
    let json = serde_json::to_string(config).expect("EffectiveConfig serialises");
    let back: EffectiveConfig = serde_json::from_str(&json)
        .unwrap_or_else(|err| panic!("stored config {json} does not load back: {err}"));
    assert_eq!(&back, config, "JSON round trip changed the config");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match AppConfig::parse(&text) {
        Ok(config) => {
            check_effective(&config.for_environment("production"));
            for name in config.environments.keys() {
                assert!(gilgal_build::config::is_valid_environment_name(name));
                let effective = config.for_environment(name);
                assert_eq!(&effective.environment, name);
                check_effective(&effective);
            }
        }
        Err(ConfigError::Invalid { line, column, .. }) => {
            let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
            assert!(
                line >= 1 && line <= body.matches('\n').count() + 1,
                "line {line}"
            );
            assert!(column >= 1, "column {column}");
        }
        Err(other) => panic!("parse from text gave {other:?}"),
    }
});
