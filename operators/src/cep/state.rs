//! What a key keeps between events, and its stored form: the fields of the first version
//! (the events waiting for the watermark, the partial matches) come first and unchanged,
//! so checkpoints written before the skip strategies and negative stages still load; what
//! those need comes after them, and is left at its defaults when a stored value ends early.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use weir_engine::Timestamp;

use crate::time_order::TimeOrdered;

/// A match in progress: a state of the pattern's NFA plus the events taken.
///
/// Kept at 40 bytes, as before skip strategies and negative stages: the partial matches of
/// a key are reallocated with every event, and 8 bytes more cost saga-monitor 3 % of its
/// instructions (allocator slow paths). Hence the stage as a `u16` (stored as before) and
/// the boxed event numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial<T> {
    /// The stage it is at (`< stages`), or `stages` once complete and only waiting for the
    /// pattern's trailing negative stages to let it through.
    #[serde(with = "stage_index")]
    stage: u16,
    /// It skipped the key's last event: a strict stage or a `not_next` cannot follow its
    /// last event any more. (This and `seqs` are stored by [`KeyState`] after the partial
    /// matches, whose stored form is the first version's.)
    #[serde(skip)]
    pub(super) skipped: bool,
    /// Events that stage has taken (`open(count)` holds).
    pub(super) count: u32,
    /// `(stage, time, event)` matched so far.
    pub(super) events: Vec<(usize, Timestamp, T)>,
    /// The numbers of its events in the key's sequence of events (fed order: event time,
    /// ties in arrival order), kept only with a skip strategy, which orders and prunes
    /// matches by them.
    #[serde(skip)]
    pub(super) seqs: Option<Box<Seqs>>,
}

/// The numbers of a partial match's events (see [`Partial`]), boxed there so that without
/// a skip strategy they cost one pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seqs(pub(super) Vec<u64>);

/// The stage index of a partial match, stored as the `usize` it was.
mod stage_index {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(stage: &u16, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::from(*stage))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
        let stage = usize::deserialize(deserializer)?;
        u16::try_from(stage).map_err(|_| de::Error::custom(format!("stage {stage} out of range")))
    }
}

impl<T> Partial<T> {
    /// A partial match at `stage` (`<=` [`MAX_STAGES`], which patterns are held to).
    pub(super) fn new(
        stage: usize,
        count: u32,
        events: Vec<(usize, Timestamp, T)>,
        skipped: bool,
        seqs: Option<Box<Seqs>>,
    ) -> Self {
        Partial {
            stage: stage.min(MAX_STAGES) as u16,
            skipped,
            count,
            events,
            seqs,
        }
    }

    /// The stage it is at.
    pub(super) fn stage(&self) -> usize {
        usize::from(self.stage)
    }

    pub(super) fn start(&self) -> Timestamp {
        self.events.first().map_or(Timestamp::MIN, |e| e.1)
    }

    /// The number of its first event (for the skip strategies).
    pub(super) fn first(&self) -> u64 {
        self.seqs
            .as_ref()
            .and_then(|s| s.0.first())
            .copied()
            .unwrap_or(0)
    }
}

/// The most stages a pattern may have (a partial match's stage is a `u16`, and one past
/// the last stage means complete).
pub(super) const MAX_STAGES: usize = u16::MAX as usize - 1;

/// A complete match waiting for the partial matches that started before it (a skip
/// strategy emits matches in the order of their first events).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Held<T> {
    /// The emission order: the number of its first event; when it completed (twice the
    /// number of the event that completed it, plus one; or twice the number of the next
    /// event for a deadline); the numbers of its events.
    pub(super) key: (u64, u64, Vec<u64>),
    /// When it completed.
    pub(super) ts: Timestamp,
    pub(super) events: Vec<(usize, Timestamp, T)>,
}

/// What a skip strategy keeps for a key.
#[derive(Debug, Clone)]
pub(super) struct Skips<T> {
    /// The number of the next event.
    pub(super) seq: u64,
    /// Sorted by `key`.
    pub(super) held: Vec<Held<T>>,
}

/// A key's matching: partial matches, and what a skip strategy keeps.
#[derive(Debug, Clone)]
pub(super) struct NfaState<T> {
    pub(super) partials: Vec<Partial<T>>,
    pub(super) skips: Option<Box<Skips<T>>>,
}

impl<T> Default for Skips<T> {
    fn default() -> Self {
        Skips {
            seq: 0,
            held: Vec::new(),
        }
    }
}

impl<T> NfaState<T> {
    pub(super) fn held(&self) -> &[Held<T>] {
        self.skips.as_ref().map_or(&[], |s| &s.held[..])
    }
}

/// The state of one key: events waiting for the watermark, and matches in progress.
#[derive(Debug, Clone)]
pub struct KeyState<T> {
    /// Events waiting for the watermark.
    pub(super) pending: TimeOrdered<T>,
    pub(super) nfa: NfaState<T>,
}

impl<T> Default for KeyState<T> {
    fn default() -> Self {
        KeyState {
            pending: Vec::new(),
            nfa: NfaState {
                partials: Vec::new(),
                skips: None,
            },
        }
    }
}

impl<T> KeyState<T> {
    /// Nothing left to keep for the key.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.nfa.partials.is_empty() && self.nfa.held().is_empty()
    }
}

/// The fields added after the first version, in their stored order.
#[derive(Serialize)]
struct LaterRef<'a, T> {
    seq: u64,
    orders: Orders<'a, T>,
    held: &'a [Held<T>],
}

/// The partial matches' `(skipped, seqs)`, in the order of the partial matches.
struct Orders<'a, T>(&'a [Partial<T>]);

impl<T> Serialize for Orders<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|p| {
            let seqs: &[u64] = p.seqs.as_deref().map_or(&[], |s| &s.0);
            (p.skipped, seqs)
        }))
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Later<T> {
    seq: u64,
    orders: Vec<(bool, Vec<u64>)>,
    held: Vec<Held<T>>,
}

/// [`Later`], or nothing if the stored value ends before it: bincode (the state codec) has
/// no field names or lengths to tell, so the read that runs past the end of a value
/// written before these fields existed is what tells.
struct MaybeLater<T>(Option<Later<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MaybeLater<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(MaybeLater(Later::deserialize(deserializer).ok()))
    }
}

const FIELDS: &[&str] = &["pending", "partials", "later"];

impl<T: Serialize> Serialize for KeyState<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("KeyState", FIELDS.len())?;
        state.serialize_field("pending", &self.pending)?;
        state.serialize_field("partials", &self.nfa.partials)?;
        let later = LaterRef {
            seq: self.nfa.skips.as_ref().map_or(0, |s| s.seq),
            orders: Orders(&self.nfa.partials),
            held: self.nfa.held(),
        };
        state.serialize_field("later", &later)?;
        state.end()
    }
}

impl<T> KeyState<T> {
    fn assemble(
        pending: TimeOrdered<T>,
        mut partials: Vec<Partial<T>>,
        later: Option<Later<T>>,
    ) -> Self {
        // A checkpoint from before has no `later`: every partial match counts as having
        // taken the key's last event (`skipped` false), which is how contiguity was judged.
        let mut skips = None;
        if let Some(later) = later.filter(|l| l.orders.len() == partials.len()) {
            for (partial, (skipped, seqs)) in partials.iter_mut().zip(later.orders) {
                partial.skipped = skipped;
                partial.seqs = (!seqs.is_empty()).then(|| Box::new(Seqs(seqs)));
            }
            if later.seq > 0 || !later.held.is_empty() {
                let (seq, held) = (later.seq, later.held);
                skips = Some(Box::new(Skips { seq, held }));
            }
        }
        KeyState {
            pending,
            nfa: NfaState { partials, skips },
        }
    }
}

struct KeyStateVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for KeyStateVisitor<T> {
    type Value = KeyState<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CEP key state")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyState<T>, A::Error> {
        let pending = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let partials = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let later = seq.next_element::<MaybeLater<T>>()?.and_then(|l| l.0);
        Ok(KeyState::assemble(pending, partials, later))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyState<T>, A::Error> {
        let (mut pending, mut partials, mut later) = (None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "pending" => pending = Some(map.next_value()?),
                "partials" => partials = Some(map.next_value()?),
                "later" => later = map.next_value::<MaybeLater<T>>()?.0,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        let pending = pending.ok_or_else(|| de::Error::missing_field("pending"))?;
        let partials = partials.ok_or_else(|| de::Error::missing_field("partials"))?;
        Ok(KeyState::assemble(pending, partials, later))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for KeyState<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("KeyState", FIELDS, KeyStateVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cep::{CepOutput, Pattern};

    /// The stored form of a key's state before skip strategies and negative stages.
    #[derive(Serialize)]
    struct FirstKeyState {
        pending: Vec<(Timestamp, String)>,
        partials: Vec<FirstPartial>,
    }

    #[derive(Serialize)]
    struct FirstPartial {
        stage: usize,
        count: u32,
        events: Vec<(usize, Timestamp, String)>,
    }

    fn step(name: &'static str) -> impl Fn(&String) -> bool + Send + Sync + 'static {
        move |e: &String| e == name
    }

    /// Feeds the pending events and returns the matches, as `stage@time` lists.
    fn run_pending(pattern: &Pattern<String>, state: &mut KeyState<String>) -> Vec<String> {
        let mut out = Vec::new();
        for (ts, event) in std::mem::take(&mut state.pending) {
            pattern.feed(&mut state.nfa, ts, &event, true, &mut out);
        }
        out.into_iter()
            .filter_map(|(_, o)| match o {
                CepOutput::Matched(m) => Some(m.events),
                CepOutput::TimedOut(_) => None,
            })
            .map(|events| {
                let named: Vec<String> = events
                    .iter()
                    .map(|(s, ts, _)| format!("{s}@{ts}"))
                    .collect();
                named.join(" ")
            })
            .collect()
    }

    #[test]
    fn a_partial_match_is_as_small_as_it_was() {
        assert_eq!(std::mem::size_of::<Partial<String>>(), 40);
    }

    #[test]
    fn a_key_state_stored_before_the_skip_strategies_loads_and_matches_on() {
        // saga-monitor's pattern, a key stored after `placed` and `reserved`, `paid` pending.
        let saga = Pattern::begin("placed")
            .where_(step("placed"))
            .followed_by("reserved")
            .where_(step("reserved"))
            .followed_by("paid")
            .where_(step("paid"))
            .within(Duration::from_secs(30));
        let first = FirstKeyState {
            pending: vec![(3_000, "paid".into())],
            partials: vec![FirstPartial {
                stage: 2,
                count: 0,
                events: vec![(0, 1_000, "placed".into()), (1, 2_000, "reserved".into())],
            }],
        };
        let old = bincode::serialize(&first).expect("encodes");
        let mut state: KeyState<String> = bincode::deserialize(&old).expect("loads");
        // Stored again, the fields of the first version come first, byte for byte.
        let again = bincode::serialize(&state).expect("encodes");
        assert!(again.len() > old.len() && again.starts_with(&old));
        assert_eq!(
            run_pending(&saga, &mut state),
            vec!["placed@1000 reserved@2000 paid@3000"]
        );
        // A stored partial match counts as having taken the key's previous event, as it
        // did then: a strict stage after an optional one may take the next event.
        let strict = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .optional()
            .next("c")
            .where_(step("c"));
        let first = FirstKeyState {
            pending: vec![(2, "c".into())],
            partials: vec![FirstPartial {
                stage: 1,
                count: 0,
                events: vec![(0, 1, "a".into())],
            }],
        };
        let old = bincode::serialize(&first).expect("encodes");
        let mut state: KeyState<String> = bincode::deserialize(&old).expect("loads");
        assert_eq!(run_pending(&strict, &mut state), vec!["a@1 c@2"]);
    }
}
