//! Event-time windows over keyed streams.
//!
//! - [`Tumbling`] and [`Sliding`] windows are *aligned*: their bounds depend only on time,
//!   so they are computed from panes (see [`aligned`]).
//! - [`Session`] windows are *merging*: each event opens `[ts, ts + gap)` and touching
//!   windows of a key merge (see [`session`]).
//!
//! Semantics (Flink's, made deterministic; see the README's "Event-time semantics"):
//! a window `[start, end)` fires once, when the watermark reaches `end - 1`; its result has
//! event time `end - 1`. An event is late when every window it belongs to has
//! `end - 1 + allowed_lateness <= watermark`, where the watermark is the one current when the
//! event arrives. Late events are counted in `weir_late_events_total` and, if asked, written
//! to a late-data sink. With allowed lateness > 0, an event for an already due window updates
//! it and the window fires again at once, with `is_update` set.

pub mod aligned;
pub mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::operator::OperatorFactory;
use weir_engine::time::duration_ms;
use weir_engine::{
    Data, KeyedOperator, KeyedStream, OperatorContext, Output, Record, Sink, StateBackend,
    StateKey, Stream, Timestamp,
};

use crate::aggregate::Aggregator;
use aligned::AlignedWindows;
use session::SessionWindows;

/// A window `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

/// The result of one window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: R,
    /// True if this result replaces an earlier one for the same key and window (a late event
    /// arrived within the allowed lateness).
    pub is_update: bool,
}

/// Tumbling windows: fixed size, back to back, aligned to the epoch plus an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    size: i64,
    offset: i64,
}

impl Tumbling {
    /// Windows of `size`.
    pub fn of(size: Duration) -> Self {
        Tumbling {
            size: duration_ms(size).max(1),
            offset: 0,
        }
    }

    /// Shifts window bounds by `offset` (e.g. for time zones).
    pub fn with_offset(self, offset: Duration) -> Self {
        Tumbling {
            offset: duration_ms(offset) % self.size,
            ..self
        }
    }
}

/// Sliding (hopping) windows of `size` starting every `slide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    size: i64,
    slide: i64,
    offset: i64,
}

impl Sliding {
    /// Windows of `size` starting every `slide`.
    pub fn of(size: Duration, slide: Duration) -> Self {
        Sliding {
            size: duration_ms(size).max(1),
            slide: duration_ms(slide).max(1),
            offset: 0,
        }
    }
}

/// Session windows: a key's events closer than `gap` belong to one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    gap: i64,
}

impl Session {
    /// Sessions that close after `gap` without events.
    pub fn with_gap(gap: Duration) -> Self {
        Session {
            gap: duration_ms(gap).max(1),
        }
    }
}

/// Any of the window kinds, chosen at run time (e.g. from a command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// See [`Tumbling`].
    Tumbling(Tumbling),
    /// See [`Sliding`].
    Sliding(Sliding),
    /// See [`Session`].
    Session(Session),
}

impl From<Tumbling> for WindowSpec {
    fn from(w: Tumbling) -> Self {
        WindowSpec::Tumbling(w)
    }
}
impl From<Sliding> for WindowSpec {
    fn from(w: Sliding) -> Self {
        WindowSpec::Sliding(w)
    }
}
impl From<Session> for WindowSpec {
    fn from(w: Session) -> Self {
        WindowSpec::Session(w)
    }
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowSpec::Tumbling(t) => write!(f, "tumble {}ms", t.size),
            WindowSpec::Sliding(s) => write!(f, "hop {}ms every {}ms", s.size, s.slide),
            WindowSpec::Session(s) => write!(f, "session gap {}ms", s.gap),
        }
    }
}

/// Start of the aligned window of `size` (shifted by `offset`) containing `ts`
/// (Flink's `getWindowStartWithOffset`, correct for negative timestamps).
#[inline]
pub fn window_start(ts: Timestamp, size: i64, offset: i64) -> Timestamp {
    ts - (ts - offset).rem_euclid(size)
}

/// Where late events go.
pub struct LateOutput<T> {
    sink: Arc<Mutex<Box<dyn Sink<T>>>>,
}

impl<T> Clone for LateOutput<T> {
    fn clone(&self) -> Self {
        LateOutput {
            sink: self.sink.clone(),
        }
    }
}

impl<T> std::fmt::Debug for LateOutput<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateOutput")
    }
}

impl<T: Data> LateOutput<T> {
    /// Late events of every worker go to `sink` (shared; late data is the rare path).
    pub fn new<S: Sink<T>>(sink: S) -> Self {
        LateOutput {
            sink: Arc::new(Mutex::new(Box::new(sink))),
        }
    }

    fn write(&self, records: &[Record<T>]) -> Result<(), BoxError> {
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| "late-data sink poisoned by a panic")?;
        sink.write(records)?;
        // Every worker may end at any time: keep the file complete after each write.
        sink.finish()
    }
}

/// Late events of one batch, written together.
pub(crate) struct LateBuffer<T> {
    output: Option<LateOutput<T>>,
    pending: Vec<Record<T>>,
}

impl<T: Data> LateBuffer<T> {
    pub(crate) fn new(output: Option<LateOutput<T>>) -> Self {
        LateBuffer {
            output,
            pending: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, ts: Timestamp, watermark: Timestamp, value: T) {
        if self.output.is_some() {
            self.pending.push(Record {
                ts,
                watermark,
                value,
            });
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), BoxError> {
        if let Some(out) = &self.output {
            if !self.pending.is_empty() {
                out.write(&self.pending)?;
                self.pending.clear();
            }
        }
        Ok(())
    }
}

/// Window definition on a keyed stream.
pub trait WindowExt<K, T, KF> {
    /// Groups each key's events into windows.
    fn window(self, spec: impl Into<WindowSpec>) -> WindowedStream<K, T, KF>;
}

impl<K, T, KF> WindowExt<K, T, KF> for KeyedStream<K, T, KF> {
    fn window(self, spec: impl Into<WindowSpec>) -> WindowedStream<K, T, KF> {
        WindowedStream {
            keyed: self,
            spec: spec.into(),
            allowed_lateness: 0,
            late: None,
        }
    }
}

/// A keyed stream with a window definition, waiting for its aggregate.
#[derive(Debug)]
pub struct WindowedStream<K, T, KF> {
    keyed: KeyedStream<K, T, KF>,
    spec: WindowSpec,
    allowed_lateness: i64,
    late: Option<LateOutput<T>>,
}

impl<K, T, KF> WindowedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// Keeps fired windows for `lateness` so late events update them.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = duration_ms(lateness);
        self
    }

    /// Sends late events to `sink` instead of only counting them.
    pub fn late_data<S: Sink<T>>(mut self, sink: S) -> Self {
        self.late = Some(LateOutput::new(sink));
        self
    }

    /// Aggregates each window with `aggregator`.
    pub fn aggregate<A: Aggregator<T>>(self, aggregator: A) -> Stream<WindowResult<K, A::Output>> {
        if !self.keyed.stream().has_timestamps() {
            self.keyed.stream().invalid(
                "a window needs event times: call .timestamps(..) before .key_by(..)".into(),
            );
        }
        let detail = format!(
            "{}, allowed lateness {}ms",
            self.spec, self.allowed_lateness
        );
        let factory = WindowFactory {
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            aggregator,
            late: self.late,
            _types: std::marker::PhantomData,
        };
        self.keyed.process("window", detail, factory)
    }
}

struct WindowFactory<K, T, A> {
    spec: WindowSpec,
    allowed_lateness: i64,
    aggregator: A,
    late: Option<LateOutput<T>>,
    _types: std::marker::PhantomData<fn() -> K>,
}

impl<K, T, A> OperatorFactory for WindowFactory<K, T, A>
where
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowResult<K, A::Output>;
    type Operator<S: StateBackend> = WindowOperator<S, K, T, A>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let late = LateBuffer::new(self.late.clone());
        let agg = self.aggregator.clone();
        let late_counter = ctx.metrics.late_events.clone();
        Ok(match self.spec {
            WindowSpec::Tumbling(t) => WindowOperator::Aligned(AlignedWindows::new(
                &mut state,
                t.size,
                t.size,
                t.offset,
                self.allowed_lateness,
                agg,
                late,
                late_counter,
            )?),
            WindowSpec::Sliding(s) => WindowOperator::Aligned(AlignedWindows::new(
                &mut state,
                s.size,
                s.slide,
                s.offset,
                self.allowed_lateness,
                agg,
                late,
                late_counter,
            )?),
            WindowSpec::Session(s) => WindowOperator::Session(SessionWindows::new(
                &mut state,
                s.gap,
                self.allowed_lateness,
                agg,
                late,
                late_counter,
            )?),
        })
    }
}

/// The window operator for any [`WindowSpec`]; the kind is matched once per batch.
pub enum WindowOperator<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    /// Tumbling or sliding.
    Aligned(AlignedWindows<S, K, T, A>),
    /// Session.
    Session(SessionWindows<S, K, T, A>),
}

impl<S: StateBackend, K: StateKey, T, A: Aggregator<T>> std::fmt::Debug
    for WindowOperator<S, K, T, A>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowOperator::Aligned(_) => "WindowOperator::Aligned",
            WindowOperator::Session(_) => "WindowOperator::Session",
        })
    }
}

impl<S, K, T, A> KeyedOperator for WindowOperator<S, K, T, A>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowResult<K, A::Output>;

    fn process(
        &mut self,
        records: Vec<Record<weir_engine::Keyed<K, T>>>,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        match self {
            WindowOperator::Aligned(w) => w.process(records, out),
            WindowOperator::Session(w) => w.process(records, out),
        }
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        match self {
            WindowOperator::Aligned(w) => w.advance(watermark, out),
            WindowOperator::Session(w) => w.advance(watermark, out),
        }
    }

    fn state_entries(&self) -> usize {
        match self {
            WindowOperator::Aligned(w) => w.state_entries(),
            WindowOperator::Session(w) => w.state_entries(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_start_handles_negative_timestamps() {
        assert_eq!(window_start(0, 10, 0), 0);
        assert_eq!(window_start(9, 10, 0), 0);
        assert_eq!(window_start(10, 10, 0), 10);
        assert_eq!(window_start(-1, 10, 0), -10);
        assert_eq!(window_start(-10, 10, 0), -10);
        assert_eq!(window_start(-11, 10, 0), -20);
        assert_eq!(window_start(7, 10, 3), 3);
        assert_eq!(window_start(2, 10, 3), -7);
    }
}

/// Per-key timers ordered by time: which keys need attention when the watermark passes.
pub(crate) struct Timers<K> {
    by_time: std::collections::BTreeMap<Timestamp, Vec<K>>,
}

impl<K> Timers<K> {
    pub(crate) fn new() -> Self {
        Timers {
            by_time: std::collections::BTreeMap::new(),
        }
    }

    pub(crate) fn register(&mut self, time: Timestamp, key: K) {
        self.by_time.entry(time).or_default().push(key);
    }

    /// The earliest timers, if `due` says their time has come.
    pub(crate) fn pop_due(
        &mut self,
        due: impl Fn(Timestamp) -> bool,
    ) -> Option<(Timestamp, Vec<K>)> {
        let (&time, _) = self.by_time.first_key_value()?;
        if due(time) {
            self.by_time.pop_first()
        } else {
            None
        }
    }
}
