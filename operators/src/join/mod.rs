//! Joins of two streams by key. **This is where joined pairs are emitted**:
//! [`IntervalJoinOperator`]'s `on_event` (interval join, as records arrive) and, for window
//! joins, where windows fire ([`crate::window::aligned`], [`crate::window::session`]).
//! This module holds the API ([`JoinExt`]) and what the joins share; each join's operator
//! is in a file of its own: `interval.rs`, `temporal.rs`, `window.rs` (co-group).
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
//! (`BothSides`), so it has exactly the windows' semantics: a sliding window holds an
//! element once per pane, not once per window; a session of a key is formed by the
//! elements of **both** sides (a left element can bridge two right ones), and fires when
//! the merged session's `end - 1` is reached. Lateness is the windows' (allowed lateness
//! 0): an element is late, dropped and counted in `weir_late_events_total` when every
//! window it belongs to has fired (session: its merged session would already be due).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::keys::StableHash;
use weir_engine::{Data, StateKey, StateValue, Stream};

use crate::window::{Window, WindowSpec};

mod interval;
mod temporal;
#[cfg(test)]
mod tests;
mod window;

use interval::IntervalJoinFactory;
pub use interval::{Buffers, IntervalJoinOperator};
use temporal::TemporalJoinFactory;
pub use temporal::{TemporalJoinOperator, Versioned};
use window::cogroup;
pub use window::CoGrouped;

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
    left.map(Side::Left)
        .internal()
        .union(right.map(Side::Right).internal())
        .internal()
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
        let versions = changelog
            .map(move |b| (changelog_key(&b), version(&b)))
            .internal();
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
