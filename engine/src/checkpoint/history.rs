//! The recent checkpoints of a job, as the HTTP API's `GET /api/v1/checkpoints` shows them
//! (Flink's checkpoint history).
//!
//! The coordinator records each checkpoint when it is triggered and again when it completes
//! or fails; readers take a [`CheckpointHistory::snapshot`]. Only the newest
//! [`KEPT_CHECKPOINTS`] are kept, so the history's memory is bounded however long the job
//! runs; the counts cover every checkpoint of the run.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::CheckpointId;

/// How many checkpoints the history keeps.
pub const KEPT_CHECKPOINTS: usize = 20;

/// Where a checkpoint is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum CheckpointStatus {
    /// Triggered, not yet acknowledged by every task.
    InProgress,
    /// Its manifest is written: a restart can resume from it.
    Completed,
    /// It failed for the reason given; the job went on (unless it was the final one).
    Failed(String),
}

/// One checkpoint of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRecord {
    /// Its id.
    pub id: CheckpointId,
    /// When it was triggered, in milliseconds since the Unix epoch.
    pub triggered_at_ms: u64,
    /// Trigger to manifest (or to failure); `None` while in progress.
    pub duration_ms: Option<u64>,
    /// Bytes of its files (hard links counted in full); `None` unless completed.
    pub size_bytes: Option<u64>,
    /// Longest barrier alignment of any task; `None` unless completed.
    pub alignment_ms: Option<u64>,
    /// Where it is in its life.
    #[serde(flatten)]
    pub status: CheckpointStatus,
    /// True for the checkpoint taken at the end of the input or at a stop.
    pub is_final: bool,
    /// Its directory.
    pub path: PathBuf,
    /// The savepoint it was kept as, if one was asked for.
    pub savepoint: Option<PathBuf>,
}

/// What [`CheckpointHistory::snapshot`] gives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckpointsSnapshot {
    /// Checkpoints completed in this run.
    pub completed: u64,
    /// Checkpoints that failed in this run.
    pub failed: u64,
    /// The one in flight, 0 or 1.
    pub in_progress: u64,
    /// The newest checkpoints, newest first.
    pub recent: Vec<CheckpointRecord>,
}

/// The recent checkpoints of a job, shared by its coordinator and whoever shows them.
#[derive(Debug, Default)]
pub struct CheckpointHistory {
    inner: Mutex<CheckpointsSnapshot>,
}

impl CheckpointHistory {
    /// Checkpoint `id`, writing into `path`, was triggered now.
    pub(crate) fn triggered(&self, id: CheckpointId, is_final: bool, path: PathBuf) {
        let mut h = self.lock();
        h.in_progress += 1;
        h.recent.insert(
            0,
            CheckpointRecord {
                id,
                triggered_at_ms: unix_ms(SystemTime::now()),
                duration_ms: None,
                size_bytes: None,
                alignment_ms: None,
                status: CheckpointStatus::InProgress,
                is_final,
                path,
                savepoint: None,
            },
        );
        h.recent.truncate(KEPT_CHECKPOINTS);
    }

    /// Checkpoint `id` completed after `took`, with `bytes` of files.
    pub(crate) fn completed(
        &self,
        id: CheckpointId,
        took: Duration,
        bytes: u64,
        aligned: Duration,
    ) {
        let mut h = self.lock();
        h.completed += 1;
        if let Some(r) = h.finish(id, took, CheckpointStatus::Completed) {
            r.size_bytes = Some(bytes);
            r.alignment_ms = Some(millis(aligned));
        }
    }

    /// Checkpoint `id` failed after `took`.
    pub(crate) fn failed(&self, id: CheckpointId, took: Duration, reason: &str) {
        let mut h = self.lock();
        h.failed += 1;
        h.finish(id, took, CheckpointStatus::Failed(reason.to_string()));
    }

    /// Checkpoint `id` was kept as the savepoint `dir`.
    pub(crate) fn kept_as_savepoint(&self, id: CheckpointId, dir: PathBuf) {
        if let Some(r) = self.lock().recent.iter_mut().find(|r| r.id == id) {
            r.savepoint = Some(dir);
        }
    }

    /// The counts and the newest checkpoints.
    pub fn snapshot(&self) -> CheckpointsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointsSnapshot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CheckpointsSnapshot {
    /// Ends the in-flight checkpoint `id` with `status`; its record, if still kept.
    fn finish(
        &mut self,
        id: CheckpointId,
        took: Duration,
        status: CheckpointStatus,
    ) -> Option<&mut CheckpointRecord> {
        self.in_progress = self.in_progress.saturating_sub(1);
        let record = self.recent.iter_mut().find(|r| r.id == id)?;
        record.duration_ms = Some(millis(took));
        record.status = status;
        Some(record)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_moves_from_in_progress_to_completed_or_failed() {
        let h = CheckpointHistory::default();
        h.triggered(1, false, PathBuf::from("chk-000001"));
        let s = h.snapshot();
        assert_eq!((s.completed, s.failed, s.in_progress), (0, 0, 1));
        assert_eq!(s.recent[0].status, CheckpointStatus::InProgress);

        h.completed(1, Duration::from_millis(30), 4096, Duration::from_millis(2));
        h.triggered(2, true, PathBuf::from("chk-000002"));
        h.failed(2, Duration::from_millis(5), "disk full");
        let s = h.snapshot();
        assert_eq!((s.completed, s.failed, s.in_progress), (1, 1, 0));
        assert_eq!(s.recent[0].id, 2, "newest first");
        assert_eq!(
            s.recent[0].status,
            CheckpointStatus::Failed("disk full".into())
        );
        assert_eq!(s.recent[1].size_bytes, Some(4096));
        assert_eq!(s.recent[1].duration_ms, Some(30));
        assert_eq!(s.recent[1].alignment_ms, Some(2));
    }

    #[test]
    fn only_the_newest_checkpoints_are_kept_but_all_are_counted() {
        let h = CheckpointHistory::default();
        for id in 1..=50 {
            h.triggered(id, false, PathBuf::from(format!("chk-{id}")));
            h.completed(id, Duration::ZERO, 1, Duration::ZERO);
        }
        let s = h.snapshot();
        assert_eq!(s.completed, 50);
        assert_eq!(s.recent.len(), KEPT_CHECKPOINTS);
        assert_eq!(s.recent.first().map(|r| r.id), Some(50));
        assert_eq!(s.recent.last().map(|r| r.id), Some(31));
    }

    #[test]
    fn the_status_serializes_with_its_reason() {
        let h = CheckpointHistory::default();
        h.triggered(7, false, PathBuf::from("chk-000007"));
        h.failed(7, Duration::from_millis(1), "not acknowledged");
        let json = serde_json::to_value(h.snapshot()).unwrap_or_default();
        assert_eq!(json["recent"][0]["status"], "failed");
        assert_eq!(json["recent"][0]["reason"], "not acknowledged");
    }
}
