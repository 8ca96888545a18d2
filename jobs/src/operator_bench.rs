//! The bundled `operators` job: one stateful operator at a time on a compact in-process
//! generator (no JSON, no strings), so `weir bench operators --query Q` measures the
//! operator, not decoding. Results go to `--output` (`weir bench` discards them).
//!
//! Events are `Tick { ts, key, id }`: one per millisecond of event time per input, up to
//! 100 ms out of order (watermark delay 200 ms, so nothing is late), keys drawn uniformly
//! from `--param keys=N` (default 1000). Queries (`--query`, `--events N` in total):
//! - `window-join`: two inputs of N/2 ticks (the even and odd ticks of one generator),
//!   tumbling 1 s window join by key (`--param generators=2`: two generator threads);
//! - `interval-join`: the same inputs, `a.ts - 500 ms <= b.ts <= a.ts + 500 ms`;
//! - `dedup`: ids `i / 2` (each twice, 1 ms apart), `dedup_by(id, 10 s)`;
//! - `cep`: a 3-step pattern `a -> b -> c within 10 s` per key, steps in blocks of
//!   `keys` sagas open at once, `N / 3` distinct keys (`--events 3000000`: 1 M keys);
//! - `continuous-top-n`: top 10 keys by a running sum, as a changelog.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, Job, Source, SourceStatus, Stream, Watermarks};
use weir_operators::prelude::*;

use crate::generate::{SplitMix64, START_TS};
use crate::options::JobOptions;
use crate::output::OutputSink;

/// One line of `weir jobs`.
pub const ABOUT: &str = "one operator on compact generated events (--query window-join|interval-join|dedup|cep|continuous-top-n), for benchmarks";

/// A generated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Event time, epoch ms.
    pub ts: i64,
    /// The key.
    pub key: u64,
    /// Its number in the input (`cep`: the step, 0..3).
    pub id: u64,
}

/// How ticks get their key and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Random keys, id = position.
    Uniform,
    /// id = position / 2: every id twice.
    Pairs,
    /// Sagas: blocks of `3 * keys` events, key `block * keys + i % keys`, step `(i / keys) % 3`.
    Sagas,
}

/// `n` ticks of shape `shape` as a source.
#[derive(Debug)]
struct Ticks {
    n: u64,
    next: u64,
    keys: u64,
    shape: Shape,
    rng: SplitMix64,
}

impl Ticks {
    fn new(n: u64, keys: u64, shape: Shape, seed: u64) -> Self {
        Ticks {
            n,
            next: 0,
            keys: keys.max(1),
            shape,
            rng: SplitMix64::new(seed),
        }
    }
}

impl Source for Ticks {
    type Item = Tick;

    fn poll_batch(&mut self, out: &mut Vec<Tick>, max: usize) -> Result<SourceStatus, BoxError> {
        for _ in 0..max {
            if self.next >= self.n {
                return Ok(SourceStatus::Exhausted);
            }
            let i = self.next;
            let r = self.rng.next_u64();
            let (key, id, disorder) = match self.shape {
                Shape::Uniform => (r % self.keys, i, (r >> 40) % 101),
                Shape::Pairs => (0, i / 2, 0),
                Shape::Sagas => {
                    let block = i / (3 * self.keys);
                    (block * self.keys + i % self.keys, (i / self.keys) % 3, 0)
                }
            };
            out.push(Tick {
                ts: START_TS + i as i64 - disorder as i64,
                key,
                id,
            });
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }

    fn describe(&self) -> String {
        format!("{} ticks, {} keys, {:?}", self.n, self.keys, self.shape)
    }
}

fn ticks(job: &Job, name: &str, n: u64, keys: u64, shape: Shape, seed: u64) -> Stream<Tick> {
    job.source(name, Ticks::new(n, keys, shape, seed))
        .timestamps(
            |t: &Tick| t.ts,
            Watermarks::bounded(Duration::from_millis(200)),
        )
}

/// The two inputs of a join: the even and odd ticks of one generator, so both advance
/// together; with `--param generators=2`, two generator threads instead (they drift apart
/// by up to the channel capacity, and the join buffers that much event time for the
/// slower one).
fn inputs(job: &Job, n: u64, keys: u64, opts: &JobOptions) -> (Stream<Tick>, Stream<Tick>) {
    if opts.param("generators") == Some("2") {
        let left = ticks(job, "left", n / 2, keys, Shape::Uniform, 1);
        return (
            left,
            ticks(job, "right", n - n / 2, keys, Shape::Uniform, 2),
        );
    }
    let all = ticks(job, "ticks", n, keys, Shape::Uniform, 1);
    let left = all.clone().filter(|t: &Tick| t.id.is_multiple_of(2));
    (left, all.filter(|t: &Tick| !t.id.is_multiple_of(2)))
}

/// The `--param` keys of `operators`, for `weir run operators --help`.
pub const PARAMS: &[(&str, &str)] = &[
    ("keys", "N: distinct keys of the ticks (default 1000)"),
    (
        "generators",
        "2: window-join reads two generator threads instead of one",
    ),
];

/// Builds the query `--query` on `--events` ticks (default 1 M).
pub fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = Job::new("operators");
    let n = opts.events.unwrap_or(1_000_000);
    let keys = match opts.param("keys") {
        Some(k) => k
            .parse()
            .map_err(|e| anyhow::anyhow!("--param keys={k}: {e}"))?,
        None => 1000,
    };
    let spec = opts.output();
    let by_key = |t: &Tick| t.key;
    match opts.query.as_deref().unwrap_or("window-join") {
        "window-join" => {
            let (left, right) = inputs(&job, n, keys, opts);
            left.window_join(right, by_key, by_key, Tumbling::of(Duration::from_secs(1)))
                .map(|p| (p.window.start, p.left.id, p.right.id))
                .sink("output", OutputSink::from_spec(spec));
        }
        "interval-join" => {
            let (left, right) = inputs(&job, n, keys, opts);
            left.interval_join(right, by_key, by_key, -500, 500)
                .map(|(a, b)| (a.id, b.id))
                .sink("output", OutputSink::from_spec(spec));
        }
        "dedup" => {
            ticks(&job, "ticks", n, keys, Shape::Pairs, 1)
                .dedup_by(|t: &Tick| t.id, Duration::from_secs(10))
                .sink("output", OutputSink::from_spec(spec));
        }
        "cep" => {
            let step = |s: u64| move |t: &Tick| t.id == s;
            let pattern = Pattern::begin("a")
                .where_(step(0))
                .followed_by("b")
                .where_(step(1))
                .followed_by("c")
                .where_(step(2))
                .within(Duration::from_secs(10));
            ticks(&job, "ticks", n, keys, Shape::Sagas, 1)
                .key_by(by_key)
                .pattern(pattern)
                .map(|m| m.events.len())
                .sink("output", OutputSink::from_spec(spec));
        }
        "continuous-top-n" => {
            ticks(&job, "ticks", n, keys, Shape::Uniform, 1)
                .key_by(by_key)
                .continuous_top_n(10, Sum::of(|t: &Tick| (t.id % 100) as i64), |s: &i64| *s)
                .sink("output", OutputSink::from_spec(spec));
        }
        other => anyhow::bail!(
            "--query {other}: use window-join, interval-join, dedup, cep or continuous-top-n"
        ),
    }
    Ok(job)
}
