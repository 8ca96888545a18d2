//! `/metrics` is served over real HTTP while `weir run` works, and its counters equal what
//! the job processed.

mod common;

use common::{http_get, run_and_scrape_metrics, sample_sum, KillOnDrop};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The number just before `suffix` in `line` ("3 late events" -> 3).
fn number_before(line: &str, suffix: &str) -> Option<u64> {
    let head = &line[..line.find(suffix)?];
    head.rsplit([' ', ',']).next()?.parse().ok()
}

/// Runs `weir run window-agg --watermark-delay 0` on `input` with `args` and a metrics endpoint kept alive
/// after the run; returns one scrape of `/metrics` (body), the address, the summary line,
/// and the running process (killed when dropped).
fn run_and_scrape(
    input: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> Result<(String, String, String, KillOnDrop), Box<dyn std::error::Error>> {
    let mut all: Vec<&std::ffi::OsStr> = [
        "run",
        "window-agg",
        "--window",
        "tumble:1s",
        "--parallelism",
        "2",
        // The expected late events and watermark below are for delay 0.
        "--watermark-delay",
        "0",
        "--input",
    ]
    .iter()
    .map(|a| a.as_ref())
    .collect();
    all.push(input.as_os_str());
    all.extend_from_slice(args);
    run_and_scrape_metrics(env!("CARGO_BIN_EXE_weir"), &all)
}

#[test]
fn metrics_are_scraped_over_http_and_match_the_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut lines = String::new();
    let (mut good, mut late_expected) = (0u64, 0u64);
    for i in 0..5000i64 {
        if i % 1000 == 500 {
            lines.push_str("{broken\n");
            continue;
        }
        // Every 700th event is 60 s behind: with delay 0 it is late.
        let ts = if i % 700 == 699 {
            late_expected += 1;
            i * 10 - 60_000
        } else {
            i * 10
        };
        lines.push_str(&format!(
            "{{\"ts\":{ts},\"key\":\"k{}\",\"value\":{}}}\n",
            i % 7,
            i % 100
        ));
        good += 1;
    }
    std::fs::write(&input, lines)?;

    let (body, addr, done, _running) = run_and_scrape(
        &input,
        &[
            "--output".as_ref(),
            output.as_os_str(),
            "--rocksdb-statistics".as_ref(),
        ],
    )?;
    let body = body.as_str();

    let results = std::fs::read_to_string(&output)?.lines().count() as f64;
    let read = sample_sum(body, "weir_events_out_total", &[r#"operator="input""#]);
    assert_eq!(read, good as f64, "events read");
    assert_eq!(sample_sum(body, "weir_dead_letter_records_total", &[]), 5.0);
    assert_eq!(
        sample_sum(body, "weir_late_events_total", &[]),
        late_expected as f64
    );
    // At parallelism 2 window-agg aggregates in two phases: the events enter the local
    // phase, and the window receives what it hands on, one partial per key, second and
    // reader, and the late events one by one.
    assert_eq!(
        sample_sum(
            body,
            "weir_events_in_total",
            &[r#"operator="local-window""#]
        ),
        good as f64
    );
    let partials = sample_sum(
        body,
        "weir_events_out_total",
        &[r#"operator="local-window""#],
    );
    assert!(
        partials > late_expected as f64 && partials < good as f64 / 2.0,
        "{partials} partials for {good} events"
    );
    assert_eq!(
        sample_sum(body, "weir_events_in_total", &[r#"operator="window""#]),
        partials
    );
    assert_eq!(
        sample_sum(body, "weir_events_in_total", &[r#"operator="output""#]),
        results
    );
    assert!(results > 0.0);
    // Every windowed event was released: no open window state is left, in any table.
    assert_eq!(
        sample_sum(body, "weir_state_entries", &[r#"operator="window""#]),
        0.0
    );
    for subtask in ["0", "1"] {
        let series = format!(
            r#"weir_state_table_entries{{job="window-agg",operator="window",subtask="{subtask}",table="window-panes"}} 0"#
        );
        assert!(
            body.lines().any(|l| l == series),
            "no `{series}` in:\n{body}"
        );
    }
    // The watermark of the timestamp stage is the last one before the end of input, in
    // seconds.
    let watermark = sample_sum(
        body,
        "weir_watermark_seconds",
        &[r#"operator="timestamps""#],
    );
    assert_eq!(watermark, (4999 * 10 - 1) as f64 / 1000.0);
    assert!(sample_sum(body, "weir_uptime_seconds", &[]) > 0.0);
    // Sources, sinks and stateless operators export no late-event or state series.
    for family in ["weir_late_events_total", "weir_state_entries"] {
        for operator in ["input", "timestamps", "map", "output"] {
            let series = format!("operator=\"{operator}\"");
            assert!(
                !body
                    .lines()
                    .any(|l| l.starts_with(family) && l.contains(&series)),
                "{family} exported for {operator}"
            );
        }
    }
    // State is in RocksDB by default, which reports its size and compaction backlog (and,
    // with --rocksdb-statistics, its block cache hit ratio).
    for family in [
        "weir_channel_fill",
        "weir_channel_capacity",
        "weir_state_bytes",
        "weir_state_memory_bytes",
        "weir_rocksdb_block_cache_bytes",
        "weir_rocksdb_compaction_pending_bytes",
        "weir_rocksdb_block_cache_hit_ratio",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} gauge")),
            "{family} missing"
        );
    }
    // State bytes are per keyed operator instance.
    assert!(
        body.lines()
            .any(|l| l.starts_with("weir_state_bytes{") && l.contains(r#"operator="window""#)),
        "no weir_state_bytes series for the window operator"
    );
    // The window's state is in RocksDB's memtables or files, and the figures say so (they
    // were read from RocksDB's default column family, which holds no table, and were 0).
    let window = [r#"operator="window""#];
    let held = sample_sum(body, "weir_state_memory_bytes", &window)
        + sample_sum(body, "weir_state_bytes", &window);
    assert!(held > 0.0, "the window's state shows as 0 bytes:\n{body}");

    let not_found = http_get(&addr, "/nope")?;
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");

    // The summary line agrees with the metrics.
    assert_eq!(number_before(&done, " dead letters"), Some(5), "{done}");
    assert_eq!(
        number_before(&done, " late events"),
        Some(late_expected),
        "{done}"
    );
    assert_eq!(
        number_before(&done, " results written"),
        Some(results as u64),
        "{done}"
    );
    Ok(())
}

#[test]
fn checkpoint_metrics_are_scraped_over_http() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    let lines: String = (0..20_000i64)
        .map(|i| format!("{{\"ts\":{},\"key\":\"k{}\",\"value\":1}}\n", i * 5, i % 11))
        .collect();
    std::fs::write(&input, lines)?;
    let (output, state) = (dir.path().join("out"), dir.path().join("state"));
    let (body, _, _, _running) = run_and_scrape(
        &input,
        &[
            "--output".as_ref(),
            output.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--checkpoint-interval".as_ref(),
            "20ms".as_ref(),
        ],
    )?;
    // At least the final checkpoint completed, and none failed.
    assert!(sample_sum(&body, "weir_checkpoints_completed_total", &[]) >= 1.0);
    assert_eq!(sample_sum(&body, "weir_checkpoints_failed_total", &[]), 0.0);
    assert!(sample_sum(&body, "weir_checkpoint_duration_seconds", &[]) > 0.0);
    assert!(sample_sum(&body, "weir_checkpoint_size_bytes", &[]) > 0.0);
    for family in [
        "weir_checkpoint_alignment_seconds",
        "weir_checkpoint_age_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} gauge")),
            "{family} missing"
        );
    }
    // Without --rocksdb-statistics RocksDB keeps no tickers: no hit ratio is made up.
    assert!(body.contains("# TYPE weir_rocksdb_block_cache_bytes gauge"));
    assert!(
        !body.contains("weir_rocksdb_block_cache_hit_ratio"),
        "hit ratio exported without statistics"
    );
    // Everything the sink received is committed.
    let mut committed = 0;
    for entry in std::fs::read_dir(&output)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("part-"), "{name} left in the output");
        committed += std::fs::read_to_string(&path)?.lines().count();
    }
    assert_eq!(
        sample_sum(&body, "weir_events_in_total", &[r#"operator="output""#]),
        committed as f64
    );
    assert!(committed > 0);
    Ok(())
}
