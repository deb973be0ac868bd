//! The store against real files: queries, JSON fields, retention and counted drops.

use std::time::Duration;

use uuid::Uuid;

use super::*;

fn store(dir: &Path, retention: Retention, queue: usize) -> LogStore {
    LogStore::open(LogConfig {
        dir: dir.to_owned(),
        retention,
        queue_capacity: queue,
    })
    .expect("open")
}

fn line(at: i64, process: &str, release: u64, text: &str) -> LogRecord {
    LogRecord::new(at, process, "stdout", text).from_instance("i-1", Some(release))
}

fn texts(records: &[LogRecord]) -> Vec<&str> {
    records.iter().map(|r| r.line.as_str()).collect()
}

#[test]
fn queries_tail_filters_and_follow_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let logs = store(dir.path(), Retention::default(), 1024);
    let env = Uuid::new_v4();
    let other = Uuid::new_v4();
    assert!(logs.append(env, line(1_000, "web", 1, "booting")));
    assert!(logs.append(env, line(2_000, "worker", 1, "job done")));
    assert!(logs.append(env, line(3_000, "web", 2, "GET /cart 500")));
    assert!(logs.append(
        env,
        line(4_000, "web", 2, r#"{"level":"error","msg":"db down"}"#)
    ));
    assert!(logs.append(other, line(4_500, "web", 1, "someone else")));
    logs.flush().unwrap();

    let all = logs.query(env, &Query::default()).unwrap();
    assert_eq!(
        texts(&all),
        [
            "booting",
            "job done",
            "GET /cart 500",
            r#"{"level":"error","msg":"db down"}"#
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(all[3].fields.as_ref().unwrap()["level"], "error");
    assert!(all[0].fields.is_none());

    let q = |query: Query| texts(&logs.query(env, &query).unwrap()).join("|");
    assert_eq!(
        q(Query {
            process: Some("web".into()),
            ..Query::default()
        }),
        r#"booting|GET /cart 500|{"level":"error","msg":"db down"}"#
    );
    assert_eq!(
        q(Query {
            release: Some(1),
            ..Query::default()
        }),
        "booting|job done"
    );
    assert_eq!(
        q(Query {
            grep: Some("500".into()),
            ..Query::default()
        }),
        "GET /cart 500"
    );
    assert_eq!(
        q(Query {
            since: Some(2_500),
            ..Query::default()
        }),
        r#"GET /cart 500|{"level":"error","msg":"db down"}"#
    );
    assert_eq!(
        q(Query {
            limit: 2,
            ..Query::default()
        }),
        r#"GET /cart 500|{"level":"error","msg":"db down"}"#,
        "the last two"
    );
    assert_eq!(
        q(Query {
            after: Some(all[1].id),
            limit: 1,
            ..Query::default()
        }),
        "GET /cart 500",
        "the first one after the cursor"
    );
    assert_eq!(q(Query::default().clone_with_after(all[3].id)), "");
    assert_eq!(
        texts(&logs.query(other, &Query::default()).unwrap()),
        ["someone else"]
    );

    logs.remove_environment(env).unwrap();
    assert!(logs.query(env, &Query::default()).unwrap().is_empty());
    assert_eq!(logs.query(other, &Query::default()).unwrap().len(), 1);
}

impl Query {
    fn clone_with_after(&self, after: u64) -> Query {
        Query {
            after: Some(after),
            ..self.clone()
        }
    }
}

#[test]
fn logs_survive_reopening_and_new_segments_start() {
    let dir = tempfile::tempdir().unwrap();
    let env = Uuid::new_v4();
    {
        let logs = store(dir.path(), Retention::default(), 1024);
        logs.append(env, line(1, "web", 1, "before restart"));
        logs.flush().unwrap();
    }
    // A torn line from a crash is skipped, never appended to.
    let first = query::segments(&dir.path().join(env.to_string())).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&first[0].path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"id\":1,\"at\""))
        .unwrap();
    let logs = store(dir.path(), Retention::default(), 1024);
    logs.append(env, line(2, "web", 2, "after restart"));
    logs.flush().unwrap();
    assert_eq!(
        texts(&logs.query(env, &Query::default()).unwrap()),
        ["before restart", "after restart"]
    );
    assert_eq!(
        query::segments(&dir.path().join(env.to_string()))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn retention_trims_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Duration::from_secs(3600),
        max_bytes: 4096,
        segment_bytes: 1024,
        check_every: Duration::from_secs(3600),
    };
    let logs = store(dir.path(), retention, 100_000);
    let env = Uuid::new_v4();
    for i in 0..1000 {
        logs.append(
            env,
            line(i, "web", 1, &format!("line {i:04} {}", "x".repeat(40))),
        );
    }
    logs.flush().unwrap();
    let kept = logs.query(
        env,
        &Query {
            limit: MAX_LIMIT,
            ..Query::default()
        },
    );
    let kept = kept.unwrap();
    let bytes = logs.environment_bytes(env);
    assert!(
        bytes <= retention.max_bytes + retention.segment_bytes,
        "size cap holds: {bytes}"
    );
    assert!(kept.len() < 1000 && !kept.is_empty(), "{}", kept.len());
    assert_eq!(
        kept.last().unwrap().line,
        format!("line 0999 {}", "x".repeat(40)),
        "the newest lines are kept"
    );
    let numbers: Vec<usize> = kept.iter().map(|r| r.line[5..9].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail"
    );
    drop(logs);

    // Age: segments last written long ago are deleted when the store checks.
    let env_dir = dir.path().join(env.to_string());
    let old = SystemTimeExt::days_ago(40);
    for segment in query::segments(&env_dir).unwrap() {
        let file = std::fs::File::options()
            .write(true)
            .open(&segment.path)
            .unwrap();
        file.set_modified(old).unwrap();
    }
    let logs = store(
        dir.path(),
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Retention::default()
        },
        16,
    );
    logs.flush().unwrap();
    assert!(logs.query(env, &Query::default()).unwrap().is_empty());
    assert_eq!(logs.environment_bytes(env), 0);
}

struct SystemTimeExt;
impl SystemTimeExt {
    fn days_ago(days: u64) -> std::time::SystemTime {
        std::time::SystemTime::now() - Duration::from_secs(days * 24 * 3600)
    }
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let logs = store(dir.path(), Retention::default(), 64);
    let env = Uuid::new_v4();
    let offered = 200_000u64;
    let mut refused = 0u64;
    let started = std::time::Instant::now();
    for i in 0..offered {
        if !logs.append(env, line(1, "web", 1, &format!("chatty {i}"))) {
            refused += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(30), "never blocks");
    logs.count_dropped(env, 5); // a producer that lost lines upstream
    logs.flush().unwrap();
    let records = logs
        .query(
            env,
            &Query {
                limit: MAX_LIMIT,
                since: None,
                ..Query::default()
            },
        )
        .unwrap();
    // Count everything, in pages (more than MAX_LIMIT records).
    let mut stored = 0u64;
    let mut markers = 0u64;
    let mut cursor = 0;
    loop {
        let page = logs
            .query(
                env,
                &Query {
                    after: Some(cursor),
                    limit: MAX_LIMIT,
                    ..Query::default()
                },
            )
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for record in &page {
            match record.dropped {
                Some(n) => markers += n,
                None => stored += 1,
            }
        }
    }
    assert!(!records.is_empty());
    assert!(
        refused > 0,
        "a 64-record queue overflows under 200k appends"
    );
    assert_eq!(markers, refused + 5, "every drop is recorded in the log");
    assert_eq!(stored + markers, offered + 5);
    let stats = logs.stats();
    assert_eq!(stats.accepted, offered - refused);
    assert_eq!(stats.dropped, refused + 5);
}

/// A storm of drops cannot push the lines a view asks for out of it: only lines count toward
/// the limit, and drop markers with no line between them read as one note with their sum.
#[test]
fn drop_markers_neither_fill_the_limit_nor_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let logs = store(dir.path(), Retention::default(), 1024);
    let env = Uuid::new_v4();
    assert!(logs.append(env, line(1_000, "web", 1, "needle-a")));
    assert!(logs.append(env, line(2_000, "web", 1, "needle-b")));
    assert!(logs.append(env, line(3_000, "web", 1, "needle-c")));
    logs.flush().unwrap();
    for _ in 0..50 {
        logs.count_dropped(env, 2);
        logs.flush().unwrap();
    }
    assert!(logs.append(env, line(9_000, "web", 1, "haystack")));
    logs.flush().unwrap();

    let tail = logs
        .query(
            env,
            &Query {
                grep: Some("needle".into()),
                limit: 2,
                ..Query::default()
            },
        )
        .unwrap();
    let lines: Vec<&str> = tail
        .iter()
        .filter(|r| r.dropped.is_none())
        .map(|r| r.line.as_str())
        .collect();
    assert_eq!(lines, ["needle-b", "needle-c"]);
    let notes: Vec<u64> = tail.iter().filter_map(|r| r.dropped).collect();
    assert_eq!(
        notes,
        [100],
        "one note for the gap, with every dropped line: {tail:?}"
    );
    assert!(tail.windows(2).all(|w| w[0].id < w[1].id), "in order");

    let first = logs
        .query(
            env,
            &Query {
                after: Some(0),
                limit: 1,
                ..Query::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&first), ["needle-a"], "following stops at the limit");
}
