//! The state of keyed operator instances in checkpoints: where an instance's database
//! lives, what it snapshots, and how a restore imports key groups (so parallelism may change).

use std::sync::Arc;

pub(super) use crate::checkpoint::state::KeyedSnapshot;

use crate::checkpoint::coordinator::{Checkpointing, Participant};
use crate::checkpoint::ParticipantState;
use crate::error::{EngineError, Result};
use crate::keys::KeyGroup;
use crate::state::{read_key_groups, MemorySnapshots, RocksStore};

/// The database directory of a keyed instance: its node name made file-safe, and instance.
pub(super) fn store_name(node: &str, instance: usize) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{instance}")
}

/// What a keyed instance resumes with besides the entries imported into its database.
pub(super) struct Restored {
    /// The operator snapshots of the old instances it took key groups from.
    pub(super) operators: Vec<serde_json::Value>,
    /// The operator's broadcast state, kept once for all instances (see
    /// [`crate::KeyedOperator::broadcast_state`]).
    pub(super) broadcast: Option<Vec<u8>>,
}

/// Imports the key groups `groups` of the operator with uid `uid` from the checkpoint
/// being restored (from every old instance that held some of them); returns those
/// instances' operator snapshots and the broadcast state, or `None` on a fresh start.
pub(super) fn import_keyed_state(
    checkpointing: &Checkpointing,
    uid: &str,
    groups: &std::ops::Range<KeyGroup>,
    state: &InstanceState,
) -> Result<Option<Restored>> {
    let (Some(manifest), Some(dir)) = (checkpointing.restored(), checkpointing.restored_dir())
    else {
        return Ok(None);
    };
    let prefix = format!("{uid}#");
    let mut restored = Restored {
        operators: Vec::new(),
        broadcast: None,
    };
    for (key, value) in manifest.participants.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let unfit = |reason: String| EngineError::RestoreState {
            checkpoint: manifest.id,
            participant: key.clone(),
            reason,
        };
        let old = match value {
            ParticipantState::Keyed(old) => old,
            other => {
                return Err(unfit(format!(
                    "it holds {}, where keyed operator state was expected",
                    other.describe()
                )))
            }
        };
        if let Some(file) = &old.broadcast {
            // Every instance loads the one copy, whichever key groups it takes.
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| {
                unfit(format!(
                    "its broadcast state cannot be read from {}: {e}",
                    path.display()
                ))
            })?;
            restored.broadcast = Some(bytes);
        }
        let overlap = old.key_groups.0.max(groups.start)..old.key_groups.1.min(groups.end);
        if overlap.is_empty() {
            continue;
        }
        let from = dir.join(&old.store);
        let imported = match state {
            InstanceState::Rocks(store) => store.import_key_groups(&from, overlap.clone()),
            InstanceState::Memory(tables) => {
                read_key_groups(&from, overlap.clone(), |table, key, value| {
                    tables.restore_entry(table, key, value);
                    Ok(())
                })
            }
        };
        imported.map_err(|e| {
            unfit(format!(
                "key groups {overlap:?} cannot be imported from {}: {e}",
                from.display()
            ))
        })?;
        restored.operators.push(old.operator.clone());
    }
    Ok(Some(restored))
}

/// The checkpointed state of one keyed instance.
pub(super) struct KeyedStore {
    pub(super) state: InstanceState,
    /// Its directory name, also used inside checkpoints.
    pub(super) name: String,
}

/// Where a keyed instance's state lives, which decides how it is snapshotted and restored.
pub(super) enum InstanceState {
    /// A RocksDB database: snapshotted as a RocksDB checkpoint (hard links).
    Rocks(Arc<RocksStore>),
    /// Memory tables: snapshotted as a full copy, written as a RocksDB database.
    Memory(Arc<MemorySnapshots>),
}

/// How a keyed instance takes part in checkpoints.
pub(super) struct KeyedCheckpoint {
    pub(super) participant: Participant,
    pub(super) key_groups: std::ops::Range<KeyGroup>,
    pub(super) store: Option<KeyedStore>,
}
