//! Typed checkpoint state: what each participant leaves in a checkpoint's manifest.
//!
//! # Participants and their state
//! | participant (runtime type)                 | [`ParticipantState`] variant               |
//! |--------------------------------------------|--------------------------------------------|
//! | a source instance (`runtime::source`)      | [`ParticipantState::Source`]: its position |
//! | a timestamp assigner (`runtime::event_time`) | [`ParticipantState::EventTime`]: [`EventClock`] |
//! | a keyed instance (`runtime::keyed`)        | [`ParticipantState::Keyed`]: [`KeyedSnapshot`] |
//! | a sink (`runtime::sink`)                   | [`ParticipantState::Sink`]: its pre-commit |
//!
//! The engine knows the shape of its own participants' state. A connector's state (a
//! source position, a sink's pre-commit) is the connector's own type, which the engine
//! stores as a [`ConnectorState`]: the value together with its kind and version
//! ([`ConnectorStateType`]), so that a restore hands a connector only state of its own kind
//! and of a version it reads, and says which when it does not.
//!
//! # Invariants
//! - The manifest's format version ([`super::manifest`]) covers the layout of this module;
//!   a connector's version covers its own state.
//! - A participant restores only from a [`ParticipantState`] of its own variant; anything
//!   else is a [`crate::EngineError::RestoreState`] naming the checkpoint and participant.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::keys::KeyGroup;
use crate::time::Timestamp;

/// What one participant left in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    /// A source instance: where it stood at the barrier.
    Source {
        /// The source's own position.
        position: ConnectorState,
    },
    /// A timestamp assigner: its watermark generators.
    EventTime(EventClock),
    /// A keyed operator instance: its key groups, database and operator metadata.
    Keyed(KeyedSnapshot),
    /// A sink: what a restart needs to commit the checkpoint's output (`None` for a sink
    /// without transactions).
    Sink {
        /// What [`crate::Sink::pre_commit`] returned.
        pre_commit: Option<ConnectorState>,
    },
}

impl ParticipantState {
    /// What kind of participant left this state, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            ParticipantState::Source { .. } => "a source position",
            ParticipantState::EventTime(_) => "watermark state",
            ParticipantState::Keyed(_) => "keyed operator state",
            ParticipantState::Sink { .. } => "a sink's pre-commit",
        }
    }
}

/// The state of a watermark generator, kept in checkpoints so that a restarted job decides
/// lateness exactly as the uninterrupted one would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkGenerator {
    pub(crate) max_ts: Timestamp,
    pub(crate) current: Timestamp,
}

/// Event time of a stream: its watermark generator and, for a source with splits, one
/// generator per split. The stream's watermark is then the minimum over the splits that are
/// active and not idle, and never goes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventClock {
    #[serde(flatten)]
    pub(crate) stream: WatermarkGenerator,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) splits: BTreeMap<u32, WatermarkGenerator>,
}

impl EventClock {
    /// The clock a stream resumes from when its instances' shares of the input are dealt
    /// again at a restore (a file read by several readers): each generator at the smallest
    /// of `clocks`' (`None` if there are none). Every reader reads its share in input
    /// order, so the reader holding the earliest line left unread has seen only lines
    /// before it, and no line left unread is behind that reader's watermark by more than
    /// the input's disorder: resuming every instance from the smallest watermark makes no
    /// event late that was on time.
    pub(crate) fn earliest<'a>(clocks: impl IntoIterator<Item = &'a EventClock>) -> Option<Self> {
        clocks.into_iter().cloned().reduce(|mut a, b| {
            a.stream = a.stream.min_with(b.stream);
            for (split, generator) in b.splits {
                let mine = a.splits.entry(split).or_insert(generator);
                *mine = mine.min_with(generator);
            }
            a
        })
    }
}

impl WatermarkGenerator {
    fn min_with(self, other: WatermarkGenerator) -> WatermarkGenerator {
        WatermarkGenerator {
            max_ts: self.max_ts.min(other.max_ts),
            current: self.current.min(other.current),
        }
    }
}

/// What a keyed operator instance leaves in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyedSnapshot {
    /// The key groups its database holds, `[start, end)`.
    pub key_groups: (KeyGroup, KeyGroup),
    /// Its state: a RocksDB database (a RocksDB checkpoint, or a memory backend's full
    /// copy in the same layout), relative to the checkpoint directory.
    pub store: String,
    /// What the operator returned from [`crate::KeyedOperator::snapshot`], opaque to the
    /// engine.
    pub operator: serde_json::Value,
    /// The file, relative to the checkpoint directory, holding the operator's broadcast
    /// state ([`crate::KeyedOperator::broadcast_state`]): set by instance 0 only, since
    /// every instance holds the same; absent for operators without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
}

/// A connector's own checkpoint state type: a source's position or a sink's pre-commit.
pub trait ConnectorStateType: Serialize + DeserializeOwned {
    /// What holds this state (`"file source"`, `"kafka sink"`): a restore refuses the state
    /// of another kind.
    const KIND: &'static str;
    /// The version of its layout: a restore refuses a newer one. Raise it when a change is
    /// not read by the older code, and keep reading the older layouts.
    const VERSION: u32;
}

/// A connector's checkpoint state as the engine stores it: the connector's value with its
/// kind and version (see [`ConnectorStateType`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorState {
    kind: String,
    version: u32,
    state: serde_json::Value,
}

/// A restored [`ConnectorState`] is not what its connector reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateMismatch {
    /// The state belongs to another kind of connector.
    #[error(
        "it holds the state of a {found}, not of a {expected}: the job's input or output \
         changed under the same uid; run it as it was, or start over with --replay-from \
         beginning"
    )]
    Kind {
        /// The kind the connector reads.
        expected: &'static str,
        /// The kind in the checkpoint.
        found: String,
    },
    /// The state was written by a newer weir.
    #[error(
        "its {kind} state has version {found}, newer than version {supported} this weir \
         reads: resume it with the weir that wrote it"
    )]
    Newer {
        /// The connector's kind.
        kind: &'static str,
        /// The version in the checkpoint.
        found: u32,
        /// The newest version this weir reads.
        supported: u32,
    },
    /// The state was written by an older weir in a layout this one reads but cannot take
    /// over (what it held now belongs to another participant).
    #[error("its {kind} state was written by an earlier weir: {reason}")]
    Older {
        /// The connector's kind.
        kind: &'static str,
        /// What this weir cannot take over, and what to do.
        reason: String,
    },
    /// The state has the right kind and version but its fields do not fit.
    #[error("its {kind} state cannot be read: {reason}")]
    Fields {
        /// The connector's kind.
        kind: &'static str,
        /// What did not fit, as serde says it.
        reason: String,
    },
    /// The participant left no state where its connector needs some.
    #[error("it holds no {kind} state: was the checkpoint taken with another output?")]
    Missing {
        /// The connector's kind.
        kind: &'static str,
    },
}

/// The version of the state a release before typed checkpoint state (manifest version 2)
/// wrote: its kind is unknown, and its fields are read as the current version's.
const UNVERSIONED: u32 = 0;

impl ConnectorState {
    /// Stores `state` with its kind and version.
    pub fn encode<T: ConnectorStateType>(state: &T) -> Result<Self, BoxError> {
        Ok(ConnectorState {
            kind: T::KIND.to_string(),
            version: T::VERSION,
            state: serde_json::to_value(state)?,
        })
    }

    /// State a release before typed checkpoint state wrote (manifest version 2), of a kind
    /// the manifest does not say.
    pub(crate) fn unversioned(state: serde_json::Value) -> Self {
        ConnectorState {
            kind: String::new(),
            version: UNVERSIONED,
            state,
        }
    }

    /// Reads the state back as `T`, if it is of `T`'s kind and a version `T` reads.
    pub fn decode<T: ConnectorStateType>(&self) -> Result<T, StateMismatch> {
        if self.version != UNVERSIONED && self.kind != T::KIND {
            return Err(StateMismatch::Kind {
                expected: T::KIND,
                found: self.kind.clone(),
            });
        }
        if self.version > T::VERSION {
            return Err(StateMismatch::Newer {
                kind: T::KIND,
                found: self.version,
                supported: T::VERSION,
            });
        }
        T::deserialize(&self.state).map_err(|e| StateMismatch::Fields {
            kind: T::KIND,
            reason: e.to_string(),
        })
    }

    /// The kind of connector that wrote it (empty for unversioned state).
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Offset {
        offset: u64,
    }

    impl ConnectorStateType for Offset {
        const KIND: &'static str = "test source";
        const VERSION: u32 = 2;
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Commit {
        parts: Vec<u64>,
    }

    impl ConnectorStateType for Commit {
        const KIND: &'static str = "test sink";
        const VERSION: u32 = 1;
    }

    #[test]
    fn a_connector_reads_back_the_state_it_wrote() {
        let state = ConnectorState::encode(&Offset { offset: 42 }).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let back: ConnectorState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decode::<Offset>().unwrap(), Offset { offset: 42 });
    }

    #[test]
    fn state_of_another_connector_is_refused_naming_both_kinds() {
        let state = ConnectorState::encode(&Commit { parts: vec![1] }).unwrap();
        let err = state.decode::<Offset>().unwrap_err().to_string();
        assert!(
            err.contains("state of a test sink, not of a test source"),
            "{err}"
        );
    }

    #[test]
    fn state_of_a_newer_version_is_refused() {
        let mut state = ConnectorState::encode(&Offset { offset: 1 }).unwrap();
        state.version = 3;
        let err = state.decode::<Offset>().unwrap_err();
        assert_eq!(
            err,
            StateMismatch::Newer {
                kind: "test source",
                found: 3,
                supported: 2
            }
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let state = ConnectorState::encode(&Commit { parts: vec![] })
            .map(|mut s| {
                s.kind = "test source".into();
                s
            })
            .unwrap();
        let err = state.decode::<Offset>().unwrap_err().to_string();
        assert!(err.contains("missing field `offset`"), "{err}");
    }

    #[test]
    fn unversioned_state_of_the_previous_release_is_read_as_the_current_version() {
        let state = ConnectorState::unversioned(serde_json::json!({ "offset": 7 }));
        assert_eq!(state.decode::<Offset>().unwrap(), Offset { offset: 7 });
    }

    #[test]
    fn participant_state_keeps_split_watermarks_through_json() {
        let gen = |t| WatermarkGenerator {
            max_ts: t,
            current: t - 1,
        };
        let clock = ParticipantState::EventTime(EventClock {
            stream: gen(10),
            splits: BTreeMap::from([(0, gen(5)), (3, gen(10))]),
        });
        let json = serde_json::to_string(&clock).unwrap();
        assert_eq!(
            serde_json::from_str::<ParticipantState>(&json).unwrap(),
            clock
        );
    }
}
