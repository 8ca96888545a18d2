//! Sources: a source node's instances, the loop that polls one ([`SourceLoop`]), barrier
//! injection between polls, and the lockstep of a parallel source's instances.
//!
//! # Dead letters
//! After each poll the loop takes the source's rejected records
//! ([`Source::take_dead_letters`]), counts them and sends them down the node's dead-letter
//! output ([`crate::Stream::dead_letters`]), if anything reads it. Both outputs
//! ([`Outputs`]) get every barrier, flush and end in the same order, so a dead letter is in
//! the checkpoint whose barrier follows it and in no earlier one. A poll without rejects
//! costs one test of an empty vector.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;
use prometheus::IntCounter;

use super::alarm;
use super::build::{Build, NodeImpl, Task};
use super::push::{Flush, Push};
use super::worker::{Backlog, Part, Step};
use crate::checkpoint::coordinator::Participant;
use crate::checkpoint::{CheckpointId, ConnectorState, ParticipantState, StateMismatch};
use crate::dead_letter::DeadLetter;
use crate::error::{EngineError, Result};
use crate::job::{NodeId, DEAD_LETTERS_OUTPUT};
use crate::record::{Batch, Data, Record};
use crate::source::{Source, SourceStatus};
use crate::time::{END_WATERMARK, MIN_WATERMARK};

pub(crate) struct SourceNode<S> {
    instances: RefCell<SourceInstances<S>>,
}

/// Where a source node's instances come from.
pub(super) enum SourceInstances<S> {
    /// The one instance, whatever the parallelism; taken by the first run.
    One(Option<S>),
    /// `make(instance, instances)`: one per worker, built for each run.
    Split(Box<dyn Fn(usize, usize) -> S>),
    /// One per worker, made by [`Source::split`] of this one for each run: their positions
    /// are shares of one input, restored at any parallelism ([`Source::seek_shares`]).
    Shares(S),
}

impl<S> SourceNode<S> {
    pub(crate) fn new(source: S) -> Self {
        SourceNode {
            instances: RefCell::new(SourceInstances::One(Some(source))),
        }
    }

    pub(crate) fn split(make: impl Fn(usize, usize) -> S + 'static) -> Self {
        SourceNode {
            instances: RefCell::new(SourceInstances::Split(Box::new(make))),
        }
    }

    pub(crate) fn shares(source: S) -> Self {
        SourceNode {
            instances: RefCell::new(SourceInstances::Shares(source)),
        }
    }
}

impl<S: Source> NodeImpl for SourceNode<S> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        Err(EngineError::Internal {
            reason: format!("source `{}` was given an input", b.name(me)),
        })
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        let name = b.name(me);
        let count = b.graph.parallelism(me, b.options.parallelism);
        let mut shares = false;
        let sources = match &mut *self.instances.borrow_mut() {
            SourceInstances::One(source) => {
                // All positions of the uid: a file split over the workers in the run that
                // took the checkpoint may be read by one reader now (a larger
                // --split-bytes); a source that cannot take several refuses them.
                shares = true;
                vec![source.take().ok_or_else(|| EngineError::InvalidJob {
                    job: b.metrics.job().to_string(),
                    reason: format!(
                        "source `{name}` was already used by an earlier run: build the job again"
                    ),
                })?]
            }
            SourceInstances::Split(make) => {
                check_restored_instances(b, &name, &b.uid(me), count)?;
                (0..count).map(|i| make(i, count)).collect()
            }
            SourceInstances::Shares(source) => {
                shares = true;
                (0..count)
                    .map(|i| {
                        source
                            .split(i, count)
                            .ok_or_else(|| EngineError::InvalidJob {
                                job: b.metrics.job().to_string(),
                                reason: format!(
                                    "source `{name}` did not split into {count} readers when the \
                                 run started, though it did when the job was built: its input \
                                 changed meanwhile; build the job again"
                                ),
                            })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let lockstep = Lockstep::new(count, b.options.channel_capacity.max(1) as u64);
        for (instance, source) in sources.into_iter().enumerate() {
            let in_step =
                (count > 1 && !source.aligns_instances()).then(|| lockstep.instance(instance));
            let restore = match shares {
                true => Restore::Shares,
                false => Restore::Own,
            };
            start_source_instance(b, me, instance, count, source, in_step, restore)?;
        }
        Ok(())
    }
}

/// What an instance of a source resumes from, if the run restores a checkpoint.
pub(super) enum Restore {
    /// Its own position (participant `uid#instance`).
    Own,
    /// The positions of all instances of the source in the checkpoint
    /// ([`Source::seek_shares`]).
    Shares,
}

/// A split source's positions belong to its instances' shares of the input, so a restore
/// needs as many instances as the checkpoint had.
pub(super) fn check_restored_instances(
    b: &Build<'_>,
    name: &str,
    uid: &str,
    count: usize,
) -> Result<()> {
    let Some(manifest) = b.checkpointing.as_ref().and_then(|c| c.restored()) else {
        return Ok(());
    };
    let prefix = format!("{uid}#");
    let checkpointed = manifest
        .participants
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .count();
    if checkpointed == count {
        return Ok(());
    }
    Err(EngineError::RestoreState {
        checkpoint: manifest.id,
        participant: format!("{uid}#*"),
        reason: format!(
            "source `{name}` reads its input split over the workers and the checkpoint has \
             {checkpointed} of its instances, not {count}: resume with --parallelism \
             {checkpointed}, or start over with --replay-from beginning"
        ),
    })
}

/// Spawns the task that polls instance `instance` (of `count`) of source node `me`.
pub(super) fn start_source_instance<S: Source>(
    b: &mut Build<'_>,
    me: NodeId,
    instance: usize,
    count: usize,
    mut source: S,
    lockstep: Option<Lockstep>,
    restore: Restore,
) -> Result<()> {
    let name = b.name(me);
    let source_err = |source| EngineError::Source {
        name: name.clone(),
        source,
    };
    let participant = b
        .checkpointing
        .as_ref()
        .map(|c| c.register_source(format!("{}#{instance}", b.uid(me))));
    if let Some(p) = &participant {
        if source.position().map_err(source_err)?.is_none() {
            return Err(EngineError::InvalidJob {
                job: b.metrics.job().to_string(),
                reason: format!(
                    "source `{name}` ({}) cannot be replayed, so the job cannot checkpoint: \
                         run it without --checkpoint-interval",
                    source.describe()
                ),
            });
        }
        let positions: Vec<ConnectorState> = match restore {
            Restore::Shares => p
                .restored_by_every_instance()
                .into_iter()
                .filter_map(|state| match state {
                    ParticipantState::Source { position } => Some(position.clone()),
                    _ => None,
                })
                .collect(),
            Restore::Own => Vec::new(),
        };
        let restored = match (restore, p.restored()) {
            (Restore::Shares, _) if positions.is_empty() => Ok(()),
            (Restore::Shares, _) => source.seek_shares(&positions),
            (Restore::Own, None) => Ok(()),
            (Restore::Own, Some(ParticipantState::Source { position })) => source.seek(position),
            (Restore::Own, Some(other)) => {
                return Err(p.unexpected_state(&name, "a source position", other))
            }
        };
        restored.map_err(|e| match e.downcast::<StateMismatch>() {
            Ok(mismatch) => p.restore_error(&name, mismatch),
            Err(e) => source_err(e),
        })?;
    }
    let down = Outputs {
        main: b.downstream::<S::Item>(me, instance)?,
        dead_letters: b.side_output::<DeadLetter>(me, DEAD_LETTERS_OUTPUT, instance)?,
    };
    let metrics = b.metrics.stateless_operator(&name, instance);
    b.progress.sources.push(metrics.events_out.clone());
    let last_barrier = participant
        .as_ref()
        .map_or(0, |p| p.checkpointing().restored_id());
    let source_loop = SourceLoop {
        name: name.clone(),
        source,
        down,
        events_out: metrics.events_out,
        batch_size: b.options.batch_size.max(1),
        items: Vec::with_capacity(b.options.batch_size.max(1)),
        rejected: Vec::new(),
        dead_letters_out: b.metrics.dead_letters(&name),
        participant,
        last_barrier,
        pending_positions: VecDeque::new(),
        final_barrier: None,
        exhausted: false,
        cancelled: b.cancelled.clone(),
        stopping: b.stopping.clone(),
        backlog: b.backlog.backlog(),
        lockstep,
        pending_until: None,
    };
    if b.colocated_source(me) {
        b.workers[instance].push(Box::new(source_loop));
        return Ok(());
    }
    b.tasks.push(Task {
        name: if count > 1 {
            format!("{name}#{instance}")
        } else {
            name
        },
        run: Box::new(move || source_loop.run()),
    });
    Ok(())
}

/// Polls one source instance into its chain and puts checkpoint barriers between polls.
pub(super) struct SourceLoop<S: Source> {
    name: String,
    source: S,
    down: Outputs<S::Item>,
    events_out: IntCounter,
    batch_size: usize,
    items: Vec<S::Item>,
    /// The dead letters of the last poll, on their way to the dead-letter output.
    rejected: Vec<DeadLetter>,
    /// `weir_dead_letters_total` of this source.
    dead_letters_out: IntCounter,
    participant: Option<Participant>,
    last_barrier: CheckpointId,
    /// Positions acked for checkpoints not known complete yet, oldest first.
    pending_positions: VecDeque<(CheckpointId, ConnectorState)>,
    /// The final checkpoint's barrier went out: the loop ends once it completed (or failed).
    final_barrier: Option<CheckpointId>,
    /// The source read all its input, or stopped reading because the job is stopping.
    exhausted: bool,
    cancelled: Arc<AtomicBool>,
    /// Set when the job is asked to stop ([`JobControl::stop`]).
    stopping: Arc<AtomicBool>,
    backlog: Backlog,
    /// For an instance of a parallel source: its place among its siblings.
    lockstep: Option<Lockstep>,
    /// The source said nothing is due before this ([`SourceStatus::Pending`]).
    pending_until: Option<Instant>,
}

impl<S: Source> SourceLoop<S> {
    fn source_err(&self, source: crate::BoxError) -> EngineError {
        EngineError::Source {
            name: self.name.clone(),
            source,
        }
    }

    /// Counts the dead letters of the last poll and sends them on, if anything reads them.
    fn send_dead_letters(&mut self) -> Result<()> {
        self.dead_letters_out.inc_by(self.rejected.len() as u64);
        let letters = self.rejected.drain(..);
        if let Some(down) = &mut self.down.dead_letters {
            let records = letters
                .map(|value| Record {
                    ts: MIN_WATERMARK,
                    watermark: MIN_WATERMARK,
                    value,
                })
                .collect();
            down.push(Batch::new(records, MIN_WATERMARK))?;
        }
        Ok(())
    }

    /// The source reads no more: at the end of its input (`reached_end`) the end watermark
    /// fires every window; when the job stops, windows stay open (in the final checkpoint,
    /// for the next run). With checkpoints the loop goes on until the final checkpoint.
    fn end_input(&mut self, reached_end: bool) -> Result<Step> {
        if reached_end {
            self.down.end()?;
        }
        self.exhausted = true;
        self.pending_until = None;
        if let Some(lockstep) = &self.lockstep {
            // Siblings no longer wait for this instance.
            lockstep.polled(true);
        }
        match &self.participant {
            Some(p) => {
                p.checkpointing().source_exhausted();
                Ok(Step::Worked)
            }
            None => {
                self.down.finish()?;
                Ok(Step::Done)
            }
        }
    }

    /// Runs in a thread of its own until the source ended and its final checkpoint is done.
    fn run(mut self) -> Result<()> {
        loop {
            match self.step()? {
                Step::Worked => {}
                Step::Idle => {
                    self.down.flush(Flush::All)?;
                    // Parked, not asleep: a query on a keyed table chained into this thread
                    // wakes it (see `crate::query`).
                    // A processing-time timer of an operator chained here ends it too.
                    let wait = alarm::bound(self.wake_after().unwrap_or_default());
                    std::thread::park_timeout(wait);
                }
                Step::HeldBack => {
                    self.down.flush(Flush::Due)?;
                    std::thread::sleep(self.wake_after().unwrap_or_default());
                }
                Step::Done => return Ok(()),
            }
        }
    }
}

impl<S: Source> Part for SourceLoop<S> {
    fn step(&mut self) -> Result<Step> {
        // A source that is idle sends nothing, so it would never notice that another task
        // failed: it asks.
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(EngineError::DownstreamGone {
                name: self.name.clone(),
            });
        }
        if let Some(p) = &self.participant {
            if let Some(id) = self.final_barrier {
                // The final checkpoint's position is told too, if it completes.
                match p.checkpointing().completion(id, &self.cancelled) {
                    None => return Ok(Step::Idle),
                    Some(Ok(())) => {
                        notify_completed(&mut self.source, &mut self.pending_positions, id)
                            .map_err(|e| self.source_err(e))?
                    }
                    Some(Err(_)) => {}
                }
                self.down.finish()?;
                return Ok(Step::Done);
            }
            notify_completed(
                &mut self.source,
                &mut self.pending_positions,
                p.checkpointing().completed(),
            )
            .map_err(|e| self.source_err(e))?;
            let id = p.checkpointing().requested();
            if id > self.last_barrier {
                self.last_barrier = id;
                let position = match self.source.position() {
                    Ok(Some(position)) => {
                        self.pending_positions.push_back((id, position.clone()));
                        Ok(ParticipantState::Source { position })
                    }
                    Ok(None) => Err("the source cannot be replayed".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                p.ack(id, position);
                self.down.barrier(id)?;
                if p.checkpointing().is_final(id) {
                    self.final_barrier = Some(id);
                }
                return Ok(Step::Worked);
            }
        }
        if self.exhausted {
            return Ok(Step::Idle);
        }
        if self.stopping.load(Ordering::Relaxed) {
            return self.end_input(false);
        }
        if self
            .pending_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(Step::Idle);
        }
        self.pending_until = None;
        if self.backlog.is_full() || self.lockstep.as_ref().is_some_and(Lockstep::ahead) {
            return Ok(Step::HeldBack);
        }
        let status = self
            .source
            .poll_batch(&mut self.items, self.batch_size)
            .map_err(|e| self.source_err(e))?;
        if self.items.is_empty() {
            // The source may wait in its next poll: what is held for a sink goes now.
            self.down.flush(Flush::All)?;
        } else {
            self.events_out.inc_by(self.items.len() as u64);
            let records = self
                .items
                .drain(..)
                .map(|value| Record {
                    ts: MIN_WATERMARK,
                    watermark: MIN_WATERMARK,
                    value,
                })
                .collect();
            self.down.main.push(Batch {
                records,
                watermark: MIN_WATERMARK,
                split: self.source.split_of_batch(),
                ingested: Some(Instant::now()),
            })?;
        }
        self.source.take_dead_letters(&mut self.rejected);
        if !self.rejected.is_empty() {
            self.send_dead_letters()?;
        }
        match status {
            SourceStatus::Exhausted => return self.end_input(true),
            SourceStatus::Pending(wait) => self.pending_until = Some(Instant::now() + wait),
            SourceStatus::More | SourceStatus::Idle => {}
        }
        if let Some(lockstep) = &self.lockstep {
            lockstep.polled(false);
        }
        Ok(Step::Worked)
    }

    fn watch<'a>(&'a self, _select: &mut Select<'a>) {}

    fn wake_after(&self) -> Option<Duration> {
        Some(match self.pending_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            // Only the final checkpoint is left to take part in: no hurry.
            None if self.exhausted => Duration::from_millis(2),
            // Held back by the workers' backlog or a slower sibling.
            None => Duration::from_micros(100),
        })
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

/// Where a source instance's records go: its events and, if anything reads them, its dead
/// letters. Both outputs see every barrier, flush, end of input and finish, dead letters
/// first (as a split's side output).
pub(super) struct Outputs<T> {
    main: Box<dyn Push<T>>,
    dead_letters: Option<Box<dyn Push<DeadLetter>>>,
}

impl<T: Data> Outputs<T> {
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        if let Some(dead) = &mut self.dead_letters {
            dead.barrier(id)?;
        }
        self.main.barrier(id)
    }

    /// The end of the input: the end watermark, which fires every window.
    fn end(&mut self) -> Result<()> {
        if let Some(dead) = &mut self.dead_letters {
            dead.push(Batch::new(Vec::new(), END_WATERMARK))?;
        }
        self.main.push(Batch::new(Vec::new(), END_WATERMARK))
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        if let Some(dead) = &mut self.dead_letters {
            dead.flush(what)?;
        }
        self.main.flush(what)
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(dead) = &mut self.dead_letters {
            dead.finish()?;
        }
        self.main.finish()
    }
}

/// Keeps the instances of a parallel source in step: one that polled more than `lead`
/// batches past the slowest waits. Their shares interleave in event time, and a keyed
/// operator's watermark is the minimum over them, so an instance running ahead only makes
/// state pile up downstream until the others catch up (Flink's watermark alignment, counted
/// in batches because the instances split one stream by position).
#[derive(Clone)]
pub(super) struct Lockstep {
    /// Batches polled per instance; `u64::MAX` once an instance is exhausted.
    polled: Arc<[AtomicU64]>,
    instance: usize,
    lead: u64,
}

impl Lockstep {
    fn new(instances: usize, lead: u64) -> Self {
        Lockstep {
            polled: (0..instances).map(|_| AtomicU64::new(0)).collect(),
            instance: 0,
            lead,
        }
    }

    fn instance(&self, instance: usize) -> Self {
        Lockstep {
            instance,
            ..self.clone()
        }
    }

    fn ahead(&self) -> bool {
        let mine = self.polled[self.instance].load(Ordering::Relaxed);
        let slowest = self.polled.iter().map(|p| p.load(Ordering::Relaxed)).min();
        slowest.is_some_and(|slowest| mine > slowest.saturating_add(self.lead))
    }

    fn polled(&self, exhausted: bool) {
        let polled = &self.polled[self.instance];
        match exhausted {
            true => polled.store(u64::MAX, Ordering::Relaxed),
            false => {
                polled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Tells `source` the newest of its positions whose checkpoint (at most `completed`) is
/// complete, and forgets those.
pub(super) fn notify_completed<S: Source>(
    source: &mut S,
    pending: &mut VecDeque<(CheckpointId, ConnectorState)>,
    completed: CheckpointId,
) -> std::result::Result<(), crate::BoxError> {
    let mut newest = None;
    while pending.front().is_some_and(|(id, _)| *id <= completed) {
        newest = pending.pop_front();
    }
    match newest {
        Some((_, position)) => source.checkpoint_completed(&position),
        None => Ok(()),
    }
}
