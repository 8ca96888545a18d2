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
pub mod local;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::operator::OperatorFactory;
use weir_engine::time::duration_ms;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, KeyedStream, Lateness, MapState,
    OperatorContext, Output, Routed, Sink, StateBackend, StateKey, StateTable, Stream, Timestamp,
};

use crate::aggregate::{AggregateError, Aggregator};
use aligned::AlignedWindows;
use local::{LocalWindows, MergePartials, Partial};
use session::SessionWindows;

/// A window `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

/// An aggregate failed in a window (an integer sum overflowed): which key, which window,
/// and the event time and input position of the event being added (none when panes were
/// merged as the window fired). The job fails with it, unless the job routes such events
/// to a sink ([`WindowedStream::rejects`]); windows that fired before still reach the sinks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{cause} (key {key}, window [{start}, {end}){}{})",
    event_ts.map_or_else(|| " as it fired".to_string(), |ts| format!(", event time {ts}")),
    origin.as_ref().map_or_else(String::new, |at| format!(", {at}"))
)]
pub struct WindowAggregateError {
    /// The key, as JSON.
    pub key: String,
    /// The window's first millisecond.
    pub start: Timestamp,
    /// The first millisecond after the window.
    pub end: Timestamp,
    /// The event time of the event whose addition failed.
    pub event_ts: Option<Timestamp>,
    /// Where that event was read (e.g. `input events.jsonl line 12`), when the job says
    /// ([`WindowedStream::origin`]).
    pub origin: Option<String>,
    /// What failed (kept in the message, not as a separate cause, so it is said once).
    pub cause: AggregateError,
}

impl WindowAggregateError {
    pub(crate) fn new<K: Serialize>(
        cause: AggregateError,
        key: &K,
        window: Window,
        event_ts: Option<Timestamp>,
    ) -> Self {
        WindowAggregateError {
            key: serde_json::to_string(key).unwrap_or_else(|e| format!("<unprintable: {e}>")),
            start: window.start,
            end: window.end,
            event_ts,
            origin: None,
            cause,
        }
    }
}

/// An event an aggregate could not take, with the reason: what [`WindowedStream::rejects`]
/// sends to its sink instead of failing the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected<T> {
    /// The event, as the window received it.
    pub event: T,
    /// Why, with the key, window, event time and input position.
    pub error: WindowAggregateError,
}

/// Words for where an event was read (`None` if unknown): see [`WindowedStream::origin`].
pub type OriginOf<T> = Arc<dyn Fn(&T) -> Option<String> + Send + Sync>;

/// What a window operator does with an event its aggregate fails on: fail the job, or
/// emit it as [`WindowEvent::Rejected`] for the rejects sink; either way the error names
/// where the event was read. Only reached on failure, so it costs nothing per event.
pub(crate) struct Rejections<T> {
    routed: bool,
    origin: Option<OriginOf<T>>,
}

impl<T> Rejections<T> {
    /// Fails with `error` about `event`, or routes the two on when the job asked for it.
    pub(crate) fn fail_or_route<K, R>(
        &self,
        mut error: WindowAggregateError,
        ts: Timestamp,
        event: T,
        out: &mut WindowOutput<K, R, T>,
    ) -> Result<(), WindowAggregateError> {
        error.origin = self.origin.as_ref().and_then(|origin| origin(&event));
        if !self.routed {
            return Err(error);
        }
        out.emit(
            ts,
            WindowEvent::Rejected(Box::new(Rejected { event, error })),
        );
        Ok(())
    }
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
    /// Windows of `size` (greater than zero: [`WindowSpec::check`]).
    pub fn of(size: Duration) -> Self {
        Tumbling {
            size: duration_ms(size),
            offset: 0,
        }
    }

    /// Shifts window bounds by `offset` (e.g. for time zones).
    pub fn with_offset(self, offset: Duration) -> Self {
        Tumbling {
            offset: duration_ms(offset).checked_rem(self.size).unwrap_or(0),
            ..self
        }
    }

    /// The window size in milliseconds.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The offset of window bounds in milliseconds.
    pub fn offset(&self) -> i64 {
        self.offset
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
    /// Windows of `size` starting every `slide` (both greater than zero, the slide not
    /// greater than the size: [`WindowSpec::check`]).
    pub fn of(size: Duration, slide: Duration) -> Self {
        Sliding {
            size: duration_ms(size),
            slide: duration_ms(slide),
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
    /// Sessions that close after `gap` (greater than zero) without events.
    pub fn with_gap(gap: Duration) -> Self {
        Session {
            gap: duration_ms(gap),
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

impl WindowSpec {
    /// Why this window cannot be used, if it cannot: the one check for windows built in
    /// Rust (the job is refused when it runs) and on the command line (`--window`).
    pub fn check(&self) -> Result<(), String> {
        let sizes = match self {
            WindowSpec::Tumbling(t) => vec![t.size],
            WindowSpec::Sliding(s) => vec![s.size, s.slide],
            WindowSpec::Session(s) => vec![s.gap],
        };
        if sizes.iter().any(|&ms| ms <= 0) {
            return Err(format!(
                "{self}: sizes, slides and gaps must be at least 1 ms"
            ));
        }
        if let WindowSpec::Sliding(s) = self {
            if s.slide > s.size {
                return Err(format!(
                    "{self}: the slide may not exceed the size (events would fall between \
                     windows)"
                ));
            }
        }
        Ok(())
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
/// (Flink's `getWindowStartWithOffset`, correct for negative timestamps). A start below
/// `i64::MIN` saturates there, so windows at the edge of time stay representable.
#[inline]
pub fn window_start(ts: Timestamp, size: i64, offset: i64) -> Timestamp {
    match ts.checked_sub(offset) {
        Some(shifted) => ts.saturating_sub(shifted.rem_euclid(size)),
        None => {
            let start =
                i128::from(ts) - (i128::from(ts) - i128::from(offset)).rem_euclid(i128::from(size));
            i64::try_from(start).unwrap_or(i64::MIN)
        }
    }
}

/// [`window_start`] for one size and offset, remembering the last window it found: events
/// come mostly in time order, so most of them need no 64-bit division (two per event were a
/// measurable part of the JSONL window job).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alignment {
    size: i64,
    offset: i64,
    /// The last window found, `[start, end)`; empty before the first.
    start: Timestamp,
    end: Timestamp,
}

impl Alignment {
    pub(crate) fn new(size: i64, offset: i64) -> Self {
        Alignment {
            size,
            offset,
            start: 0,
            end: 0,
        }
    }

    /// `window_start(ts, size, offset)`.
    #[inline]
    pub(crate) fn start_of(&mut self, ts: Timestamp) -> Timestamp {
        // An aligned start `s <= ts < s + size` is the start of `ts`'s window.
        if self.start <= ts && ts < self.end {
            return self.start;
        }
        self.start = window_start(ts, self.size, self.offset);
        // A start at `i64::MIN` may be saturated, not aligned: it is not remembered.
        self.end = match self.start {
            i64::MIN => i64::MIN,
            start => start.saturating_add(self.size),
        };
        self.start
    }
}

/// What a window operator emits: fired windows and, when the job routes them, late events
/// (Flink's side output for late data). [`WindowedStream::aggregate`] splits the two into
/// the result stream and the late-data sink, so late events travel through the dataflow
/// like results: a late-data file sink takes part in checkpoints and is exactly-once.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowEvent<K, R, T> {
    /// The result of a fired window.
    Result(WindowResult<K, R>),
    /// An event too late for every window it belongs to.
    Late(T),
    /// An event the aggregate could not take (see [`WindowedStream::rejects`]). Boxed:
    /// rare, and its error would more than double the size of every result.
    Rejected(Box<Rejected<T>>),
}

impl<K, R, T> WindowEvent<K, R, T> {
    fn into_result(self) -> Option<WindowResult<K, R>> {
        match self {
            WindowEvent::Result(result) => Some(result),
            _ => None,
        }
    }

    fn into_late(self) -> Option<T> {
        match self {
            WindowEvent::Late(event) => Some(event),
            _ => None,
        }
    }

    fn into_rejected(self) -> Option<Rejected<T>> {
        match self {
            WindowEvent::Rejected(rejected) => Some(*rejected),
            _ => None,
        }
    }
}

/// Where the window operators emit.
pub(crate) type WindowOutput<K, R, T> = Output<WindowEvent<K, R, T>>;

/// The late events of one window operator instance (counted by the engine's harness):
/// emitted as [`WindowEvent::Late`] when the job has a late-data output, else dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LateData {
    pub(crate) routed: bool,
}

impl LateData {
    /// Hands on a late event at `ts` if the job routes late data; tells the harness it was
    /// late either way.
    #[inline]
    pub(crate) fn route<K, R, T>(
        self,
        ts: Timestamp,
        event: T,
        out: &mut WindowOutput<K, R, T>,
    ) -> Handled {
        if self.routed {
            out.emit(ts, WindowEvent::Late(event));
        }
        Handled::Late
    }
}

/// Attaches a side-output sink (late data, rejects) to the events of a window operator.
struct SideSink<T>(Box<dyn FnOnce(Stream<T>)>);

impl<T> std::fmt::Debug for SideSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SideSink")
    }
}

/// Window definition on a keyed stream.
pub trait WindowExt<K, T, KF> {
    /// Groups each key's events into windows.
    fn window(self, spec: impl Into<WindowSpec>) -> WindowedStream<K, T, KF>;
}

impl<K, T, KF> WindowExt<K, T, KF> for KeyedStream<K, T, KF> {
    fn window(self, spec: impl Into<WindowSpec>) -> WindowedStream<K, T, KF> {
        let spec = spec.into();
        WindowedStream {
            keyed: self,
            spec,
            allowed_lateness: 0,
            late: None,
            rejects: None,
            origin: None,
        }
    }
}

/// A keyed stream with a window definition, waiting for its aggregate.
pub struct WindowedStream<K, T, KF> {
    keyed: KeyedStream<K, T, KF>,
    spec: WindowSpec,
    allowed_lateness: i64,
    late: Option<SideSink<T>>,
    rejects: Option<SideSink<Rejected<T>>>,
    origin: Option<OriginOf<T>>,
}

impl<K, T, KF> std::fmt::Debug for WindowedStream<K, T, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("spec", &self.spec)
            .field("allowed_lateness", &self.allowed_lateness)
            .field("late", &self.late)
            .field("rejects", &self.rejects)
            .field("origin", &self.origin.is_some())
            .finish_non_exhaustive()
    }
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

    /// Sends late events to `sink` (as the sink node `late-data`) instead of only counting
    /// them. They keep their event times; with checkpoints a file sink commits them
    /// exactly once, like results.
    pub fn late_data<S: Sink<T>>(mut self, sink: S) -> Self {
        self.late = Some(SideSink(Box::new(move |late: Stream<T>| {
            late.side_output_sink("late-data", sink);
        })));
        self
    }

    /// Says where each event was read, for errors about it: `origin` is called only when
    /// the aggregate fails on an event, and its words (e.g. `input events.jsonl line 12`)
    /// end the error. Sources that number their records set the numbers in the events
    /// (e.g. `FileSource::with_origin` in weir-connectors), so nothing is looked up per
    /// event.
    pub fn origin(mut self, origin: impl Fn(&T) -> Option<String> + Send + Sync + 'static) -> Self {
        self.origin = Some(Arc::new(origin));
        self
    }

    /// Sends events the aggregate cannot take (an `i64` sum would overflow) to `sink` (as
    /// the sink node `rejected`), each with its error, and goes on without them, instead
    /// of failing the job (Flink users send such records to a side output). The event is
    /// left out of its windows: the built-in aggregates check before they change an
    /// accumulator (see [`Aggregator::add`]). A window of sliding panes whose merged sum
    /// overflows as it fires has no one event to blame, and still fails the job.
    pub fn rejects<S: Sink<Rejected<T>>>(self, sink: S) -> Self {
        self.rejects_to(move |rejected: Stream<Rejected<T>>| {
            rejected.side_output_sink("rejected", sink);
        })
    }

    /// As [`WindowedStream::rejects`], but hands the stream of rejected events to `route`,
    /// which sends it on: e.g. made into dead letters and joined with the source's own
    /// ([`Stream::dead_letters`]) into one sink.
    pub fn rejects_to(mut self, route: impl FnOnce(Stream<Rejected<T>>) + 'static) -> Self {
        self.rejects = Some(SideSink(Box::new(route)));
        self
    }

    /// Aggregates each window with `aggregator`.
    pub fn aggregate<A: Aggregator<T>>(self, aggregator: A) -> Stream<WindowResult<K, A::Output>> {
        if !self.keyed.stream().has_timestamps() {
            self.keyed.stream().invalid(
                "a window needs event times: call .timestamps(..) before .key_by(..)".into(),
            );
        }
        if let Err(reason) = self.spec.check() {
            self.keyed.stream().invalid(format!(
                "window {reason}; for example Tumbling::of(Duration::from_secs(10))"
            ));
        }
        let detail = format!(
            "{}, allowed lateness {}ms",
            self.spec, self.allowed_lateness
        );
        let factory = WindowFactory {
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            aggregator,
            route_late: self.late.is_some(),
            route_rejects: self.rejects.is_some(),
            origin: self.origin,
            _types: std::marker::PhantomData,
        };
        let events = self.keyed.process("window", detail, factory);
        if self.late.is_none() && self.rejects.is_none() {
            return events
                .clone()
                .flat_map(WindowEvent::into_result)
                .uid_names(&events);
        }
        // Late and rejected events are side outputs of the window: routed, not cloned.
        let (results, side) = events.split("side-outputs", |e| match e {
            WindowEvent::Result(r) => Routed::Main(r),
            other => Routed::Side(other),
        });
        match (self.late, self.rejects) {
            (Some(SideSink(late)), Some(SideSink(rejects))) => {
                let (late_events, rejected) = side.split("late-or-rejected", |e| match e {
                    WindowEvent::Late(event) => Routed::Main(event),
                    WindowEvent::Rejected(r) => Routed::Side(*r),
                    WindowEvent::Result(_) => Routed::Dropped,
                });
                late(late_events);
                rejects(rejected);
            }
            (Some(SideSink(late)), None) => late(side.flat_map(WindowEvent::into_late)),
            (None, Some(SideSink(rejects))) => rejects(side.flat_map(WindowEvent::into_rejected)),
            (None, None) => {}
        }
        results
    }
}

impl<K, T, KF> WindowedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// Aggregates each window in two phases, as Flink's local-global aggregation: every
    /// instance of the input pre-aggregates its own events per key and pane (the window
    /// if tumbling, `gcd(size, slide)` if sliding) in its thread, before the exchange, and the window operator merges those partials (see
    /// [`local`]). The results are those of [`WindowedStream::aggregate`]; it pays where
    /// few keys carry many events. Tumbling or sliding windows, without a late-data sink.
    pub fn aggregate_two_phase<A: Aggregator<T>>(
        self,
        aggregator: A,
    ) -> Stream<WindowResult<K, A::Output>> {
        let refuse = |reason: &str| {
            self.keyed.stream().invalid(format!(
                "two-phase aggregation {reason}: use .aggregate(..) instead"
            ))
        };
        let (pane, offset) = match self.spec {
            WindowSpec::Tumbling(t) => (t.size, t.offset),
            WindowSpec::Sliding(s) => (aligned::gcd(s.size, s.slide), s.offset),
            WindowSpec::Session(_) => {
                refuse(&format!(
                    "needs tumbling or sliding windows, not {}",
                    self.spec
                ));
                return self.aggregate(aggregator);
            }
        };
        if self.late.is_some() {
            refuse("cannot route late events to a sink (they would go as partial aggregates)");
            return self.aggregate(aggregator);
        }
        let (key, local) = (self.keyed.key_fn(), aggregator.clone());
        let partials = self.keyed.stream().clone().chain("local-window", move || {
            LocalWindows::new(key.clone(), pane, offset, local.clone())
        });
        if self.rejects.is_some() || self.origin.is_some() {
            refuse("cannot name or reject single events (the window receives partials)");
            return self.aggregate(aggregator);
        }
        WindowedStream {
            keyed: partials.key_by(|p: &Partial<K, A::Acc>| p.key.clone()),
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            late: None,
            rejects: None,
            origin: None,
        }
        .aggregate(MergePartials::new(aggregator))
    }
}

pub(crate) struct WindowFactory<K, T, A> {
    spec: WindowSpec,
    allowed_lateness: i64,
    aggregator: A,
    /// Whether late events are emitted (for the late-data sink) or only counted.
    route_late: bool,
    /// Whether events the aggregate fails on are emitted (for the rejects sink) or fail
    /// the job; and the words for where they were read.
    route_rejects: bool,
    origin: Option<OriginOf<T>>,
    _types: std::marker::PhantomData<fn() -> (K, T)>,
}

#[cfg(test)]
impl<K, T, A> WindowFactory<K, T, A> {
    /// Windows of `spec` without lateness or late-data output, for unit tests of operators
    /// built on windows (the window join).
    pub(crate) fn plain(spec: WindowSpec, aggregator: A) -> Self {
        WindowFactory {
            spec,
            allowed_lateness: 0,
            aggregator,
            route_late: false,
            route_rejects: false,
            origin: None,
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, T, A> OperatorFactory for WindowFactory<K, T, A>
where
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowEvent<K, A::Output, T>;
    type Operator<S: StateBackend> = EventTime<WindowOperator<S, K, T, A>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let late = LateData {
            routed: self.route_late,
        };
        let rejections = || Rejections {
            routed: self.route_rejects,
            origin: self.origin.clone(),
        };
        let agg = self.aggregator.clone();
        let windows = match self.spec {
            WindowSpec::Tumbling(t) => Windows::Aligned(AlignedWindows::new(
                &mut state,
                t.size,
                t.size,
                t.offset,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
            )?),
            WindowSpec::Sliding(s) => Windows::Aligned(AlignedWindows::new(
                &mut state,
                s.size,
                s.slide,
                s.offset,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
            )?),
            WindowSpec::Session(s) => Windows::Session(SessionWindows::new(
                &mut state,
                s.gap,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
            )?),
        };
        let operator = WindowOperator { windows };
        Ok(EventTime::new(operator, ctx))
    }
}

/// The windows of one kind; the kind is matched once per event.
enum Windows<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    /// Tumbling or sliding.
    Aligned(AlignedWindows<S, K, T, A>),
    /// Session.
    Session(SessionWindows<S, K, T, A>),
}

/// The window operator for any [`WindowSpec`], run by the engine's [`EventTime`] harness.
pub struct WindowOperator<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    windows: Windows<S, K, T, A>,
}

impl<S: StateBackend, K: StateKey, T, A: Aggregator<T>> std::fmt::Debug
    for WindowOperator<S, K, T, A>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.windows {
            Windows::Aligned(_) => "WindowOperator::Aligned",
            Windows::Session(_) => "WindowOperator::Session",
        })
    }
}

impl<S, K, T, A> EventTimeOperator for WindowOperator<S, K, T, A>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowEvent<K, A::Output, T>;

    /// Late when every window of the event is past its allowed lateness (for sessions:
    /// the session it would merge into).
    const LATENESS: Lateness = Lateness::Decided;

    #[inline]
    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<Handled, BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.on_event(ts, event, watermark, out),
            Windows::Session(w) => w.on_event(ts, event, watermark, out),
        }
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.advance(watermark, out),
            Windows::Session(w) => w.advance(watermark, out),
        }
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        match &mut self.windows {
            Windows::Aligned(w) => w.tables(),
            Windows::Session(w) => w.tables(),
        }
    }

    fn state_entries(&self) -> usize {
        match &self.windows {
            Windows::Aligned(w) => w.state_entries(),
            Windows::Session(w) => w.state_entries(),
        }
    }

    fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.restore(watermark),
            Windows::Session(w) => w.restore(),
        }
    }
}

/// Keeps the items of `key`'s list for which `keep` holds, dropping the key when none is
/// left; returns how many items were removed.
pub(crate) fn prune<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    keep: impl FnMut(&V) -> bool,
) -> Result<usize, BoxError> {
    shrink(table, key, |items| {
        let before = items.len();
        items.retain(keep);
        before - items.len()
    })
}

/// Removes the leading items of `key`'s list for which `drop` holds (the list must be
/// ordered so that they form a prefix), dropping the key when none is left; returns how
/// many items were removed. Bisection instead of a scan: cheap however long the list.
pub(crate) fn prune_prefix<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    drop: impl Fn(&V) -> bool,
) -> Result<usize, BoxError> {
    shrink(table, key, |items| {
        let removed = items.partition_point(drop);
        items.drain(..removed);
        removed
    })
}

/// Applies `remove` (returning how many items it removed) to `key`'s list, dropping the
/// key when the list is empty.
fn shrink<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    remove: impl FnOnce(&mut Vec<V>) -> usize,
) -> Result<usize, BoxError> {
    let left = table.modify(key, |items| (remove(items), items.is_empty()))?;
    let Some((removed, empty)) = left else {
        return Ok(0);
    };
    if empty {
        table.take(key)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::{Keyed, MemoryBackend};
    use weir_engine::{KeyedOperator, Record};

    use crate::aggregate::Count;

    type Row = (&'static str, i64, i64, u64, bool);

    #[test]
    fn windows_of_zero_size_or_a_slide_past_the_size_are_refused_as_on_the_command_line() {
        let zero = Duration::ZERO;
        let ten = Duration::from_secs(10);
        for bad in [
            WindowSpec::from(Tumbling::of(zero)),
            Sliding::of(ten, zero).into(),
            Sliding::of(Duration::from_secs(1), ten).into(),
            Session::with_gap(Duration::from_micros(500)).into(),
        ] {
            assert!(bad.check().is_err(), "{bad} was accepted");
        }
        assert_eq!(Tumbling::of(ten).with_offset(ten).offset(), 0);
        assert!(WindowSpec::from(Tumbling::of(zero).with_offset(ten))
            .check()
            .is_err());
        assert!(WindowSpec::from(Sliding::of(ten, ten)).check().is_ok());
    }

    #[test]
    fn an_event_the_aggregate_fails_on_is_rejected_with_its_origin_and_left_out() {
        use crate::aggregate::Sum;
        let ctx = crate::test_support::operator_context("window");
        for spec in [
            WindowSpec::from(Tumbling::of(ms(10))),
            Sliding::of(ms(10), ms(5)).into(),
            Session::with_gap(ms(10)).into(),
        ] {
            let factory = WindowFactory::<String, i64, _> {
                route_rejects: true,
                origin: Some(Arc::new(|v: &i64| Some(format!("value {v}")))),
                ..WindowFactory::plain(spec, Sum::of(|v: &i64| *v))
            };
            let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
            let mut out = Output::default();
            for (ts, value) in [(1, i64::MAX), (2, 1), (3, -5)] {
                let value = Keyed {
                    key: "k".to_string(),
                    value,
                };
                let record = Record {
                    ts,
                    watermark: MIN,
                    value,
                };
                op.process(vec![record], &mut out)
                    .expect("routed, not failed");
            }
            op.on_watermark(END, &mut out).expect("watermark");
            let (mut sums, mut rejected) = (Vec::new(), Vec::new());
            for r in out.take() {
                match r.value {
                    WindowEvent::Result(w) => sums.push(w.value),
                    WindowEvent::Rejected(r) => rejected.push(*r),
                    WindowEvent::Late(_) => panic!("nothing is late"),
                }
            }
            assert!(
                sums.contains(&(i64::MAX - 5)),
                "{spec}: the windows go on without the rejected event: {sums:?}"
            );
            assert_eq!(rejected.len(), 1, "{spec}: {rejected:?}");
            assert_eq!(rejected[0].event, 1);
            let error = rejected[0].error.to_string();
            assert!(error.ends_with("event time 2, value 1)"), "{spec}: {error}");
        }
        // Without a rejects sink the same event fails the operator, naming it.
        let factory = WindowFactory::<String, i64, _> {
            origin: Some(Arc::new(|v: &i64| Some(format!("value {v}")))),
            ..WindowFactory::plain(Tumbling::of(ms(10)).into(), Sum::of(|v: &i64| *v))
        };
        let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
        let mut out = Output::default();
        let records = [(1, i64::MAX), (2, 1)].map(|(ts, value)| Record {
            ts,
            watermark: MIN,
            value: Keyed {
                key: "k".to_string(),
                value,
            },
        });
        let failed = op
            .process(records.to_vec(), &mut out)
            .expect_err("overflow");
        assert!(
            failed.to_string().ends_with("event time 2, value 1)"),
            "{failed}"
        );
    }

    #[test]
    fn the_remembered_alignment_agrees_with_window_start() {
        // Mostly ordered times with jumps back and forth, negative ones, and the edges.
        let mut times = vec![i64::MIN, i64::MIN + 1, i64::MIN + 2_999, i64::MIN + 4_000];
        times.extend([i64::MAX - 1, i64::MAX, -1, 0]);
        let mut state: u64 = 7;
        let mut ts: i64 = -25_000;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ts += (state >> 33) as i64 % 700 - 200;
            times.push(ts);
        }
        for (size, offset) in [(1000, 0), (10_000, 300), (7, -3), (1, 0), (3_000, i64::MAX)] {
            let mut alignment = Alignment::new(size, offset);
            for &ts in &times {
                assert_eq!(
                    alignment.start_of(ts),
                    window_start(ts, size, offset),
                    "ts {ts} size {size} offset {offset}"
                );
            }
        }
    }

    /// Feeds `(ts, watermark before the event, key)` events one per batch and returns the
    /// fired windows `(key, start, end, count, is_update)` and the late count.
    fn run(
        spec: impl Into<WindowSpec>,
        lateness: i64,
        events: &[(i64, i64, &'static str)],
        end_watermark: i64,
    ) -> (Vec<Row>, u64, usize) {
        let ctx = crate::test_support::operator_context("window");
        let factory = WindowFactory::<String, (), Count> {
            spec: spec.into(),
            allowed_lateness: lateness,
            aggregator: Count,
            route_late: true,
            route_rejects: false,
            origin: None,
            _types: std::marker::PhantomData,
        };
        let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
        let mut out = Output::default();
        for &(ts, watermark, key) in events {
            let record = Record {
                ts,
                watermark,
                value: Keyed {
                    key: key.to_string(),
                    value: (),
                },
            };
            op.process(vec![record], &mut out).expect("process");
        }
        op.on_watermark(end_watermark, &mut out).expect("watermark");
        let mut routed_late = 0;
        let rows = out
            .take()
            .into_iter()
            .filter_map(|r| {
                let result = match r.value {
                    WindowEvent::Result(result) => result,
                    WindowEvent::Late(()) => {
                        routed_late += 1;
                        return None;
                    }
                    WindowEvent::Rejected(r) => panic!("Count never fails: {r:?}"),
                };
                let r = Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: result,
                };
                assert_eq!(r.ts, r.value.window.end - 1, "results carry time end - 1");
                let key = events
                    .iter()
                    .map(|e| e.2)
                    .find(|k| *k == r.value.key)
                    .expect("known key");
                Some((
                    key,
                    r.value.window.start,
                    r.value.window.end,
                    r.value.value,
                    r.value.is_update,
                ))
            })
            .collect();
        let late = ctx.metrics.late_events.get();
        assert_eq!(
            routed_late, late,
            "every late event counted is routed to the late output"
        );
        (rows, late, op.state_entries())
    }

    const MIN: i64 = i64::MIN;
    const END: i64 = i64::MAX;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn tumbling_fires_at_end_minus_one_and_drops_late_events() {
        let (rows, late, _) = run(
            Tumbling::of(ms(10)),
            0,
            // (-3, wm 0): its window [-10,0) has end - 1 = -1 <= 0, so it is late.
            // (5, wm 9): watermark 9 = end - 1 of [0,10) fired it first, so it is late.
            &[
                (1, MIN, "a"),
                (-3, 0, "a"),
                (9, 0, "a"),
                (12, 8, "a"),
                (5, 9, "a"),
            ],
            12,
        );
        assert_eq!(rows, vec![("a", 0, 10, 2, false)]);
        assert_eq!(late, 2);
        // One millisecond earlier the window is still open.
        let (rows, late, _) = run(Tumbling::of(ms(10)), 0, &[(1, MIN, "a"), (5, 8, "a")], END);
        assert_eq!((rows, late), (vec![("a", 0, 10, 2, false)], 0));
    }

    #[test]
    fn sliding_windows_hold_each_event_once_per_window() {
        // size 30, slide 10: ts 25 belongs to [0,30), [10,40), [20,50); ts 5 belongs to
        // [-20,10), [-10,20) (both already due at watermark 24) and [0,30).
        let (mut rows, late, _) = run(
            Sliding::of(ms(30), ms(10)),
            0,
            &[(25, MIN, "a"), (5, 24, "a")],
            END,
        );
        rows.sort_by_key(|r| (r.2, r.1));
        assert_eq!(
            rows,
            vec![
                ("a", 0, 30, 2, false),
                ("a", 10, 40, 1, false),
                ("a", 20, 50, 1, false)
            ]
        );
        assert_eq!(late, 0);
        let (rows, _, _) = run(Sliding::of(ms(30), ms(10)), 0, &[(5, MIN, "a")], END);
        let windows: Vec<_> = rows.iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(windows, vec![(-20, 10), (-10, 20), (0, 30)]);
    }

    #[test]
    fn sliding_event_is_late_only_if_all_its_windows_are() {
        // Watermark 29 fired [0,30) but not [10,40) and [20,50): ts 25 is added to those two.
        let (rows, late, _) = run(
            Sliding::of(ms(30), ms(10)),
            0,
            &[(25, MIN, "a"), (25, 29, "b")],
            END,
        );
        let b: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == "b")
            .map(|r| (r.1, r.2))
            .collect();
        assert_eq!(b, vec![(10, 40), (20, 50)]);
        assert_eq!(late, 0);
        let (_, late, _) = run(Sliding::of(ms(30), ms(10)), 0, &[(25, 49, "a")], END);
        assert_eq!(late, 1);
    }

    #[test]
    fn sessions_merge_on_overlap_and_touch() {
        // gap 10: [0,10) and [10,20) touch -> [0,20); [25,35) stays apart; 5 overlaps [0,20).
        let (rows, _, _) = run(
            Session::with_gap(ms(10)),
            0,
            &[(0, MIN, "a"), (10, MIN, "a"), (25, MIN, "a"), (5, MIN, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 0, 20, 3, false), ("a", 25, 35, 1, false)]);
        // An event bridging two sessions merges all three.
        let (rows, _, _) = run(
            Session::with_gap(ms(10)),
            0,
            &[(0, MIN, "a"), (20, MIN, "a"), (10, MIN, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 0, 30, 3, false)]);
        // Sessions of different keys never merge.
        let (rows, _, _) = run(
            Session::with_gap(ms(10)),
            0,
            &[(0, MIN, "a"), (5, MIN, "b")],
            END,
        );
        assert_eq!(rows, vec![("a", 0, 10, 1, false), ("b", 5, 15, 1, false)]);
    }

    #[test]
    fn late_session_event_may_join_an_open_session() {
        // Watermark 12: the lone [3,13) would be due (12 >= 12), but it touches the open
        // [10,20), so it is not late; [-20,-10) alone is late.
        let (rows, late, _) = run(
            Session::with_gap(ms(10)),
            0,
            &[(10, MIN, "a"), (3, 12, "a"), (-20, 12, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 3, 20, 2, false)]);
        assert_eq!(late, 1);
        // A fired session is gone: a later event never merges into it.
        let (rows, late, _) = run(
            Session::with_gap(ms(10)),
            0,
            &[(0, MIN, "a"), (30, 9, "a"), (5, 29, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 0, 10, 1, false), ("a", 30, 40, 1, false)]);
        assert_eq!(late, 1);
    }

    #[test]
    fn allowed_lateness_updates_fired_windows() {
        // Lateness 5: [0,10) is kept until watermark 14; an event at wm 12 updates it,
        // at wm 14 it is dropped.
        let (rows, late, _) = run(
            Tumbling::of(ms(10)),
            5,
            &[(1, MIN, "a"), (2, 12, "a"), (3, 14, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 0, 10, 1, false), ("a", 0, 10, 2, true)]);
        assert_eq!(late, 1);
        let (rows, late, _) = run(
            Session::with_gap(ms(10)),
            5,
            &[(1, MIN, "a"), (2, 12, "a"), (3, 20, "a")],
            END,
        );
        assert_eq!(rows, vec![("a", 1, 11, 1, false), ("a", 1, 12, 2, true)]);
        assert_eq!(late, 1);
    }

    #[test]
    fn sliding_lateness_does_not_update_expired_windows() {
        // hop 20/10, lateness 1000: at watermark 11499 window [-10000,10000) expired at
        // 10999, so ts 6000 only revises [0,20000).
        let (mut rows, late, _) = run(
            Sliding::of(ms(20_000), ms(10_000)),
            1000,
            &[(1000, MIN, "a"), (11_500, 999, "a"), (6000, 11_499, "a")],
            END,
        );
        rows.sort_by_key(|r| (r.2, r.4));
        assert_eq!(
            rows,
            vec![
                ("a", -10_000, 10_000, 1, false),
                ("a", 0, 20_000, 3, false),
                ("a", 10_000, 30_000, 1, false),
            ]
        );
        assert_eq!(late, 0);
    }

    #[test]
    fn first_firing_of_a_late_window_is_not_an_update() {
        // Lateness 10 s: b's [10000,20000) is due when its first event arrives at watermark
        // 24999; its only result is not an update. A second late event revises it.
        let (rows, _, _) = run(
            Tumbling::of(ms(10_000)),
            10_000,
            &[
                (25_000, MIN, "a"),
                (15_000, 24_999, "b"),
                (16_000, 24_999, "b"),
            ],
            END,
        );
        let b: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == "b")
            .map(|r| (r.3, r.4))
            .collect();
        assert_eq!(b, vec![(1, false), (2, true)]);
        let (rows, _, _) = run(
            Session::with_gap(ms(3000)),
            10_000,
            &[
                (25_000, MIN, "a"),
                (15_000, 24_999, "b"),
                (16_000, 24_999, "b"),
            ],
            END,
        );
        let b: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == "b")
            .map(|r| (r.1, r.2, r.3, r.4))
            .collect();
        assert_eq!(
            b,
            vec![(15_000, 18_000, 1, false), (15_000, 19_000, 2, true)]
        );
    }

    #[test]
    fn windows_near_i64_max_do_not_overflow() {
        let ts = i64::MAX - 800;
        for spec in [
            WindowSpec::from(Tumbling::of(ms(10_000))),
            Sliding::of(ms(10_000), ms(5000)).into(),
            Session::with_gap(ms(10_000)).into(),
        ] {
            let (rows, late, open) = run(spec, 0, &[(ts, MIN, "a")], END);
            assert_eq!(late, 0, "{spec}");
            assert_eq!(open, 0, "{spec}");
            assert!(!rows.is_empty(), "{spec}: the event must land in a window");
            assert!(
                rows.iter().all(|r| r.1 <= ts && r.2 == i64::MAX),
                "{spec}: {rows:?}"
            );
        }
        let ts = i64::MIN + 10;
        let (rows, late, _) = run(Sliding::of(ms(10_000), ms(5000)), 0, &[(ts, MIN, "a")], END);
        assert_eq!((rows.len(), late), (1, 0), "{rows:?}");
    }

    #[test]
    fn state_is_released_after_firing() {
        let events: Vec<(i64, i64, &'static str)> =
            (0..100).map(|i| (i * 10, i * 10 - 1, "k")).collect();
        // Before the end watermark only the last window is open; afterwards nothing is.
        let (rows, _, open) = run(Tumbling::of(ms(10)), 0, &events, 995);
        assert_eq!((rows.len(), open), (99, 1));
        let (rows, _, open) = run(Sliding::of(ms(30), ms(10)), 0, &events, END);
        assert_eq!((rows.len(), open), (102, 0));
        let (rows, _, open) = run(Session::with_gap(ms(5)), 0, &events, END);
        assert_eq!((rows.len(), open), (100, 0));
    }
}
