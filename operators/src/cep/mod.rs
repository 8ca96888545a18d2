//! Complex event processing: sequence patterns per key, in the spirit of FlinkCEP.
//! **This is where a key's events run through the pattern** ([`CepOperator::run_key`], called
//! by the engine's harness when the key's timer is due); what one event does to a key's
//! partial matches is in `nfa.rs`.
//!
//! ```ignore
//! let pattern = Pattern::begin("placed").where_(|e: &Ev| e.kind == "OrderPlaced")
//!     .followed_by("retry").where_(|e: &Ev| e.kind == "PaymentFailed").one_or_more().optional()
//!     .followed_by("paid").where_(|e: &Ev| e.kind == "PaymentProcessed")
//!     .within(Duration::from_secs(30));
//! let (matches, timeouts) = orders.key_by(|e| e.order_id.clone()).pattern_with_timeouts(pattern);
//!
//! // Three withdrawals within a minute, each withdrawal in one alert at most.
//! let alerts = Pattern::begin("withdrawal").where_(|e: &Tx| e.kind == "withdrawal")
//!     .times(3)
//!     .within(Duration::from_secs(60))
//!     .skip(AfterMatchSkip::SkipPastLastEvent);
//! ```
//!
//! # Semantics (FlinkCEP's)
//! - Events are buffered per key and fed to the pattern in event-time order once the
//!   watermark reaches them (ties in arrival order), so matches do not depend on arrival
//!   order. An event below the watermark when it arrives is late: dropped and counted.
//! - A stage takes one event by default; [`Pattern::times`]`(n)` exactly `n`,
//!   [`Pattern::one_or_more`] one or more (a *looping* stage), and [`Pattern::optional`]
//!   makes it skippable (`times(n).optional()`: 0 or `n`). [`Pattern::until`] stops a loop:
//!   once it has taken an event, an event satisfying the `until` condition is not taken and
//!   ends the loop (the next stage may still take it).
//! - **Contiguity.** A stage added with [`Pattern::next`] must take the event right after
//!   the previous stage's last one (a partial match that skipped an event since cannot go
//!   on to it); with [`Pattern::followed_by`] events that do *not* fit are skipped ("skip
//!   till next match": an event that fits is taken, there is no branch that ignores it);
//!   with [`Pattern::followed_by_any`] any event may be skipped, one that fits too, so each
//!   later event that fits gives its own match (`a b` on `a c b1 b2`: `{a b1}` with
//!   `followed_by`, `{a b1}` and `{a b2}` with `followed_by_any`, none with `next`). Inside
//!   a loop (`times`, `one_or_more`) events that do not fit are skipped too, unless
//!   [`Pattern::consecutive`] makes the loop strict. An event that does not fit a strict
//!   stage ends that way of continuing the match; a partial match that may also go on with
//!   a later stage (the current one is satisfied or optional) keeps that way.
//! - **Negative stages.** [`Pattern::not_next`]`(n)`: the event right after the previous
//!   stage's last one must not satisfy `n`'s condition. [`Pattern::not_followed_by`]`(n)`:
//!   no event satisfying it may come between the previous stage's last event and the next
//!   stage's first one (after a loop, from the moment the loop has its minimum: an event
//!   satisfying it ends the partial match even if the loop could still go on). An event
//!   against a negative stage ends the partial match (all its ways), though a match that
//!   this very event completes by being taken is still emitted (FlinkCEP's stop state),
//!   and a negative stage before the stages that are left out does not hold. At the end
//!   of a pattern, `not_next` holds a complete match until the next event of the key (the
//!   match is emitted then, if that event does not satisfy it), and `not_followed_by` until
//!   the deadline (`within` is then required; the match is emitted at the deadline, with
//!   that event time, if no event satisfied it). Refused when the job is built, as
//!   FlinkCEP does: a negative stage right after an optional one, `not_followed_by` at the
//!   end without `within`, and quantifiers on a negative stage.
//! - **Which matches.** Every event fitting the first stage starts a partial match. A
//!   match is emitted each time a partial match takes an event after which every remaining
//!   stage is optional or satisfied; it goes on if it can take more (a loop, a trailing
//!   optional stage). So `a b+` on `a b1 b2` gives `{a b1}` and `{a b1 b2}`; `a b? c` on
//!   `a b c` gives `{a b c}` and `{a c}`; `c a+ b` on `c d a1 a2 a3 d a4 b` gives `{c a1 b}`,
//!   `{c a1 a2 b}`, `{c a1 a2 a3 b}` and `{c a1 a2 a3 a4 b}` (with `consecutive()`: the
//!   first three), as FlinkCEP with `noSkip`. A match has the event time of its last event.
//! - **After-match skip strategies** ([`Pattern::skip`], [`AfterMatchSkip`]), FlinkCEP's:
//!   with any but `NoSkip` (the default), matches are emitted in the order of their first
//!   events (then of completion): a complete match waits while a partial match that
//!   started earlier is still going (until it completes, breaks or times out: use
//!   `within`), and is then emitted with the event time of whatever ended the wait (or
//!   its own, if later). Each emitted match discards the partial and waiting matches that
//!   started: `SkipToNext`, at or before its first event; `SkipPastLastEvent`, at or
//!   before its last event (so an event is in one match at most: `w{3}` on `w1 .. w6`
//!   gives `{w1 w2 w3}`, `{w4 w5 w6}` instead of four); `SkipToFirst(s)` / `SkipToLast(s)`,
//!   before its first / last event of stage `s` (nothing if it has none). `b+ => c` on
//!   `b1 b2 b3 c`: `NoSkip`, `SkipToNext` and `SkipToFirst(b)` give `{b1 b2 b3 c}`,
//!   `{b2 b3 c}`, `{b3 c}`; `SkipPastLastEvent` `{b1 b2 b3 c}`; `SkipToLast(b)`
//!   `{b1 b2 b3 c}`, `{b3 c}`. At the end of the input every waiting match is emitted.
//! - **Timeouts.** With [`Pattern::within`], a match must end less than `within` after its
//!   first event. A partial match that can no longer make it (the next event is too late,
//!   or the watermark passed its deadline) is a timeout, naming the first stage it still
//!   needed (or the trailing `not_next` it waited on), with event time
//!   `first + within - 1`; one that had already completed (it was only waiting to extend a
//!   loop or a trailing optional stage) is dropped silently. Timeouts go to a separate
//!   output ([`CepExt::pattern_with_timeouts`]); [`CepExt::pattern`] drops them. Without
//!   `within`, partial matches of a pattern ending in a loop or an optional stage live as
//!   long as the key has events: use `within`.
//! - State: each key's buffered events, partial matches and waiting matches are one entry
//!   of a state table (memory or RocksDB), saved by checkpoints; timers are rebuilt from it
//!   on restore. The skip strategy and the negative stages are part of the pattern, not of
//!   the state: restore with the same pattern. A checkpoint from before skip strategies and
//!   negative stages existed still loads.

mod nfa;
mod operator;
mod pattern;
#[cfg(test)]
mod reference;
mod state;
#[cfg(test)]
mod tests;

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::{Data, KeyedStream, Routed, StateKey, StateValue, Stream, Timestamp};

use operator::CepFactory;
pub use operator::CepOperator;
pub use pattern::{AfterMatchSkip, Pattern};
pub use state::{KeyState, Partial};

/// A complete match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match<T> {
    /// `(stage, event time, event)` for every event taken, in order.
    pub events: Vec<(String, Timestamp, T)>,
}

/// A partial match that could not be completed within the pattern's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedOut<T> {
    /// The events matched so far.
    pub events: Vec<(String, Timestamp, T)>,
    /// The first stage it still needed.
    pub missing: String,
    /// When the match had to be complete by (first event + within), exclusive.
    pub deadline: Timestamp,
}

/// What the pattern operator produces for a key (split into two streams by
/// [`CepExt::pattern_with_timeouts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CepOutput<T> {
    /// A complete match.
    Matched(Match<T>),
    /// A timed-out partial match.
    TimedOut(TimedOut<T>),
}

/// Sequence patterns per key (FlinkCEP's; the semantics are in the [module docs](self)):
/// [`CepExt::pattern`] runs a [`Pattern`] over each key's events in event-time order and
/// gives its matches; [`CepExt::pattern_with_timeouts`] also the partial matches that ran
/// out of time.
///
/// ```
/// use std::time::Duration;
/// use weir_engine::{Job, Watermarks};
/// use weir_operators::prelude::*;
/// # use weir_operators::doc_support::{sorted, Collect, VecSource};
///
/// // (order, event time in ms, step): orders paid within 10 s of being placed. The
/// // pattern keeps the events it matched so far in state, so they are `StateValue`s.
/// type Step = (String, i64, String);
/// let step = |order: &str, time: i64, what: &str| (order.to_string(), time, what.to_string());
/// let steps = vec![
///     step("o1", 1_000, "placed"),
///     step("o2", 2_000, "placed"),
///     step("o1", 4_000, "paid"),
///     step("o2", 15_000, "paid"),
/// ];
/// let paid_in_time = Pattern::begin("placed")
///     .where_(|e: &Step| e.2 == "placed")
///     .followed_by("paid")
///     .where_(|e: &Step| e.2 == "paid")
///     .within(Duration::from_secs(10));
/// let (sink, seen) = Collect::new();
/// let job = Job::new("orders");
/// job.source("steps", VecSource(steps))
///     .timestamps(|e| e.1, Watermarks::bounded(Duration::ZERO))
///     .key_by(|e: &Step| e.0.clone())
///     .pattern(paid_in_time)
///     .map(|m| m.events.iter().map(|(_, time, e)| (e.0.clone(), *time)).collect())
///     .sink("paid", sink);
/// job.run(&Default::default())?;
/// let matched: Vec<Vec<(String, i64)>> = sorted(&seen);
/// assert_eq!(matched, vec![vec![("o1".into(), 1_000), ("o1".into(), 4_000)]]);
/// # Ok::<(), weir_engine::EngineError>(())
/// ```
pub trait CepExt<T> {
    /// Runs `pattern` over each key's events (see the module docs); the matches. Partial
    /// matches that time out are dropped.
    fn pattern(self, pattern: Pattern<T>) -> Stream<Match<T>>;

    /// Like [`CepExt::pattern`], and the timed-out partial matches as a second stream (the
    /// timeout output; give it a sink too).
    fn pattern_with_timeouts(self, pattern: Pattern<T>) -> (Stream<Match<T>>, Stream<TimedOut<T>>);
}

impl<K, T, KF> CepExt<T> for KeyedStream<K, T, KF>
where
    K: StateKey + weir_engine::StableHash + Data,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn pattern(self, pattern: Pattern<T>) -> Stream<Match<T>> {
        let outputs = run_pattern(self, pattern, false);
        outputs
            .clone()
            .flat_map(|o| match o {
                CepOutput::Matched(m) => Some(m),
                CepOutput::TimedOut(_) => None,
            })
            .uid_names(&outputs)
    }

    fn pattern_with_timeouts(self, pattern: Pattern<T>) -> (Stream<Match<T>>, Stream<TimedOut<T>>) {
        // The timeouts are a side output of the pattern: routed, not cloned.
        run_pattern(self, pattern, true).split("timeouts", |o| match o {
            CepOutput::Matched(m) => Routed::Main(m),
            CepOutput::TimedOut(t) => Routed::Side(t),
        })
    }
}

fn run_pattern<K, T, KF>(
    keyed: KeyedStream<K, T, KF>,
    pattern: Pattern<T>,
    timeouts: bool,
) -> Stream<CepOutput<T>>
where
    K: StateKey + weir_engine::StableHash + Data,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    if !keyed.stream().has_timestamps() {
        keyed.stream().invalid(
            "a pattern runs in event-time order: call .timestamps(..) before .key_by(..)".into(),
        );
    }
    let detail = pattern.describe();
    for problem in pattern.problems() {
        keyed
            .stream()
            .invalid(format!("the pattern `{detail}`: {problem}"));
    }
    keyed.process(
        "cep",
        detail,
        CepFactory {
            pattern,
            timeouts,
            _key: PhantomData,
        },
    )
}
