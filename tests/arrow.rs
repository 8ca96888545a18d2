//! End-to-end tests of Arrow IPC input through the real `weir` binary.
//!
//! - `weir gen events --output FILE.arrow` writes the same events as the JSON-lines
//!   generator, and `window-agg` over the Arrow file gives exactly the rows it gives over
//!   the JSON lines (tumbling and sliding windows).
//! - A file whose columns do not fit the job stops it with a message naming the column.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// `weir gen events` of `events` events into `path` (JSON lines or Arrow by extension).
fn gen(path: &Path, events: &str) {
    common::run_ok(
        WEIR,
        [
            "gen", "events", "--events", events, "--keys", "300", "--output",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain([path.as_os_str()]),
    )
    .unwrap();
}

/// `window-agg` over `input` with `window`; its rows, sorted.
fn rows(input: &Path, output: &Path, window: &str) -> Vec<String> {
    common::run_ok(
        WEIR,
        [
            "run",
            "window-agg",
            "--window",
            window,
            "--watermark-delay",
            "1s",
            "--metrics-addr",
            "off",
            "--quiet",
            "--input",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain([input.as_os_str(), "--output".as_ref(), output.as_os_str()]),
    )
    .unwrap();
    let mut rows: Vec<String> = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort_unstable();
    rows
}

#[test]
fn an_arrow_file_gives_the_rows_of_the_same_events_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, arrow) = (dir.path().join("ev.jsonl"), dir.path().join("ev.arrow"));
    // More than one record batch (the generator writes 65,536 rows per batch).
    gen(&jsonl, "200000");
    gen(&arrow, "200000");
    for window in ["tumble:10s", "hop:10s/5s"] {
        let from_json = rows(&jsonl, &dir.path().join("json-out.jsonl"), window);
        let from_arrow = rows(&arrow, &dir.path().join("arrow-out.jsonl"), window);
        assert!(from_json.len() > 1000, "{window}: {} rows", from_json.len());
        assert!(from_arrow == from_json, "{window}: the Arrow rows differ");
    }
}

#[test]
fn a_file_whose_columns_do_not_fit_stops_the_job_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let arrow = dir.path().join("ev.arrow");
    gen(&arrow, "1000");
    let run = common::run(
        WEIR,
        [
            "run",
            "window-agg",
            "--value-field",
            "amount",
            "--metrics-addr",
            "off",
            "--input",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain([arrow.as_os_str()]),
    )
    .unwrap();
    assert!(!run.status.success());
    assert!(
        run.stderr
            .contains("no column `amount` (the columns: ts, key, value)"),
        "{}",
        run.stderr
    );
}
