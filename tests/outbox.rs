//! The outbox relay (`--input 'postgres://..?outbox=T'`) against a real PostgreSQL started
//! for each test (`common::postgres`). The tests prove that:
//! - rows whose transactions commit out of id order are each read exactly once: a row
//!   waits while an older transaction is open, whatever its id (reading "ids after the last
//!   one" would skip them), and a payload that does not decode is a dead letter with its id;
//! - a position taken mid-way and restored in a new source continues exactly there;
//! - window-agg over the outbox with `until=end` writes what it writes from the same events
//!   in a file, and with checkpoints, SIGKILL at 10 random moments neither loses nor
//!   duplicates a result;
//! - outbox -> weir -> Kafka is exactly-once end to end: window-agg writing a topic through
//!   the transactional sink, killed with SIGKILL at 12 or more random moments while rows
//!   are appended in transactions committed out of id order, commits each of the file run's
//!   rows once (the real broker of `common::broker`, read with `common::kafka_log`).

// This whole file is test code; see checkpoint_recovery.rs for why.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::checkpointed::{assert_same_rows, committed_rows, latest_checkpoint, sorted_lines};
use common::kafka_log;
use common::kill::{run_and_kill, run_and_kill_when, Ended, Running};
use common::postgres::{window_agg, Postgres};
use common::{SplitMix64, Summary};
use postgres::GenericClient;
use serde::Deserialize;
use weir_connectors::{Json, OutboxSource, OutboxSpec};
use weir_engine::{Source, SourceStatus};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Partitions of the output topic of the Kafka test.
const PARTITIONS: i32 = 4;

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

/// `events` `weir gen events` lines (50 keys) in `dir/events.jsonl`: the path and the lines.
fn generated_events(dir: &Path, events: usize) -> (OsString, Vec<String>) {
    let input = dir.join("events.jsonl");
    common::run_ok(
        WEIR,
        [
            "gen",
            "events",
            "--events",
            &events.to_string(),
            "--keys",
            "50",
            "--output",
            input.to_str().unwrap(),
        ],
    )
    .unwrap();
    let text = fs::read_to_string(&input).unwrap();
    (input.into(), text.lines().map(str::to_string).collect())
}

/// The outbox of the window-agg tests: `event` holds a line of `weir gen events`.
fn event_outbox(pg: &Postgres) -> postgres::Client {
    let mut client = pg.client().unwrap();
    client
        .batch_execute("CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, event TEXT NOT NULL)")
        .unwrap();
    client
}

/// Appends `lines` to the outbox in their order, in one statement of `client` (a
/// connection, or a transaction left open).
fn append(client: &mut impl GenericClient, lines: &[String]) {
    client
        .execute(
            "INSERT INTO outbox (event) SELECT event FROM unnest($1::text[]) WITH ORDINALITY \
             AS l(event, n) ORDER BY n",
            &[&lines],
        )
        .unwrap();
}

/// 30,000 `weir gen events` lines, one per outbox row, and the same lines in a file.
fn events_in_outbox_and_file(pg: &Postgres, dir: &Path) -> OsString {
    let (input, lines) = generated_events(dir, 30_000);
    append(&mut event_outbox(pg), &lines);
    input
}

#[test]
fn window_agg_over_the_outbox_equals_the_file_run_and_survives_kill_9_exactly_once() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = events_in_outbox_and_file(&pg, dir.path());
    let reference = dir.path().join("reference.jsonl");
    common::run_ok(WEIR, window_agg(file.to_str().unwrap(), &reference)).unwrap();
    let expected = sorted_lines(&fs::read_to_string(&reference).unwrap());
    assert!(expected.len() > 50, "{} reference rows", expected.len());

    let uri = pg.uri("outbox=outbox&payload=event&until=end&batch=500");
    let plain = dir.path().join("plain.jsonl");
    common::run_ok(WEIR, window_agg(&uri, &plain)).unwrap();
    assert_eq!(sorted_lines(&fs::read_to_string(&plain).unwrap()), expected);

    // With checkpoints, into a transactional file sink, killed at random moments.
    let state = dir.path().join("state");
    let output = dir.path().join("out");
    // Small batches: 15,000 queries for the whole outbox, so that kills 30-330 ms into a
    // run land mid-way (with 10 rows a query a whole run took ~0.3 s on a quiet machine,
    // and most kills came after the run had ended).
    let slow = pg.uri("outbox=outbox&payload=event&until=end&batch=2&poll=10ms");
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

/// Events of the outbox -> Kafka test: in the outbox at the start, and appended while the
/// job runs and is killed. Few at the start, so that the relay catches up with the appends
/// and sees transactions open (the first range takes every row there at the start).
const FIRST: usize = 4_000;
const LATER: usize = 24_000;
/// Lines a transaction appends. Two transactions commit out of id order, so the relay
/// reads their rows in another order than the file's, by at most two chunks (400 ms of
/// event time): with the generator's 1 s of disorder and a 2 s watermark delay no event is
/// late either way, so the results do not depend on the order.
const CHUNK: usize = 200;
/// Kills at the least; the runs go on until the appends are done too.
const KILLS: usize = 12;

/// Appends `lines` in pairs of transactions that commit out of id order, alternately: the
/// older transaction (the smaller transaction id) appends last, with the larger ids, and
/// commits after the newer one; and the older appends first, with the smaller ids, and
/// commits after the newer one. Either way the newer transaction's rows are committed while
/// the older one is open: `open` says when that is, for a while of random length (kills land
/// then). Returns the lines appended.
fn append_out_of_order(pg: &Postgres, lines: &[String], seed: u64, open: &AtomicBool) -> usize {
    let (mut older, mut newer) = (pg.client().unwrap(), pg.client().unwrap());
    let mut rng = SplitMix64::new(seed);
    let mut appended = 0;
    for (pair, chunks) in lines.chunks(2 * CHUNK).enumerate() {
        let (first, second) = chunks.split_at(chunks.len().min(CHUNK));
        let mut held = older.transaction().unwrap();
        if pair % 2 == 0 {
            held.batch_execute("SELECT pg_current_xact_id()").unwrap();
            append(&mut newer, second);
            open.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(rng.below(200)));
            append(&mut held, first);
        } else {
            append(&mut held, first);
            append(&mut newer, second);
            open.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(rng.below(200)));
        }
        held.commit().unwrap();
        open.store(false, Ordering::SeqCst);
        appended += chunks.len();
        thread::sleep(Duration::from_millis(rng.below(100)));
    }
    appended
}

/// Issue 29: outbox -> weir -> Kafka (the exactly-once sink) end to end. Window-agg (1 s
/// windows, for many commits with rows) relays an outbox into a topic with checkpoints every
/// 50 ms and is killed with SIGKILL at random moments, restarted each time from its state,
/// while rows are appended in transactions committed out of id order; a last run with
/// `until=end` finishes. The topic's committed records are the file run's rows, each once.
#[test]
fn outbox_to_kafka_is_exactly_once_under_kill_9_while_rows_commit_out_of_id_order() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, lines) = generated_events(dir.path(), FIRST + LATER);
    append(&mut event_outbox(&pg), &lines[..FIRST]);
    let one_second = |mut args: Vec<OsString>| {
        let window = args.iter().position(|a| a == "tumble:10s").unwrap();
        args[window] = "tumble:1s".into();
        args
    };
    let reference = dir.path().join("reference.jsonl");
    let run = common::run_ok(WEIR, one_second(window_agg(&file, &reference))).unwrap();
    let summary = Summary::from_stderr(&run.stderr).unwrap();
    assert_eq!(summary.late_events, 0, "the read order would matter");
    let expected = sorted_lines(&fs::read_to_string(&reference).unwrap());
    assert!(expected.len() > 1000, "{} reference rows", expected.len());

    let broker = Broker::start(dir.path());
    broker.create_topic("out", PARTITIONS);
    let state = dir.path().join("state");
    let job = |query: &str| {
        let mut args = one_second(window_agg(pg.uri(query), broker.uri("out", "")));
        args.extend([
            "--state-dir".into(),
            state.clone().into_os_string(),
            "--checkpoint-interval".into(),
            "50ms".into(),
        ]);
        args
    };
    // The killed runs relay live, without `until=end`: a run that read every row committed
    // before it started would end, and its final checkpoint fires every window, so rows
    // appended after it would be late for the next run. Only the last run, started once
    // every append is committed, ends so.
    let relay = "outbox=outbox&payload=event&batch=20&poll=10ms";
    let (live, last) = (job(relay), job(&format!("{relay}&until=end")));

    let open = AtomicBool::new(false);
    let root = state.join("window-agg").join("checkpoints");
    let mut rng = SplitMix64::new(0x0B0C_5AF4);
    let (mut after_checkpoint, mut while_open, mut resumed, mut recommitted) = (0, 0, 0, 0);
    let started = Instant::now();
    let (appended, runs) = thread::scope(|scope| {
        let appender = scope.spawn(|| append_out_of_order(&pg, &lines[FIRST..], 29, &open));
        let mut run = 0;
        while run < KILLS || !appender.is_finished() {
            assert!(
                run < 60 && started.elapsed() < Duration::from_secs(60),
                "{run} runs in {:?}",
                started.elapsed()
            );
            let before = latest_checkpoint(&root);
            let stderr = dir.path().join(format!("run-{run}.stderr"));
            // Every other run dies right after its 1st to 3rd checkpoint (around the sink's
            // commit of it); the others at a random moment, starting up too.
            let (ended, stderr) = if run % 2 == 0 {
                let due = before + 1 + rng.below(3);
                let delay = Duration::from_millis(rng.below(40));
                run_and_kill_when(WEIR, &live, stderr, delay, || {
                    latest_checkpoint(&root) >= due
                })
            } else {
                let delay = Duration::from_millis(20 + rng.below(600));
                run_and_kill_when(WEIR, &live, stderr, delay, || true)
            };
            assert_eq!(ended, Ended::Killed, "a live relay ended:\n{stderr}");
            after_checkpoint += usize::from(latest_checkpoint(&root) > before);
            while_open += usize::from(open.load(Ordering::SeqCst));
            resumed += usize::from(stderr.contains("resuming"));
            recommitted += usize::from(stderr.contains("that the previous run did not commit"));
            run += 1;
        }
        (appender.join().unwrap(), run)
    });
    assert_eq!(appended, LATER);
    let before = kafka_log::sorted_values(&broker.addr, "out", PARTITIONS);
    let stderr = Running::start(WEIR, &last, dir.path().join("last.stderr")).finish();
    let rows = kafka_log::sorted_values(&broker.addr, "out", PARTITIONS);
    eprintln!(
        "{runs} kills in {:?}: {after_checkpoint} after a checkpoint of their run, about \
         {while_open} while a transaction held rows back; {resumed} restarts resumed, \
         {recommitted} of them committing a dead run's rows; {} of {} rows committed before \
         the last run",
        started.elapsed(),
        before.len(),
        rows.len()
    );
    // The killed runs relayed most appended rows (so they saw transactions open), and many
    // died after a checkpoint of theirs.
    let read_last = Summary::from_stderr(&stderr).unwrap().events_read;
    assert!(
        after_checkpoint >= KILLS / 2
            && !before.is_empty()
            && read_last < LATER as u64 / 2
            && stderr.contains("resuming"),
        "{after_checkpoint} kills after a checkpoint, {} rows before the last run, which \
         read {read_last} events: proved nothing",
        before.len()
    );
    assert_same_rows(&rows, &expected, &format!("the last run:\n{stderr}"));
}
