//! `order-analytics` through the binary: revenue per region and minute and high-value
//! customer alerts equal a plain reference computation; the embedded default runs with no
//! arguments.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weir(args: &[&str], cwd: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("weir {args:?} failed: {stderr}").into());
    }
    Ok(stderr)
}

fn read_json_lines(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// Total in cents, exactly, from its JSON text (two decimals).
fn cents(v: &Value) -> Option<i64> {
    let text = v.to_string();
    let (units, frac) = text.split_once('.').unwrap_or((&text, "0"));
    Some(units.parse::<i64>().ok()? * 100 + format!("{frac:0<2}")[..2].parse::<i64>().ok()?)
}

type RegionRows = BTreeMap<(String, i64, i64), (u64, i64)>;
type Alerts = BTreeMap<String, (String, i64)>;
/// Per window `(start, end)`: `(rank, customer, revenue in cents)`.
type TopCustomers = BTreeMap<(i64, i64), Vec<(u32, String, i64)>>;

/// What the job computes, in comparable form.
#[derive(Debug, Default, PartialEq)]
struct Results {
    regions: RegionRows,
    alerts: Alerts,
    top: TopCustomers,
}

/// Reference: orders counted once per order id; per region and minute, orders and revenue
/// in cents; per minute the 10 customers with the most revenue (ties: smaller id first);
/// first order per customer that takes cumulative revenue above 10,000.00, adding orders in
/// (event time, order id) order.
fn reference(orders: &[Value]) -> Option<Results> {
    let (mut regions, mut alerts) = (RegionRows::new(), Alerts::new());
    let mut running: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_window: BTreeMap<(i64, i64), BTreeMap<String, i64>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    // (event time, order id, customer, cents) of each order counted.
    let mut by_time = Vec::new();
    for o in orders {
        if !seen.insert(o["order_id"].as_str()?.to_string()) {
            continue;
        }
        let ts = o["ts"].as_i64()?;
        let start = ts - ts.rem_euclid(60_000);
        let total = cents(&o["total"])?;
        let row = regions
            .entry((o["region"].as_str()?.to_string(), start, start + 60_000))
            .or_default();
        row.0 += 1;
        row.1 += total;
        let customer = o["customer_id"].as_str()?.to_string();
        *per_window
            .entry((start, start + 60_000))
            .or_default()
            .entry(customer.clone())
            .or_default() += total;
        by_time.push((ts, o["order_id"].as_str()?.to_string(), customer, total));
    }
    by_time.sort();
    for (_, order_id, customer, total) in by_time {
        let sum = running.entry(customer.clone()).or_default();
        *sum += total;
        if *sum > 1_000_000 && !alerts.contains_key(&customer) {
            alerts.insert(customer, (order_id, *sum));
        }
    }
    let mut top = TopCustomers::new();
    for (window, customers) in per_window {
        let mut ranking: Vec<(String, i64)> = customers.into_iter().collect();
        ranking.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let ranked = ranking
            .into_iter()
            .take(10)
            .enumerate()
            .map(|(i, (customer, cents))| (i as u32 + 1, customer, cents));
        top.insert(window, ranked.collect());
    }
    Some(Results {
        regions,
        alerts,
        top,
    })
}

fn job_results(rows: &[Value]) -> Option<Results> {
    let (mut regions, mut alerts) = (RegionRows::new(), Alerts::new());
    let mut top = TopCustomers::new();
    for r in rows {
        match r["type"].as_str()? {
            "region_revenue" => {
                let key = (
                    r["region"].as_str()?.to_string(),
                    r["window_start"].as_i64()?,
                    r["window_end"].as_i64()?,
                );
                let previous = regions.insert(
                    key,
                    (
                        r["orders"].as_u64()?,
                        (r["revenue"].as_f64()? * 100.0).round() as i64,
                    ),
                );
                assert!(previous.is_none(), "a region window fired twice: {r}");
            }
            "high_value_customer" => {
                let previous = alerts.insert(
                    r["customer_id"].as_str()?.to_string(),
                    (
                        r["order_id"].as_str()?.to_string(),
                        (r["revenue"].as_f64()? * 100.0).round() as i64,
                    ),
                );
                assert!(previous.is_none(), "a customer was announced twice: {r}");
            }
            "top_customer" => {
                let window = (r["window_start"].as_i64()?, r["window_end"].as_i64()?);
                top.entry(window).or_default().push((
                    u32::try_from(r["rank"].as_u64()?).ok()?,
                    r["customer_id"].as_str()?.to_string(),
                    (r["revenue"].as_f64()? * 100.0).round() as i64,
                ));
            }
            other => panic!("unexpected output type {other}"),
        }
    }
    for ranking in top.values_mut() {
        ranking.sort();
    }
    Some(Results {
        regions,
        alerts,
        top,
    })
}

#[test]
fn order_analytics_matches_reference_at_parallelism_1_and_2_with_any_split() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    weir(
        &[
            "gen",
            "orders",
            "--events",
            "30000",
            "--output",
            "orders.jsonl",
        ],
        d,
    )?;
    let raw = std::fs::read_to_string(d.join("orders.jsonl"))?;
    let mut orders = Vec::new();
    let mut rejected = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            // Version 1 (none) and 2 are read; anything else is rejected.
            Ok(v) if v.get("region").is_some() && v["version"].as_u64().unwrap_or(1) <= 2 => {
                orders.push(v)
            }
            _ => rejected.push(i as u64 + 1),
        }
    }
    // Order 10,000 has an unknown version and order 20,000 is malformed; 10 and 20 retried
    // orders (500, 1500, ...) come before them.
    let expected_rejects = vec![10_001 + 10, 20_001 + 20];
    assert_eq!(
        rejected, expected_rejects,
        "the generator plants a version 3 and a malformed line"
    );
    assert_eq!(
        orders.len(),
        30_000 - 2 + 30,
        "30 orders are delivered twice"
    );
    assert!(
        orders.iter().any(|o| o.get("version").is_none()),
        "version 1 orders are in the sample"
    );
    let expected = reference(&orders).ok_or("bad reference input")?;
    assert!(
        !expected.alerts.is_empty(),
        "the sample must produce alerts"
    );

    // The file (~3 MB) is one piece at the default --split-bytes, so P = 2 reads it with
    // one reader; in pieces of 4 KiB two readers interleave their orders on the way to each
    // customer's state.
    for (p, split_bytes) in [("1", "8388608"), ("2", "8388608"), ("2", "4096")] {
        let out = format!("out-{p}-{split_bytes}.jsonl");
        let stderr = weir(
            &[
                "run",
                "order-analytics",
                "--input",
                "orders.jsonl",
                "--output",
                &out,
                "--metrics-addr",
                "off",
                "--quiet",
                "--parallelism",
                p,
                "--split-bytes",
                split_bytes,
            ],
            d,
        )?;
        let p = format!("{p} (pieces of {split_bytes} bytes)");
        assert!(stderr.contains(" 0 late events"), "{stderr}");
        assert!(stderr.contains(" 2 dead letters"), "{stderr}");
        let actual = job_results(&read_json_lines(&d.join(&out))?).ok_or("malformed output")?;
        assert_eq!(
            actual.regions, expected.regions,
            "region revenue at parallelism {p}"
        );
        assert_eq!(
            actual.alerts, expected.alerts,
            "high-value customers at parallelism {p}"
        );
        assert_eq!(actual.top, expected.top, "top customers at parallelism {p}");
        let dead = read_json_lines(&d.join(format!("{out}.dead.jsonl")))?;
        let lines: Vec<u64> = dead.iter().filter_map(|l| l["line"].as_u64()).collect();
        assert_eq!(lines, expected_rejects);
        assert!(
            dead[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("unknown schema version 3")),
            "{}",
            dead[0]
        );
    }
    Ok(())
}

#[test]
fn embedded_default_runs_without_arguments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stderr = weir(
        &["run", "order-analytics", "--metrics-addr", "127.0.0.1:0"],
        dir.path(),
    )?;
    // 60,000 sample orders; on purpose two malformed, three of an unknown version, and 60
    // delivered twice.
    assert!(
        stderr.contains("order-analytics done: 60055 events read"),
        "{stderr}"
    );
    assert!(stderr.contains(" 5 dead letters"), "{stderr}");
    let rows = read_json_lines(&dir.path().join("weir-data/order-analytics.jsonl"))?;
    let kinds: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["high_value_customer", "region_revenue", "top_customer"]
    );
    // A second run reuses the sample and gives the same results.
    weir(
        &[
            "run",
            "order-analytics",
            "--metrics-addr",
            "off",
            "--output",
            "again.jsonl",
        ],
        dir.path(),
    )?;
    let mut again = read_json_lines(&dir.path().join("again.jsonl"))?;
    let mut first = rows;
    let key = |v: &Value| v.to_string();
    first.sort_by_key(key);
    again.sort_by_key(key);
    assert_eq!(first, again);
    Ok(())
}
