//! Nexmark queries through the binary against plain reference computations over the same
//! generated events (the generator is deterministic), at parallelism 1 and 2.

mod common;

use std::collections::BTreeMap;
use std::error::Error;

use serde_json::{json, Value};
use weir_jobs::nexmark::{average_sizes, Bid, NexmarkEvent, NexmarkGenerator};

type TestResult = Result<(), Box<dyn Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const EVENTS: u64 = 300_000;
const SECOND: i64 = 1_000;

fn bids() -> Vec<Bid> {
    NexmarkGenerator::new(EVENTS)
        .filter_map(|e| match e {
            NexmarkEvent::Bid(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// Runs `--query` and returns its output rows, canonical and sorted.
fn run_query(query: &str, parallelism: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out.jsonl");
    common::run_ok(
        WEIR,
        [
            "run",
            "nexmark",
            "--query",
            query,
            "--events",
            &EVENTS.to_string(),
            "--output",
            output.to_str().ok_or("path")?,
            "--parallelism",
            parallelism,
            "--metrics-addr",
            "off",
            "--quiet",
        ],
    )?;
    let mut rows: Vec<String> = std::fs::read_to_string(&output)?
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|v| v.to_string()))
        .collect::<Result<_, _>>()?;
    rows.sort();
    Ok(rows)
}

fn canonical(rows: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut rows: Vec<String> = rows.into_iter().map(|v| v.to_string()).collect();
    rows.sort();
    rows
}

fn check(query: &str, expected: Vec<String>) -> TestResult {
    assert!(!expected.is_empty(), "{query}: the reference is empty");
    for p in ["1", "2"] {
        assert_eq!(run_query(query, p)?, expected, "{query} at P={p}");
    }
    Ok(())
}

#[test]
fn the_generator_keeps_the_standard_proportions_and_sizes() {
    let events: Vec<NexmarkEvent> = NexmarkGenerator::new(50_000).collect();
    let count = |f: fn(&NexmarkEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(count(|e| matches!(e, NexmarkEvent::Person(_))), 1_000);
    assert_eq!(count(|e| matches!(e, NexmarkEvent::Auction(_))), 3_000);
    assert_eq!(count(|e| matches!(e, NexmarkEvent::Bid(_))), 46_000);
    let [person, auction, bid] = average_sizes(50_000);
    for (kind, size, standard) in [
        ("person", person, 200.0),
        ("auction", auction, 500.0),
        ("bid", bid, 100.0),
    ] {
        assert!(
            (size - standard).abs() / standard < 0.05,
            "{kind}: {size:.0} bytes on average, the standard is {standard}"
        );
    }
}

#[test]
fn q1_converts_every_bid_to_euros() -> TestResult {
    let expected = bids().into_iter().map(|b| {
        json!({"auction": b.auction, "bidder": b.bidder, "price": b.price * 908 / 1000, "date_time": b.date_time})
    });
    check("q1", canonical(expected))
}

#[test]
fn q2_selects_bids_on_every_123rd_auction() -> TestResult {
    let expected = bids()
        .into_iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| json!([b.auction, b.price]));
    check("q2", canonical(expected))
}

#[test]
fn q5_finds_the_hottest_auction_of_each_sliding_window() -> TestResult {
    // Per window start (every 2 s, 10 s long): bids per auction.
    let mut windows: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in bids() {
        let last = b.date_time - b.date_time.rem_euclid(2 * SECOND);
        let mut start = last;
        while start > b.date_time - 10 * SECOND {
            *windows
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= 2 * SECOND;
        }
    }
    let expected = windows.into_iter().filter_map(|(start, counts)| {
        // Most bids; ties to the smaller auction (BTreeMap order, strict comparison).
        let (auction, bids) =
            counts
                .into_iter()
                .fold(None, |best: Option<(u64, u64)>, (a, n)| match best {
                    Some((_, m)) if m >= n => best,
                    _ => Some((a, n)),
                })?;
        Some(json!({"window_start": start, "auction": auction, "bids": bids}))
    });
    check("q5", canonical(expected))
}

#[test]
fn q7_finds_the_highest_bid_of_each_tumbling_window() -> TestResult {
    let mut best: BTreeMap<i64, Bid> = BTreeMap::new();
    for b in bids() {
        let start = b.date_time - b.date_time.rem_euclid(10 * SECOND);
        let beats = |cur: &Bid| {
            (b.price, -b.date_time, std::cmp::Reverse(b.bidder))
                > (cur.price, -cur.date_time, std::cmp::Reverse(cur.bidder))
        };
        if best.get(&start).is_none_or(beats) {
            best.insert(start, b);
        }
    }
    let expected = best
        .into_iter()
        .map(|(start, bid)| json!({"window_start": start, "bid": bid}));
    check("q7", canonical(expected))
}

#[test]
fn q8_finds_persons_who_opened_an_auction_in_the_window_they_registered() -> TestResult {
    let window = |ts: i64| ts - ts.rem_euclid(10 * SECOND);
    let mut persons: BTreeMap<(i64, u64), String> = BTreeMap::new();
    let mut sellers = std::collections::BTreeSet::new();
    for e in NexmarkGenerator::new(EVENTS) {
        match e {
            NexmarkEvent::Person(p) => {
                persons.insert((window(p.date_time), p.id), p.name);
            }
            NexmarkEvent::Auction(a) => {
                sellers.insert((window(a.date_time), a.seller));
            }
            NexmarkEvent::Bid(_) => {}
        }
    }
    let expected = persons
        .into_iter()
        .filter(|(key, _)| sellers.contains(key))
        .map(|((start, id), name)| json!({"window_start": start, "id": id, "name": name}));
    check("q8", canonical(expected))
}

#[test]
fn q3_joins_category_10_auctions_with_their_local_sellers() -> TestResult {
    let mut local: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let mut auctions = Vec::new();
    for e in NexmarkGenerator::new(EVENTS) {
        match e {
            NexmarkEvent::Person(p) if ["OR", "ID", "CA"].contains(&p.state.as_str()) => {
                local.insert(p.id, (p.name, p.city, p.state));
            }
            NexmarkEvent::Auction(a) if a.category == 10 => auctions.push((a.id, a.seller)),
            _ => {}
        }
    }
    let expected = auctions.into_iter().filter_map(|(auction, seller)| {
        let (name, city, state) = local.get(&seller)?;
        Some(json!({"name": name, "city": city, "state": state, "auction": auction}))
    });
    check("q3", canonical(expected))
}

#[test]
fn q4_averages_the_closing_prices_per_category() -> TestResult {
    // Each auction's highest bid made between its opening and its expiry.
    let mut auctions: BTreeMap<u64, (u64, i64, i64)> = BTreeMap::new();
    let mut highest: BTreeMap<u64, u64> = BTreeMap::new();
    for e in NexmarkGenerator::new(EVENTS) {
        match e {
            NexmarkEvent::Auction(a) => {
                auctions.insert(a.id, (a.category, a.date_time, a.expires));
            }
            NexmarkEvent::Bid(b) => {
                let Some(&(_, open, expires)) = auctions.get(&b.auction) else {
                    continue;
                };
                if (open..=expires).contains(&b.date_time) {
                    let best = highest.entry(b.auction).or_default();
                    *best = (*best).max(b.price);
                }
            }
            NexmarkEvent::Person(_) => {}
        }
    }
    let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (auction, price) in &highest {
        let total = per_category.entry(auctions[auction].0).or_default();
        total.0 += price;
        total.1 += 1;
    }
    for p in ["1", "2"] {
        let rows = run_query("q4", p)?;
        // One update per closed auction; the last (largest count) per category is the answer.
        assert_eq!(
            rows.len(),
            highest.len(),
            "q4 at P={p}: one row per closed auction"
        );
        let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for row in &rows {
            let row: Value = serde_json::from_str(row)?;
            let field = |name: &str| row[name].as_u64().ok_or(format!("{name} in {row}"));
            let entry = last.entry(field("category")?).or_default();
            if field("auctions")? > entry.1 {
                *entry = (field("average_price")?, field("auctions")?);
            }
        }
        let expected: BTreeMap<u64, (u64, u64)> = per_category
            .iter()
            .map(|(&c, &(sum, n))| (c, (sum / n, n)))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(last, expected, "q4 at P={p}");
    }
    Ok(())
}

#[test]
fn weir_gen_nexmark_writes_the_generators_events_as_json_lines() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nexmark.jsonl");
    common::run_ok(
        WEIR,
        [
            "gen",
            "nexmark",
            "--events",
            "5000",
            "--output",
            path.to_str().ok_or("path")?,
        ],
    )?;
    let written: Vec<NexmarkEvent> = std::fs::read_to_string(&path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let generated: Vec<NexmarkEvent> = NexmarkGenerator::new(5000).collect();
    assert_eq!(written, generated);
    Ok(())
}

/// The value of `field=` in a `RESULT` line.
fn result_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
}

#[test]
fn bench_all_runs_every_query_and_reports_latency_percentiles() -> TestResult {
    let run = common::run_ok(
        WEIR,
        [
            "bench", "nexmark", "--all", "--events", "200000", "--state", "memory",
        ],
    )?;
    let results: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .collect();
    let queries: Vec<&str> = results
        .iter()
        .filter_map(|l| result_field(l, "query"))
        .collect();
    assert_eq!(queries, ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"]);
    for line in &results {
        assert_eq!(result_field(line, "events"), Some("200000"), "{line}");
        let p50: f64 = result_field(line, "p50_ms").ok_or("p50_ms")?.parse()?;
        let p99: f64 = result_field(line, "p99_ms").ok_or("p99_ms")?.parse()?;
        assert!(0.0 <= p50 && p50 <= p99, "{line}");
    }
    // The closing table has a row per query.
    let rows = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("| q") && !l.starts_with("| query"))
        .count();
    assert_eq!(rows, 8, "{}", run.stdout);
    Ok(())
}

#[test]
fn a_paced_run_keeps_its_rate_and_serves_the_latency_histogram() -> TestResult {
    use std::ffi::OsStr;
    let started = std::time::Instant::now();
    let (metrics, _, done, _child) = common::run_and_scrape_metrics(
        WEIR,
        &[
            "run", "nexmark", "--query", "q1", "--events", "50000", "--rate", "100000", "--output",
            "null:",
        ]
        .map(OsStr::new),
    )?;
    // 50,000 events at 100,000 a second cannot take less than half a second.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "{done}"
    );
    let count = common::sample_sum(&metrics, "weir_end_to_end_latency_seconds_count", &[]);
    assert!(count > 40_000.0, "results timed: {count}\n{metrics}");
    // A histogram series of the job's one result sink.
    assert!(
        metrics.contains(
            r#"weir_end_to_end_latency_seconds_bucket{job="nexmark",sink="output",le="0.1"}"#
        ),
        "{metrics}"
    );
    Ok(())
}
