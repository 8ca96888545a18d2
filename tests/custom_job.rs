//! A user crate's own job (examples/custom-job) gets the weir CLI: it reads any `--input`
//! the bundled jobs read (JSON lines, CSV, Arrow IPC, Kafka) into its own type with the same
//! results, sends what does not decode to the dead letters with its position, and writes
//! two named outputs, each with its own rows; its own typed options (`--long-view-ms`,
//! `--slide`) are listed by its `--help`, checked by the parser and change its results.

#[allow(dead_code, clippy::unwrap_used)]
#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Fallible<T> = Result<T, Box<dyn std::error::Error>>;
/// An alert row: (ts, page, dwell_ms).
type Alert = (i64, String, i64);
/// A dead letter: (source, line, raw).
type Letter = (String, u64, String);

const BIN: &str = env!("CARGO_BIN_EXE_custom-job");
/// The example's default alert threshold (`--long-view-ms`).
const LONG_VIEW_MS: i64 = 450;
/// The example's default window slide (`--slide`), ms.
const SLIDE_MS: i64 = 20_000;
const PAGES: [&str; 3] = ["/", "/docs", "/pricing"];

/// (ts, page, dwell_ms), in time order so nothing is late.
fn views() -> Vec<(i64, &'static str, i64)> {
    (0..3000i64)
        .map(|i| (i * 97, PAGES[(i % 3) as usize], (i * 31) % 500))
        .collect()
}

/// The window results a plain reference computes: 60 s windows every `slide` ms, views
/// with dwell 0 left out; (page, window end) -> (views, total dwell).
type Dwell = BTreeMap<(String, i64), (u64, i64)>;

fn expected_dwell(views: &[(i64, &str, i64)], slide: i64) -> Dwell {
    let mut expected = Dwell::new();
    for &(ts, page, dwell) in views.iter().filter(|v| v.2 > 0) {
        let last_start = ts - ts.rem_euclid(slide);
        let starts = (0..).map(|i| last_start - i * slide);
        for start in starts.take_while(|s| s + 60_000 > ts) {
            let e = expected
                .entry((page.to_string(), start + 60_000))
                .or_default();
            e.0 += 1;
            e.1 += dwell;
        }
    }
    expected
}

fn expected_alerts(views: &[(i64, &str, i64)], long_view_ms: i64) -> Vec<Alert> {
    let mut alerts: Vec<_> = views
        .iter()
        .filter(|v| v.2 >= long_view_ms)
        .map(|&(ts, page, dwell)| (ts, page.to_string(), dwell))
        .collect();
    alerts.sort();
    alerts
}

fn read_json_lines(path: &Path) -> Fallible<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn dwell_rows(path: &Path) -> Fallible<Dwell> {
    let mut actual = Dwell::new();
    for row in read_json_lines(path)? {
        let views = row["views"].as_u64().ok_or("views")?;
        let avg = row["avg_dwell_ms"].as_f64().ok_or("avg")?;
        let key = (
            row["page"].as_str().ok_or("page")?.to_string(),
            row["window_end"].as_i64().ok_or("end")?,
        );
        actual.insert(key, (views, (avg * views as f64).round() as i64));
    }
    Ok(actual)
}

fn alert_rows(path: &Path) -> Fallible<Vec<Alert>> {
    let mut alerts = Vec::new();
    for row in read_json_lines(path)? {
        let ts = row["ts"].as_i64().ok_or("ts")?;
        let page = row["page"].as_str().ok_or("page")?.to_string();
        alerts.push((ts, page, row["dwell_ms"].as_i64().ok_or("dwell")?));
    }
    alerts.sort();
    Ok(alerts)
}

/// Runs `page-dwell` on `input` with both outputs in `dir` (`NAME-dwell.jsonl`,
/// `NAME-alerts.jsonl`).
fn run(input: &str, dir: &Path, name: &str) -> Result<Output, std::io::Error> {
    run_with(input, dir, name, &[])
}

/// [`run`] with more arguments.
fn run_with(input: &str, dir: &Path, name: &str, args: &[&str]) -> Result<Output, std::io::Error> {
    let dwell = dir.join(format!("{name}-dwell.jsonl"));
    let alerts = dir.join(format!("{name}-alerts.jsonl"));
    Command::new(BIN)
        .args(["run", "page-dwell", "--metrics-addr", "off", "--quiet"])
        .args(["--input", input])
        .args(args)
        .arg(format!("--output=dwell={}", dwell.display()))
        .arg(format!("--output=alerts={}", alerts.display()))
        .current_dir(dir)
        .output()
}

/// The `D dead letters` of the summary `weir run` prints: the total of
/// `weir_dead_letter_records_total`, the metric the bundled jobs count theirs in.
fn dead_letter_count(stderr: &str) -> Option<u64> {
    let summary = stderr.lines().find(|l| l.contains("page-dwell done:"))?;
    let before = summary.split(" dead letters").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

fn check_run(output: &Output, dir: &Path, name: &str, letters: u64) -> TestResult {
    check_run_with(output, dir, name, letters, (SLIDE_MS, LONG_VIEW_MS))
}

/// [`check_run`] for a run with `--slide` and `--long-view-ms` (in ms).
fn check_run_with(
    output: &Output,
    dir: &Path,
    name: &str,
    letters: u64,
    (slide, long_view_ms): (i64, i64),
) -> TestResult {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stderr}");
    assert_eq!(
        dead_letter_count(&stderr),
        Some(letters),
        "{name}: {stderr}"
    );
    let views = views();
    let dwell = dwell_rows(&dir.join(format!("{name}-dwell.jsonl")))?;
    assert_eq!(dwell, expected_dwell(&views, slide), "{name}: dwell");
    let alerts = alert_rows(&dir.join(format!("{name}-alerts.jsonl")))?;
    assert_eq!(
        alerts,
        expected_alerts(&views, long_view_ms),
        "{name}: alerts"
    );
    // Both references are non-trivial: the equalities above could not pass by emptiness.
    assert!(!alerts.is_empty() && !dwell.is_empty(), "{name}: no rows");
    Ok(())
}

/// The dead letters beside the first file output: (source, line, raw).
fn dead_letters(dir: &Path, name: &str) -> Fallible<Vec<Letter>> {
    let path = dir.join(format!("{name}-dwell.jsonl.dead.jsonl"));
    read_json_lines(&path)?
        .into_iter()
        .map(|l| {
            let source = l["source"].as_str().ok_or("source")?.to_string();
            let line = l["line"].as_u64().ok_or("line")?;
            Ok((source, line, l["raw"].as_str().ok_or("raw")?.to_string()))
        })
        .collect()
}

#[test]
fn custom_job_reads_json_lines_csv_and_arrow_with_the_same_results() -> TestResult {
    let listed = Command::new(BIN).arg("jobs").output()?;
    assert!(String::from_utf8(listed.stdout)?.starts_with("page-dwell"));
    let dir = tempfile::tempdir()?;
    let views = views();

    // JSON lines with an extra field, and one line that is not JSON at line 1001.
    let bad_json = "{\"ts\": oops}";
    let mut lines: Vec<String> = views
        .iter()
        .map(|(ts, page, dwell)| {
            format!("{{\"ts\":{ts},\"page\":\"{page}\",\"dwell_ms\":{dwell},\"user\":\"u{ts}\"}}")
        })
        .collect();
    lines.insert(1000, bad_json.to_string());
    let jsonl = dir.path().join("views.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n")?;
    let out = run(jsonl.to_str().ok_or("path")?, dir.path(), "json")?;
    check_run(&out, dir.path(), "json", 1)?;
    let letters = dead_letters(dir.path(), "json")?;
    let expected = vec![(jsonl.display().to_string(), 1001, bad_json.to_string())];
    assert_eq!(letters, expected);

    // CSV, columns in another order, a quoted field; a row whose time is not a number at
    // line 11 (the header is line 1).
    let mut rows: Vec<String> = views
        .iter()
        .map(|(ts, page, dwell)| format!("\"u,{ts}\",{dwell},{page},{ts}"))
        .collect();
    rows.insert(9, "u,5,/,soon".to_string());
    let csv = dir.path().join("views.csv");
    std::fs::write(
        &csv,
        format!("user,dwell_ms,page,ts\n{}\n", rows.join("\n")),
    )?;
    let out = run(csv.to_str().ok_or("path")?, dir.path(), "csv")?;
    check_run(&out, dir.path(), "csv", 1)?;
    let letters = dead_letters(dir.path(), "csv")?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].1, 11, "{letters:?}");
    assert_eq!(letters[0].2, "u,5,/,soon");

    // Arrow IPC: the page dictionary-free Utf8, integers as Int64.
    let arrow = dir.path().join("views.arrow");
    write_arrow(&arrow, &views)?;
    let out = run(arrow.to_str().ok_or("path")?, dir.path(), "arrow")?;
    check_run(&out, dir.path(), "arrow", 0)?;
    Ok(())
}

fn write_arrow(path: &Path, views: &[(i64, &str, i64)]) -> TestResult {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("page", DataType::Utf8, false),
        Field::new("dwell_ms", DataType::Int64, false),
    ]));
    let mut writer = arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(path)?, &schema)?;
    // Several batches, as a real file has.
    for chunk in views.chunks(700) {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|v| v.0))),
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|v| v.1))),
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|v| v.2))),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.finish()?;
    Ok(())
}

/// Checks that `run page-dwell` with `args` is refused with exit code 2, saying `wanted`.
fn refused(args: &[&str], wanted: &str) -> TestResult {
    let out = Command::new(BIN)
        .args(["run", "page-dwell", "--input", "v.jsonl"])
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    Ok(())
}

#[test]
fn outputs_are_asked_for_by_name_and_wrong_names_are_refused() -> TestResult {
    let refuse = refused;
    refuse(
        &["--output", "dwell=d.jsonl", "--output", "alert=a.jsonl"],
        "`--output alert=..`: job `page-dwell` has no output `alert`; its outputs are dwell, alerts",
    )?;
    refuse(
        &["--output", "dwell=d.jsonl"],
        "job `page-dwell` writes to outputs dwell, alerts: --output alerts=SPEC is missing",
    )?;
    refuse(
        &["--output", "d.jsonl"],
        "job `page-dwell` writes to named outputs (dwell, alerts): give each as --output NAME=SPEC",
    )?;
    // It declared what it reads: an option it does not read is refused, not ignored.
    refuse(
        &["--window", "tumble:5s"],
        "`--window` is not an option of job `page-dwell`: it reads --input,",
    )?;
    Ok(())
}

#[test]
fn the_jobs_own_options_are_listed_checked_and_change_its_results() -> TestResult {
    // `--help` of the job lists its own options with their doc comments, and of weir's
    // only those it reads.
    let help = Command::new(BIN)
        .args(["run", "page-dwell", "--help"])
        .output()?;
    let text = String::from_utf8(help.stdout)?;
    assert!(help.status.success(), "{text}");
    for wanted in [
        "Options of the job:",
        "--long-view-ms <MS>",
        "A view at least this long (milliseconds) is an alert",
        "[default: 450]",
        "--slide <DURATION>",
        "--input <INPUT>",
        "--parallelism <PARALLELISM>",
    ] {
        assert!(text.contains(wanted), "`{wanted}` not in:\n{text}");
    }
    assert!(!text.contains("--window"), "{text}");

    // A bad value is refused by the parser, naming the option, with exit code 2.
    for (args, wanted) in [
        (
            ["--long-view-ms", "soon"],
            "invalid value 'soon' for '--long-view-ms <MS>'",
        ),
        (
            ["--long-view-ms", "0"],
            "'--long-view-ms <MS>': 0 is not in 1..",
        ),
        (
            ["--slide", "90s"],
            "'--slide <DURATION>': a slide is 1ms to 60s",
        ),
        (
            ["--slide", "5"],
            "for '--slide <DURATION>': invalid duration `5`",
        ),
    ] {
        refused(&args, wanted)?;
    }
    // `describe` takes them too, before the job's name as after it.
    let described = Command::new(BIN)
        .args([
            "describe",
            "--slide",
            "30s",
            "page-dwell",
            "--long-view-ms",
            "9",
        ])
        .output()?;
    assert!(
        described.status.success(),
        "{}",
        String::from_utf8_lossy(&described.stderr)
    );

    // They reach the job: other windows and another alert threshold.
    let dir = tempfile::tempdir()?;
    let lines: Vec<String> = views()
        .iter()
        .map(|(ts, page, dwell)| {
            format!("{{\"ts\":{ts},\"page\":\"{page}\",\"dwell_ms\":{dwell}}}")
        })
        .collect();
    let jsonl = dir.path().join("views.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n")?;
    let args = ["--long-view-ms", "300", "--slide", "30s"];
    let out = run_with(jsonl.to_str().ok_or("path")?, dir.path(), "own", &args)?;
    check_run_with(&out, dir.path(), "own", 0, (30_000, 300))?;
    Ok(())
}

#[test]
fn custom_job_reads_a_kafka_topic() -> TestResult {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let dir = tempfile::tempdir()?;
    let broker = broker::Broker::start(dir.path());
    broker.create_topic("views", 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()?;
    let mut payloads: Vec<(i32, String)> = views()
        .iter()
        .enumerate()
        .map(|(i, (ts, page, dwell))| {
            let json = format!("{{\"ts\":{ts},\"page\":\"{page}\",\"dwell_ms\":{dwell}}}");
            ((i % 2) as i32, json)
        })
        .collect();
    payloads.insert(10, (1, "{not json".to_string()));
    for (partition, payload) in &payloads {
        let mut record = BaseRecord::<(), str>::to("views")
            .partition(*partition)
            .payload(payload.as_str());
        // Bounded: the queue drains as the producer is polled.
        for _ in 0..1000 {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;

    let input = broker.uri(
        "views",
        &format!(
            "group=custom&start=earliest&until=end&{}",
            broker::GROUP_TIMING
        ),
    );
    let out = run(&input, dir.path(), "kafka")?;
    check_run(&out, dir.path(), "kafka", 1)?;
    let letters = dead_letters(dir.path(), "kafka")?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].2, "{not json");
    Ok(())
}
