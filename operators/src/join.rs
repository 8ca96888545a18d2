//! Joins of two streams by key. **This is where joined pairs are emitted**:
//! [`IntervalJoinOperator::process`] (interval join, as records arrive) and
//! [`WindowJoinOperator::advance`] (window join, when a window fires).
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
//! `left.window_join(right, lk, rk, Tumbling::of(..))` pairs every `a` with every `b` of
//! the same key in the same tumbling window, when the window fires (`end - 1` reached by
//! the watermark), with event time `end - 1`.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::metrics::Counter;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, Keyed, KeyedOperator, MapState, Namespaced, OperatorContext, Output, Record,
    StateBackend, StateKey, StateValue, Stream, Timestamp,
};

use crate::snapshot::{restored_watermark, save_watermark};
use crate::time_order::{insert_by_time, take_due, upto, TimeOrdered};
use crate::window::{window_start, Timers, Tumbling, Window};

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

    /// Window join over tumbling windows (see the module docs).
    fn window_join<B, K, LK, RK>(
        self,
        right: Stream<B>,
        left_key: LK,
        right_key: RK,
        window: Tumbling,
    ) -> Stream<WindowPair<A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data + Ord,
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
        interval(self, right, left_key, right_key, lower, upper, false)
            .flat_map(|(a, b)| b.map(|b| (a, b)))
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
        window: Tumbling,
    ) -> Stream<WindowPair<A, B>>
    where
        B: StateValue + Data,
        K: StateKey + StableHash + Data + Ord,
        LK: Fn(&A) -> K + Clone + Send + 'static,
        RK: Fn(&B) -> K + Clone + Send + 'static,
    {
        tagged(self, right)
            .key_by(side_key(left_key, right_key))
            .process(
                "window-join",
                format!("tumbling {} ms", window.size()),
                WindowJoinFactory {
                    window,
                    _types: PhantomData,
                },
            )
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
            cleanup: Timers::new(),
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
    cleanup: Timers<K>,
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
        while let Some((_, keys)) = self.cleanup.pop_due(|t| t <= w) {
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
            self.cleanup.register(expiry, key);
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
            self.cleanup.register(t, key);
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
            timers: Timers::new(),
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
    timers: Timers<K>,
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
        while let Some((_, keys)) = self.timers.pop_due(|t| t <= w) {
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
                    self.timers.register(t, key);
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
            self.timers.register(ts, key);
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
            self.timers.register(ts, key);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- window join

struct WindowJoinFactory<K, A, B> {
    window: Tumbling,
    _types: PhantomData<fn(K, A) -> B>,
}

impl<K: StateKey + Data + Ord, A: StateValue + Data, B: StateValue + Data> OperatorFactory
    for WindowJoinFactory<K, A, B>
{
    type Key = K;
    type In = Side<A, B>;
    type Out = WindowPair<A, B>;
    type Operator<S: StateBackend> = WindowJoinOperator<S, K, A, B>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(WindowJoinOperator {
            size: self.window.size(),
            offset: self.window.offset(),
            contents: state.map_state("window-join-contents")?,
            due: BTreeSet::new(),
            watermark: Timestamp::MIN,
            late: ctx.metrics.late_events.clone(),
        })
    }
}

/// The elements of one key in one window, by side.
type WindowContents<A, B> = (Vec<A>, Vec<B>);

/// One worker of a window join.
pub struct WindowJoinOperator<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> {
    size: i64,
    offset: i64,
    contents: S::Map<Namespaced<K, Timestamp>, WindowContents<A, B>>,
    /// Open windows by `(start, key)`; all windows have the same size.
    due: BTreeSet<(Timestamp, Namespaced<K, Timestamp>)>,
    watermark: Timestamp,
    late: Counter,
}

impl<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> std::fmt::Debug
    for WindowJoinOperator<S, K, A, B>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowJoinOperator")
            .field("size", &self.size)
            .field("open", &self.due.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, B> WindowJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    A: StateValue + Data,
    B: StateValue + Data,
{
    /// Fires every window with `end - 1 <= watermark`: all pairs of its two sides.
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<WindowPair<A, B>>,
    ) -> Result<(), BoxError> {
        self.watermark = self.watermark.max(watermark);
        while let Some((start, _)) = self.due.first() {
            let end = start.saturating_add(self.size);
            if end - 1 > self.watermark {
                break;
            }
            let Some((_, slot)) = self.due.pop_first() else {
                break;
            };
            let Some((lefts, rights)) = self.contents.take(&slot)? else {
                continue;
            };
            let window = Window {
                start: slot.namespace,
                end,
            };
            for a in &lefts {
                for b in &rights {
                    out.emit(
                        end - 1,
                        WindowPair {
                            window,
                            left: a.clone(),
                            right: b.clone(),
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

impl<S, K, A, B> KeyedOperator for WindowJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    A: StateValue + Data,
    B: StateValue + Data,
{
    type Key = K;
    type In = Side<A, B>;
    type Out = WindowPair<A, B>;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, Side<A, B>>>>,
        out: &mut Output<WindowPair<A, B>>,
    ) -> Result<(), BoxError> {
        let mut late = 0;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let start = window_start(r.ts, self.size, self.offset);
            if start.saturating_add(self.size) - 1 <= self.watermark {
                late += 1;
                continue;
            }
            let slot = Namespaced {
                key: r.value.key,
                namespace: start,
            };
            self.contents
                .update(&slot, WindowContents::default, |(lefts, rights)| {
                    match r.value.value {
                        Side::Left(a) => lefts.push(a),
                        Side::Right(b) => rights.push(b),
                    }
                })?;
            self.due.insert((start, slot));
        }
        self.late.inc_by(late);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<WindowPair<A, B>>,
    ) -> Result<(), BoxError> {
        // The runner forwards the watermark after this.
        self.advance(watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.due.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.contents.flush()?;
        save_watermark(self.watermark)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        self.watermark = restored_watermark(snapshots)?;
        let due = &mut self.due;
        self.contents.scan(|slot, _| {
            due.insert((slot.namespace, slot));
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_engine::{Job, RunOptions, StateConfig, Watermarks};

    use super::*;
    use crate::test_support::{sorted, Collect, VecSource};

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

    #[test]
    fn window_join_pairs_the_elements_of_a_key_in_the_same_window() {
        let (lefts, rights) = (events(600, 1), events(500, 2));
        let window = |ts: i64| ts - ts.rem_euclid(100);
        let mut expected = Vec::new();
        for a in &lefts {
            for b in &rights {
                if a.1 == b.1 && window(a.0) == window(b.0) {
                    expected.push((window(a.0), *a, *b));
                }
            }
        }
        expected.sort();
        for (p, rocksdb) in SETUPS {
            let actual = run(
                |l, r| {
                    l.window_join(
                        r,
                        |a: &Ev| a.1,
                        |b: &Ev| b.1,
                        Tumbling::of(Duration::from_millis(100)),
                    )
                    .map(|pair| (pair.window.start, pair.left, pair.right))
                },
                p,
                rocksdb,
            );
            assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
        }
    }
}
