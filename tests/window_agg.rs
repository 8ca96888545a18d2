//! End-to-end tests of `weir run window-agg`: the real binary on real files, checked against
//! a plain reference implementation of the event-time semantics (`docs/SEMANTICS.md`) written
//! here with simple loops and `BTreeMap`s.
//!
//! The reference decides lateness per event, in input order, against the watermark current
//! when the event arrives (`max timestamp so far - delay - 1`, updated after the event), with
//! allowed lateness 0, and fires a window once, when the watermark reaches `end - 1`.

mod common;

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;

use common::{failure, SplitMix64, Summary};
use serde::Deserialize;

type TestResult = Result<(), Box<dyn Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Events in the generated input.
const EVENTS: usize = 120_000;
/// Distinct keys in the generated input.
const KEYS: u64 = 50;
const SEED: u64 = 0x005E_ED0F_0E1A;
/// `--watermark-delay 2s`.
const DELAY_MS: i64 = 2_000;

const TUMBLE: Window = Window::Tumble { size: 10_000 };
const HOP: Window = Window::Hop {
    size: 30_000,
    slide: 10_000,
};
const SESSION: Window = Window::Session { gap: 3_000 };

// ------------------------------------------------------------------ data

/// One input event; also the shape of a line of the late-data output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    ts: i64,
    key: String,
    value: i64,
}

fn ev(ts: i64, key: &str, value: i64) -> Event {
    Event {
        ts,
        key: key.to_string(),
        value,
    }
}

/// `n` events with timestamps roughly increasing from -5 s (about 3 ms apart), each up to
/// 3 s behind the stream's clock, and one in 200 between 3 s and 30 s behind (mostly late
/// with a 2 s watermark delay). Each key sleeps 5 s out of every 17 s, at its own phase, so
/// sessions end and restart. Values are in -1000..=1000.
fn generate(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = SplitMix64::new(seed);
    let mut clock: i64 = -5_000;
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        clock += rng.between(0, 4);
        let k = rng.below(KEYS) as i64;
        if (clock.div_euclid(1_000) + 7 * k).rem_euclid(17) < 5 {
            continue;
        }
        let disorder = if rng.below(200) == 0 {
            rng.between(3_000, 30_000)
        } else {
            rng.between(0, 3_000)
        };
        events.push(Event {
            ts: clock - disorder,
            key: format!("k{k}"),
            value: rng.between(-1_000, 1_000),
        });
    }
    events
}

/// One JSON line per event; every 7th with the fields in another order and an extra field.
fn json_lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i % 7 == 3 {
                format!(
                    r#"{{"value":{},"extra":{{"a":[1,"x"]}},"key":"{}","ts":{}}}"#,
                    e.value, e.key, e.ts
                )
            } else {
                format!(r#"{{"ts":{},"key":"{}","value":{}}}"#, e.ts, e.key, e.value)
            }
        })
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) -> TestResult {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text)?;
    Ok(())
}

// ------------------------------------------------------------------ reference

#[derive(Debug, Clone, Copy)]
enum Window {
    Tumble { size: i64 },
    Hop { size: i64, slide: i64 },
    Session { gap: i64 },
}

impl Window {
    /// The `--window` value.
    fn spec(self) -> String {
        let d = |ms: i64| {
            if ms % 1_000 == 0 {
                format!("{}s", ms / 1_000)
            } else {
                format!("{ms}ms")
            }
        };
        match self {
            Window::Tumble { size } => format!("tumble:{}", d(size)),
            Window::Hop { size, slide } => format!("hop:{}/{}", d(size), d(slide)),
            Window::Session { gap } => format!("session:{}", d(gap)),
        }
    }
}

/// count, sum, min and max of the values in a window.
#[derive(Debug, Clone, Copy)]
struct Acc {
    count: u64,
    sum: i64,
    min: i64,
    max: i64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        count: 0,
        sum: 0,
        min: i64::MAX,
        max: i64::MIN,
    };

    fn add(&mut self, value: i64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn row(&self, key: String, window_start: i64, window_end: i64) -> Row {
        Row {
            key,
            window_start,
            window_end,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            avg: self.sum as f64 / self.count as f64,
        }
    }
}

/// Open (not yet fired) windows by `(end, key, start)`, so the next to fire comes first.
type Open = BTreeMap<(i64, String, i64), Acc>;

/// The result rows (sorted) and the late events (in input order) of `events`.
fn reference(events: &[Event], window: Window, delay: i64) -> (Vec<Row>, Vec<Event>) {
    let mut open = Open::new();
    let mut rows = Vec::new();
    let mut late = Vec::new();
    let mut max_ts = i64::MIN;
    let mut watermark = i64::MIN;
    for e in events {
        // Fire every window the current watermark has reached.
        while let Some(entry) = open.first_entry() {
            if entry.key().0 - 1 > watermark {
                break;
            }
            let ((end, key, start), acc) = entry.remove_entry();
            rows.push(acc.row(key, start, end));
        }
        let added = match window {
            Window::Tumble { size } => add_aligned(&mut open, e, size, size, watermark),
            Window::Hop { size, slide } => add_aligned(&mut open, e, size, slide, watermark),
            Window::Session { gap } => add_to_session(&mut open, e, gap, watermark),
        };
        if !added {
            late.push(e.clone());
        }
        if e.ts > max_ts {
            max_ts = e.ts;
            watermark = max_ts - delay - 1;
        }
    }
    // The end of the input fires everything left.
    for ((end, key, start), acc) in open {
        rows.push(acc.row(key, start, end));
    }
    sort_rows(&mut rows);
    (rows, late)
}

/// Adds `e` to each window `[s, s + size)` with `s` a multiple of `slide` and
/// `s <= e.ts < s + size` that is not late. False if all of them are late.
fn add_aligned(open: &mut Open, e: &Event, size: i64, slide: i64, watermark: i64) -> bool {
    let mut added = false;
    let mut start = e.ts - e.ts.rem_euclid(slide);
    while start + size > e.ts {
        let end = start + size;
        if end - 1 > watermark {
            open.entry((end, e.key.clone(), start))
                .or_insert(Acc::EMPTY)
                .add(e.value);
            added = true;
        }
        start -= slide;
    }
    added
}

/// Merges `[e.ts, e.ts + gap)` with the key's open sessions that overlap or touch it; adds
/// `e` unless the merged session is late. Fired sessions are no longer in `open`.
fn add_to_session(open: &mut Open, e: &Event, gap: i64, watermark: i64) -> bool {
    let (mut start, mut end) = (e.ts, e.ts + gap);
    let touching: Vec<(i64, String, i64)> = open
        .keys()
        .filter(|(s_end, key, s_start)| *key == e.key && *s_start <= e.ts + gap && *s_end >= e.ts)
        .cloned()
        .collect();
    for (s_end, _, s_start) in &touching {
        start = start.min(*s_start);
        end = end.max(*s_end);
    }
    if end - 1 <= watermark {
        return false;
    }
    let mut acc = Acc::EMPTY;
    acc.add(e.value);
    for id in &touching {
        if let Some(session) = open.remove(id) {
            acc.merge(&session);
        }
    }
    open.insert((end, e.key.clone(), start), acc);
    true
}

// ------------------------------------------------------------------ results

/// One line of the job's output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    key: String,
    window_start: i64,
    window_end: i64,
    count: u64,
    sum: i64,
    min: i64,
    max: i64,
    avg: f64,
}

/// The expected row of a window holding `values`.
fn row(key: &str, window_start: i64, window_end: i64, values: &[i64]) -> Row {
    let mut acc = Acc::EMPTY;
    for &v in values {
        acc.add(v);
    }
    acc.row(key.to_string(), window_start, window_end)
}

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (a.window_end, &a.key, a.window_start).cmp(&(b.window_end, &b.key, b.window_start))
    });
}

/// Checks that `actual` and `expected` hold the same rows: `avg` within `avg_tolerance`
/// (relative; 0 for exact), everything else exactly. Reports the first differing windows.
fn check_rows(actual: &[Row], expected: &[Row], avg_tolerance: f64, what: &str) -> TestResult {
    type Both<'a> = (Vec<&'a Row>, Vec<&'a Row>);
    let mut windows: BTreeMap<(i64, &str, i64), Both<'_>> = BTreeMap::new();
    for r in actual {
        let id = (r.window_end, r.key.as_str(), r.window_start);
        windows.entry(id).or_default().0.push(r);
    }
    for r in expected {
        let id = (r.window_end, r.key.as_str(), r.window_start);
        windows.entry(id).or_default().1.push(r);
    }
    let same = |a: &Row, e: &Row| {
        (a.count, a.sum, a.min, a.max) == (e.count, e.sum, e.min, e.max)
            && (a.avg - e.avg).abs() <= avg_tolerance * a.avg.abs().max(e.avg.abs())
    };
    let diffs: Vec<String> = windows
        .iter()
        .filter(|(_, (a, e))| a.len() != e.len() || a.iter().zip(e).any(|(a, e)| !same(a, e)))
        .map(|((end, key, start), (a, e))| {
            format!("  {key} [{start}, {end}):\n    actual   {a:?}\n    expected {e:?}")
        })
        .collect();
    if diffs.is_empty() {
        return Ok(());
    }
    Err(failure(format!(
        "{what}: {} of {} windows differ ({} rows, {} expected); the first ones:\n{}",
        diffs.len(),
        windows.len(),
        actual.len(),
        expected.len(),
        diffs[..diffs.len().min(8)].join("\n")
    )))
}

/// The rows of a result file, in file order.
fn read_rows(path: &Path) -> Result<Vec<Row>, Box<dyn Error>> {
    let text = fs::read_to_string(path).map_err(|e| failure(format!("{}: {e}", path.display())))?;
    let rows = text
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| failure(format!("result line `{l}`: {e}"))))
        .collect::<Result<Vec<Row>, _>>()?;
    Ok(rows)
}

/// SEMANTICS.md: "Within one key, results come out in window-end order."
fn check_order_within_keys(rows: &[Row], what: &str) -> TestResult {
    let mut last_end: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows {
        if let Some(before) = last_end.insert(&r.key, r.window_end) {
            if before > r.window_end {
                return Err(failure(format!(
                    "{what}: key {} has a window ending at {} after one ending at {before}",
                    r.key, r.window_end
                )));
            }
        }
    }
    Ok(())
}

/// What one run of the job produced.
#[derive(Debug)]
struct JobRun {
    /// The result rows, sorted by [`sort_rows`].
    rows: Vec<Row>,
    summary: Summary,
}

/// `weir run window-agg --input INPUT --output OUTPUT --window W --watermark-delay 2s
/// --metrics-addr off --quiet --parallelism P EXTRA...`, which must succeed.
fn run_window_agg(
    input: &Path,
    output: &Path,
    window: Window,
    parallelism: usize,
    extra: &[&OsStr],
) -> Result<JobRun, Box<dyn Error>> {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "window-agg".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--window".into(),
        window.spec().into(),
        "--watermark-delay".into(),
        "2s".into(),
        "--metrics-addr".into(),
        "off".into(),
        "--quiet".into(),
        "--parallelism".into(),
        parallelism.to_string().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let run = common::run_ok(WEIR, &args)?;
    let summary = Summary::from_stderr(&run.stderr)?;
    let mut rows = read_rows(output)?;
    check_order_within_keys(&rows, &output.display().to_string())?;
    sort_rows(&mut rows);
    assert_eq!(
        summary.results_written,
        rows.len() as u64,
        "results reported vs rows in {}",
        output.display()
    );
    Ok(JobRun { rows, summary })
}

/// Runs `window` on the generated events at P = 1 and P = 2 and checks both against the
/// reference and each other. Returns the reference's rows and late events.
fn check_against_reference(window: Window) -> Result<(Vec<Row>, Vec<Event>), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let events = generate(EVENTS, SEED);
    let input = dir.path().join("events.jsonl");
    write_lines(&input, &json_lines(&events))?;
    let (expected, late) = reference(&events, window, DELAY_MS);
    let spec = window.spec();
    // P=1 on the default (RocksDB) state, P=2 in memory, and P=2 on RocksDB with a cache of
    // 3 entries, so state is written back to and read from RocksDB all the time.
    let state_dir = dir.path().join("state");
    let tiny_cache: [&OsStr; 4] = [
        OsStr::new("--state-cache-entries"),
        OsStr::new("3"),
        OsStr::new("--state-dir"),
        state_dir.as_os_str(),
    ];
    let variants: [(usize, &str, &[&OsStr]); 3] = [
        (1, "rocksdb", &[]),
        (2, "memory", &[OsStr::new("--state"), OsStr::new("memory")]),
        (2, "rocksdb-tiny-cache", &tiny_cache),
    ];
    let mut runs = Vec::new();
    for (p, state, extra) in variants {
        let run = run_window_agg(
            &input,
            &dir.path().join(format!("out-p{p}-{state}.jsonl")),
            window,
            p,
            extra,
        )?;
        let s = &run.summary;
        assert_eq!(
            s.events_read,
            events.len() as u64,
            "{spec} P={p} {state}: events read"
        );
        assert_eq!(s.dead_letters, 0, "{spec} P={p} {state}: dead letters");
        assert_eq!(
            s.late_events,
            late.len() as u64,
            "{spec} P={p} {state}: late events"
        );
        runs.push((p, state, run));
    }
    for (p, state, run) in &runs[1..] {
        check_rows(
            &runs[0].2.rows,
            &run.rows,
            0.0,
            &format!("{spec}: P=1 rocksdb vs P={p} {state}"),
        )?;
    }
    for (p, state, run) in &runs {
        check_rows(
            &run.rows,
            &expected,
            1e-9,
            &format!("{spec} P={p} {state} vs reference"),
        )?;
    }
    Ok((expected, late))
}

// ------------------------------------------------------------------ tests

#[test]
fn tumbling_windows_match_the_reference() -> TestResult {
    let (rows, late) = check_against_reference(TUMBLE)?;
    assert!(!late.is_empty(), "the data must have late events");
    assert!(rows.iter().any(|r| r.window_start < 0), "negative windows");
    assert!(rows.iter().any(|r| r.min < 0), "negative values");
    Ok(())
}

#[test]
fn sliding_windows_match_the_reference() -> TestResult {
    let (rows, late) = check_against_reference(HOP)?;
    assert!(!late.is_empty(), "the data must have late events");
    assert!(rows.iter().any(|r| r.window_start < 0), "negative windows");
    Ok(())
}

#[test]
fn session_windows_match_the_reference() -> TestResult {
    let (rows, late) = check_against_reference(SESSION)?;
    assert!(!late.is_empty(), "the data must have late events");
    assert!(
        rows.len() as u64 > 5 * KEYS,
        "sessions must end and restart: {} sessions",
        rows.len()
    );
    Ok(())
}

/// Small inputs whose results were worked out by hand, so the reference itself is checked
/// too (delay 2 s: the watermark is `max ts - 2001`).
#[test]
fn hand_computed_examples() -> TestResult {
    let examples: Vec<(Window, Vec<Event>, Vec<Row>, usize)> = vec![
        (
            TUMBLE,
            vec![
                ev(-1, "a", 5),       // [-10000, 0); watermark -> -2002
                ev(-10_000, "a", -3), // [-10000, 0)
                ev(-10_001, "b", 7),  // [-20000, -10000) ends at -10001 <= -2002: late
                ev(0, "a", 1),        // [0, 10000); watermark -> -2001
                ev(12_500, "a", 2),   // [10000, 20000); watermark -> 10499
                ev(9_999, "a", 100),  // [0, 10000) fired at 10499: late
                ev(10_000, "b", 4),   // [10000, 20000)
            ],
            vec![
                row("a", -10_000, 0, &[5, -3]),
                row("a", 0, 10_000, &[1]),
                row("a", 10_000, 20_000, &[2]),
                row("b", 10_000, 20_000, &[4]),
            ],
            2,
        ),
        (
            HOP,
            vec![
                ev(25_000, "a", 1), // [0,30k) [10k,40k) [20k,50k); watermark -> 22999
                ev(5_000, "a", 2),  // only [0,30k) is not late: added there, not late
                ev(45_000, "a", 3), // [20k,50k) [30k,60k) [40k,70k); watermark -> 42999
                ev(15_000, "a", 4), // [-10k,20k) [0,30k) [10k,40k) all late
                ev(21_000, "a", 5), // only [20k,50k) is not late
            ],
            vec![
                row("a", 0, 30_000, &[1, 2]),
                row("a", 10_000, 40_000, &[1]),
                row("a", 20_000, 50_000, &[1, 3, 5]),
                row("a", 30_000, 60_000, &[3]),
                row("a", 40_000, 70_000, &[3]),
            ],
            1,
        ),
        (
            SESSION,
            vec![
                ev(0, "a", 1),      // [0, 3000); watermark -> -2001
                ev(6_000, "a", 2),  // [6000, 9000); watermark -> 3999
                ev(10_000, "a", 3), // [0, 3000) fires first; [10000, 13000); watermark -> 7999
                ev(3_000, "a", 4),  // [3000, 6000) is late alone but touches [6000, 9000)
                ev(1_000, "a", 5),  // joins [3000, 9000), not the fired [0, 3000)
                ev(12_000, "a", 6), // [10000, 15000); watermark -> 9999: [1000, 9000) fires
                ev(2_000, "a", 7),  // [2000, 5000) touches only fired sessions: late
                ev(-5_000, "b", 8), // [-5000, -2000) is late
                ev(9_000, "b", 9),  // [9000, 12000)
            ],
            vec![
                row("a", 0, 3_000, &[1]),
                row("a", 1_000, 9_000, &[2, 4, 5]),
                row("b", 9_000, 12_000, &[9]),
                row("a", 10_000, 15_000, &[3, 6]),
            ],
            2,
        ),
    ];
    let dir = tempfile::tempdir()?;
    for (i, (window, events, mut expected, late)) in examples.into_iter().enumerate() {
        let spec = window.spec();
        sort_rows(&mut expected);
        let (rows, late_events) = reference(&events, window, DELAY_MS);
        check_rows(&rows, &expected, 0.0, &format!("{spec}: reference"))?;
        assert_eq!(
            late_events.len(),
            late,
            "{spec}: late events of the reference"
        );
        let input = dir.path().join(format!("example-{i}.jsonl"));
        write_lines(&input, &json_lines(&events))?;
        for p in [1, 2] {
            let out = dir.path().join(format!("example-{i}-p{p}.jsonl"));
            let run = run_window_agg(&input, &out, window, p, &[])?;
            check_rows(&run.rows, &expected, 1e-9, &format!("{spec} P={p}"))?;
            assert_eq!(run.summary.late_events, late as u64, "{spec} P={p}: late");
        }
    }
    Ok(())
}

#[test]
fn late_output_holds_exactly_the_late_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = generate(EVENTS, SEED);
    let input = dir.path().join("events.jsonl");
    write_lines(&input, &json_lines(&events))?;
    let (expected, mut late) = reference(&events, TUMBLE, DELAY_MS);
    let late_path = dir.path().join("late.jsonl");
    let out = dir.path().join("out.jsonl");
    let run = run_window_agg(
        &input,
        &out,
        TUMBLE,
        2,
        &[OsStr::new("--late-output"), late_path.as_os_str()],
    )?;
    check_rows(&run.rows, &expected, 1e-9, "tumble P=2 with --late-output")?;
    assert_eq!(run.summary.late_events, late.len() as u64, "late events");
    let text = fs::read_to_string(&late_path)?;
    let mut written = text
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| failure(format!("late line `{l}`: {e}"))))
        .collect::<Result<Vec<Event>, _>>()?;
    written.sort();
    late.sort();
    assert!(!late.is_empty());
    assert_eq!(
        written.len(),
        late.len(),
        "lines in {}",
        late_path.display()
    );
    assert!(written == late, "the late file differs from the reference");
    Ok(())
}

#[test]
fn malformed_lines_go_to_dead_letters_with_their_line_numbers() -> TestResult {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DeadLetter {
        source: String,
        line: u64,
        error: String,
        raw: String,
    }
    let dir = tempfile::tempdir()?;
    let events = generate(5_000, SEED ^ 1);
    let good = json_lines(&events);
    // (insert before good line i, the line, what its error must mention; "" for anything)
    let broken: [(usize, &str, &str); 8] = [
        (0, "this is not json", ""),
        (1, r#"{"ts":1000,"key":"k1"}"#, "missing field `value`"),
        (
            10,
            r#"{"ts":1001,"key":"k2","value":1.5}"#,
            "not an integer",
        ),
        (10, "", "BLANK"),
        (700, "1002,k3,7", ""),
        (2_500, r#"{"ts":1003,"key":"k4","value":7"#, ""),
        (2_500, "   ", "BLANK"),
        (4_999, r#"{"key":"k5","value":3}"#, "missing field `ts`"),
    ];
    let mut lines = Vec::new();
    let mut expected_dead = Vec::new();
    let mut next = broken.iter().peekable();
    for (i, line) in good.iter().enumerate() {
        while let Some((_, raw, error)) = next.next_if(|b| b.0 == i) {
            lines.push(raw.to_string());
            if *error != "BLANK" {
                expected_dead.push((lines.len() as u64, raw.to_string(), *error));
            }
        }
        lines.push(line.clone());
    }
    // A broken last line without a line break.
    let last = "{\"ts\":";
    lines.push(last.to_string());
    expected_dead.push((lines.len() as u64, last.to_string(), ""));
    let input = dir.path().join("mixed.jsonl");
    fs::write(&input, lines.join("\n"))?;

    let out = dir.path().join("out.jsonl");
    let run = run_window_agg(&input, &out, TUMBLE, 1, &[])?;
    let (expected, late) = reference(&events, TUMBLE, DELAY_MS);
    check_rows(&run.rows, &expected, 1e-9, "results of the good lines")?;
    assert_eq!(run.summary.events_read, events.len() as u64, "events read");
    assert_eq!(run.summary.late_events, late.len() as u64, "late events");
    assert_eq!(
        run.summary.dead_letters,
        expected_dead.len() as u64,
        "dead letters"
    );

    let dead_path = dir.path().join("out.jsonl.dead.jsonl");
    let text = fs::read_to_string(&dead_path)
        .map_err(|e| failure(format!("{}: {e}", dead_path.display())))?;
    let dead = text
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| failure(format!("dead letter `{l}`: {e}"))))
        .collect::<Result<Vec<DeadLetter>, _>>()?;
    let got: Vec<(u64, &str)> = dead.iter().map(|d| (d.line, d.raw.as_str())).collect();
    let want: Vec<(u64, &str)> = expected_dead
        .iter()
        .map(|(line, raw, _)| (*line, raw.as_str()))
        .collect();
    assert_eq!(got, want, "dead letters (line, raw)");
    for (d, (_, _, mention)) in dead.iter().zip(&expected_dead) {
        assert_eq!(Path::new(&d.source), input.as_path(), "source of {d:?}");
        assert!(
            !d.error.is_empty() && d.error.contains(mention),
            "the error of line {} should mention `{mention}`: {d:?}",
            d.line
        );
    }
    Ok(())
}

#[test]
fn csv_input_gives_the_same_results_as_json() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = generate(EVENTS, SEED);
    let json = dir.path().join("events.jsonl");
    write_lines(&json, &json_lines(&events))?;
    let csv = dir.path().join("events.csv");
    let mut lines = vec!["ts,key,value".to_string()];
    lines.extend(
        events
            .iter()
            .map(|e| format!("{},{},{}", e.ts, e.key, e.value)),
    );
    write_lines(&csv, &lines)?;

    let from_json = run_window_agg(&json, &dir.path().join("json-out.jsonl"), TUMBLE, 1, &[])?;
    let from_csv = run_window_agg(&csv, &dir.path().join("csv-out.jsonl"), TUMBLE, 1, &[])?;
    check_rows(&from_csv.rows, &from_json.rows, 0.0, "CSV vs JSON")?;
    assert_eq!(from_csv.summary, from_json.summary, "CSV vs JSON summaries");
    let (expected, _) = reference(&events, TUMBLE, DELAY_MS);
    check_rows(&from_csv.rows, &expected, 1e-9, "CSV vs reference")?;
    Ok(())
}

#[test]
fn a_bad_window_is_rejected_with_a_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    write_lines(&input, &json_lines(&generate(100, SEED)))?;
    let out = dir.path().join("out.jsonl");
    for bad in ["weekly:1d", "hop:10s/30s", "tumble:0s", "10s"] {
        let run = common::run(
            WEIR,
            [
                OsStr::new("run"),
                OsStr::new("window-agg"),
                OsStr::new("--input"),
                input.as_os_str(),
                OsStr::new("--output"),
                out.as_os_str(),
                OsStr::new("--window"),
                OsStr::new(bad),
                OsStr::new("--metrics-addr"),
                OsStr::new("off"),
                OsStr::new("--quiet"),
            ],
        )?;
        assert!(!run.status.success(), "--window {bad} was accepted");
        assert!(
            run.stderr.contains("--window") && run.stderr.contains(bad),
            "stderr should name --window and `{bad}`: {}",
            run.stderr
        );
        assert!(!out.exists(), "--window {bad}: no output may be written");
    }
    Ok(())
}

/// One line of `window-agg --top N`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopRow {
    window_start: i64,
    window_end: i64,
    rank: u32,
    key: String,
    count: u64,
    sum: i64,
    min: i64,
    max: i64,
    avg: f64,
}

/// SEMANTICS.md: "Top-N per window ranks by the metric descending, ties broken by key
/// ascending; rank starts at 1." Checked at P = 1 and P = 2 against a ranking of the
/// reference's window rows.
#[test]
fn top_n_per_window_ranks_the_reference_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = generate(EVENTS, SEED);
    let input = dir.path().join("events.jsonl");
    write_lines(&input, &json_lines(&events))?;
    let (rows, _) = reference(&events, TUMBLE, DELAY_MS);
    let mut windows: BTreeMap<(i64, i64), Vec<Row>> = BTreeMap::new();
    for r in rows {
        windows
            .entry((r.window_start, r.window_end))
            .or_default()
            .push(r);
    }
    let mut expected = Vec::new();
    for ((start, end), mut ranking) in windows {
        ranking.sort_by(|a, b| b.sum.cmp(&a.sum).then_with(|| a.key.cmp(&b.key)));
        for (place, r) in ranking.into_iter().take(3).enumerate() {
            expected.push((start, end, place as u32 + 1, r.key, r.sum, r.count));
        }
    }
    assert!(expected.len() > 30, "enough windows to rank");

    for p in ["1", "2"] {
        let output = dir.path().join(format!("top-p{p}.jsonl"));
        let args: [&OsStr; 16] = [
            "run".as_ref(),
            "window-agg".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
            "--window".as_ref(),
            OsStr::new("tumble:10s"),
            "--watermark-delay".as_ref(),
            "2s".as_ref(),
            "--top".as_ref(),
            "3".as_ref(),
            "--by".as_ref(),
            "sum".as_ref(),
            "--parallelism".as_ref(),
            OsStr::new(p),
        ];
        let quiet: [&OsStr; 3] = [
            "--quiet".as_ref(),
            "--metrics-addr".as_ref(),
            "off".as_ref(),
        ];
        common::run_ok(WEIR, args.iter().chain(&quiet))?;
        let mut actual: Vec<_> = fs::read_to_string(&output)?
            .lines()
            .map(|l| serde_json::from_str::<TopRow>(l).map_err(|e| failure(format!("`{l}`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|r| (r.window_start, r.window_end, r.rank, r.key, r.sum, r.count))
            .collect();
        actual.sort();
        assert_eq!(actual, expected, "--top 3 --by sum at P={p}");
    }
    Ok(())
}

/// Two 100 MiB lines among good ones: each is a dead letter keeping its first KiB and
/// saying its length, the good lines count, and the job never holds such a line whole.
#[test]
fn lines_longer_than_max_line_are_dead_letters_in_bounded_memory() -> Result<(), Box<dyn Error>> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("long.jsonl");
    let mut file = std::io::BufWriter::new(fs::File::create(&input)?);
    let good = |ts: i64| format!("{{\"ts\":{ts},\"key\":\"k\",\"value\":1}}\n");
    let long = vec![b'x'; 100 << 20];
    for ts in [1, 2] {
        file.write_all(good(ts).as_bytes())?;
        file.write_all(&long)?;
        file.write_all(b"\n")?;
    }
    file.write_all(good(3).as_bytes())?;
    file.flush()?;
    drop(file);
    let output = dir.path().join("out.jsonl");
    // Followed, so the process is still there to be measured once it read everything.
    let child = std::process::Command::new(WEIR)
        .args([
            "run",
            "window-agg",
            "--metrics-addr",
            "off",
            "--quiet",
            "--follow",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut child = common::KillOnDrop(child);
    let dead_path = dir.path().join("out.jsonl.dead.jsonl");
    let started = std::time::Instant::now();
    let dead = loop {
        let dead = fs::read_to_string(&dead_path).unwrap_or_default();
        if dead.lines().count() >= 2 {
            break dead;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) || child.0.try_wait()?.is_some() {
            return Err(failure(format!("no two dead letters in 60 s: {dead}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let peak = common::peak_rss_mib(child.0.id()).ok_or("weir ended")?;
    let letters: Vec<serde_json::Value> = dead
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for (letter, line) in letters.iter().zip([2, 4]) {
        assert_eq!(letter["line"], line, "{letter}");
        let error = letter["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("line of {} bytes", (100 << 20) + 1)),
            "{error}"
        );
        assert_eq!(letter["raw"].as_str().map(str::len), Some(1024));
    }
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB for two 100 MiB lines");
    Ok(())
}

// ------------------------------------------------------------------ edges of the input (issue 27)

/// The dead letters of a run, one JSON value each.
fn dead_letters(path: &Path) -> Result<Vec<serde_json::Value>, Box<dyn Error>> {
    fs::read_to_string(path)
        .map_err(|e| failure(format!("{}: {e}", path.display())))?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| failure(format!("dead letter `{l}`: {e}"))))
        .collect()
}

#[test]
fn a_line_that_is_not_utf8_is_a_dead_letter_keeping_its_exact_bytes() -> TestResult {
    use base64::Engine as _;
    let dir = tempfile::tempdir()?;
    let events = generate(2_000, SEED ^ 3);
    let good = json_lines(&events);
    // Latin-1 in a key, a lone continuation byte, and a character cut in half at the end.
    let bad: [&[u8]; 3] = [
        b"{\"ts\":1000,\"key\":\"caf\xe9\",\"value\":1}",
        b"\x80 not even json \xff\xfe",
        b"{\"ts\":1000,\"key\":\"\xe2\x82",
    ];
    let mut input = Vec::new();
    let mut expected = Vec::new();
    let mut line = 0u64;
    for (i, text) in good.iter().enumerate() {
        if i % 500 == 250 {
            let raw = bad[(i / 500) % bad.len()];
            input.extend_from_slice(raw);
            // A CRLF break is not part of the record.
            input.extend_from_slice(if i == 250 { b"\r\n" } else { b"\n" });
            line += 1;
            expected.push((line, raw.to_vec()));
        }
        input.extend_from_slice(text.as_bytes());
        input.push(b'\n');
        line += 1;
    }
    // A text line that does not parse keeps today's `raw`.
    input.extend_from_slice(b"this is not json\n");
    let path = dir.path().join("latin1.jsonl");
    fs::write(&path, &input)?;

    let out = dir.path().join("out.jsonl");
    let run = run_window_agg(&path, &out, TUMBLE, 1, &[])?;
    let (rows, _) = reference(&events, TUMBLE, DELAY_MS);
    check_rows(&run.rows, &rows, 1e-9, "results of the good lines")?;
    assert_eq!(run.summary.dead_letters, expected.len() as u64 + 1);

    let dead = dead_letters(&dir.path().join("out.jsonl.dead.jsonl"))?;
    assert_eq!(dead.len(), expected.len() + 1);
    for (letter, (line, raw)) in dead.iter().zip(&expected) {
        assert_eq!(letter["line"], *line, "{letter}");
        assert!(letter.get("raw").is_none(), "no lossy `raw`: {letter}");
        let encoded = letter["raw_base64"]
            .as_str()
            .ok_or_else(|| failure(format!("no raw_base64 in {letter}")))?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        assert_eq!(&decoded, raw, "the bytes of line {line}");
        assert!(
            letter["error"]
                .as_str()
                .is_some_and(|e| e.contains("not UTF-8")),
            "{letter}"
        );
    }
    let text = &dead[expected.len()];
    assert_eq!(text["raw"], "this is not json", "{text}");
    assert!(text.get("raw_base64").is_none(), "{text}");
    Ok(())
}

/// 9999-12-31T23:59:59Z.
const YEAR_9999: i64 = 253_402_300_799_000;

#[test]
fn a_far_future_event_with_max_future_is_a_dead_letter_and_moves_no_watermark() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = generate(EVENTS / 4, SEED ^ 5);
    let good = json_lines(&events);
    let clean = dir.path().join("clean.jsonl");
    write_lines(&clean, &good)?;
    let at = good.len() / 3;
    let bad = format!(r#"{{"ts":{YEAR_9999},"key":"k1","value":5}}"#);
    let mut lines = good.clone();
    lines.insert(at, bad.clone());
    let dirty = dir.path().join("dirty.jsonl");
    write_lines(&dirty, &lines)?;
    let max_future = [OsStr::new("--max-future"), OsStr::new("1h")];

    let expected = run_window_agg(&clean, &dir.path().join("clean-out.jsonl"), TUMBLE, 1, &[])?;
    let (rows, late) = reference(&events, TUMBLE, DELAY_MS);
    check_rows(&expected.rows, &rows, 1e-9, "the clean run")?;
    let out = dir.path().join("out.jsonl");
    let run = run_window_agg(&dirty, &out, TUMBLE, 1, &max_future)?;
    check_rows(
        &run.rows,
        &rows,
        1e-9,
        "with the year-9999 line and --max-future 1h",
    )?;
    assert_eq!(run.summary.late_events, late.len() as u64, "late events");
    assert_eq!(run.summary.events_read, events.len() as u64, "events read");
    // The first event is accepted although nothing is known before it; only the bad one
    // is refused.
    assert_eq!(run.summary.dead_letters, 1, "dead letters");
    let dead = dead_letters(&dir.path().join("out.jsonl.dead.jsonl"))?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], at as u64 + 1, "{}", dead[0]);
    assert_eq!(dead[0]["raw"], bad.as_str(), "{}", dead[0]);
    let error = dead[0]["error"].as_str().unwrap_or_default();
    for part in ["9999-12-31", "more than 1h ahead", "--max-future"] {
        assert!(error.contains(part), "`{part}` in the error: {error}");
    }

    // Without --max-future the same input makes almost everything after the bad line late.
    let run = run_window_agg(&dirty, &dir.path().join("off.jsonl"), TUMBLE, 1, &[])?;
    assert_eq!(run.summary.dead_letters, 0);
    assert!(
        run.summary.late_events >= (events.len() - at) as u64 - 10,
        "{:?}",
        run.summary
    );
    Ok(())
}

/// `weir gen events --events N` into `dir/events.jsonl`, with `extra` arguments.
fn gen_events(dir: &Path, events: usize, extra: &[&str]) -> Result<OsString, Box<dyn Error>> {
    let path = dir.join("events.jsonl");
    let mut args: Vec<OsString> = vec![
        "gen".into(),
        "events".into(),
        "--output".into(),
        path.clone().into(),
        "--events".into(),
        events.to_string().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    common::run_ok(WEIR, &args)?;
    Ok(path.into())
}

/// `weir run window-agg` on `input` into `dir/out.jsonl`, with `extra` arguments.
fn run_generated(dir: &Path, input: &OsStr, extra: &[&str]) -> Result<common::Run, Box<dyn Error>> {
    let out = dir.join("out.jsonl");
    let mut args: Vec<&OsStr> = ["run", "window-agg", "--input"].map(OsStr::new).into();
    args.push(input);
    args.extend([OsStr::new("--output"), out.as_os_str()]);
    args.extend(["--metrics-addr", "off", "--quiet"].map(OsStr::new));
    args.extend(extra.iter().map(OsStr::new));
    common::run_ok(WEIR, &args)
}

#[test]
fn generated_events_run_with_the_defaults_are_not_late() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = gen_events(dir.path(), 200_000, &[])?;
    let run = run_generated(dir.path(), &input, &[])?;
    let summary = Summary::from_stderr(&run.stderr)?;
    assert_eq!(summary.events_read, 200_000);
    assert!(
        summary.late_events * 100 <= summary.events_read,
        "more than 1 % late with the defaults: {summary:?}"
    );
    assert!(!run.stderr.contains("hint"), "{}", run.stderr);
    Ok(())
}

#[test]
fn many_late_events_print_a_hint_to_raise_the_watermark_delay() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = gen_events(dir.path(), 100_000, &["--disorder-ms", "3000"])?;
    let run = run_generated(dir.path(), &input, &["--watermark-delay", "0"])?;
    let summary = Summary::from_stderr(&run.stderr)?;
    assert!(
        summary.late_events * 100 > summary.events_read,
        "{summary:?}"
    );
    let hints: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("weir: hint:"))
        .collect();
    assert_eq!(hints.len(), 1, "one hint line:\n{}", run.stderr);
    let hint = hints[0];
    assert!(
        hint.contains(&format!(
            "{} of {} events",
            summary.late_events, summary.events_read
        )),
        "{hint}"
    );
    assert!(hint.contains("--watermark-delay"), "{hint}");
    Ok(())
}
