//! Deterministic synthetic streams, for the embedded default input, tests and benchmarks.
//!
//! Everything here is a pure function of its parameters (SplitMix64 with a fixed seed), so
//! two runs produce byte-identical streams.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use weir_connectors::kafka::KafkaLineWriter;
use weir_connectors::KafkaSpec;
use weir_engine::{BoxError, Source, SourceStatus};

use crate::options::UsageError;

use crate::window_agg::Event;

/// Epoch milliseconds of 2026-01-01T00:00:00Z, where generated streams start.
pub const START_TS: i64 = 1_767_225_600_000;

/// The SplitMix64 generator: tiny, fast and good enough for synthetic data.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

/// SplitMix64's increment per number drawn.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// `SplitMix64::new(seed)` after `draws` numbers: SplitMix64's state is a counter, so
    /// any point of the sequence is reached at once (how a split generator skips ahead).
    pub fn at(seed: u64, draws: u64) -> Self {
        SplitMix64(seed.wrapping_add(draws.wrapping_mul(GOLDEN_GAMMA)))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Parameters of the generic `ts/key/value` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventStreamSpec {
    /// Number of events.
    pub events: u64,
    /// Number of distinct keys (`k0`, `k1`, ...).
    pub keys: u64,
    /// Events are up to this many milliseconds out of order.
    pub disorder_ms: u64,
}

/// How far out of order `weir gen events` makes events unless told otherwise (and the
/// in-process generator always): 1 s. window-agg's default `--watermark-delay` is the same,
/// so that the generator's output run with the defaults has no late events.
pub const DEFAULT_DISORDER_MS: u64 = 1000;

impl Default for EventStreamSpec {
    fn default() -> Self {
        EventStreamSpec {
            events: 1_000_000,
            keys: 1000,
            disorder_ms: DEFAULT_DISORDER_MS,
        }
    }
}

/// Keys are made once, up front, up to this many; past it each event's key is made as it
/// goes, so a stream of tens of millions of keys does not hold them all in memory.
const PRECOMPUTED_KEYS: u64 = 1 << 20;

/// The `ts/key/value` stream, one event per millisecond of event time, as a source.
#[derive(Debug)]
pub struct GeneratedEvents {
    spec: EventStreamSpec,
    next: u64,
    /// `k0`, `k1`, ... up to [`PRECOMPUTED_KEYS`].
    keys: Vec<Arc<str>>,
    rng: SplitMix64,
}

impl GeneratedEvents {
    /// A source producing the stream `spec` describes.
    pub fn new(spec: EventStreamSpec) -> Self {
        GeneratedEvents {
            spec,
            next: 0,
            keys: (0..spec.keys.clamp(1, PRECOMPUTED_KEYS))
                .map(|k| Arc::from(format!("k{k}")))
                .collect(),
            rng: SplitMix64::new(42),
        }
    }

    /// The next event, or `None` at the end.
    #[inline]
    pub fn next_event(&mut self) -> Option<Event> {
        self.next_event_and_key_number().map(|(event, _)| event)
    }

    /// The next event and the number `n` of its key (`kn`), or `None` at the end.
    #[inline]
    pub fn next_event_and_key_number(&mut self) -> Option<(Event, u64)> {
        if self.next >= self.spec.events {
            return None;
        }
        let r = self.rng.next_u64();
        let ts = START_TS + self.next as i64 - (r % (self.spec.disorder_ms + 1)) as i64;
        let k = (r >> 20) % self.spec.keys.max(1);
        let key = match self.keys.get(k as usize) {
            Some(key) => key.clone(),
            None => Arc::from(format!("k{k}")),
        };
        let value = ((r >> 40) % 1000) as i64;
        self.next += 1;
        Some((Event::new(ts, key, value), k))
    }
}

impl Source for GeneratedEvents {
    type Item = Event;

    fn poll_batch(&mut self, out: &mut Vec<Event>, max: usize) -> Result<SourceStatus, BoxError> {
        for _ in 0..max {
            match self.next_event() {
                Some(e) => out.push(e),
                None => return Ok(SourceStatus::Exhausted),
            }
        }
        Ok(SourceStatus::More)
    }

    fn describe(&self) -> String {
        format!(
            "generator: {} events, {} keys, up to {} ms out of order",
            self.spec.events, self.spec.keys, self.spec.disorder_ms
        )
    }
}

/// A writer that lets at most `rate` lines a second through (all at once if `None`), for
/// `weir gen --rate`. Wrap the buffered writer, so that each line is counted as it is written.
#[derive(Debug)]
pub struct RateLimited<W> {
    inner: W,
    rate: Option<u64>,
    lines: u64,
    started: std::time::Instant,
}

impl<W: Write> RateLimited<W> {
    /// Limits `inner` to `rate` lines a second.
    pub fn new(inner: W, rate: Option<u64>) -> Self {
        RateLimited {
            inner,
            rate: rate.filter(|r| *r > 0),
            lines: 0,
            started: std::time::Instant::now(),
        }
    }
}

impl<W: Write> Write for RateLimited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(rate) = self.rate {
            let before = self.lines;
            self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            // Checked every 100 lines: sleeping per line would cost more than it paces.
            if self.lines / 100 != before / 100 {
                let due = std::time::Duration::from_secs_f64(self.lines as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                    // What is written so far goes out before the pause.
                    self.inner.flush()?;
                    std::thread::sleep(ahead);
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where `weir gen` writes: a file, a TCP server, or a Kafka topic (its records keyed by
/// `key_field`, if given).
pub(crate) fn open_output(output: &str, key_field: Option<&str>) -> anyhow::Result<Box<dyn Write>> {
    let kafka = KafkaSpec::parse(output);
    if kafka.is_none() && key_field.is_some() {
        bail!("--key-field keys Kafka records: --output {output} is not a kafka:// URI");
    }
    if let Some(addr) = output.strip_prefix("tcp://") {
        let stream = TcpStream::connect(addr).with_context(|| {
            format!("cannot connect to {output}: start the job that listens there first")
        })?;
        return Ok(Box::new(BufWriter::with_capacity(1 << 20, stream)));
    }
    if let Some(spec) = kafka {
        let spec = spec.map_err(|e| anyhow::Error::new(UsageError(format!("--output {e}"))))?;
        let metrics = weir_engine::JobMetrics::new("gen").kafka();
        let mut writer = KafkaLineWriter::connect(&spec, &metrics)?;
        if let Some(field) = key_field {
            writer = writer.keyed_by(field);
        }
        return Ok(Box::new(BufWriter::with_capacity(1 << 20, writer)));
    }
    let path = Path::new(output.strip_prefix("file://").unwrap_or(output));
    Ok(Box::new(create_file(path).with_context(|| {
        format!("cannot create {}", path.display())
    })?))
}

/// Creates (truncates) `path` for writing a stream, with its parent directories.
pub fn create_file(path: &Path) -> std::io::Result<BufWriter<File>> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    Ok(BufWriter::with_capacity(1 << 20, File::create(path)?))
}

/// Writes the `ts/key/value` stream as JSON lines to `w` (buffer it: one write per line).
pub fn write_events(mut w: impl Write, spec: EventStreamSpec) -> std::io::Result<()> {
    let mut events = GeneratedEvents::new(spec);
    while let Some(e) = events.next_event() {
        writeln!(
            w,
            r#"{{"ts":{},"key":"{}","value":{}}}"#,
            e.ts, e.key, e.value
        )?;
    }
    w.flush()
}

const REGIONS: [&str; 5] = ["eu-west", "eu-north", "us-east", "us-west", "ap-south"];

/// Writes `orders` order events as JSON lines: 500 customers, 5 regions, about 7 orders a
/// second of event time, up to 3 s out of order. Every 20,000th order is malformed on purpose,
/// to show the dead-letter output, and order 500 of every 1000 is delivered a second time
/// three orders later, to show deduplication. Every 10th order is of schema version 1 (no
/// `version`, no `currency`) and order 10,000 of every 20,000 of an unknown version 3, to
/// show upcasting and its dead letters.
pub fn write_orders(mut w: impl Write, orders: u64) -> std::io::Result<()> {
    let mut rng = SplitMix64::new(7);
    let mut retry: Option<(u64, String)> = None;
    for i in 0..orders {
        // An at-least-once producer: order 500 of every 1000 is delivered again, three
        // orders later (the consumer deduplicates by order id).
        if let Some((_, line)) = retry.take_if(|(at, _)| *at == i) {
            w.write_all(line.as_bytes())?;
        }
        if i > 0 && i % 20_000 == 0 {
            writeln!(w, r#"{{"order_id":"o{i}","customer_id":"c1","total":"#)?;
            continue;
        }
        let ts = START_TS + (i as i64) * 150 - rng.below(3000) as i64;
        let customer = rng.below(500);
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        // Mostly small baskets, a few large ones (cents, to keep totals exact to the cent).
        let cents = if rng.below(50) == 0 {
            50_000 + rng.below(200_000)
        } else {
            500 + rng.below(20_000)
        };
        // Schema versions: most orders are version 2 (with a currency), every 10th is an old
        // version 1 order (no version, no currency), and order 10,000 of every 20,000 claims
        // a version 3 no consumer knows yet.
        let version = match i {
            _ if i % 20_000 == 10_000 => r#""version":3,"currency":"USD","#,
            _ if i % 10 == 3 => "",
            _ => r#""version":2,"currency":"USD","#,
        };
        let line = format!(
            "{{{version}\"order_id\":\"o{i}\",\"customer_id\":\"c{customer}\",\"region\":\"{region}\",\"total\":{}.{:02},\"ts\":{ts}}}\n",
            cents / 100,
            cents % 100
        );
        w.write_all(line.as_bytes())?;
        if i % 1000 == 500 {
            retry = Some((i + 3, line));
        }
    }
    w.flush()
}

/// The steps of a saga, in order.
pub const SAGA_STEPS: [&str; 3] = ["OrderPlaced", "InventoryReserved", "PaymentProcessed"];

/// Writes the events of `orders` order sagas as JSON lines
/// `{"order_id","type","ts"}`: a new order every 100 ms of event time, each reserved 0.2-3 s
/// and paid 0.2-5 s after the step before; 5 % never reserved, 5 % of the rest never paid,
/// 3 % paid only after 35 s. Lines are in event-time order up to 1 s.
pub fn write_sagas(mut w: impl Write, orders: u64) -> std::io::Result<()> {
    let mut rng = SplitMix64::new(11);
    let mut events: Vec<(i64, i64, u64, usize)> = Vec::with_capacity(orders as usize * 3);
    for i in 0..orders {
        let placed = START_TS + i as i64 * 100;
        let mut steps = vec![placed];
        if rng.below(100) >= 5 {
            let reserved = placed + 200 + rng.below(2_800) as i64;
            steps.push(reserved);
            match rng.below(100) {
                0..=4 => {}
                5..=7 => steps.push(placed + 35_000),
                _ => steps.push(reserved + 200 + rng.below(4_800) as i64),
            }
        }
        for (step, ts) in steps.into_iter().enumerate() {
            // Written in the order of a jittered clock: up to 1 s out of order.
            let written = ts + rng.below(1_000) as i64;
            events.push((written, ts, i, step));
        }
    }
    events.sort_unstable();
    for (_, ts, order, step) in events {
        writeln!(
            w,
            r#"{{"order_id":"o{order}","type":"{}","ts":{ts}}}"#,
            SAGA_STEPS[step]
        )?;
    }
    w.flush()
}

/// Seed of `weir gen accounts`.
pub const ACCOUNTS_SEED: u64 = 29;

/// Writes `events` bank-account events for `account-balances` as JSON lines
/// `{"account","type","amount","ts"}` over `accounts` accounts (`a0`, `a1`, ...): one every
/// 10 ms of event time, in event-time order, each account as likely as any other; 60 % are
/// deposits of 10-2,000, 40 % withdrawals of 10-3,000, so balances wander around zero (some
/// far above 10,000, some overdrawn). Deterministic (seed [`ACCOUNTS_SEED`]).
pub fn write_accounts(mut w: impl Write, events: u64, accounts: u64) -> std::io::Result<()> {
    let mut rng = SplitMix64::new(ACCOUNTS_SEED);
    for i in 0..events {
        let account = rng.below(accounts);
        let (kind, amount) = match rng.below(100) {
            0..=59 => ("deposit", 10 + rng.below(1_991)),
            _ => ("withdraw", 10 + rng.below(2_991)),
        };
        let ts = START_TS + i as i64 * 10;
        writeln!(
            w,
            r#"{{"account":"a{account}","type":"{kind}","amount":{amount},"ts":{ts}}}"#
        )?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_events_are_deterministic_and_cover_both_kinds() {
        let mut first = Vec::new();
        write_accounts(&mut first, 1_000, 10).unwrap();
        let mut second = Vec::new();
        write_accounts(&mut second, 1_000, 10).unwrap();
        assert_eq!(first, second);
        let text = String::from_utf8(first).unwrap();
        assert_eq!(text.lines().count(), 1_000);
        assert!(text.contains(r#""type":"deposit""#) && text.contains(r#""type":"withdraw""#));
        assert!(text.lines().all(|l| l.contains(r#""account":"a"#)));
    }

    #[test]
    fn rate_limited_paces_lines_and_passes_them_all() {
        let mut out = RateLimited::new(Vec::new(), Some(10_000));
        let started = std::time::Instant::now();
        for i in 0..2_000 {
            writeln!(out, "line {i}").unwrap();
        }
        out.flush().unwrap();
        // 2,000 lines at 10,000 a second cannot take less than about 0.2 s.
        assert!(started.elapsed() >= std::time::Duration::from_millis(180));
        assert_eq!(out.inner.iter().filter(|&&b| b == b'\n').count(), 2_000);
    }
}
