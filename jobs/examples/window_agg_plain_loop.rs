//! The baseline for weir's JSON-lines `window-agg` benchmark: a plain single-threaded loop
//! written for just this query, no engine. Tumbling 10 s event-time windows aligned to the
//! epoch, per key, count/sum/min/max/avg of `value`, over lines like
//! `{"ts":1767225599848,"key":"k358","value":394}`. Watermark as weir's `--watermark-delay
//! 2s`: max ts seen - 2000 - 1; a window `[start, end)` fires when it reaches `end - 1`,
//! events of fired windows are late (dropped, counted), the end of input fires the rest.
//! Malformed lines are counted and skipped; rows are folded into a checksum, then dropped.
//!
//! ```sh
//! cargo run --release -p weir-jobs --example window_agg_plain_loop -- FILE
//! ```
//!
//! Prints `BASELINE events=.. windows_fired=.. rows=.. late=.. malformed=.. checksum=..
//! seconds=.. events_per_sec=.. events_per_sec_per_core=.. cpu_seconds=..`, per core meaning
//! per second of this process's CPU time (`NA` below 0.1 s), as `weir bench` reports. The
//! checksum is the wrapping sum over rows of `count*31 + sum + min*7 + max*13` (as u64),
//! independent of row order.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Deserialize;
use weir_jobs::bench::process_cpu_seconds;

const WINDOW_MS: i64 = 10_000;
const DELAY_MS: i64 = 2_000;

#[derive(Deserialize)]
struct Ev<'a> {
    ts: i64,
    #[serde(borrow)]
    key: &'a str,
    value: i64,
}

#[derive(Clone, Copy)]
struct Stats {
    count: u64,
    sum: i64,
    min: i64,
    max: i64,
}

impl Stats {
    fn new(v: i64) -> Self {
        Stats {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    fn add(&mut self, v: i64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Default)]
struct Fired {
    windows: u64,
    rows: u64,
    checksum: u64,
}

/// Fires (and removes) every window with `end - 1 <= watermark`.
fn fire(open: &mut BTreeMap<i64, HashMap<String, Stats>>, watermark: i64, fired: &mut Fired) {
    while let Some(entry) = open.first_entry() {
        if entry.key().saturating_add(WINDOW_MS - 1) > watermark {
            break;
        }
        fired.windows += 1;
        for s in entry.remove().into_values() {
            std::hint::black_box(s.sum as f64 / s.count as f64); // avg, computed and discarded
            let row = (s.count as i64)
                .wrapping_mul(31)
                .wrapping_add(s.sum)
                .wrapping_add(s.min.wrapping_mul(7))
                .wrapping_add(s.max.wrapping_mul(13));
            fired.checksum = fired.checksum.wrapping_add(row as u64);
            fired.rows += 1;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        bail!("usage: window_agg_plain_loop FILE");
    };
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(256);
    let mut open: BTreeMap<i64, HashMap<String, Stats>> = BTreeMap::new();
    let mut fired = Fired::default();
    let (mut events, mut late, mut malformed) = (0u64, 0u64, 0u64);
    let (mut max_ts, mut watermark) = (i64::MIN, i64::MIN);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let mut text = line.as_slice();
        while let [rest @ .., b'\n' | b'\r'] = text {
            text = rest;
        }
        if text.is_empty() {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<Ev>(text) else {
            malformed += 1;
            continue;
        };
        events += 1;
        let start = ev.ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        if start.saturating_add(WINDOW_MS - 1) <= watermark {
            late += 1;
            continue;
        }
        let keys = open.entry(start).or_default();
        match keys.get_mut(ev.key) {
            Some(s) => s.add(ev.value),
            None => {
                keys.insert(ev.key.to_owned(), Stats::new(ev.value));
            }
        }
        if ev.ts > max_ts {
            max_ts = ev.ts;
            watermark = max_ts.saturating_sub(DELAY_MS).saturating_sub(1);
            fire(&mut open, watermark, &mut fired);
        }
    }
    fire(&mut open, i64::MAX, &mut fired);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    // As `weir bench`: below 0.1 s, Linux's 10 ms CPU ticks make the figure meaningless.
    let per_core = if cpu >= 0.1 {
        format!("{:.0}", events as f64 / cpu)
    } else {
        "NA".to_string()
    };
    println!(
        "BASELINE events={events} windows_fired={} rows={} late={late} malformed={malformed} checksum={} seconds={seconds:.3} events_per_sec={:.0} events_per_sec_per_core={per_core} cpu_seconds={cpu:.3}",
        fired.windows,
        fired.rows,
        fired.checksum,
        events as f64 / seconds.max(1e-9),
    );
    Ok(())
}
