//! `Procfile::parse` on any text: no panic, and what parses is usable as is — valid unique
//! process types in line order, every command a non-empty argument vector without NUL that
//! survives being written back out (`name: command` lines re-parse to the same Procfile) and
//! being re-quoted (`CommandLine::literal` of the expanded argv expands to the same argv).
#![no_main]

use gilgal_build::{CommandLine, ProcessType, Procfile};
use libfuzzer_sys::fuzz_target;

fn check_command(command: &CommandLine) {
    assert!(!command.words().is_empty(), "{command:?} has no words");
    assert_eq!(
        CommandLine::parse(command.as_str()).as_ref(),
        Ok(command),
        "the command's own text does not re-parse to it"
    );
    for env in [
        &(|_: &str| None) as &dyn Fn(&str) -> Option<String>,
        &|name: &str| Some(format!("<{name}>")),
    ] {
        let argv = command.expand(&env);
        assert!(!argv.is_empty(), "{command:?} expands to nothing");
        assert!(
            argv.iter().all(|arg| !arg.contains('\0')),
            "{command:?} expands to an argument with NUL: {argv:?}"
        );
        let literal = CommandLine::literal(&argv)
            .unwrap_or_else(|err| panic!("argv {argv:?} of {command:?} cannot be quoted: {err}"));
        assert_eq!(
            literal.expand(&|_: &str| Some("EXPANDED".to_owned())),
            argv,
            "CommandLine::literal does not keep {argv:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(procfile) = Procfile::parse(&text) else {
        return;
    };
    let line_count = text.lines().count();
    let mut last_line = 0;
    for (index, entry) in procfile.entries.iter().enumerate() {
        assert!(entry.line > last_line && entry.line <= line_count);
        last_line = entry.line;
        assert_eq!(
            ProcessType::new(entry.process_type.as_str()).as_ref(),
            Ok(&entry.process_type)
        );
        assert!(
            procfile.entries[..index]
                .iter()
                .all(|other| other.process_type != entry.process_type),
            "duplicate {}",
            entry.process_type
        );
        assert_eq!(procfile.get(&entry.process_type), Some(&entry.command));
        check_command(&entry.command);
    }

    let rendered: String = procfile
        .entries
        .iter()
        .map(|entry| format!("{}: {}\n", entry.process_type, entry.command))
        .collect();
    let reparsed = Procfile::parse(&rendered)
        .unwrap_or_else(|err| panic!("rendered Procfile {rendered:?} does not parse: {err}"));
    assert_eq!(reparsed.entries.len(), procfile.entries.len());
    for (again, entry) in reparsed.entries.iter().zip(&procfile.entries) {
        assert_eq!(again.process_type, entry.process_type);
        assert_eq!(again.command, entry.command, "in {rendered:?}");
    }
});
