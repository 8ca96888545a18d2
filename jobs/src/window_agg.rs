//! The bundled `window-agg` job: windowed count, sum, min, max and average of an integer
//! field per key, over JSON-lines or CSV events with configurable field names.
//!
//! ```text
//! input (file or generator) -> timestamps(ts, bounded delay) -> key_by(key)
//!   -> window(tumble | hop | session) -> Stats(value) -> output
//! ```
//!
//! Each fired window becomes one line:
//! `{"key":"k1","window_start":0,"window_end":10000,"count":3,"sum":42,"min":1,"max":30,"avg":14.0}`
//! with `"update":true` added when a late event (within `--allowed-lateness`) revised it.
//!
//! Decoding is the fast path of this job: flat JSON objects are matched against the layout
//! of the line before and read without serde ([`flat_json`]); anything else is read field by
//! field with a `serde` visitor that only keeps the three configured fields (no generic
//! JSON values).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use weir_connectors::format::split_csv;
use weir_connectors::kafka::{EventTime, SetEventTime};
use weir_connectors::{CsvHeader, DeadLetter, Decoder, FileSink, Origin, OriginNames, Raw};
use weir_engine::intern::{Interner, SharedStr};
use weir_engine::metrics::Counter;
use weir_engine::{Job, Stream, Watermarks};
use weir_operators::prelude::*;
use weir_operators::{Rejected, StatsOutput};

use self::flat_json::{decode_flat_json, LineShape};
use crate::dead_letters::{dead_letter_sink, write_dead_letters};
use crate::generate::{EventStreamSpec, GeneratedEvents};
use crate::input::InputSpec;
use crate::options::{usage, AggPhaseStrategy, JobOptions, OnAggregateError, RankBy};
use crate::output::OutputSink;

mod flat_json;

/// One line of `weir jobs`.
pub const ABOUT: &str = "count/sum/min/max/avg of --value-field per --key-field and --window";

/// A generic event: time, key, integer value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// The key (interned: events with the same key share it).
    pub key: Arc<str>,
    /// The value aggregated.
    pub value: i64,
    /// Where it was read (set by the source; not written out): for errors about it.
    #[serde(skip)]
    pub origin: Origin,
}

impl Event {
    /// An event read from nowhere in particular (generated, or built in code).
    pub fn new(ts: i64, key: Arc<str>, value: i64) -> Self {
        Event {
            ts,
            key,
            value,
            origin: Origin::default(),
        }
    }
}

/// One result line of `window-agg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggRow {
    /// The key.
    pub key: String,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Number of events.
    pub count: u64,
    /// Sum of values.
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
    /// Mean value.
    pub avg: f64,
    /// True if this row revises an earlier row for the same key and window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update: bool,
}

/// One result line of `window-agg --top N`: a place in a window's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// 1 for the largest `--by` metric; ties go to the smaller key.
    pub rank: u32,
    /// The key.
    pub key: String,
    /// Number of events.
    pub count: u64,
    /// Sum of values.
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
    /// Mean value.
    pub avg: f64,
}

/// A `--by` metric: integers compare exactly (no rounding through `f64`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Metric {
    Int(i128),
    Float(f64),
}

fn metric_of(by: RankBy) -> fn(&StatsOutput<i64>) -> Metric {
    match by {
        RankBy::Count => |s: &StatsOutput<i64>| Metric::Int(i128::from(s.count)),
        RankBy::Sum => |s: &StatsOutput<i64>| Metric::Int(i128::from(s.sum)),
        RankBy::Min => |s: &StatsOutput<i64>| Metric::Int(i128::from(s.min)),
        RankBy::Max => |s: &StatsOutput<i64>| Metric::Int(i128::from(s.max)),
        RankBy::Avg => |s: &StatsOutput<i64>| Metric::Float(s.avg),
    }
}

/// `--watermark-delay` unless given: the out-of-orderness `weir gen events` makes by
/// default ([`crate::generate::DEFAULT_DISORDER_MS`]), so that its output run with the
/// defaults has no late events. (Flink has no default: a `WatermarkStrategy` names its
/// bound; a job's default is the job's choice, as order-analytics' 5 s is.)
pub const DEFAULT_WATERMARK_DELAY: Duration =
    Duration::from_millis(crate::generate::DEFAULT_DISORDER_MS);

/// An event's time, for `--max-future`.
fn event_time(e: &Event) -> i64 {
    e.ts
}

/// Builds `window-agg` from options.
pub fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = Job::new("window-agg");
    let dead_letters = DeadLetterOutput {
        path: opts.dead_letter_path("window-agg"),
        refused: job.metrics().dead_letters("window"),
    };
    let (events, origins) = match (opts.events, &opts.input) {
        (Some(n), None) => {
            let spec = EventStreamSpec {
                events: n,
                ..EventStreamSpec::default()
            };
            (job.source("generator", GeneratedEvents::new(spec)), None)
        }
        _ => {
            let input = InputSpec::from_options(opts, "window-agg")?;
            let decoder = EventDecoder::new(&opts.ts_field, &opts.key_field, &opts.value_field);
            // Event time from Kafka's record time: the events need no time field.
            let decoder = match &input {
                InputSpec::Kafka(spec) if spec.event_time == EventTime::Kafka => {
                    decoder.without_time_field()
                }
                _ => decoder,
            };
            let [ts, key, value] = [&opts.ts_field, &opts.key_field, &opts.value_field];
            let columns = crate::arrow_events::EventColumns::new(ts, key, value);
            let record_time: SetEventTime<Event> = |e, ms| e.ts = ms;
            let source = input
                .open(decoder, columns, opts, &job, Some(record_time))?
                .max_future(event_time, opts.max_future);
            let origins = source.origin_names();
            (job.source("input", source), Some(origins))
        }
    };
    aggregate_windows(events.uid("input"), opts, origins, dead_letters)?;
    Ok(job)
}

/// Where window-agg's dead letters go.
#[derive(Debug)]
pub struct DeadLetterOutput {
    /// The file (see [`crate::dead_letters`]).
    pub path: PathBuf,
    /// Counts the events the aggregate refused (`--on-aggregate-error dead-letter`).
    pub refused: Counter,
}

/// The dataflow after the source: shared by file input, the generator and benchmarks.
/// `origins` words the input positions the source set in the events, for errors and the
/// dead letters of events the aggregate cannot take (`--on-aggregate-error dead-letter`).
/// Those and the source's own dead letters go to `dead_letters`; a generator (no
/// `origins`) rejects nothing of its own.
pub fn aggregate_windows(
    events: Stream<Event>,
    opts: &JobOptions,
    origins: Option<OriginNames>,
    dead_letters: DeadLetterOutput,
) -> anyhow::Result<()> {
    // The source's stream, for its dead letters.
    let source = events.clone();
    let read_input = origins.is_some();
    // Refused events leave the window by its side output and share the source's
    // exactly-once dead-letter sink, so they take part in checkpoints like results: a
    // restore withdraws the letters after its checkpoint, and the replayed input, meeting
    // the restored sums, refuses the same events again.
    let reject = opts.on_aggregate_error == OnAggregateError::DeadLetter;
    if opts.top.is_some() && !opts.allowed_lateness.is_zero() {
        usage!("--top ranks each window once, when it is final: it cannot take --allowed-lateness");
    }
    let windowed = events
        .timestamps(
            |e| e.ts,
            Watermarks::bounded(opts.watermark_delay_or(DEFAULT_WATERMARK_DELAY)),
        )
        .uid("event-time")
        // Interned keys compare by pointer in the window's state (SharedStr).
        .key_by(|e: &Event| SharedStr(e.key.clone()))
        .window(opts.window)
        .allowed_lateness(opts.allowed_lateness);
    let windowed = match origins.clone() {
        Some(names) => windowed.origin(move |e: &Event| names.describe(e.origin)),
        None => windowed,
    };
    // Without refused events the source's dead letters get their sink after the rest of
    // the job (see `crate::dead_letters`).
    let after = (read_input && !reject).then(|| dead_letters.path.clone());
    let windowed = match reject {
        true => {
            let DeadLetterOutput { path, refused } = dead_letters;
            let source = source.clone();
            windowed.rejects_to(move |rejected: Stream<Rejected<Event>>| {
                let letters = rejected.map(move |r| {
                    refused.inc();
                    reject_letter(&r, origins.as_ref())
                });
                let letters = match read_input {
                    true => letters.union(source.dead_letters()),
                    false => letters,
                };
                dead_letter_sink(letters, path);
            })
        }
        false => windowed,
    };
    let windowed = match &opts.queryable {
        Some(table) => windowed.queryable(table),
        None => windowed,
    };
    // At P > 1 each worker sums its own events per key and window before the exchange
    // (Flink's local-global aggregation): one partial per key, window and reader crosses to
    // the key's worker instead of every event, so a file read by P readers scales. Results
    // are the same; where two phases cannot give them (sessions, late output, refused
    // events), or `--agg-phase-strategy one-phase` says so, the window aggregates in one
    // phase.
    let stats = Stats::of(|e: &Event| e.value);
    let windowed = match &opts.late_output {
        Some(path) => windowed.late_data(FileSink::<Event>::new(path)),
        None => windowed,
    };
    let results = match opts.parallelism > 1 && opts.agg_phase_strategy == AggPhaseStrategy::Auto {
        true => windowed.aggregate_two_phase_or_one(stats),
        false => windowed.aggregate(stats),
    }
    .uid("window");
    if let Some(n) = opts.top {
        results
            .top_n(n, metric_of(opts.by))
            .uid("top-n")
            .map(|r| TopRow {
                window_start: r.window.start,
                window_end: r.window.end,
                rank: r.rank,
                key: r.key.to_string(),
                count: r.value.count,
                sum: r.value.sum,
                min: r.value.min,
                max: r.value.max,
                avg: r.value.avg,
            })
            .sink(
                "output",
                OutputSink::from_spec(opts.output()).keyed_by(|r: &TopRow| &r.key),
            )
            .uid("output");
    } else {
        results
            .map(|r| WindowAggRow {
                key: r.key.to_string(),
                window_start: r.window.start,
                window_end: r.window.end,
                count: r.value.count,
                sum: r.value.sum,
                min: r.value.min,
                max: r.value.max,
                avg: r.value.avg,
                update: r.is_update,
            })
            .sink(
                "output",
                OutputSink::from_spec(opts.output()).keyed_by(|r: &WindowAggRow| &r.key),
            )
            .uid("output");
    }
    if let Some(path) = after {
        write_dead_letters(&source, path);
    }
    Ok(())
}

/// The dead letter of an event the aggregate could not take: its input position as the
/// source's dead letters give it, the error, and the event as decoded (`{"ts","key",
/// "value"}`: the line itself is not kept past decoding).
fn reject_letter(rejected: &Rejected<Event>, origins: Option<&OriginNames>) -> DeadLetter {
    let place = origins.and_then(|names| names.dead_letter_place(rejected.event.origin));
    let (source, line) = place.unwrap_or_else(|| ("unknown input position".to_string(), 0));
    let raw = serde_json::to_string(&rejected.event).unwrap_or_default();
    DeadLetter {
        source,
        line,
        error: rejected.error.to_string(),
        raw: Raw::Text(raw),
    }
}

/// Decodes [`Event`]s from JSON lines or CSV by configurable field names.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    names: [String; 3],
    /// False when the source sets event time itself (Kafka record timestamps).
    read_ts: bool,
    columns: Option<[usize; 3]>,
    width: usize,
    keys: Interner,
    /// The layout of the last JSON line the fast path read.
    shape: LineShape,
}

impl EventDecoder {
    /// Reads time, key and value from the fields with these names.
    pub fn new(ts: &str, key: &str, value: &str) -> Self {
        EventDecoder {
            names: [ts.to_string(), key.to_string(), value.to_string()],
            read_ts: true,
            columns: None,
            width: 0,
            keys: Interner::default(),
            shape: LineShape::default(),
        }
    }

    /// For a source that sets each event's time itself (`timestamp=kafka`): the time field
    /// is neither read nor required, and `ts` is 0 until the source sets it. A builder step:
    /// call it before the first line is decoded (a learned line shape keeps its time slot).
    pub fn without_time_field(mut self) -> Self {
        self.read_ts = false;
        self
    }

    /// The general JSON path (serde), which also words every error.
    fn decode_json(&mut self, line: &str) -> Result<Event, String> {
        let mut de = serde_json::Deserializer::from_str(line);
        let event = EventSeed {
            names: &self.names,
            read_ts: self.read_ts,
            keys: &mut self.keys,
        }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(event)
    }

    fn decode_csv(&mut self, line: &str, columns: [usize; 3]) -> Result<Event, String> {
        let (mut ts, mut key, mut value) = (None, None, None);
        let mut column = 0;
        let mut bad = None;
        let (names, keys) = (&self.names, &mut self.keys);
        split_csv(line, |field| {
            if column == columns[0] {
                ts = Some(parse_int(field, &names[0]).map_err(|e| bad = Some(e)));
            } else if column == columns[1] {
                key = Some(keys.intern(field));
            } else if column == columns[2] {
                value = Some(parse_int(field, &names[2]).map_err(|e| bad = Some(e)));
            }
            column += 1;
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        let missing = |name: &str| {
            format!(
                "missing field `{name}` (the row has {column} columns, the header {})",
                self.width
            )
        };
        Ok(Event {
            ts: ts
                .and_then(Result::ok)
                .or((!self.read_ts).then_some(0))
                .ok_or_else(|| missing(&self.names[0]))?,
            key: key.ok_or_else(|| missing(&self.names[1]))?,
            value: value
                .and_then(Result::ok)
                .ok_or_else(|| missing(&self.names[2]))?,
            origin: Origin::default(),
        })
    }
}

fn parse_int(field: &str, name: &str) -> Result<i64, String> {
    field
        .trim()
        .parse()
        .map_err(|_| format!("field `{name}`: `{field}` is not an integer"))
}

impl Decoder for EventDecoder {
    type Item = Event;

    fn header(&mut self, line: &str) -> Result<(), String> {
        let header = CsvHeader::parse(line)?;
        self.columns = Some([
            match self.read_ts {
                true => header.position(&self.names[0])?,
                false => usize::MAX,
            },
            header.position(&self.names[1])?,
            header.position(&self.names[2])?,
        ]);
        self.width = header.len();
        Ok(())
    }

    #[inline]
    fn set_origin(&self, item: &mut Event, origin: Origin) {
        item.origin = origin;
    }

    #[inline]
    fn decode(&mut self, line: &str) -> Result<Event, String> {
        match self.columns {
            Some(columns) => self.decode_csv(line, columns),
            None => {
                if let Some(event) = self.shape.decode(line, &mut self.keys) {
                    return Ok(event);
                }
                let (names, keys) = (&self.names, &mut self.keys);
                if let Some(event) =
                    decode_flat_json(line, names, self.read_ts, keys, &mut self.shape)
                {
                    return Ok(event);
                }
                self.decode_json(line)
            }
        }
    }
}

/// Reads one JSON object, keeping only the three named fields.
struct EventSeed<'a> {
    names: &'a [String; 3],
    read_ts: bool,
    keys: &'a mut Interner,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Event, M::Error> {
        let (mut ts, mut key, mut value) = (None, None, None);
        while let Some(field) = map.next_key_seed(FieldSeed { names: self.names })? {
            match field {
                0 if self.read_ts => ts = Some(map.next_value_seed(IntSeed)?),
                1 => {
                    key = Some(map.next_value_seed(KeySeed {
                        keys: &mut *self.keys,
                    })?)
                }
                2 => value = Some(map.next_value_seed(IntSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = |i: usize| de::Error::custom(format!("missing field `{}`", self.names[i]));
        Ok(Event {
            ts: ts
                .or((!self.read_ts).then_some(0))
                .ok_or_else(|| missing(0))?,
            key: key.ok_or_else(|| missing(1))?,
            value: value.ok_or_else(|| missing(2))?,
            origin: Origin::default(),
        })
    }
}

/// Maps a field name to its index in `names` (3 for any other field).
struct FieldSeed<'a> {
    names: &'a [String; 3],
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        Ok(self.names.iter().position(|n| n == v).unwrap_or(3))
    }
}

/// An integer; a float is accepted only if it has no fraction.
struct IntSeed;

impl<'de> DeserializeSeed<'de> for IntSeed {
    type Value = i64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_i64(self)
    }
}

impl Visitor<'_> for IntSeed {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} does not fit in an i64")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
}

/// A key: a string, or a number used as a string; interned.
struct KeySeed<'a> {
    keys: &'a mut Interner,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Arc<str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Arc<str>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Arc<str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or number key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Arc<str>, E> {
        Ok(self.keys.intern(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Arc<str>, E> {
        Ok(self.keys.intern(&v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Arc<str>, E> {
        Ok(self.keys.intern(&v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_by_name() -> Result<(), String> {
        let mut d = EventDecoder::new("time", "user", "ms");
        let e = d.decode(r#"{"user":"u1","extra":{"a":[1,2]},"ms":5,"time":-20}"#)?;
        assert_eq!(
            e,
            Event {
                ts: -20,
                key: "u1".into(),
                value: 5,
                origin: Origin::default(),
            }
        );
        assert_eq!(&*d.decode(r#"{"user":17,"ms":5.0,"time":1}"#)?.key, "17");
        let escaped = d.decode(r#"{"user":"esc\u0061ped","ms":1,"time":1}"#)?;
        assert_eq!(&*escaped.key, "escaped");
        let again = d.decode(r#"{"user":"u1","ms":5,"time":-20}"#)?;
        assert!(Arc::ptr_eq(&e.key, &again.key), "keys are interned");
        assert!(d
            .decode(r#"{"user":"u1","ms":5}"#)
            .unwrap_err()
            .contains("missing field `time`"));
        assert!(d
            .decode(r#"{"user":"u1","ms":5.5,"time":1}"#)
            .unwrap_err()
            .contains("not an integer"));
        assert!(d
            .decode(r#"{"user":"u1","ms":5,"time":1} trailing"#)
            .is_err());
        assert!(d.decode("[1,2,3]").is_err());
        let mut d = EventDecoder::new("time", "user", "ms").without_time_field();
        assert_eq!(d.decode(r#"{"user":"u1","ms":5}"#)?.ts, 0);
        assert_eq!(d.decode(r#"{"user":"u1","ms":5,"time":"not read"}"#)?.ts, 0);
        Ok(())
    }

    #[test]
    fn csv_fields_by_header() -> Result<(), String> {
        let mut d = EventDecoder::new("ts", "key", "value");
        d.header("value,key,ts,other")?;
        assert_eq!(
            d.decode("7,\"a,b\",100,x")?,
            Event {
                ts: 100,
                key: "a,b".into(),
                value: 7,
                origin: Origin::default(),
            }
        );
        assert!(d.decode("7,a").unwrap_err().contains("missing field `ts`"));
        assert!(d
            .decode("x,a,1,z")
            .unwrap_err()
            .contains("`x` is not an integer"));
        let mut d = EventDecoder::new("ts", "key", "value");
        assert!(d
            .header("ts,k,value")
            .unwrap_err()
            .contains("no column `key`"));
        Ok(())
    }
}
