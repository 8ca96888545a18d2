//! Joins of two streams by key. **This is where joined pairs are emitted**:
//! [`IntervalJoinOperator::process`] (interval join, as records arrive) and, for window
//! joins, where windows fire ([`crate::window::aligned`], [`crate::window::session`]).
//!
//! Both inputs are tagged ([`Side`]), unioned and keyed, so one keyed operator sees both
//! sides of a key in one place; its watermark is the minimum of the two inputs' (the
//! union's rule). As in Flink, an element is late, dropped and counted when its time is
//! below the watermark it arrives with (interval join) or its window has fired (window
//! join). With two inputs that watermark depends on how far the *other* input has got, so
//! results are deterministic when neither input runs ahead of the other by more than the
//! watermark delay; then nothing is late.
//!
//! # Interval join
//! `left.interval_join(right, lk, rk, lower, upper)` pairs `a` and `b` of the same key when
//! `a.ts + lower <= b.ts <= a.ts + upper` (milliseconds, either bound may be negative). A
//! pair is emitted as soon as its second element arrives, with event time
//! `max(a.ts, b.ts)`. A left element is dropped once the watermark passes `a.ts + upper`,
//! a right one once it passes `b.ts - lower`: no element that could still match them can
//! arrive unlate after that. The left-outer variant then emits each left element that
//! matched nothing as `(a, None)`, with event time `a.ts + upper`.
//!
//! # Temporal (stream-table) join
//! `events.temporal_join(changelog, ek, ck, value)` keeps the changelog as a versioned
//! table per key (`value` returns `Some(v)` for an upsert, `None` for a delete, each valid
//! from its record's event time) and joins each event with the version valid at the
//! event's time: `(e, Some(v))`, or `(e, None)` if there was none (or it was deleted). As
//! Flink's event-time temporal join does, an event waits until the watermark reaches it, so
//! versions that arrive after it but are older still count; it is emitted then, with its
//! own event time. Versions older than the watermark are compacted to the one still valid.
//!
//! # Window join
//! `left.window_join(right, lk, rk, spec)` pairs every `a` with every `b` of the same key
//! in the same window, when the window fires (`end - 1` reached by the watermark), with
//! event time `end - 1`; `window_cogroup` hands both sides' contents of the window to a
//! user function instead. `spec` is [`Tumbling`](crate::Tumbling), [`Sliding`](crate::Sliding) or
//! [`Session`](crate::Session): the join *is* the window operator (its assigners, panes,
//! session merging, firing and state) with an aggregate that collects both sides
//! ([`BothSides`]), so it has exactly the windows' semantics: a sliding window holds an
//! element once per pane, not once per window; a session of a key is formed by the
//! elements of **both** sides (a left element can bridge two right ones), and fires when
//! the merged session's `end - 1` is reached. Lateness is the windows' (allowed lateness
//! 0): an element is late, dropped and counted in `weir_late_events_total` when every
//! window it belongs to has fired (session: its merged session would already be due).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::metrics::Counter;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, Keyed, KeyedOperator, MapState, OperatorContext, Output, Record, StateBackend, StateKey,
    StateValue, Stream, TimerQueue, Timestamp,
};

use crate::aggregate::{AggregateError, Aggregator};
use crate::snapshot::{restored_watermark, save_watermark};
use crate::time_order::{insert_by_time, take_due, upto, TimeOrdered};
use crate::window::{Window, WindowExt, WindowSpec};

/// An element of one of the two inputs of a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Side<A, B> {
    /// From the left input.
    Left(A),
    /// From the right input.
    Right(B),
}

/// A pair from a window join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowPair<A, B> {
    /// The window both elements are in.
    pub window: Window,
    /// The left element.
    pub left: A,
    /// The right element.
    pub right: B,
}

/// Adds joins to streams (the stream is the left input).
pub trait JoinExt<A> {
    /// Inner interval join (see the module docs); bounds in milliseconds.
    fn interval_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        lower: i64,
        upper: i64,
    ) -> Stream<(A, B)>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static;

    /// Left-outer interval join: also each left element that matched nothing, once it no
    /// longer can, as `(a, None)`.
    fn interval_left_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        lower: i64,
        upper: i64,
    ) -> Stream<(A, Option<B>)>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static;

    /// Temporal join with a changelog (see the module docs): `version` turns a changelog
    /// record into `Some(value)` (upsert) or `None` (delete).
    fn temporal_join<B, V, K, LK, RK, VF>(
        self,
        changelog: Stream<B>,
        key: LK,
        changelog_key: RK,
        version: VF,
    ) -> Stream<(A, Option<V>)>
    where
        B: StateValue + Data,
        V: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
        VF: Fn(&B) -> Option<V> + Clone + Send + 'static;

    /// Window join over tumbling, sliding or session windows (see the module docs): every
    /// left element paired with every right element of the same key and window.
    fn window_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        window: impl Into<WindowSpec>,
    ) -> Stream<WindowPair<A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static;

    /// Both sides' contents of each key and window when it fires, for a user function over
    /// them (`.map(..)` / `.flat_map(..)` on the result); a window with elements on only one
    /// side comes too, with the other side empty.
    fn window_cogroup<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        window: impl Into<WindowSpec>,
    ) -> Stream<CoGrouped<K, A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static;
}

/// Both inputs tagged and unioned, checked for event times.
fn tagged<A: Data, B: Data>(left: Stream<A>, right: Stream<B>) -> Stream<Side<A, B>> {
    if !left.has_timestamps() || !right.has_timestamps() {
        left.invalid("a join needs event times on both inputs: call .timestamps(..) first".into());
    }
    left.map(Side::Left).union(right.map(Side::Right))
}

/// The key of a tagged element.
fn side_key<A, B, K>(
    left_key: impl Fn(&A) -> K + Clone + Send + 'static,
    right_key: impl Fn(&B) -> K + Clone + Send + 'static,
) -> impl Fn(&Side<A, B>) -> K + Clone + Send + 'static {
    move |s: &Side<A, B>| match s {
        Side::Left(a) => left_key(a),
        Side::Right(b) => right_key(b),
    }
}

impl<A: StateValue + Data> JoinExt<A> for Stream<A> {
    fn interval_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        lower: i64,
        upper: i64,
    ) -> Stream<(A, B)>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
    {
        let joined = interval(self, right, left_key, right_key, lower, upper, false);
        joined
            .clone()
            .flat_map(|(a, b)| b.map(|b| (a, b)))
            .uid_names(&joined)
    }

    fn interval_left_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        lower: i64,
        upper: i64,
    ) -> Stream<(A, Option<B>)>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
    {
        interval(self, right, left_key, right_key, lower, upper, true)
    }

    fn temporal_join<B, V, K, LK, RK, VF>(
        self,
        changelog: Stream<B>,
        key: LK,
        changelog_key: RK,
        version: VF,
    ) -> Stream<(A, Option<V>)>
    where
        B: StateValue + Data,
        V: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
        VF: Fn(&B) -> Option<V> + Clone + Send + 'static,
    {
        // Each changelog record becomes its key and version before the union.
        let versions = changelog.map(move |b| (changelog_key(&b), version(&b)));
        tagged(self, versions)
            .key_by(side_key(key, |(k, _): &(K, Option<V>)| k.clone()))
            .process(
                "temporal-join",
                "events join the version valid at their time".into(),
                TemporalJoinFactory {
                    _types: PhantomData,
                },
            )
    }

    fn window_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        window: impl Into<WindowSpec>,
    ) -> Stream<WindowPair<A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
    {
        let groups = cogroup(self, right, left_key, right_key, window.into());
        groups.clone().flat_map(CoGrouped::pairs).uid_names(&groups)
    }

    fn window_cogroup<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        window: impl Into<WindowSpec>,
    ) -> Stream<CoGrouped<K, A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
    {
        cogroup(self, right, left_key, right_key, window.into())
    }
}

fn interval<A, B, K, LK, RK>(
    left: Stream<A>,
    right: Stream<B>,
    left_key: LK,
    right_key: RK,
    lower: i64,
    upper: i64,
    outer: bool,
) -> Stream<(A, Option<B>)>
where
    A: StateValue + Data,
    B: StateValue + Data,
    K: StateKey + StableHash + Data,
    LK: Fn(&A) -> K + Clone + Send + 'static,
    RK: Fn(&B) -> K + Clone + Send + 'static,
{
    if lower > upper {
        left.invalid(format!(
            "interval join bounds {lower}..={upper} ms are empty: the lower bound must not exceed the upper"
        ));
    }
    tagged(left, right)
        .key_by(side_key(left_key, right_key))
        .process(
            "interval-join",
            format!(
                "{} a.ts + {lower} ms <= b.ts <= a.ts + {upper} ms",
                if outer { "left outer," } else { "inner," }
            ),
            IntervalJoinFactory {
                lower,
                upper,
                outer,
                _types: PhantomData,
            },
        )
}

// ---------------------------------------------------------------- interval join

struct IntervalJoinFactory<K, A, B> {
    lower: i64,
    upper: i64,
    outer: bool,
    _types: PhantomData<fn(K, A) -> B>,
}

impl<K: StateKey + Data, A: StateValue + Data, B: StateValue + Data> OperatorFactory
    for IntervalJoinFactory<K, A, B>
{
    type Key = K;
    type In = Side<A, B>;
    type Out = (A, Option<B>);
    type Operator<S: StateBackend> = IntervalJoinOperator<S, K, A, B>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(IntervalJoinOperator {
            lower: self.lower,
            upper: self.upper,
            outer: self.outer,
            buffers: state.map_state("interval-join-buffers")?,
            cleanup: state.timer_queue("cleanup")?,
            watermark: Timestamp::MIN,
            late: ctx.metrics.late_events.clone(),
        })
    }
}

/// The elements of one key that may still find partners.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Buffers<A, B> {
    /// Left elements: time, element, whether it matched anything yet.
    lefts: Vec<(Timestamp, A, bool)>,
    /// Right elements: time, element.
    rights: Vec<(Timestamp, B)>,
}

impl<A, B> Default for Buffers<A, B> {
    fn default() -> Self {
        Buffers {
            lefts: Vec::new(),
            rights: Vec::new(),
        }
    }
}

/// One worker of an interval join.
pub struct IntervalJoinOperator<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> {
    lower: i64,
    upper: i64,
    outer: bool,
    buffers: S::Map<K, Buffers<A, B>>,
    cleanup: S::Timers<K>,
    watermark: Timestamp,
    late: Counter,
}

impl<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> std::fmt::Debug
    for IntervalJoinOperator<S, K, A, B>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoinOperator")
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .field("keys", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, B> IntervalJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    B: StateValue + Data,
{
    /// When a left element at `ts` can no longer match: the watermark passed `ts + upper`.
    fn left_expiry(&self, ts: Timestamp) -> Timestamp {
        ts.saturating_add(self.upper).saturating_add(1)
    }

    /// When a right element at `ts` can no longer match: the watermark passed `ts - lower`.
    fn right_expiry(&self, ts: Timestamp) -> Timestamp {
        ts.saturating_sub(self.lower).saturating_add(1)
    }

    /// Drops the elements the watermark made useless (emitting unmatched lefts if outer).
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<(), BoxError> {
        self.watermark = self.watermark.max(watermark);
        let w = self.watermark;
        let (lower, upper, outer) = (self.lower, self.upper, self.outer);
        while let Some((_, keys)) = self.cleanup.pop_due(|t| t <= w)? {
            for key in keys {
                let mut unmatched = Vec::new();
                let empty = self.buffers.modify(&key, |b| {
                    b.lefts.retain(|(ts, a, matched)| {
                        let keep = ts.saturating_add(upper) >= w;
                        if !keep && outer && !matched {
                            unmatched.push((*ts, a.clone()));
                        }
                        keep
                    });
                    b.rights.retain(|(ts, _)| ts.saturating_sub(lower) >= w);
                    b.lefts.is_empty() && b.rights.is_empty()
                })?;
                if empty == Some(true) {
                    self.buffers.take(&key)?;
                }
                for (ts, a) in unmatched {
                    out.emit(ts.saturating_add(upper), (a, None));
                }
            }
        }
        Ok(())
    }
}

impl<S, K, A, B> KeyedOperator for IntervalJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    B: StateValue + Data,
{
    type Key = K;
    type In = Side<A, B>;
    type Out = (A, Option<B>);

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, Side<A, B>>>>,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<(), BoxError> {
        let mut late = 0;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let ts = r.ts;
            if ts < self.watermark {
                late += 1;
                continue;
            }
            let Keyed { key, value } = r.value;
            let (lower, upper) = (self.lower, self.upper);
            let mut pairs = Vec::new();
            let expiry = match value {
                Side::Left(a) => {
                    self.buffers.update(&key, Buffers::default, |b| {
                        let (from, to) = (ts.saturating_add(lower), ts.saturating_add(upper));
                        let mut matched = false;
                        for (bts, bv) in b.rights.iter().filter(|(t, _)| (from..=to).contains(t)) {
                            pairs.push((ts.max(*bts), a.clone(), bv.clone()));
                            matched = true;
                        }
                        b.lefts.push((ts, a, matched));
                    })?;
                    self.left_expiry(ts)
                }
                Side::Right(bv) => {
                    self.buffers.update(&key, Buffers::default, |b| {
                        let (from, to) = (ts.saturating_sub(upper), ts.saturating_sub(lower));
                        for (ats, a, matched) in b
                            .lefts
                            .iter_mut()
                            .filter(|(t, _, _)| (from..=to).contains(t))
                        {
                            pairs.push((ts.max(*ats), a.clone(), bv.clone()));
                            *matched = true;
                        }
                        b.rights.push((ts, bv));
                    })?;
                    self.right_expiry(ts)
                }
            };
            self.cleanup.register(expiry, key)?;
            for (at, a, b) in pairs {
                out.emit(at, (a, Some(b)));
            }
        }
        self.late.inc_by(late);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<(), BoxError> {
        // The runner forwards the watermark after this.
        self.advance(watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.buffers.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.buffers.flush()?;
        save_watermark(self.watermark)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        self.watermark = restored_watermark(snapshots)?;
        let mut expiries = Vec::new();
        let (lower, upper) = (self.lower, self.upper);
        self.buffers.scan(|key, b| {
            let first = b
                .lefts
                .iter()
                .map(|(ts, _, _)| ts.saturating_add(upper).saturating_add(1))
                .chain(
                    b.rights
                        .iter()
                        .map(|(ts, _)| ts.saturating_sub(lower).saturating_add(1)),
                )
                .min();
            if let Some(t) = first {
                expiries.push((t, key));
            }
        })?;
        for (t, key) in expiries {
            self.cleanup.register(t, key)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- temporal join

struct TemporalJoinFactory<K, A, V> {
    _types: PhantomData<fn(K, A) -> V>,
}

impl<K: StateKey + Data, A: StateValue + Data, V: StateValue + Data> OperatorFactory
    for TemporalJoinFactory<K, A, V>
{
    type Key = K;
    type In = Side<A, (K, Option<V>)>;
    type Out = (A, Option<V>);
    type Operator<S: StateBackend> = TemporalJoinOperator<S, K, A, V>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(TemporalJoinOperator {
            keys: state.map_state("temporal-join")?,
            timers: state.timer_queue("timers")?,
            watermark: Timestamp::MIN,
            late: ctx.metrics.late_events.clone(),
        })
    }
}

/// One key's versioned table row and the events waiting for the watermark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versioned<A, V> {
    /// Versions by the time they are valid from: a value, or deleted.
    versions: TimeOrdered<Option<V>>,
    /// Events waiting for the watermark.
    pending: TimeOrdered<A>,
}

impl<A, V> Default for Versioned<A, V> {
    fn default() -> Self {
        Versioned {
            versions: Vec::new(),
            pending: Vec::new(),
        }
    }
}

/// One worker of a temporal join.
pub struct TemporalJoinOperator<S: StateBackend, K: StateKey, A: StateValue, V: StateValue> {
    keys: S::Map<K, Versioned<A, V>>,
    timers: S::Timers<K>,
    watermark: Timestamp,
    late: Counter,
}

impl<S: StateBackend, K: StateKey, A: StateValue, V: StateValue> std::fmt::Debug
    for TemporalJoinOperator<S, K, A, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalJoinOperator")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, V> TemporalJoinOperator<S, K, A, V>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    V: StateValue + Data,
{
    /// Joins every waiting event the watermark reached, then compacts the versions.
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<(A, Option<V>)>,
    ) -> Result<(), BoxError> {
        self.watermark = self.watermark.max(watermark);
        let w = self.watermark;
        while let Some((_, keys)) = self.timers.pop_due(|t| t <= w)? {
            for key in keys {
                let mut joined = Vec::new();
                let next = self.keys.modify(&key, |row| {
                    for (ts, event) in take_due(&mut row.pending, w) {
                        let valid = upto(&row.versions, ts);
                        let value = valid.checked_sub(1).and_then(|i| row.versions[i].1.clone());
                        joined.push((ts, event, value));
                    }
                    // Only the version valid at the watermark, and later ones, can be used.
                    let valid = upto(&row.versions, w);
                    row.versions.drain(..valid.saturating_sub(1));
                    row.pending.first().map(|(ts, _)| *ts)
                })?;
                if let Some(Some(t)) = next {
                    self.timers.register(t, key)?;
                }
                for (ts, event, value) in joined {
                    out.emit(ts, (event, value));
                }
            }
        }
        Ok(())
    }
}

impl<S, K, A, V> KeyedOperator for TemporalJoinOperator<S, K, A, V>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    V: StateValue + Data,
{
    type Key = K;
    type In = Side<A, (K, Option<V>)>;
    type Out = (A, Option<V>);

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, Side<A, (K, Option<V>)>>>>,
        out: &mut Output<(A, Option<V>)>,
    ) -> Result<(), BoxError> {
        let mut late = 0;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let ts = r.ts;
            if ts <= self.watermark {
                late += 1;
                continue;
            }
            let Keyed { key, value } = r.value;
            self.keys
                .update(&key, Versioned::default, |row| match value {
                    Side::Left(event) => {
                        insert_by_time(&mut row.pending, ts, event);
                    }
                    Side::Right((_, version)) => {
                        insert_by_time(&mut row.versions, ts, version);
                    }
                })?;
            // Events are joined at this time; versions are compacted then.
            self.timers.register(ts, key)?;
        }
        self.late.inc_by(late);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<(A, Option<V>)>,
    ) -> Result<(), BoxError> {
        // The runner forwards the watermark after this.
        self.advance(watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.keys.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.keys.flush()?;
        save_watermark(self.watermark)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        self.watermark = restored_watermark(snapshots)?;
        let mut due = Vec::new();
        self.keys.scan(|key, row| {
            if let Some((ts, _)) = row.pending.first() {
                due.push((*ts, key));
            }
        })?;
        for (ts, key) in due {
            self.timers.register(ts, key)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- window join

/// The contents of one key's window on both sides, when the window fired (a window join's
/// co-group): what a user function over both sides receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoGrouped<K, A, B> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The left elements in the window; their order is not specified (aligned windows:
    /// pane by pane, each in arrival order; sessions: in the order sessions merged).
    pub left: Vec<A>,
    /// The right elements in the window.
    pub right: Vec<B>,
}

impl<K, A: Clone, B: Clone> CoGrouped<K, A, B> {
    /// Every left element paired with every right element (none if a side is empty).
    pub fn pairs(self) -> Vec<WindowPair<A, B>> {
        let window = self.window;
        let mut pairs = Vec::with_capacity(self.left.len() * self.right.len());
        for a in &self.left {
            for b in &self.right {
                pairs.push(WindowPair {
                    window,
                    left: a.clone(),
                    right: b.clone(),
                });
            }
        }
        pairs
    }
}

/// The "aggregate" of a window join: collects each side's elements. Panes and merged
/// sessions concatenate, so the window operator's assigners, merging, firing, lateness and
/// state handling apply to joins unchanged.
struct BothSides<A, B>(PhantomData<fn() -> (A, B)>);

impl<A, B> Clone for BothSides<A, B> {
    fn clone(&self) -> Self {
        BothSides(PhantomData)
    }
}

impl<A: StateValue + Data, B: StateValue + Data> Aggregator<Side<A, B>> for BothSides<A, B> {
    type Acc = (Vec<A>, Vec<B>);
    type Output = (Vec<A>, Vec<B>);

    fn create(&self) -> Self::Acc {
        (Vec::new(), Vec::new())
    }

    fn add(&self, acc: &mut Self::Acc, event: &Side<A, B>) -> Result<(), AggregateError> {
        match event {
            Side::Left(a) => acc.0.push(a.clone()),
            Side::Right(b) => acc.1.push(b.clone()),
        }
        Ok(())
    }

    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), AggregateError> {
        acc.0.extend_from_slice(&other.0);
        acc.1.extend_from_slice(&other.1);
        Ok(())
    }

    fn finish(&self, acc: &Self::Acc) -> Self::Output {
        acc.clone()
    }

    fn finish_owned(&self, acc: Self::Acc) -> Self::Output {
        acc
    }
}

fn cogroup<A, B, K, LK, RK>(
    left: Stream<A>,
    right: Stream<B>,
    left_key: LK,
    right_key: RK,
    window: WindowSpec,
) -> Stream<CoGrouped<K, A, B>>
where
    A: StateValue + Data,
    B: StateValue + Data,
    K: StateKey + StableHash + Data,
    LK: Fn(&A) -> K + Clone + Send + 'static,
    RK: Fn(&B) -> K + Clone + Send + 'static,
{
    tagged(left, right)
        .key_by(side_key(left_key, right_key))
        .window(window)
        .aggregate(BothSides(PhantomData))
        .map(|r| CoGrouped {
            key: r.key,
            window: r.window,
            left: r.value.0,
            right: r.value.1,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeSet;

    use weir_engine::{Job, RunOptions, StateConfig, Watermarks};

    use super::*;
    use crate::test_support::{sorted, Collect, VecSource};
    use crate::window::{Session, Sliding, Tumbling};

    /// `(ts, key, id)`.
    type Ev = (i64, u32, u32);

    /// Events every 0-19 ms, up to 50 ms out of order (the watermark delay is 100 ms, so
    /// nothing is late), 5 keys.
    fn events(n: u32, seed: u64) -> Vec<Ev> {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let mut clock = 0;
        (0..n)
            .map(|id| {
                clock += (next() % 20) as i64;
                (clock - (next() % 50) as i64, (next() % 5) as u32, id)
            })
            .collect()
    }

    fn run<O: Data + Ord>(
        build: impl Fn(Stream<Ev>, Stream<Ev>) -> Stream<O>,
        parallelism: usize,
        rocksdb: bool,
    ) -> Vec<O> {
        let job = Job::new("join");
        let timed = |name: &str, evs: Vec<Ev>| {
            job.source(name, VecSource(evs))
                .timestamps(|e| e.0, Watermarks::bounded(Duration::from_millis(100)))
        };
        let (sink, seen) = Collect::new();
        build(
            timed("left", events(600, 1)),
            timed("right", events(500, 2)),
        )
        .sink("out", sink);
        let dir = tempfile::tempdir().expect("temp dir");
        let options = RunOptions {
            parallelism,
            state: if rocksdb {
                StateConfig::RocksDb {
                    dir: dir.path().to_path_buf(),
                    cache_entries: 2,
                }
            } else {
                StateConfig::Memory
            },
            ..RunOptions::default()
        };
        job.run(&options).expect("the job runs");
        sorted(&seen)
    }

    /// Every (parallelism, backend) the tests run under.
    const SETUPS: [(usize, bool); 3] = [(1, false), (2, false), (2, true)];

    fn interval_pairs(lower: i64, upper: i64) -> Vec<(Ev, Ev)> {
        let (lefts, rights) = (events(600, 1), events(500, 2));
        let mut pairs = Vec::new();
        for a in &lefts {
            for b in &rights {
                if a.1 == b.1 && a.0 + lower <= b.0 && b.0 <= a.0 + upper {
                    pairs.push((*a, *b));
                }
            }
        }
        pairs.sort();
        pairs
    }

    #[test]
    fn interval_join_pairs_exactly_the_elements_within_the_bounds() {
        let expected = interval_pairs(-30, 50);
        assert!(expected.len() > 100, "enough pairs to mean something");
        for (p, rocksdb) in SETUPS {
            let actual = run(
                |l, r| l.interval_join(r, |a: &Ev| a.1, |b: &Ev| b.1, -30, 50),
                p,
                rocksdb,
            );
            assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
        }
    }

    #[test]
    fn left_outer_interval_join_adds_each_unmatched_left_once() {
        let pairs = interval_pairs(0, 10);
        let matched: BTreeSet<u32> = pairs.iter().map(|(a, _)| a.2).collect();
        let mut expected: Vec<(Ev, Option<Ev>)> =
            pairs.into_iter().map(|(a, b)| (a, Some(b))).collect();
        let unmatched = events(600, 1)
            .into_iter()
            .filter(|a| !matched.contains(&a.2))
            .map(|a| (a, None));
        expected.extend(unmatched);
        expected.sort();
        assert!(expected.iter().any(|(_, b)| b.is_none()));
        for (p, rocksdb) in SETUPS {
            let actual = run(
                |l, r| l.interval_left_join(r, |a: &Ev| a.1, |b: &Ev| b.1, 0, 10),
                p,
                rocksdb,
            );
            assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
        }
    }

    #[test]
    fn temporal_join_uses_the_version_valid_at_each_event() {
        let changes = events(500, 2);
        // Every 7th change deletes its key.
        let version = |c: &Ev| (!c.2.is_multiple_of(7)).then_some(c.2);
        let mut expected: Vec<(Ev, Option<u32>)> = events(600, 1)
            .into_iter()
            .map(|e| {
                let valid = changes
                    .iter()
                    .filter(|c| c.1 == e.1 && c.0 <= e.0)
                    // The latest by time; among equal times the last to arrive.
                    .fold(None, |best: Option<&Ev>, c| match best {
                        Some(b) if b.0 > c.0 => Some(b),
                        _ => Some(c),
                    });
                (e, valid.and_then(version))
            })
            .collect();
        expected.sort();
        assert!(expected.iter().any(|(_, v)| v.is_none()));
        assert!(expected.iter().filter(|(_, v)| v.is_some()).count() > 300);
        for (p, rocksdb) in SETUPS {
            let actual = run(
                |l, r| l.temporal_join(r, |e: &Ev| e.1, |c: &Ev| c.1, version),
                p,
                rocksdb,
            );
            assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
        }
    }

    /// Pairs `(window start, a, b)` of the same key whose windows, given by `windows` for
    /// the key's elements of both sides, contain both.
    fn window_pairs(windows: impl Fn(&[i64]) -> Vec<(i64, i64)>) -> Vec<(i64, Ev, Ev)> {
        let (lefts, rights) = (events(600, 1), events(500, 2));
        let mut expected = Vec::new();
        for key in 0..5 {
            let times: Vec<i64> = lefts
                .iter()
                .chain(&rights)
                .filter(|e| e.1 == key)
                .map(|e| e.0)
                .collect();
            for (start, end) in windows(&times) {
                let inside = |e: &&Ev| e.1 == key && start <= e.0 && e.0 < end;
                for a in lefts.iter().filter(inside) {
                    for b in rights.iter().filter(inside) {
                        expected.push((start, *a, *b));
                    }
                }
            }
        }
        expected.sort();
        expected
    }

    fn run_window_join(spec: WindowSpec, p: usize, rocksdb: bool) -> Vec<(i64, Ev, Ev)> {
        run(
            |l, r| {
                l.window_join(r, |a: &Ev| a.1, |b: &Ev| b.1, spec)
                    .map(|pair| (pair.window.start, pair.left, pair.right))
            },
            p,
            rocksdb,
        )
    }

    #[test]
    fn tumbling_window_join_pairs_the_elements_of_a_key_in_the_same_window() {
        let expected = window_pairs(|times| {
            let starts: BTreeSet<i64> = times.iter().map(|t| t - t.rem_euclid(100)).collect();
            starts.into_iter().map(|s| (s, s + 100)).collect()
        });
        assert!(expected.len() > 200, "{} pairs", expected.len());
        for (p, rocksdb) in SETUPS {
            let spec = Tumbling::of(Duration::from_millis(100)).into();
            assert_eq!(
                run_window_join(spec, p, rocksdb),
                expected,
                "P={p} rocksdb={rocksdb}"
            );
        }
    }

    #[test]
    fn sliding_window_join_pairs_per_window_each_window_a_pair_is_in() {
        // Size 100, slide 40: windows start at multiples of 40 (not a divisor of 100, so
        // panes are 20 ms); a pair is emitted once for every window holding both elements.
        let expected = window_pairs(|times| {
            let mut windows = BTreeSet::new();
            for t in times {
                let mut s = t - t.rem_euclid(40);
                while s + 100 > *t {
                    windows.insert((s, s + 100));
                    s -= 40;
                }
            }
            windows.into_iter().collect()
        });
        let tumbling_pairs = window_pairs(|times| {
            let starts: BTreeSet<i64> = times.iter().map(|t| t - t.rem_euclid(100)).collect();
            starts.into_iter().map(|s| (s, s + 100)).collect()
        });
        assert!(expected.len() > 2 * tumbling_pairs.len());
        for (p, rocksdb) in SETUPS {
            let spec = Sliding::of(Duration::from_millis(100), Duration::from_millis(40)).into();
            assert_eq!(
                run_window_join(spec, p, rocksdb),
                expected,
                "P={p} rocksdb={rocksdb}"
            );
        }
    }

    #[test]
    fn session_window_join_forms_sessions_from_both_sides() {
        // Gap 15: a key's elements of either side closer than (or exactly) 15 ms apart are
        // in one session [first, last + 15).
        let expected = window_pairs(|times| {
            let mut sorted = times.to_vec();
            sorted.sort();
            let mut sessions: Vec<(i64, i64)> = Vec::new();
            for t in sorted {
                match sessions.last_mut() {
                    Some(last) if t <= last.1 => last.1 = last.1.max(t + 15),
                    _ => sessions.push((t, t + 15)),
                }
            }
            sessions
        });
        assert!(expected.len() > 200, "{} pairs", expected.len());
        for (p, rocksdb) in SETUPS {
            let spec = Session::with_gap(Duration::from_millis(15)).into();
            assert_eq!(
                run_window_join(spec, p, rocksdb),
                expected,
                "P={p} rocksdb={rocksdb}"
            );
        }
    }

    /// A fired window: `(start, end, left ids, right ids)`.
    type Fired = (i64, i64, Vec<u32>, Vec<u32>);

    /// Runs a cogroup of `lefts` and `rights` (each its own source, in time order, so
    /// nothing is late however the inputs interleave) at P = 1; returns `(start, end, left
    /// ids, right ids)` per fired window.
    fn cogroup_once(spec: WindowSpec, lefts: Vec<Ev>, rights: Vec<Ev>) -> Vec<Fired> {
        let job = Job::new("cogroup");
        let timed = |name: &str, evs: Vec<Ev>| {
            job.source(name, VecSource(evs))
                .timestamps(|e| e.0, Watermarks::bounded(Duration::from_millis(10)))
        };
        let (sink, seen) = Collect::new();
        timed("left", lefts)
            .window_cogroup(timed("right", rights), |a: &Ev| a.1, |b: &Ev| b.1, spec)
            .map(|g| {
                // The order within a side is not specified (merged sessions): sort.
                let ids = |side: &[Ev]| {
                    let mut ids: Vec<u32> = side.iter().map(|e| e.2).collect();
                    ids.sort();
                    ids
                };
                (g.window.start, g.window.end, ids(&g.left), ids(&g.right))
            })
            .sink("out", sink);
        job.run(&RunOptions::default()).expect("the job runs");
        sorted(&seen)
    }

    #[test]
    fn cogroup_hands_over_one_sided_windows_and_sessions_span_both_sides() {
        // Left 1 and right 2 share [0,100); left 3 is alone in [200,300) (an empty right
        // side, so a join would emit nothing for it).
        let tumbling = Tumbling::of(Duration::from_millis(100)).into();
        let lefts = vec![(10, 0, 1), (250, 0, 3), (300, 0, 6)];
        let rights = vec![(20, 0, 2), (400, 0, 5)];
        assert_eq!(
            cogroup_once(tumbling, lefts, rights),
            vec![
                (0, 100, vec![1], vec![2]),
                (200, 300, vec![3], vec![]),
                (300, 400, vec![6], vec![]),
                (400, 500, vec![], vec![5]),
            ]
        );
        // A session joins across sides: left 1 at 0 and left 3 at 40 (gap 25) are bridged
        // by right 2 at 20, so all three share one session [0, 65).
        let session = Session::with_gap(Duration::from_millis(25)).into();
        assert_eq!(
            cogroup_once(session, vec![(0, 0, 1), (40, 0, 3)], vec![(20, 0, 2)]),
            vec![(0, 65, vec![1, 3], vec![2])]
        );
        // Without the bridge they are two sessions, each one-sided.
        assert_eq!(
            cogroup_once(session, vec![(0, 0, 1), (40, 0, 3)], vec![]),
            vec![(0, 25, vec![1], vec![]), (40, 65, vec![3], vec![])]
        );
    }

    /// Feeds `(ts, watermark before it, side)` to one window-join operator instance and
    /// returns `(start, end, left ids, right ids)` per fired window and the late count.
    fn join_operator(spec: WindowSpec, input: &[(i64, i64, Side<u32, u32>)]) -> (Vec<Fired>, u64) {
        use weir_engine::MemoryBackend;
        let ctx = crate::test_support::operator_context("window");
        let factory = crate::window::WindowFactory::<u8, Side<u32, u32>, _>::plain(
            spec,
            BothSides(PhantomData),
        );
        let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
        let mut out = Output::default();
        for (ts, watermark, side) in input {
            let value = Keyed {
                key: 0,
                value: side.clone(),
            };
            let record = Record {
                ts: *ts,
                watermark: *watermark,
                value,
            };
            op.process(vec![record], &mut out).expect("process");
        }
        op.on_watermark(i64::MAX, &mut out).expect("watermark");
        let mut rows: Vec<_> =
            out.take()
                .into_iter()
                .filter_map(|r| match r.value {
                    crate::window::WindowEvent::Result(w) => {
                        let (l, r2) = w.value;
                        Some((w.window.start, w.window.end, l, r2))
                    }
                    crate::window::WindowEvent::Late(_)
                    | crate::window::WindowEvent::Rejected(_) => None,
                })
                .collect();
        rows.sort();
        (rows, ctx.metrics.late_events.get())
    }

    #[test]
    fn window_join_drops_and_counts_elements_of_fired_windows() {
        const MIN: i64 = i64::MIN;
        // Watermark 150 fired [0,100): right 4 at ts 5 is late; right 7 at 150 is not.
        let (rows, late) = join_operator(
            Tumbling::of(Duration::from_millis(100)).into(),
            &[
                (10, MIN, Side::Left(1)),
                (20, MIN, Side::Right(2)),
                (400, 0, Side::Right(5)),
                (5, 150, Side::Right(4)),
                (150, 150, Side::Right(7)),
            ],
        );
        assert_eq!(
            rows,
            vec![
                (0, 100, vec![1], vec![2]),
                (100, 200, vec![], vec![7]),
                (400, 500, vec![], vec![5]),
            ]
        );
        assert_eq!(late, 1);
        // Sliding 100/50: at watermark 120, ts 60 is late for [0,100) but still joins
        // [50,150); ts 40 (windows [-50,50) and [0,100), both fired) is late.
        let (rows, late) = join_operator(
            Sliding::of(Duration::from_millis(100), Duration::from_millis(50)).into(),
            &[
                (70, MIN, Side::Left(1)),
                (60, 120, Side::Right(2)),
                (40, 120, Side::Right(3)),
            ],
        );
        assert_eq!(
            rows,
            vec![(0, 100, vec![1], vec![]), (50, 150, vec![1], vec![2])]
        );
        assert_eq!(late, 1);
        // Session gap 10 at watermark 30: right 2 at 15 touches the open session of left 1
        // at 25 ([25,35)), so it joins it; right 3 at 2 ([2,12), due) touches nothing open.
        let (rows, late) = join_operator(
            Session::with_gap(Duration::from_millis(10)).into(),
            &[
                (25, MIN, Side::Left(1)),
                (15, 30, Side::Right(2)),
                (2, 30, Side::Right(3)),
            ],
        );
        assert_eq!(rows, vec![(15, 35, vec![1], vec![2])]);
        assert_eq!(late, 1);
    }
}
