//! Complex event processing: sequence patterns per key, in the spirit of FlinkCEP.
//! **This is where a key's events run through the pattern** ([`CepOperator::run_key`], called by the engine's harness when the key's timer is due).
//!
//! ```ignore
//! let pattern = Pattern::begin("placed").where_(|e: &Ev| e.kind == "OrderPlaced")
//!     .followed_by("retry").where_(|e: &Ev| e.kind == "PaymentFailed").one_or_more().optional()
//!     .followed_by("paid").where_(|e: &Ev| e.kind == "PaymentProcessed")
//!     .within(Duration::from_secs(30));
//! let (matches, timeouts) = orders.key_by(|e| e.order_id.clone()).pattern_with_timeouts(pattern);
//! ```
//!
//! # Semantics (FlinkCEP's defaults, after-match skip strategy "no skip")
//! - Events are buffered per key and fed to the pattern in event-time order once the
//!   watermark reaches them (ties in arrival order), so matches do not depend on arrival
//!   order. An event below the watermark when it arrives is late: dropped and counted.
//! - A stage takes one event by default; [`Pattern::times`]`(n)` exactly `n`,
//!   [`Pattern::one_or_more`] one or more (a *looping* stage), and [`Pattern::optional`]
//!   makes it skippable (`times(n).optional()`: 0 or `n`). [`Pattern::until`] stops a loop:
//!   once it has taken an event, an event satisfying the `until` condition is not taken and
//!   ends the loop (the next stage may still take it).
//! - **Contiguity.** A stage added with [`Pattern::next`] must take the event right after
//!   the previous stage's last one; with [`Pattern::followed_by`] events that do *not* fit
//!   are skipped ("skip till next match": an event that fits is always taken, there is no
//!   branch that ignores it; FlinkCEP's `followedByAny` does not exist here). Inside a loop
//!   (`times`, `one_or_more`) events that do not fit are skipped too, unless
//!   [`Pattern::consecutive`] makes the loop strict. An event that does not fit a strict
//!   stage ends that way of continuing the match; a partial match that may also go on with
//!   a later stage (the current one is satisfied or optional) keeps that way.
//! - **Which matches.** Every event fitting the first stage starts a partial match. A
//!   match is emitted each time a partial match takes an event after which every remaining
//!   stage is optional or satisfied; it goes on if it can take more (a loop, a trailing
//!   optional stage). So `a b+` on `a b1 b2` gives `{a b1}` and `{a b1 b2}`; `a b? c` on
//!   `a b c` gives `{a b c}` and `{a c}`; `c a+ b` on `c d a1 a2 a3 d a4 b` gives `{c a1 b}`,
//!   `{c a1 a2 b}`, `{c a1 a2 a3 b}` and `{c a1 a2 a3 a4 b}` (with `consecutive()`: the
//!   first three), as FlinkCEP with `noSkip`. A match has the event time of its last event.
//! - **Timeouts.** With [`Pattern::within`], a match must end less than `within` after its
//!   first event. A partial match that can no longer make it (the next event is too late,
//!   or the watermark passed its deadline) is a timeout, naming the first stage it still
//!   needed, with event time `first + within - 1`; one that had already completed (it was
//!   only waiting to extend a loop or a trailing optional stage) is dropped silently.
//!   Timeouts go to a separate output ([`CepExt::pattern_with_timeouts`]);
//!   [`CepExt::pattern`] drops them. Without `within`, partial matches of a pattern ending
//!   in a loop or an optional stage live as long as the key has events: use `within`.
//! - State: each key's buffered events and partial matches are one entry of a state table
//!   (memory or RocksDB), saved by checkpoints; timers are rebuilt from it on restore.

mod nfa;
mod operator;
mod pattern;
#[cfg(test)]
mod tests;

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::{Data, KeyedStream, Routed, StateKey, StateValue, Stream, Timestamp};

pub use nfa::{KeyState, Partial};
use operator::CepFactory;
pub use operator::CepOperator;
pub use pattern::Pattern;

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

/// Adds CEP patterns to keyed streams.
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
