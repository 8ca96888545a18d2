//! The PostgreSQL sink (`--output postgres://..?table=T&key=K`) through the real binary,
//! against a real server started for each test (`common::postgres`). The tests prove that:
//! - window-agg without checkpoints writes the same rows to a table it creates (one column
//!   per field, named as the field) as to a file (at-least-once, idempotent upserts);
//! - with checkpoints, SIGKILL at 20 random moments neither loses nor re-applies a row: a
//!   trigger counts every write to the table, and each (key, window) is written exactly
//!   once, as in an uninterrupted run; `weir_commits` holds the final checkpoint;
//! - a changelog (the continuous top-N's `+I`/`-U`/`+U`) ends as its final ranking, as
//!   the changelog applied row by row;
//! - a URI without `table=`, or a server that does not answer, is a clear error naming what
//!   is wrong (the address, for the server).

// This whole file is test code; see checkpoint_recovery.rs for why.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use common::checkpointed::latest_checkpoint;
use common::kill::{run_and_kill, Ended, Running};
use common::postgres::{window_agg, Postgres};
use common::SplitMix64;
use serde_json::Value;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Runs killed in the kill test.
const KILLS: usize = 20;

/// A result row as text per field, numbers compared as numbers (`14.0` in a file is `14`
/// from `row_to_json`), null fields left out (a column a row did not have).
fn canonical(row: &Value) -> BTreeMap<String, String> {
    row.as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = match v {
                Value::Number(n) => format!("{}", n.as_f64().unwrap()),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn sorted(rows: impl IntoIterator<Item = Value>) -> Vec<BTreeMap<String, String>> {
    let mut rows: Vec<_> = rows.into_iter().map(|r| canonical(&r)).collect();
    rows.sort();
    rows
}

fn file_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    sorted(text.lines().map(|l| serde_json::from_str(l).unwrap()))
}

/// `weir gen events` into `dir/events.jsonl`.
fn events(dir: &Path, events: u64) -> OsString {
    let input = dir.join("events.jsonl");
    let args: [OsString; 8] = [
        "gen".into(),
        "events".into(),
        "--events".into(),
        events.to_string().into(),
        "--keys".into(),
        "2000".into(),
        "--output".into(),
        input.clone().into(),
    ];
    common::run_ok(WEIR, args).unwrap();
    input.into()
}

#[test]
fn window_agg_into_a_table_without_checkpoints_equals_its_file_output() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = events(dir.path(), 200_000);
    let reference = dir.path().join("reference.jsonl");
    common::run_ok(WEIR, window_agg(&input, reference.to_str().unwrap())).unwrap();
    let uri = pg.uri("table=windows&key=key,window_start&batch=700");
    common::run_ok(WEIR, window_agg(&input, &uri)).unwrap();
    let expected = file_rows(&reference);
    assert!(expected.len() > 1000, "{} reference rows", expected.len());
    assert_eq!(sorted(pg.rows("windows").unwrap()), expected);
    let columns: Vec<String> = pg
        .client()
        .unwrap()
        .query(
            "SELECT column_name::text || ' ' || data_type::text FROM information_schema.columns \
             WHERE table_name = 'windows' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        [
            "key text",
            "window_start bigint",
            "avg double precision",
            "count bigint",
            "max bigint",
            "min bigint",
            "sum bigint",
            "window_end bigint",
        ]
    );
    // At-least-once: a second run upserts the same rows again, and changes nothing.
    common::run_ok(WEIR, window_agg(&input, &uri)).unwrap();
    assert_eq!(sorted(pg.rows("windows").unwrap()), expected);
}

#[test]
fn kill_9_at_random_moments_neither_loses_nor_reapplies_a_checkpoint() {
    let pg = Postgres::start().unwrap();
    // The table exists already (weir uses it as it is), with a trigger that counts writes.
    pg.client()
        .unwrap()
        .batch_execute(
            "CREATE TABLE windows (key TEXT, window_start BIGINT, window_end BIGINT, \
               count BIGINT, sum BIGINT, min BIGINT, max BIGINT, avg DOUBLE PRECISION, \
               PRIMARY KEY (key, window_start));
             CREATE TABLE writes (key TEXT, window_start BIGINT);
             CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO writes VALUES (NEW.key, NEW.window_start); RETURN NEW; END $$;
             CREATE TRIGGER counted AFTER INSERT OR UPDATE ON windows
               FOR EACH ROW EXECUTE FUNCTION count_write();",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = events(dir.path(), 600_000);
    let reference = dir.path().join("reference.jsonl");
    common::run_ok(WEIR, window_agg(&input, reference.to_str().unwrap())).unwrap();
    let state = dir.path().join("state");
    let mut args = window_agg(&input, pg.uri("table=windows&key=key,window_start"));
    args.extend(
        [
            "--state-dir",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "200ms",
            "--state",
            "rocksdb",
            "--state-cache-entries",
            "64",
        ]
        .map(OsString::from),
    );
    let root = state.join("window-agg").join("checkpoints");
    let mut rng = SplitMix64::new(0x9057_6E55);
    let (mut killed, mut resumed) = (0, 0);
    let started = Instant::now();
    for run in 0..KILLS {
        let delay = Duration::from_millis(100 + rng.below(801));
        let stderr = dir.path().join(format!("run-{run}.stderr"));
        let (ended, stderr) = run_and_kill(WEIR, &args, stderr, delay, &root, 0);
        killed += usize::from(ended == Ended::Killed);
        resumed += usize::from(stderr.to_lowercase().contains("resuming"));
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{run} runs took {:?}",
            started.elapsed()
        );
    }
    let stderr = Running::start(WEIR, &args, dir.path().join("last.stderr")).finish();
    resumed += usize::from(stderr.to_lowercase().contains("resuming"));
    eprintln!("{killed} of {KILLS} kills landed; {resumed} runs resumed");
    assert!(
        killed > 1 && resumed > 1,
        "{killed} kills, {resumed} resumed: proved nothing"
    );

    let expected = file_rows(&reference);
    assert_eq!(sorted(pg.rows("windows").unwrap()), expected);
    let mut client = pg.client().unwrap();
    let twice: Vec<String> = client
        .query(
            "SELECT key || '@' || window_start FROM writes GROUP BY 1 HAVING count(*) > 1 \
             LIMIT 5",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(twice.is_empty(), "rows written more than once: {twice:?}");
    let writes: i64 = client
        .query_one("SELECT count(*) FROM writes", &[])
        .unwrap()
        .get(0);
    assert_eq!(writes as usize, expected.len());
    let committed: i64 = client
        .query_one(
            "SELECT checkpoint FROM weir_commits WHERE job = 'window-agg' AND sink = 'windows'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(committed as u64, latest_checkpoint(&root));
}

#[test]
fn a_uri_without_a_table_or_a_server_that_does_not_answer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = events(dir.path(), 1000);
    let run = common::run(
        WEIR,
        window_agg(&input, "postgres://weir@127.0.0.1:5432/db?key=key"),
    )
    .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("names no table: add ?table=NAME"),
        "{}",
        run.stderr
    );

    // Nothing listens on a port that was free a moment ago: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("postgres://weir@127.0.0.1:{port}/db?table=t&key=key");
    let run = common::run(WEIR, window_agg(&input, &uri)).unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let wanted = format!("cannot connect to PostgreSQL at 127.0.0.1:{port}");
    assert!(run.stderr.contains(&wanted), "{}", run.stderr);
    assert!(
        run.stderr.contains("check that the server runs"),
        "{}",
        run.stderr
    );

    // An address that never answers: given up after connect_timeout.
    let started = Instant::now();
    let uri = "postgres://weir@10.255.255.1:5432/db?table=t&key=key&connect_timeout=1s";
    let run = common::run(WEIR, window_agg(&input, uri)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("at 10.255.255.1:5432"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_changelog_ends_as_its_final_state() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |output: &str| {
        let args = [
            "run",
            "operators",
            "--query",
            "continuous-top-n",
            "--events",
            "200000",
            "--metrics-addr",
            "off",
            "--quiet",
            "--output",
            output,
        ];
        common::run_ok(WEIR, args).unwrap();
    };
    let file = dir.path().join("changelog.jsonl");
    run(file.to_str().unwrap());
    // The reference: the changelog applied row by row, by rank.
    let mut ranking: BTreeMap<i64, Value> = BTreeMap::new();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut retractions = 0;
    for line in text.lines() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        let op = row.as_object_mut().unwrap().remove("op").unwrap();
        let rank = row["rank"].as_i64().unwrap();
        match op.as_str().unwrap() {
            "-U" | "-D" => {
                retractions += 1;
                ranking.remove(&rank);
            }
            _ => {
                ranking.insert(rank, row);
            }
        }
    }
    assert!(
        retractions > 100,
        "{retractions} retractions: proves nothing"
    );
    run(&pg.uri("table=top&key=rank"));
    assert_eq!(
        sorted(pg.rows("top").unwrap()),
        sorted(ranking.into_values())
    );
}
