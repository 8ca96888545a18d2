//! What a run claims and records before it starts: the locks on the job directories it
//! writes (one run per state directory, see [`crate::checkpoint::ownership`]) and the
//! job's operators by uid, which every checkpoint records and a restore is matched
//! against (see `checkpoint::compatibility`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::checkpoint::{Fence, JobControl, OperatorRecord, StateDirLock};
use crate::error::{EngineError, Result};
use crate::job::{Graph, NodeKind, Uid};
use crate::state::StateConfig;

use super::RunOptions;

/// The job's operators by uid, as checkpoints record them.
pub(super) fn operator_records(graph: &Graph, uids: &[Uid]) -> BTreeMap<String, OperatorRecord> {
    graph
        .nodes
        .iter()
        .zip(uids)
        .map(|(node, uid)| {
            let kind = match node.kind {
                NodeKind::Keyed | NodeKind::Stateless => format!("{:?} {}", node.kind, node.base),
                other => format!("{other:?}"),
            };
            let record = OperatorRecord {
                name: node.name.clone(),
                kind,
                detail: node.detail.clone(),
                derived: uid.derived,
            };
            (uid.value.clone(), record)
        })
        .collect()
}

/// Locks the job directories this run writes (`DIR/<job>` of the RocksDB state and of the
/// checkpoints; one lock where they are the same) and returns the locks and the fence of
/// the checkpoints' directory.
pub(super) fn lock_state_dirs(
    job: &str,
    options: &RunOptions,
    control: &JobControl,
) -> Result<(Vec<StateDirLock>, Option<Fence>)> {
    let checkpoints = options
        .checkpoints
        .as_ref()
        .map(|c| c.dir.parent().unwrap_or(&c.dir).to_path_buf());
    let rocksdb = match &options.state {
        StateConfig::RocksDb { dir, .. } => Some(dir.join(job)),
        StateConfig::Memory => None,
    };
    let mut dirs: Vec<PathBuf> = checkpoints.iter().chain(rocksdb.iter()).cloned().collect();
    dirs.dedup();
    let mut locks = Vec::new();
    for dir in dirs {
        let lock = StateDirLock::acquire(&dir, options.state_dir_wait, &|| control.is_cancelled())
            .map_err(|e| {
                // Cancelled while waiting (a partition task whose partition moved on): a
                // cancel, not a failure.
                if control.is_cancelled() {
                    EngineError::Cancelled {
                        job: job.to_string(),
                    }
                } else {
                    EngineError::StateDir {
                        job: job.to_string(),
                        source: e,
                    }
                }
            })?;
        locks.push(lock);
    }
    let fence = checkpoints.and_then(|dir| {
        locks
            .iter()
            .find(|l| l.dir() == dir)
            .map(StateDirLock::fence)
    });
    Ok((locks, fence))
}
