//! Exactly-once for the PostgreSQL sink in a job with checkpoints: the rows of a checkpoint
//! are written once it completes, in one transaction that also records its number in
//! `weir_commits(job, sink, checkpoint)` (a write-ahead sink, as the Kafka sink's
//! `transactions`; the database's transaction makes each commit atomic).
//!
//! ```text
//!  rows ──> open changes ──barrier C──> pending[C] ──C complete──> BEGIN; upsert rows;
//!           (memory, per key)           (in checkpoint C's         weir_commits = C; COMMIT
//!                                        sink state too)
//! ```
//!
//! # Invariants
//! - The rows between two barriers belong to the second barrier's checkpoint. They are kept
//!   in memory, one change per key (bounded by `max_pending=` keys per interval: more fail
//!   the job, saying to shorten the interval), and in the sink's part of every checkpoint
//!   taken before they are committed, so a crash after a checkpoint completed and before
//!   its commit loses nothing.
//! - A commit writes the rows of every pending checkpoint up to the completed `C` and sets
//!   `weir_commits` to `C` in one transaction: both land or neither does.
//! - A fresh start sets `weir_commits` to 0. A restart from checkpoint `C` writes the rows
//!   of the checkpoints in `C`'s sink state above `weir_commits` (the dead process did not
//!   commit them), skips the rest (it did), and sets `weir_commits` to `C`. Rows derived
//!   after `C` are replayed by the engine and written when their checkpoint completes.
//! - A restart from a checkpoint older than `weir_commits` (a fallback past a corrupt
//!   checkpoint, an older savepoint) is refused: the rows committed after it would be
//!   applied a second time, with other checkpoint boundaries.
//! - One run at a time: the sink holds a session advisory lock on (job, sink) while it
//!   runs, so a second run of the job (or a zombie one) fails instead of interleaving its
//!   commits. A killed process's session ends with its connection, and its lock with it.

use std::time::{Duration, Instant};

use postgres::Transaction;
use serde::{Deserialize, Serialize};
use weir_engine::checkpoint::{ConnectorState, ConnectorStateType};
use weir_engine::{BoxError, CheckpointId};

use super::changes::{Change, Changes};
use super::writer::{failed, Writer};
use super::{PostgresError, PostgresSpec};

/// The table of committed checkpoints, one row per job and sink.
const COMMITS_TABLE: &str = "CREATE TABLE IF NOT EXISTS weir_commits (\
     job TEXT NOT NULL, sink TEXT NOT NULL, checkpoint BIGINT NOT NULL, \
     committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (job, sink))";
const READ: &str = "SELECT checkpoint::bigint FROM weir_commits WHERE job = $1 AND sink = $2";
const SET: &str = "INSERT INTO weir_commits (job, sink, checkpoint) VALUES ($1, $2, $3) \
     ON CONFLICT (job, sink) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, committed_at = now()";
const LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1 || '/' || $2, 0))";

/// How long a starting run waits for the lock of a run that just ended (its server session
/// may take a moment to notice).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The changes of one checkpoint, kept until it is committed: one JSON [`Change`] a line.
/// One string rather than a value per change (as the Kafka sink's pending rows): it is kept
/// in memory and in every checkpoint until committed, and a tree of JSON values costs
/// several times the rows' size (window-agg into PostgreSQL with 1 s checkpoints peaked at
/// 610-750 MiB with values).
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    checkpoint: CheckpointId,
    changes: String,
}

/// What the sink keeps in a checkpoint: the changes of every checkpoint not committed yet.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkSnapshot {
    pending: Vec<Pending>,
}

impl ConnectorStateType for SinkSnapshot {
    const KIND: &'static str = "postgres sink";
    const VERSION: u32 = 1;
}

impl Pending {
    fn new(checkpoint: CheckpointId, changes: Vec<Change>) -> Result<Pending, BoxError> {
        let mut lines = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut lines, &change)?;
            lines.push(b'\n');
        }
        let changes = String::from_utf8(lines)?;
        Ok(Pending {
            checkpoint,
            changes,
        })
    }

    fn changes(&self) -> Result<Vec<Change>, BoxError> {
        self.changes
            .lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    format!("a pending PostgreSQL row is unreadable ({e}): {line}").into()
                })
            })
            .collect()
    }
}

/// The checkpoints not committed yet, and where they go.
pub(super) struct Transactional {
    job: String,
    pending: Vec<Pending>,
}

impl Transactional {
    /// Takes the lock of (job, sink) and finishes what the restored checkpoint left: its
    /// rows not committed yet are committed now. A fresh start (`restored` is `None`)
    /// sets `weir_commits` to 0.
    pub(super) fn begin(
        writer: &mut Writer,
        job: &str,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<Transactional, BoxError> {
        let spec = writer.spec().clone();
        let sink = spec.sink.clone();
        let commits = |problem: String| PostgresError::Commits {
            endpoint: format!("{}/{}", spec.endpoint(), spec.database()),
            job: job.to_string(),
            sink: sink.clone(),
            problem,
        };
        if let Err(e) = writer.client().batch_execute(COMMITS_TABLE) {
            return Err(writer.error("create table weir_commits", &e).into());
        }
        let since = Instant::now();
        loop {
            let locked = writer.client().query_one(LOCK, &[&job, &sink]);
            match locked.and_then(|row| row.try_get::<_, bool>(0)) {
                Ok(true) => break,
                Ok(false) if since.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(false) => {
                    return Err(commits(format!(
                        "another run of the job writes to this sink (it holds its lock after \
                         {LOCK_WAIT:?}); stop it first, or give this one its own sink= name"
                    ))
                    .into())
                }
                Err(e) => return Err(writer.error("lock weir_commits", &e).into()),
            }
        }
        let read = writer.client().query_opt(READ, &[&job, &sink]);
        let committed: Option<i64> =
            match read.and_then(|row| row.map(|r| r.try_get(0)).transpose()) {
                Ok(committed) => committed,
                Err(e) => return Err(writer.error("read weir_commits", &e).into()),
            };
        let committed = committed.map(|c| c as CheckpointId);
        let Some((checkpoint, state)) = restored else {
            writer.apply(&[], |tx| set(tx, &spec, job, 0))?;
            return Ok(Transactional {
                job: job.to_string(),
                pending: Vec::new(),
            });
        };
        let pending = match state {
            None => Vec::new(),
            Some(state) => {
                state
                    .decode::<SinkSnapshot>()
                    .map_err(|e| commits(format!("the checkpoint's sink state does not fit: {e}")))?
                    .pending
            }
        };
        if let Some(newer) = committed.filter(|&c| c > checkpoint) {
            return Err(commits(format!(
                "the table already holds the rows committed with checkpoint {newer}, and this \
                 run resumes from the older checkpoint {checkpoint}, so the rows of \
                 checkpoints {}..{newer} would be applied a second time; resume from \
                 checkpoint {newer} or newer, or, to apply them again on purpose, give the \
                 output a new sink= name (or start over with --replay-from beginning)",
                checkpoint + 1
            ))
            .into());
        }
        let mut undone = Changes::default();
        let mut checkpoints = 0;
        for p in pending {
            if committed.is_none_or(|c| p.checkpoint > c) {
                checkpoints += 1;
                undone.extend(p.changes()?, &spec.key, &spec.table)?;
            }
        }
        if !undone.is_empty() {
            eprintln!(
                "weir: {}: committing the rows of {checkpoints} checkpoints up to {checkpoint} \
                 that the previous run did not commit ({} keys)",
                spec.describe(),
                undone.len()
            );
        }
        // Set even with nothing to commit, so that it names this run's checkpoints.
        writer.apply(&undone.take(), |tx| set(tx, &spec, job, checkpoint))?;
        Ok(Transactional {
            job: job.to_string(),
            pending: Vec::new(),
        })
    }

    /// A barrier of `checkpoint`: `open` (the changes since the last one) belongs to it.
    /// Returns every uncommitted change, for the checkpoint.
    pub(super) fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
        open: &mut Changes,
    ) -> Result<Option<ConnectorState>, BoxError> {
        if !open.is_empty() {
            self.pending.push(Pending::new(checkpoint, open.take())?);
        }
        let snapshot = SinkSnapshot {
            pending: std::mem::take(&mut self.pending),
        };
        let state = ConnectorState::encode(&snapshot);
        self.pending = snapshot.pending;
        Ok(Some(state?))
    }

    /// `checkpoint` completed: its rows and those of every earlier one are committed, with
    /// `weir_commits` set to it, in one transaction.
    pub(super) fn commit(
        &mut self,
        writer: &mut Writer,
        checkpoint: CheckpointId,
    ) -> Result<(), BoxError> {
        let due = self
            .pending
            .iter()
            .take_while(|p| p.checkpoint <= checkpoint)
            .count();
        let spec = writer.spec().clone();
        let mut changes = Changes::default();
        for p in self.pending.drain(..due) {
            changes.extend(p.changes()?, &spec.key, &spec.table)?;
        }
        writer.apply(&changes.take(), |tx| set(tx, &spec, &self.job, checkpoint))?;
        Ok(())
    }
}

/// Sets (job, sink)'s committed checkpoint in `tx`.
fn set(
    tx: &mut Transaction<'_>,
    spec: &PostgresSpec,
    job: &str,
    checkpoint: CheckpointId,
) -> Result<(), PostgresError> {
    let id = checkpoint as i64;
    tx.execute(SET, &[&job, &spec.sink, &id])
        .map(|_| ())
        .map_err(|e| {
            failed(
                spec,
                format!("record checkpoint {checkpoint} in weir_commits"),
                &e,
            )
        })
}
