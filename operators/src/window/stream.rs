//! The window API on keyed streams: `window(..)`, `late_data`, `rejects`, `trigger`,
//! `aggregate` (the other window functions are in `functions`).

use std::sync::Arc;
use std::time::Duration;

use weir_engine::keys::StableHash;
use weir_engine::time::duration_ms;
use weir_engine::{Data, KeyedStream, Routed, Sink, StateKey, Stream};

use super::local::{LocalWindows, MergePartials, Partial};
use super::{
    aligned, OriginOf, Rejected, Trigger, WindowEvent, WindowFactory, WindowResult, WindowSpec,
};
use crate::aggregate::Aggregator;

/// Attaches a side-output sink (late data, rejects) to the events of a window operator.
struct SideSink<T>(Box<dyn FnOnce(Stream<T>)>);

impl<T> std::fmt::Debug for SideSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SideSink")
    }
}

/// Event-time windows on a keyed stream: [`WindowExt::window`] with a [`Tumbling`],
/// [`Sliding`] or [`Session`] spec, then a window function
/// ([`WindowedStream::aggregate`], `reduce`, `process`, ...) gives one
/// [`WindowResult`] per key and window when the watermark passes the window's end.
///
/// ```
/// use std::time::Duration;
/// use weir_engine::{Job, Watermarks};
/// use weir_operators::prelude::*;
/// # use weir_operators::doc_support::{sorted, Collect, VecSource};
///
/// // (user, event time in ms)
/// let clicks = vec![("a", 1_000), ("b", 2_000), ("a", 9_000), ("a", 12_000)];
/// let (sink, seen) = Collect::new();
/// let job = Job::new("clicks");
/// job.source("clicks", VecSource(clicks))
///     .timestamps(|c| c.1, Watermarks::bounded(Duration::from_secs(1)))
///     .key_by(|c: &(&str, i64)| c.0.to_string())
///     .window(Tumbling::of(Duration::from_secs(10)))
///     .aggregate(Count)
///     .map(|r| (r.key, r.window.start, r.value))
///     .sink("counts", sink);
/// job.run(&Default::default())?;
/// let counts = vec![("a".into(), 0, 2), ("a".into(), 10_000, 1), ("b".into(), 0, 1)];
/// assert_eq!(sorted(&seen), counts);
/// # Ok::<(), weir_engine::EngineError>(())
/// ```
///
/// [`Tumbling`]: super::Tumbling
/// [`Sliding`]: super::Sliding
/// [`Session`]: super::Session
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
            queryable: None,
            trigger: None,
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
    /// The name each key's latest result is queryable under.
    queryable: Option<String>,
    /// Early firings.
    trigger: Option<Trigger>,
}

impl<K, T, KF> std::fmt::Debug for WindowedStream<K, T, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("spec", &self.spec)
            .field("allowed_lateness", &self.allowed_lateness)
            .field("late", &self.late)
            .field("rejects", &self.rejects)
            .field("origin", &self.origin.is_some())
            .field("queryable", &self.queryable)
            .field("trigger", &self.trigger)
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

    /// Makes each key's latest window result readable while the job runs, under `table`
    /// (`GET /api/v1/state/{table}/{key}` of `weir run`, [`weir_engine::Job::queryable_state`]),
    /// as Kafka Streams' queryable window stores: the result of the key's window that ends
    /// last among those fired, as a JSON object of the aggregate's fields (or `result` for
    /// an aggregate that is not an object) with `window_start` and `window_end`. The
    /// results are kept in the window's state table `window-latest`, so they are in its
    /// checkpoints; a window that is not queryable keeps nothing.
    pub fn queryable(mut self, table: &str) -> Self {
        self.queryable = Some(table.to_string());
        self
    }

    /// Fires each window early too, with its result so far, as `trigger` says (see
    /// [`Trigger`]): results are then marked [`super::Timing::Early`] and all but a window's
    /// first have `is_update` set. The window still fires on time. Tumbling and sliding
    /// windows only.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
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
        if let Some(trigger) = self.trigger {
            if let Err(reason) = trigger.check() {
                self.keyed.stream().invalid(reason);
            }
            if let WindowSpec::Session(_) = self.spec {
                self.keyed.stream().invalid(format!(
                    "a trigger ({trigger}) needs tumbling or sliding windows, not {}",
                    self.spec
                ));
            }
        }
        let mut detail = format!(
            "{}, allowed lateness {}ms",
            self.spec, self.allowed_lateness
        );
        if let Some(trigger) = self.trigger {
            detail += &format!(", {trigger}");
        }
        let factory = WindowFactory {
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            aggregator,
            route_late: self.late.is_some(),
            route_rejects: self.rejects.is_some(),
            origin: self.origin,
            queryable: self.queryable.is_some(),
            trigger: self.trigger,
            _types: std::marker::PhantomData,
        };
        let mut events = self.keyed.process("window", detail, factory);
        if let Some(table) = &self.queryable {
            events = events.queryable(table);
        }
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
            (Some(SideSink(late)), None) => late(side.flat_map(WindowEvent::into_late).internal()),
            (None, Some(SideSink(rejects))) => {
                rejects(side.flat_map(WindowEvent::into_rejected).internal())
            }
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
    /// [`super::local`]). The results are those of [`WindowedStream::aggregate`]; it pays where
    /// few keys carry many events. Tumbling or sliding windows, without a late-data sink or
    /// rejects. With [`WindowedStream::origin`], an event the aggregate fails on in the
    /// local phase is named as the one-phase window names it; a failure merging partials
    /// names the key and window only.
    pub fn aggregate_two_phase<A: Aggregator<T>>(
        self,
        aggregator: A,
    ) -> Stream<WindowResult<K, A::Output>> {
        match self.local_pane() {
            Ok((pane, offset)) => self.local_then_global(aggregator, pane, offset),
            Err(reason) => {
                self.keyed.stream().invalid(format!(
                    "two-phase aggregation {reason}: use .aggregate(..) instead"
                ));
                self.aggregate(aggregator)
            }
        }
    }

    /// As [`WindowedStream::aggregate_two_phase`] where two phases give this window's
    /// results, and as [`WindowedStream::aggregate`] (one phase, no error) where they
    /// cannot: session windows, a late-data sink, a trigger or rejects. For a job whose
    /// options decide the window's shape (as `weir run window-agg` at `--parallelism` > 1),
    /// so that it does not restate these rules; Flink's optimizer chooses the same way
    /// (`table.optimizer.agg-phase-strategy: AUTO`).
    pub fn aggregate_two_phase_or_one<A: Aggregator<T>>(
        self,
        aggregator: A,
    ) -> Stream<WindowResult<K, A::Output>> {
        match self.local_pane() {
            Ok((pane, offset)) => self.local_then_global(aggregator, pane, offset),
            Err(_) => self.aggregate(aggregator),
        }
    }

    /// The pane length and offset the local phase sums by, or why two phases cannot give
    /// this window's results.
    fn local_pane(&self) -> Result<(i64, i64), String> {
        let pane = match self.spec {
            WindowSpec::Tumbling(t) => (t.size, t.offset),
            WindowSpec::Sliding(s) => (aligned::gcd(s.size, s.slide), s.offset),
            WindowSpec::Session(_) => {
                return Err(format!(
                    "needs tumbling or sliding windows, not {}",
                    self.spec
                ))
            }
        };
        if self.late.is_some() {
            return Err(
                "cannot route late events to a sink (they would go as partial aggregates)".into(),
            );
        }
        if self.trigger.is_some() {
            return Err(
                "cannot fire early (the window receives partials, not events, to count)".into(),
            );
        }
        if self.rejects.is_some() {
            return Err("cannot reject single events (the window receives partials)".into());
        }
        Ok(pane)
    }

    /// The local phase (per input instance, before the exchange) and the window merging
    /// its partials.
    fn local_then_global<A: Aggregator<T>>(
        self,
        aggregator: A,
        pane: i64,
        offset: i64,
    ) -> Stream<WindowResult<K, A::Output>> {
        let (key, local, origin) = (self.keyed.key_fn(), aggregator.clone(), self.origin);
        let partials = self
            .keyed
            .stream()
            .clone()
            .chain("local-window", move || {
                LocalWindows::new(key.clone(), pane, offset, local.clone(), origin.clone())
            })
            .internal();
        WindowedStream {
            keyed: partials.key_by(|p: &Partial<K, A::Acc>| p.key.clone()),
            spec: self.spec,
            allowed_lateness: self.allowed_lateness,
            late: None,
            rejects: None,
            origin: None,
            queryable: self.queryable,
            trigger: None,
        }
        .aggregate(MergePartials::new(aggregator))
    }
}
