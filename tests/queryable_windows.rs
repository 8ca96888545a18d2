//! Queryable windows through the `weir` binary and real HTTP: `window-agg --queryable
//! windows` on a generated input read with `--follow` (so the job stays up), its table
//! scanned and asked for points, against the rows of an uninterrupted run of the same
//! input: each key's answer is the row of its window that ends last among those fired at
//! the answer's watermark. Memory and RocksDB at parallelism 1 and 2; a restart from a
//! checkpoint answers the same without reading the input again; `weir describe` names the
//! table.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use common::follow_run::{
    api_addr, get_json, Fixture, Process, BACKENDS_AT_P1_AND_P2, EVENTS, LIMIT,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Keys of `Fixture`'s input.
const KEYS: usize = 1000;

/// The rows of the reference run by key, each key's in window order: the row without its
/// key is what a query answers for the window.
fn rows_by_key(rows: &[String]) -> BTreeMap<String, Vec<Map<String, Value>>> {
    let mut by_key: BTreeMap<String, Vec<Map<String, Value>>> = BTreeMap::new();
    for row in rows {
        let Value::Object(mut fields) = serde_json::from_str(row).expect("a JSON row") else {
            panic!("not an object: {row}");
        };
        let Some(Value::String(key)) = fields.remove("key") else {
            panic!("no key: {row}");
        };
        by_key.entry(key).or_default().push(fields);
    }
    for rows in by_key.values_mut() {
        rows.sort_by_key(|r| r["window_end"].as_i64());
    }
    by_key
}

/// Each key's latest window fired at `watermark` (a window `[s, e)` fires when the
/// watermark reaches `e - 1`).
fn latest_at(
    rows: &BTreeMap<String, Vec<Map<String, Value>>>,
    watermark: i64,
) -> BTreeMap<String, Value> {
    rows.iter()
        .filter_map(|(key, rows)| {
            let fired = rows
                .iter()
                .rfind(|r| r["window_end"].as_i64().expect("window_end") - 1 <= watermark)?;
            Some((key.clone(), Value::Object(fired.clone())))
        })
        .collect()
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    get_json(addr, path, None)
}

/// Every entry of the `windows` table by key, and the watermark of the answer.
fn scan_all(addr: &str) -> Option<(BTreeMap<String, Value>, i64)> {
    let (status, body) = get(addr, "/api/v1/state/windows?limit=10000");
    if status != 200 {
        return None;
    }
    assert_eq!(body["more"], false, "{body}");
    let entries = body["entries"].as_array().expect("entries");
    let table = entries
        .iter()
        .map(|e| {
            let key = e["key"].as_str().expect("string key").to_string();
            (key, e["value"].clone())
        })
        .collect();
    Some((table, body["watermark"].as_i64()?))
}

/// Events the windowing received in this run (all instances): the window operator's, or at
/// parallelism > 1, where window-agg aggregates in two phases and the window receives
/// partials, the local phase's (`local-window`).
fn applied(addr: &str) -> u64 {
    let metrics = common::http_get(addr, "/metrics").expect("GET /metrics");
    let first = match metrics.contains(r#"operator="local-window""#) {
        true => r#"operator="local-window""#,
        false => r#"operator="window""#,
    };
    common::sample_sum(&metrics, "weir_events_in_total", &[first]) as u64
}

/// Waits until the window received every event and two scans in a row agree (the
/// watermark no longer moves); returns the table and its watermark.
fn settled(job: &mut Process, addr: &str, events: u64) -> (BTreeMap<String, Value>, i64) {
    let started = Instant::now();
    let mut last = None;
    loop {
        assert!(
            job.is_running() && started.elapsed() < LIMIT,
            "the window applied {} of {events} events; stderr:\n{}",
            applied(addr),
            job.stderr()
        );
        if applied(addr) >= events {
            let scan = scan_all(addr);
            if let Some(settled) = scan.as_ref().filter(|_| scan == last) {
                return settled.clone();
            }
            last = scan;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks a settled table against the reference, and point lookups of a few keys.
fn check_answers(
    run: &str,
    addr: &str,
    table: &BTreeMap<String, Value>,
    watermark: i64,
    rows: &BTreeMap<String, Vec<Map<String, Value>>>,
) {
    let want = latest_at(rows, watermark);
    assert!(
        want.len() > KEYS / 2,
        "{run}: {} keys fired by watermark {watermark}",
        want.len()
    );
    assert_eq!(table.len(), want.len(), "{run}: keys answered");
    for (key, value) in &want {
        assert_eq!(table.get(key), Some(value), "{run}: key {key}");
    }
    for key in want.keys().step_by(97) {
        let (status, body) = get(addr, &format!("/api/v1/state/windows/{key}"));
        assert_eq!(status, 200, "{run}: {body}");
        assert_eq!(&body["value"], &want[key], "{run}: lookup of {key}");
        assert!(body["watermark"].as_i64().is_some_and(|w| w >= watermark));
    }
    let busy = "filter=count%3E250&limit=10000";
    let (status, body) = get(addr, &format!("/api/v1/state/windows?{busy}"));
    assert_eq!(status, 200, "{run}: {body}");
    let answered = body["entries"].as_array().expect("entries").len();
    let expected = want
        .values()
        .filter(|v| v["count"].as_u64().expect("count") > 250)
        .count();
    assert_eq!(
        answered, expected,
        "{run}: keys whose latest window counted > 250"
    );
}

fn args(fixture: &Fixture, run: &str, extra: &[&str]) -> Vec<OsString> {
    let out = fixture.path(&format!("{run}.jsonl"));
    let mut args = fixture.args(&out, &["--follow", "--queryable", "windows"]);
    // The fixture turns the API off; this run serves it on a free port.
    let off = args
        .iter()
        .position(|a| a == "off")
        .expect("--metrics-addr off");
    args[off] = "127.0.0.1:0".into();
    args.extend(extra.iter().map(OsString::from));
    args
}

#[test]
fn the_latest_window_per_key_equals_the_reference_with_either_backend_at_parallelism_1_and_2() {
    let fixture = Fixture::new(WEIR);
    let rows = rows_by_key(&fixture.reference(&[]));
    assert_eq!(rows.len(), KEYS, "every key has windows");
    for (state, parallelism) in BACKENDS_AT_P1_AND_P2 {
        let run = format!("{state}-p{parallelism}");
        let extra = ["--state", state, "--parallelism", parallelism];
        let args = args(&fixture, &run, &extra);
        let mut job = Process::start(WEIR, &args, fixture.path(&format!("{run}.stderr")));
        let addr = api_addr(&mut job);
        let (table, watermark) = settled(&mut job, &addr, EVENTS);
        check_answers(&run, &addr, &table, watermark, &rows);
        let (status, body) = get(&addr, "/api/v1/state");
        assert_eq!(status, 200);
        assert_eq!(body["tables"][0]["name"], "windows", "{body}");
    }
}

#[test]
fn a_restart_from_a_checkpoint_answers_the_same_windows_without_reading_the_input_again() {
    let fixture = Fixture::new(WEIR);
    let rows = rows_by_key(&fixture.reference(&[]));
    let state = fixture.path("state");
    let state = state.to_str().expect("UTF-8 path");
    let extra = [
        "--state",
        "rocksdb",
        "--parallelism",
        "2",
        "--state-dir",
        state,
        "--checkpoint-interval",
        "200ms",
    ];
    let args = args(&fixture, "restart", &extra);
    let checkpoint = |addr: &str| {
        get(addr, "/api/v1/state/windows?limit=1").1["checkpoint"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut first = Process::start(WEIR, &args, fixture.path("first.stderr"));
    let addr = api_addr(&mut first);
    let (before, watermark) = settled(&mut first, &addr, EVENTS);
    // The second checkpoint after this point started after every event was applied: it
    // holds them all, and its position is the end of the input.
    let seen = checkpoint(&addr);
    let started = Instant::now();
    while checkpoint(&addr) < seen + 2 {
        assert!(started.elapsed() < LIMIT, "no checkpoint after {seen}");
        thread::sleep(Duration::from_millis(50));
    }
    drop(first); // SIGKILL

    let mut second = Process::start(WEIR, &args, fixture.path("second.stderr"));
    let addr = api_addr(&mut second);
    let (after, restored) = settled(&mut second, &addr, 0);
    assert_eq!(restored, watermark, "the restored watermark");
    assert_eq!(after, before, "the restored answers");
    check_answers("restart", &addr, &after, restored, &rows);
    assert_eq!(applied(&addr), 0, "the restored job read events again");
}

#[test]
fn describe_names_the_queryable_table() {
    let out = common::run_ok(
        WEIR,
        ["describe", "window-agg", "--queryable", "windows"].map(OsString::from),
    )
    .expect("weir describe");
    assert!(
        out.stdout
            .contains("state: window-panes, window-latest (queryable as `windows`)"),
        "{}",
        out.stdout
    );
}
