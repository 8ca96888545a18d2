//! The outbox relay (`--input 'postgres://..?outbox=T'`) against a real PostgreSQL started
//! for each test (`common::postgres`). The tests prove that:
//! - rows whose transactions commit out of id order are each read exactly once: a row
//!   waits while an older transaction is open, whatever its id (reading "ids after the last
//!   one" would skip them), and a payload that does not decode is a dead letter with its id;
//! - a position taken mid-way and restored in a new source continues exactly there;
//! - window-agg over the outbox with `until=end` writes what it writes from the same events
//!   in a file, and with checkpoints, SIGKILL at 10 random moments neither loses nor
//!   duplicates a result.

// This whole file is test code; see checkpoint_recovery.rs for why.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use common::checkpointed::{committed_rows, sorted_lines};
use common::kill::{run_and_kill, Ended, Running};
use common::postgres::{window_agg, Postgres};
use common::SplitMix64;
use serde::Deserialize;
use weir_connectors::{Json, OutboxSource, OutboxSpec};
use weir_engine::{Source, SourceStatus};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// The events of the relay tests: a payload without `n` does not decode.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Event {
    n: i64,
}

fn outbox_table(pg: &Postgres) {
    pg.client()
        .unwrap()
        .batch_execute("CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL)")
        .unwrap();
}

fn relay(pg: &Postgres) -> OutboxSource<Json<Event>> {
    let uri = pg.uri("outbox=outbox&payload=payload&poll=10ms&batch=3");
    let spec = OutboxSpec::parse(&uri).unwrap().unwrap();
    OutboxSource::new(spec, Json::default())
}

/// What the relay returns in polls until one finds nothing (bounded: 200 polls).
fn drain(source: &mut OutboxSource<Json<Event>>) -> Vec<i64> {
    let mut read = Vec::new();
    let mut idle = 0;
    for _ in 0..200 {
        let mut out = Vec::new();
        match source.poll_batch(&mut out, 1000).unwrap() {
            SourceStatus::Idle if out.is_empty() => idle += 1,
            _ => idle = 0,
        }
        read.extend(out.iter().map(|e| e.n));
        // Two idle polls in a row: a look at the horizon found nothing new.
        if idle == 2 {
            return read;
        }
    }
    panic!("the relay never went idle; read {read:?}")
}

#[test]
fn rows_committed_out_of_id_order_are_read_once_each_and_a_bad_payload_is_a_dead_letter() {
    let pg = Postgres::start().unwrap();
    outbox_table(&pg);
    let mut source = relay(&pg);
    let (mut older, mut newer) = (pg.client().unwrap(), pg.client().unwrap());

    // `older` takes a transaction id first but inserts last, with the larger id.
    let mut first = older.transaction().unwrap();
    first.batch_execute("SELECT pg_current_xact_id()").unwrap();
    let mut second = newer.transaction().unwrap();
    second
        .batch_execute(r#"INSERT INTO outbox (payload) VALUES ('{"n":1}')"#)
        .unwrap();
    first
        .batch_execute(r#"INSERT INTO outbox (payload) VALUES ('{"n":2}'), ('{"x":0}')"#)
        .unwrap();
    assert_eq!(
        drain(&mut source),
        [] as [i64; 0],
        "nothing is committed yet"
    );
    first.commit().unwrap();
    // Row 1 (the smaller id) is still open in the newer transaction; rows 2 and 3, from
    // the older one, are final.
    assert_eq!(drain(&mut source), [2]);
    second.commit().unwrap();
    assert_eq!(
        drain(&mut source),
        [1],
        "the smaller id, committed later, is not skipped"
    );

    // The same with the newer transaction holding the larger id: it waits for the older.
    let mut first = older.transaction().unwrap();
    first
        .batch_execute(r#"INSERT INTO outbox (payload) VALUES ('{"n":4}')"#)
        .unwrap();
    newer
        .batch_execute(r#"INSERT INTO outbox (payload) VALUES ('{"n":5}')"#)
        .unwrap();
    assert_eq!(
        drain(&mut source),
        [] as [i64; 0],
        "row 5 waits for the older transaction"
    );
    first.commit().unwrap();
    assert_eq!(drain(&mut source), [4, 5]);
    assert_eq!(drain(&mut source), [] as [i64; 0], "nothing is read twice");

    let mut letters = Vec::new();
    source.take_dead_letters(&mut letters);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].line, 3, "the row's id: {letters:?}");
    assert_eq!(letters[0].raw.as_text(), Some(r#"{"x": 0}"#), "{letters:?}");
    assert!(letters[0].source.contains("outbox outbox"), "{letters:?}");
}

#[test]
fn a_position_restored_in_a_new_relay_continues_exactly_there() {
    let pg = Postgres::start().unwrap();
    outbox_table(&pg);
    pg.client()
        .unwrap()
        .batch_execute(
            r#"INSERT INTO outbox (payload) SELECT jsonb_build_object('n', i)
               FROM generate_series(1, 20) i"#,
        )
        .unwrap();
    let mut uninterrupted = relay(&pg);
    let all = drain(&mut uninterrupted);
    assert_eq!(all, (1..=20).collect::<Vec<_>>());

    let mut first = relay(&pg);
    let mut head = Vec::new();
    // The batch is 3 rows: the position falls inside a range.
    first.poll_batch(&mut head, 1000).unwrap();
    let position = first.position().unwrap().unwrap();
    drop(first);
    let mut second = relay(&pg);
    second.seek(&position).unwrap();
    let rest = drain(&mut second);
    let resumed: Vec<i64> = head.iter().map(|e| e.n).chain(rest).collect();
    assert_eq!(resumed, all);
}

/// 30,000 `weir gen events` lines, one per outbox row, and the same lines in a file.
fn events_in_outbox_and_file(pg: &Postgres, dir: &Path) -> OsString {
    let input = dir.join("events.jsonl");
    common::run_ok(
        WEIR,
        [
            "gen",
            "events",
            "--events",
            "30000",
            "--keys",
            "50",
            "--output",
            input.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mut client = pg.client().unwrap();
    client
        .batch_execute("CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, event TEXT NOT NULL)")
        .unwrap();
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    client
        .execute(
            "INSERT INTO outbox (event) SELECT event FROM unnest($1::text[]) WITH ORDINALITY \
             AS l(event, n) ORDER BY n",
            &[&lines],
        )
        .unwrap();
    input.into()
}

#[test]
fn window_agg_over_the_outbox_equals_the_file_run_and_survives_kill_9_exactly_once() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = events_in_outbox_and_file(&pg, dir.path());
    let reference = dir.path().join("reference.jsonl");
    common::run_ok(WEIR, window_agg(file.to_str().unwrap(), &reference)).unwrap();
    let expected = sorted_lines(&std::fs::read_to_string(&reference).unwrap());
    assert!(expected.len() > 50, "{} reference rows", expected.len());

    let uri = pg.uri("outbox=outbox&payload=event&until=end&batch=500");
    let plain = dir.path().join("plain.jsonl");
    common::run_ok(WEIR, window_agg(&uri, &plain)).unwrap();
    assert_eq!(
        sorted_lines(&std::fs::read_to_string(&plain).unwrap()),
        expected
    );

    // With checkpoints, into a transactional file sink, killed at random moments.
    let state = dir.path().join("state");
    let output = dir.path().join("out");
    // Small batches: 3,000 queries a run, so that kills land mid-way.
    let slow = pg.uri("outbox=outbox&payload=event&until=end&batch=10&poll=10ms");
    let mut args = window_agg(&slow, &output);
    args.extend(
        [
            "--state-dir",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "50ms",
        ]
        .map(OsString::from),
    );
    let root = state.join("window-agg").join("checkpoints");
    let mut rng = SplitMix64::new(0x0007_B0C5);
    let (mut killed, mut resumed) = (0, 0);
    let started = Instant::now();
    for run in 0..10 {
        let delay = Duration::from_millis(30 + rng.below(300));
        let stderr = dir.path().join(format!("run-{run}.stderr"));
        let (ended, stderr) = run_and_kill(WEIR, &args, stderr, delay, &root, 0);
        killed += usize::from(ended == Ended::Killed);
        resumed += usize::from(stderr.to_lowercase().contains("resuming"));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "runs too slow"
        );
    }
    let stderr = Running::start(WEIR, &args, dir.path().join("last.stderr")).finish();
    resumed += usize::from(stderr.to_lowercase().contains("resuming"));
    eprintln!("{killed} of 10 kills landed; {resumed} runs resumed");
    assert!(
        killed > 1 && resumed > 1,
        "{killed} kills, {resumed} resumed: proved nothing"
    );
    let mut rows = committed_rows(&output);
    rows.sort();
    assert_eq!(rows, expected);
}
