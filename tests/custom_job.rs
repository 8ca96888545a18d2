//! A user crate's own job (examples/custom-job) gets the weir CLI and computes what a plain
//! reference computes.

use std::collections::BTreeMap;
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn custom_job_runs_through_the_weir_cli() -> TestResult {
    let bin = env!("CARGO_BIN_EXE_custom-job");
    let listed = Command::new(bin).arg("jobs").output()?;
    assert!(String::from_utf8(listed.stdout)?.starts_with("page-dwell"));
    // It declared what it reads: an option it does not read is refused, not ignored.
    let refused = Command::new(bin)
        .args([
            "run",
            "page-dwell",
            "--window",
            "tumble:5s",
            "--input",
            "v.jsonl",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`--window` is not an option of job `page-dwell`: it reads --input,"),
        "{stderr}"
    );

    let dir = tempfile::tempdir()?;
    let input = dir.path().join("views.jsonl");
    let output = dir.path().join("dwell.jsonl");
    let pages = ["/", "/docs", "/pricing"];
    let mut lines = String::new();
    // In order, so nothing is late: (ts, page, dwell); dwell 0 views are filtered out.
    let mut views = Vec::new();
    for i in 0..3000i64 {
        let (ts, page, dwell) = (i * 97, pages[(i % 3) as usize], (i * 31) % 500);
        lines.push_str(&format!(
            "{{\"ts\":{ts},\"page\":\"{page}\",\"dwell_ms\":{dwell},\"user\":\"u{i}\"}}\n"
        ));
        views.push((ts, page, dwell));
    }
    std::fs::write(&input, lines)?;

    let status = Command::new(bin)
        .args(["run", "page-dwell", "--metrics-addr", "off", "--quiet"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()?;
    assert!(status.success());

    // Reference: 60 s windows every 20 s; a view belongs to the 3 windows covering it.
    let mut expected: BTreeMap<(String, i64), (u64, i64)> = BTreeMap::new();
    for &(ts, page, dwell) in views.iter().filter(|v| v.2 > 0) {
        let last_start = ts - ts.rem_euclid(20_000);
        for start in [last_start, last_start - 20_000, last_start - 40_000] {
            let e = expected
                .entry((page.to_string(), start + 60_000))
                .or_default();
            e.0 += 1;
            e.1 += dwell;
        }
    }
    let mut actual: BTreeMap<(String, i64), (u64, i64)> = BTreeMap::new();
    for line in std::fs::read_to_string(&output)?.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        let views = row["views"].as_u64().ok_or("views")?;
        let avg = row["avg_dwell_ms"].as_f64().ok_or("avg")?;
        let key = (
            row["page"].as_str().ok_or("page")?.to_string(),
            row["window_end"].as_i64().ok_or("end")?,
        );
        actual.insert(key, (views, (avg * views as f64).round() as i64));
    }
    assert_eq!(actual, expected);
    Ok(())
}
