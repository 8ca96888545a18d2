//! The checkpoint coordinator: triggers checkpoints, collects acknowledgements, completes
//! checkpoints by writing their manifest, and tells sinks what they may commit.
//!
//! Tasks talk to it through [`Checkpointing`] (shared) and their own [`Participant`]
//! handle. The coordinator runs as one more task of the job; it ends after the final
//! checkpoint completed, or when the job is cancelled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::compatibility::match_restored_state;
use super::history::CheckpointHistory;
use super::in_flight::InFlight;
use super::manifest::{
    self, checkpoint_dir, uid_of_participant, ChecksumCache, Manifest, OperatorRecord,
};
use super::ownership::Fence;
use super::state::ParticipantState;
use super::{CheckpointConfig, CheckpointError, CheckpointId, Resume};
use crate::error::EngineError;
use crate::metrics::CheckpointMetrics;

/// A checkpoint that is not complete this long after it started has failed.
const MIN_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);

enum Event {
    Ack {
        participant: usize,
        id: CheckpointId,
        result: Result<ParticipantState, String>,
    },
    SourceExhausted,
    /// Take a checkpoint now and keep it; the reply is its savepoint directory.
    Savepoint(Sender<Result<PathBuf, String>>),
    /// Keep the final checkpoint (the one a stop takes) as a savepoint; the reply is its
    /// directory.
    SavepointAtEnd(Sender<Result<PathBuf, String>>),
}

#[derive(Default)]
struct Status {
    completed: CheckpointId,
    /// Set when the final checkpoint failed or the coordinator stopped early.
    aborted: Option<String>,
}

/// Checkpointing state shared by the coordinator and the tasks of one run.
pub(crate) struct Checkpointing {
    config: CheckpointConfig,
    job: String,
    parallelism: usize,
    /// This run's claim on the state directory, checked before each checkpoint completes.
    fence: Option<Fence>,
    /// The job's operators by uid, recorded in every manifest.
    operators: BTreeMap<String, OperatorRecord>,
    /// The checkpoint (or savepoint) this run resumes from, and its directory.
    restored: Option<(Manifest, PathBuf)>,
    /// The newest checkpoint sources must put a barrier in for.
    requested: AtomicU64,
    /// The id of the final checkpoint, once it was triggered (0 before).
    final_id: AtomicU64,
    /// Longest barrier alignment of the checkpoint in flight, in microseconds.
    alignment_micros: AtomicU64,
    status: Mutex<Status>,
    completed_changed: Condvar,
    events: Sender<Event>,
    receiver: Mutex<Option<Receiver<Event>>>,
    participants: Mutex<Vec<String>>,
    sources: AtomicU64,
    metrics: CheckpointMetrics,
    history: Arc<CheckpointHistory>,
    /// Report each completed checkpoint on stderr.
    verbose: bool,
    /// How its stderr lines start: `weir: `, or with the task's name (`weir: partition 3: `).
    says: String,
}

impl std::fmt::Debug for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointing")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One task's link to the coordinator: its name in the manifest, what it restores from,
/// and where it acknowledges.
#[derive(Debug, Clone)]
pub(crate) struct Participant {
    index: usize,
    shared: Arc<Checkpointing>,
}

impl Participant {
    /// The checkpointing this participant takes part in.
    pub(crate) fn checkpointing(&self) -> &Arc<Checkpointing> {
        &self.shared
    }

    /// The state this participant (same key) left in the checkpoint being restored.
    pub(crate) fn restored(&self) -> Option<&ParticipantState> {
        let key = self.shared.participant_key(self.index);
        self.shared.restored()?.participants.get(&key)
    }

    /// The states every instance of this participant's operator (its uid, whatever the
    /// instance number) left in the checkpoint being restored.
    pub(crate) fn restored_by_every_instance(&self) -> Vec<&ParticipantState> {
        let key = self.shared.participant_key(self.index);
        let uid = uid_of_participant(&key);
        let Some(manifest) = self.shared.restored() else {
            return Vec::new();
        };
        manifest
            .participants
            .iter()
            .filter(|(other, _)| uid_of_participant(other) == uid)
            .map(|(_, state)| state)
            .collect()
    }

    /// A restore error of this participant (called `name` in the job): its restored state
    /// does not fit it, for `reason`.
    pub(crate) fn restore_error(&self, name: &str, reason: impl std::fmt::Display) -> EngineError {
        EngineError::RestoreState {
            checkpoint: self.shared.restored_id(),
            participant: format!("{name} ({})", self.shared.participant_key(self.index)),
            reason: reason.to_string(),
        }
    }

    /// The restore error of a participant that expected `expected` and found `found`.
    pub(crate) fn unexpected_state(
        &self,
        name: &str,
        expected: &str,
        found: &ParticipantState,
    ) -> EngineError {
        self.restore_error(
            name,
            format!(
                "it holds {}, where {expected} was expected: the job changed under the same \
                 uid; run it as it was, or start over with --replay-from beginning",
                found.describe()
            ),
        )
    }

    /// Acknowledges checkpoint `id` with this participant's state, or its failure.
    pub(crate) fn ack(&self, id: CheckpointId, result: Result<ParticipantState, String>) {
        // The coordinator outlives every task; if it is gone the job is ending anyway.
        let _ = self.shared.events.send(Event::Ack {
            participant: self.index,
            id,
            result,
        });
    }
}

/// What a run claims besides its configuration: its state directory, its operators, and
/// whether a restore may leave state behind.
#[derive(Debug)]
pub(crate) struct RunClaims {
    /// The run's claim on the state directory, checked before each checkpoint completes.
    pub(crate) fence: Option<Fence>,
    /// The job's operators by uid (recorded in every manifest, matched on a restore).
    pub(crate) operators: BTreeMap<String, OperatorRecord>,
    /// Drop restored state no operator takes instead of refusing the restore.
    pub(crate) allow_non_restored_state: bool,
}

/// Where a run's checkpoints are reported as they complete or fail.
#[derive(Debug)]
pub(crate) struct Reporting {
    /// The Prometheus series.
    pub(crate) metrics: CheckpointMetrics,
    /// The history the HTTP API shows.
    pub(crate) history: Arc<CheckpointHistory>,
    /// Print each completed checkpoint on stderr.
    pub(crate) verbose: bool,
}

impl Checkpointing {
    /// Prepares checkpointing for a run; finds the checkpoint to resume from, if any.
    pub(crate) fn new(
        config: CheckpointConfig,
        job: &str,
        parallelism: usize,
        claims: RunClaims,
        reporting: Reporting,
        task: Option<&str>,
    ) -> Result<Arc<Self>, CheckpointError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| CheckpointError::Io {
            path: config.dir.clone(),
            source,
        })?;
        let mut restored = match &config.resume {
            Resume::Latest => manifest::latest_valid(&config.dir)?
                .map(|m| (m.clone(), manifest::checkpoint_dir(&config.dir, m.id))),
            Resume::From(dir) => Some((Manifest::read_verified(dir)?, dir.clone())),
            Resume::Beginning => None,
        };
        let RunClaims {
            fence,
            operators,
            allow_non_restored_state,
        } = claims;
        if let Some((manifest, _)) = &mut restored {
            match_restored_state(manifest, &operators, allow_non_restored_state)?;
        }
        let (events, receiver) = unbounded();
        Ok(Arc::new(Checkpointing {
            config,
            job: job.to_string(),
            parallelism,
            fence,
            operators,
            restored,
            requested: AtomicU64::new(0),
            final_id: AtomicU64::new(0),
            alignment_micros: AtomicU64::new(0),
            status: Mutex::new(Status::default()),
            completed_changed: Condvar::new(),
            events,
            receiver: Mutex::new(Some(receiver)),
            participants: Mutex::new(Vec::new()),
            sources: AtomicU64::new(0),
            metrics: reporting.metrics,
            history: reporting.history,
            verbose: reporting.verbose,
            says: task.map_or_else(|| "weir: ".to_string(), |t| format!("weir: {t}: ")),
        }))
    }

    /// The checkpoint this run resumes from.
    pub(crate) fn restored(&self) -> Option<&Manifest> {
        self.restored.as_ref().map(|(m, _)| m)
    }

    /// The directory of the checkpoint this run resumes from.
    pub(crate) fn restored_dir(&self) -> Option<&Path> {
        self.restored.as_ref().map(|(_, dir)| dir.as_path())
    }

    /// Id of the restored checkpoint, 0 for a fresh start.
    pub(crate) fn restored_id(&self) -> CheckpointId {
        self.restored().map_or(0, |m| m.id)
    }

    /// Asks the coordinator to keep the final checkpoint as a savepoint; the answer comes
    /// once it is written (an error, or a closed channel, if the run ends without one).
    pub(crate) fn request_savepoint_at_end(
        &self,
    ) -> Result<Receiver<Result<PathBuf, String>>, String> {
        let (reply, answer) = bounded(1);
        self.events
            .send(Event::SavepointAtEnd(reply))
            .map_err(|_| "the job is ending".to_string())?;
        Ok(answer)
    }

    /// Asks the coordinator for a savepoint and waits for it (see [`super::JobControl`]).
    pub(crate) fn request_savepoint(&self, timeout: Duration) -> Result<PathBuf, String> {
        let (reply, answer) = bounded(1);
        self.events
            .send(Event::Savepoint(reply))
            .map_err(|_| "the job is ending".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("no savepoint within {timeout:?}; the job may be busy"))?
    }

    /// The directory of checkpoint `id`.
    pub(crate) fn dir(&self, id: CheckpointId) -> PathBuf {
        checkpoint_dir(&self.config.dir, id)
    }

    /// Adds a participant called `key` (unique in the job: node name and instance).
    pub(crate) fn register(self: &Arc<Self>, key: String) -> Participant {
        let mut participants = lock(&self.participants);
        participants.push(key);
        Participant {
            index: participants.len() - 1,
            shared: self.clone(),
        }
    }

    /// Adds a source participant; the final checkpoint waits for all sources to end.
    pub(crate) fn register_source(self: &Arc<Self>, key: String) -> Participant {
        self.sources.fetch_add(1, Ordering::SeqCst);
        self.register(key)
    }

    fn participant_key(&self, index: usize) -> String {
        lock(&self.participants)
            .get(index)
            .cloned()
            .unwrap_or_default()
    }

    /// The newest checkpoint sources must put a barrier in for (0: none yet).
    pub(crate) fn requested(&self) -> CheckpointId {
        self.requested.load(Ordering::SeqCst)
    }

    /// True if `id` is the final checkpoint, after which sources end.
    pub(crate) fn is_final(&self, id: CheckpointId) -> bool {
        id != 0 && self.final_id.load(Ordering::SeqCst) == id
    }

    /// A source read all its input; it keeps answering checkpoints until the final one.
    pub(crate) fn source_exhausted(&self) {
        let _ = self.events.send(Event::SourceExhausted);
    }

    /// A task spent `took` aligning barriers for the checkpoint in flight.
    pub(crate) fn aligned(&self, took: Duration) {
        self.alignment_micros
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The newest complete checkpoint (its outputs may be committed).
    pub(crate) fn completed(&self) -> CheckpointId {
        lock(&self.status).completed
    }

    /// Blocks until checkpoint `id` completed; fails if it cannot complete any more.
    pub(crate) fn wait_completed(
        &self,
        id: CheckpointId,
        cancelled: &AtomicBool,
    ) -> Result<(), String> {
        let mut status = lock(&self.status);
        loop {
            if let Some(outcome) = Self::outcome(&status, id, cancelled) {
                return outcome;
            }
            status = self
                .completed_changed
                .wait_timeout(status, Duration::from_millis(100))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Whether checkpoint `id` completed (`Some(Ok)`), cannot complete any more
    /// (`Some(Err)`), or may still complete (`None`); never waits.
    pub(crate) fn completion(
        &self,
        id: CheckpointId,
        cancelled: &AtomicBool,
    ) -> Option<Result<(), String>> {
        Self::outcome(&lock(&self.status), id, cancelled)
    }

    fn outcome(
        status: &Status,
        id: CheckpointId,
        cancelled: &AtomicBool,
    ) -> Option<Result<(), String>> {
        if status.completed >= id {
            return Some(Ok(()));
        }
        if let Some(reason) = &status.aborted {
            return Some(Err(reason.clone()));
        }
        if cancelled.load(Ordering::Relaxed) {
            return Some(Err("the job was cancelled".into()));
        }
        None
    }

    fn abort(&self, reason: String) {
        lock(&self.status).aborted.get_or_insert(reason);
        self.completed_changed.notify_all();
    }

    /// Runs the coordinator until the final checkpoint completed or `cancelled` is set.
    /// Only the final checkpoint failing fails the job; other failures are counted and
    /// retried after the interval.
    pub(crate) fn coordinate(&self, cancelled: &AtomicBool) -> Result<(), String> {
        let result = self.coordinate_until_final(cancelled);
        if let Err(reason) = &result {
            self.abort(reason.clone());
        } else if cancelled.load(Ordering::Relaxed) {
            self.abort("the job was cancelled".into());
        }
        result
    }

    fn coordinate_until_final(&self, cancelled: &AtomicBool) -> Result<(), String> {
        let Some(events) = lock(&self.receiver).take() else {
            return Err("internal: the checkpoint coordinator ran twice".into());
        };
        self.discard_later_checkpoints()
            .map_err(|e| e.to_string())?;
        let participants = lock(&self.participants).len();
        let sources = self.sources.load(Ordering::SeqCst);
        let timeout = (self.config.interval * 10).max(MIN_CHECKPOINT_TIMEOUT);
        let mut checksums = ChecksumCache::default();
        let mut exhausted = 0;
        let mut next_id = self.restored_id() + 1;
        let mut next_due = Instant::now() + self.config.interval;
        let mut in_flight: Option<InFlight> = None;
        let mut savepoint_requests = Vec::new();
        let mut savepoints_at_end = Vec::new();
        while !cancelled.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = match &in_flight {
                Some(_) => Duration::from_millis(50),
                None if exhausted >= sources || !savepoint_requests.is_empty() => Duration::ZERO,
                None => next_due
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(50)),
            };
            match events.recv_timeout(wait) {
                Ok(Event::SourceExhausted) => exhausted += 1,
                Ok(Event::Savepoint(reply)) => savepoint_requests.push(reply),
                Ok(Event::SavepointAtEnd(reply)) => savepoints_at_end.push(reply),
                Ok(Event::Ack {
                    participant,
                    id,
                    result,
                }) => {
                    if let Some(f) = in_flight.as_mut() {
                        f.ack(participant, id, result, || {
                            self.participant_key(participant)
                        });
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if let Some(f) = &mut in_flight {
                if f.decided(Instant::now(), timeout) {
                    if let Some(fence) = &self.fence {
                        // A run that was taken over must not complete (and so let sinks
                        // commit) anything more: the job ends instead of trying again.
                        fence.check()?;
                    }
                    let mut flight = in_flight.take().expect("checked above");
                    let (id, is_final) = (flight.id, flight.is_final);
                    let savepoint_for = std::mem::take(&mut flight.savepoint_for);
                    let started = flight.started;
                    let completed = self.complete(flight, &mut checksums);
                    if let Err(reason) = &completed {
                        self.history.failed(id, started.elapsed(), reason);
                    }
                    if !savepoint_for.is_empty() {
                        let answer = completed.clone().and_then(|()| self.keep_as_savepoint(id));
                        for reply in savepoint_for {
                            let _ = reply.send(answer.clone());
                        }
                    }
                    match completed {
                        Ok(()) if is_final => return Ok(()),
                        Ok(()) => {}
                        Err(reason) => {
                            self.metrics.failed.inc();
                            if is_final {
                                return Err(format!("the final checkpoint {id} failed: {reason}"));
                            }
                            eprintln!(
                                "{}checkpoint {id} failed: {reason}; the job goes on and tries again in {:?}",
                                self.says, self.config.interval
                            );
                        }
                    }
                    next_due = Instant::now() + self.config.interval;
                }
            }
            let asked = !savepoint_requests.is_empty();
            if in_flight.is_none() && (exhausted >= sources || asked || Instant::now() >= next_due)
            {
                let id = next_id;
                next_id += 1;
                let is_final = exhausted >= sources;
                let dir = self.dir(id);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    self.metrics.failed.inc();
                    let reason = format!("cannot create {}: {e}", dir.display());
                    for reply in savepoint_requests.drain(..) {
                        let _ = reply.send(Err(reason.clone()));
                    }
                    if is_final {
                        return Err(format!("the final checkpoint {id} failed: {reason}"));
                    }
                    eprintln!(
                        "{}checkpoint {id} failed: {reason}; the job goes on",
                        self.says
                    );
                    next_due = Instant::now() + self.config.interval;
                    continue;
                }
                let mut savepoint_for = std::mem::take(&mut savepoint_requests);
                if is_final {
                    self.final_id.store(id, Ordering::SeqCst);
                    savepoint_for.append(&mut savepoints_at_end);
                }
                self.history.triggered(id, is_final, dir);
                self.alignment_micros.store(0, Ordering::Relaxed);
                self.requested.store(id, Ordering::SeqCst);
                in_flight = Some(InFlight {
                    id,
                    is_final,
                    started: Instant::now(),
                    acks: vec![None; participants],
                    failed: None,
                    savepoint_for,
                });
            }
        }
        Ok(())
    }

    /// Removes the checkpoints after the restored one (all of them when starting afresh):
    /// they describe a future this run will not have, and their ids are taken again. Done
    /// once the job is built, so a run refused while building (a sink that cannot resume
    /// from the restored checkpoint) leaves them in place.
    fn discard_later_checkpoints(&self) -> Result<(), CheckpointError> {
        let keep_up_to = self.restored_id();
        for (id, dir) in manifest::list(&self.config.dir)? {
            if id > keep_up_to {
                std::fs::remove_dir_all(&dir)
                    .map_err(|source| CheckpointError::Io { path: dir, source })?;
            }
        }
        Ok(())
    }

    /// Keeps complete checkpoint `id` as `savepoints/savepoint-NNNNNN`, out of retention's
    /// reach; returns its directory.
    fn keep_as_savepoint(&self, id: CheckpointId) -> Result<PathBuf, String> {
        let target = self
            .config
            .savepoints_dir()
            .join(format!("savepoint-{id:06}"));
        link_tree(&self.dir(id), &target)
            .map_err(|e| format!("cannot write savepoint {}: {e}", target.display()))?;
        eprintln!("weir: savepoint {id} written to {}", target.display());
        self.history.kept_as_savepoint(id, target.clone());
        Ok(target)
    }

    /// Writes the manifest of a fully acknowledged checkpoint (or reports its failure).
    fn complete(&self, flight: InFlight, checksums: &mut ChecksumCache) -> Result<(), String> {
        if let Some(reason) = flight.failed {
            return Err(reason);
        }
        let dir = self.dir(flight.id);
        let participants = flight
            .acks
            .into_iter()
            .enumerate()
            .map(|(i, state)| {
                let key = self.participant_key(i);
                match state {
                    Some(state) => Ok((key, state)),
                    None => Err(format!("internal: completing without the state of {key}")),
                }
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let files = checksums.files(&dir).map_err(|e| e.to_string())?;
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        Manifest::new(
            flight.id,
            &self.job,
            self.parallelism,
            flight.is_final,
            self.operators.clone(),
            participants,
            files,
        )
        .write(&dir)
        .map_err(|e| e.to_string())?;
        {
            let mut status = lock(&self.status);
            status.completed = flight.id;
        }
        self.completed_changed.notify_all();
        let (took, alignment) = (
            flight.started.elapsed(),
            Duration::from_micros(self.alignment_micros.load(Ordering::Relaxed)),
        );
        let m = &self.metrics;
        m.completed.inc();
        m.last_duration_seconds.set(took.as_secs_f64());
        m.last_size_bytes.set(bytes as i64);
        m.last_alignment_seconds.set(alignment.as_secs_f64());
        m.mark_completed();
        self.history.completed(flight.id, took, bytes, alignment);
        if self.verbose {
            eprintln!(
                "{}checkpoint {}{} complete in {} ms ({:.1} MB, longest alignment {} ms)",
                self.says,
                flight.id,
                if flight.is_final { " (final)" } else { "" },
                took.as_millis(),
                bytes as f64 / 1e6,
                alignment.as_millis()
            );
        }
        if let Err(e) = manifest::retain(&self.config.dir, flight.id, self.config.retained) {
            eprintln!("weir: cannot remove old checkpoints: {e}");
        }
        Ok(())
    }
}

/// Recreates the directory tree `from` at `to` with hard links (checkpoint files are never
/// changed after they are written, so sharing them is safe and costs no copy).
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            std::fs::hard_link(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
