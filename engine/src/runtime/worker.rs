//! Worker threads: at parallelism P > 1 a job runs P workers, as Timely Dataflow does, and
//! worker `w` runs instance `w` of every parallel source and of every keyed operator (with
//! the stateless operators chained to them). A record crosses a channel only where its
//! key moves it to another worker; the records that stay are handed over in the thread
//! that made them, while they are still in its cache, and no thread sleeps or wakes for
//! them.
//!
//! # Scheduling
//! A worker steps its [`Part`]s in turn: a source polls one batch, an inbox handles a bounded
//! number of messages. When no part did anything it waits for a message on any of its
//! inboxes, or until a source wants polling again ([`crate::SourceStatus::Pending`], or a
//! short while when a source is held back by the backlog or a slower sibling), or until a
//! keyed operator's processing-time timer is due ([`super::alarm`]).
//!
//! # Invariants
//! - A worker never blocks on a send to another worker: a worker can be the receiver of its
//!   own sends, and two workers sending to each other would deadlock on bounded channels.
//!   Channels into workers are unbounded instead, and [`Backlog`] bounds them: sources do
//!   not poll while any of them holds a channel's capacity of messages. What one poll adds
//!   on top of that is what its batch makes, including every window it fires: a watermark
//!   that fires a large state at once (the end of input) lands in the next stage's channel
//!   whole, where bounded channels used to stream it. Firing in resumable chunks would
//!   bound that too; not done.
//! - The backlog's probes hold receivers, so a sender never sees a failed worker's channel
//!   close: every part checks the job's cancel flag instead.
//! - A part never waits for something another part of its worker must do (a source waits
//!   for its final checkpoint between steps, not inside one). Sinks, which wait for the
//!   final checkpoint to commit, never run in a worker: at P > 1 every sink has P
//!   producers and a task of its own.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Select, Sender};

use super::{alarm, Flush};
use crate::error::{EngineError, Result};

/// What one step of a part did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Worked,
    /// Nothing to do now.
    Idle,
    /// Would work, but waits for other parts to catch up (backpressure, a slower sibling):
    /// the worker is saturated, not quiet.
    HeldBack,
    /// The part has finished (it ended its downstream).
    Done,
}

/// A piece of a worker's work that advances in steps without blocking.
pub(super) trait Part: Send {
    fn step(&mut self) -> Result<Step>;
    /// Registers the channel this part receives from, if any.
    fn watch<'a>(&'a self, select: &mut Select<'a>);
    /// For a part that can become ready without a message on its channel (a source): how
    /// soon to step it again at the latest.
    fn wake_after(&self) -> Option<Duration>;
    /// Sends on what this part's downstream holds back for a sink (see [`super::Push::flush`]).
    fn flush(&mut self, what: Flush) -> Result<()>;
}

/// How long an idle worker waits at most for a message (then checks cancellation).
const POLL_MESSAGES: Duration = Duration::from_millis(10);

thread_local! {
    /// The running worker's bell: a send on it ends the worker's wait for messages.
    static BELL: RefCell<Option<Sender<()>>> = const { RefCell::new(None) };
}

/// The bell of the worker running in this thread, if it is a worker: what a query on a
/// keyed instance of the worker rings so that an idle worker answers at once (see
/// [`crate::query`]).
pub(crate) fn bell() -> Option<Sender<()>> {
    BELL.with(|b| b.borrow().clone())
}

/// Runs `parts` in the calling thread until all are done, or one fails, or the job is
/// cancelled.
pub(super) fn run(name: &str, mut parts: Vec<Box<dyn Part>>, cancelled: &AtomicBool) -> Result<()> {
    let (ring, rung) = bounded::<()>(1);
    BELL.with(|b| *b.borrow_mut() = Some(ring));
    while !parts.is_empty() {
        if cancelled.load(Ordering::Relaxed) {
            return Err(EngineError::DownstreamGone {
                name: name.to_string(),
            });
        }
        let (mut worked, mut held_back) = (false, false);
        let mut i = 0;
        while i < parts.len() {
            let step = parts[i].step()?;
            if step != Step::Done {
                // Held results wait no longer than their hold time, also while a part
                // works without pushing (aligning a barrier) or others keep the worker
                // busy.
                parts[i].flush(Flush::Due)?;
            }
            match step {
                Step::Worked => {
                    worked = true;
                    i += 1;
                }
                Step::Idle | Step::HeldBack => {
                    held_back |= step == Step::HeldBack;
                    i += 1;
                }
                Step::Done => {
                    parts.remove(i);
                    worked = true;
                }
            }
        }
        if !worked && !parts.is_empty() {
            // A quiet worker sends every result on before it waits. One that only waits
            // for the others to catch up goes on in a moment; flushing each time woke the
            // sink's thread thousands of times a second (taking a core from a worker),
            // so its results wait for their hold time.
            if !held_back {
                for part in &mut parts {
                    part.flush(Flush::All)?;
                }
            }
            let timeout = parts
                .iter()
                .filter_map(|p| p.wake_after())
                .fold(POLL_MESSAGES, Duration::min);
            let mut select = Select::new();
            for part in &parts {
                part.watch(&mut select);
            }
            select.recv(&rung);
            // Which channel is ready does not matter: the next round steps every part.
            let _ = select.ready_timeout(alarm::bound(timeout));
            while rung.try_recv().is_ok() {}
        }
    }
    Ok(())
}

type Probe = Box<dyn Fn() -> bool + Send + Sync>;

/// The channels into workers, as seen by sources: full if any holds its capacity.
#[derive(Clone, Default)]
pub(super) struct Backlog(Arc<OnceLock<Vec<Probe>>>);

impl Backlog {
    pub(super) fn is_full(&self) -> bool {
        self.0
            .get()
            .is_some_and(|probes| probes.iter().any(|full| full()))
    }
}

/// Collects the channels of a [`Backlog`] while a job is built.
#[derive(Default)]
pub(super) struct BacklogBuilder {
    backlog: Backlog,
    probes: Vec<Probe>,
}

impl BacklogBuilder {
    /// The backlog sources check; it sees the channels once [`BacklogBuilder::seal`] ran.
    pub(super) fn backlog(&self) -> Backlog {
        self.backlog.clone()
    }

    pub(super) fn watch<T: Send + 'static>(&mut self, rx: Receiver<T>, capacity: usize) {
        self.probes.push(Box::new(move || rx.len() >= capacity));
    }

    /// Freezes the set of channels (before any thread starts).
    pub(super) fn seal(self) {
        // Sealed once per run, on a backlog no other builder shares.
        let _ = self.backlog.0.set(self.probes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::{mpsc, Mutex};
    use std::time::Instant;

    use super::*;
    use crate::job::Job;
    use crate::runtime::test_support::{Collect, PassOnFactory};
    use crate::runtime::RunOptions;
    use crate::source::{Source, SourceStatus};
    use crate::time::Watermarks;
    use crate::BoxError;
    use crate::Record;

    /// Instance `instance` of `instances`: the numbers below `end` that are `instance`
    /// modulo `instances`, `per_poll` at a time, sleeping `pause` before each poll; counts
    /// its polls in `polled` and the most it ever led the other instances by in `lead`.
    struct Numbers {
        next: i64,
        end: i64,
        stride: i64,
        per_poll: usize,
        pause: Duration,
        instance: usize,
        polled: Arc<[AtomicU64]>,
        lead: Arc<AtomicU64>,
    }

    impl Source for Numbers {
        type Item = i64;
        fn poll_batch(&mut self, out: &mut Vec<i64>, _: usize) -> Result<SourceStatus, BoxError> {
            std::thread::sleep(self.pause);
            let mine = self.polled[self.instance].fetch_add(1, Ordering::SeqCst);
            let slowest = self.polled.iter().map(|p| p.load(Ordering::SeqCst)).min();
            let lead = mine.saturating_sub(slowest.unwrap_or(mine));
            self.lead.fetch_max(lead, Ordering::SeqCst);
            for _ in 0..self.per_poll {
                if self.next >= self.end {
                    // Done: never the slowest any more.
                    self.polled[self.instance].store(u64::MAX, Ordering::SeqCst);
                    return Ok(SourceStatus::Exhausted);
                }
                out.push(self.next);
                self.next += self.stride;
            }
            Ok(SourceStatus::More)
        }
        fn describe(&self) -> String {
            "numbers".into()
        }
    }

    /// Runs numbers 0..`events` from a parallel source through two keyed stages (keys that
    /// send most records to another worker) at `options`; the values the sink got and the
    /// largest lead of one source instance over the slowest, or a panic after 60 s.
    fn run_two_stages(
        events: i64,
        slow_instance_pause: Duration,
        options: RunOptions,
    ) -> (Vec<i64>, u64) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let lead = Arc::new(AtomicU64::new(0));
            let instances = options.parallelism;
            let polled: Arc<[AtomicU64]> = (0..instances).map(|_| AtomicU64::new(0)).collect();
            let job = Job::new("two-stages");
            let source_lead = lead.clone();
            job.parallel_source("numbers", move |instance, instances| Numbers {
                next: instance as i64,
                end: events,
                stride: instances as i64,
                per_poll: 8,
                pause: if instance == 0 {
                    slow_instance_pause
                } else {
                    Duration::ZERO
                },
                instance,
                polled: polled.clone(),
                lead: source_lead.clone(),
            })
            .timestamps(|v| *v, Watermarks::ascending())
            .key_by(|v: &i64| v / 3)
            .process("first", String::new(), PassOnFactory { fail_on: None })
            .key_by(|v: &i64| v / 7)
            .process("second", String::new(), PassOnFactory { fail_on: None })
            .sink("out", Collect(seen.clone()));
            let result = job.run(&options).map_err(|e| e.to_string());
            let mut values: Vec<i64> = seen
                .lock()
                .map(|records| records.iter().map(|r| r.value).collect())
                .unwrap_or_default();
            values.sort_unstable();
            let _ = tx.send(result.map(|_| (values, lead.load(Ordering::SeqCst))));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => panic!("the job failed: {e}"),
            Err(_) => panic!("the job hung (workers deadlocked?)"),
        }
    }

    /// Runs, in a thread of its own, the parallel source `make` keyed by value through a
    /// pass-through operator into `seen`, at `options`.
    fn spawn_keyed_pass_through<S: Source<Item = i64>>(
        seen: Arc<Mutex<Vec<Record<i64>>>>,
        options: RunOptions,
        make: impl Fn(usize, usize) -> S + Send + 'static,
    ) -> std::thread::JoinHandle<std::result::Result<(), String>> {
        std::thread::spawn(move || {
            let job = Job::new("keyed-pass-through");
            job.parallel_source("in", make)
                .timestamps(|v| *v, Watermarks::ascending())
                .key_by(|v: &i64| *v)
                .process("pass", String::new(), PassOnFactory { fail_on: None })
                .sink("out", Collect(seen));
            job.run(&options).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// Five values, then nothing (`Pending`) until `done`.
    struct GoesQuiet {
        values: Vec<i64>,
        done: Arc<AtomicBool>,
    }

    impl Source for GoesQuiet {
        type Item = i64;
        fn poll_batch(&mut self, out: &mut Vec<i64>, _: usize) -> Result<SourceStatus, BoxError> {
            if !self.values.is_empty() {
                out.append(&mut self.values);
                return Ok(SourceStatus::More);
            }
            Ok(match self.done.load(Ordering::SeqCst) {
                true => SourceStatus::Exhausted,
                false => SourceStatus::Pending(Duration::from_millis(5)),
            })
        }
        fn describe(&self) -> String {
            "goes quiet".into()
        }
    }

    #[test]
    fn results_held_for_the_sink_reach_it_while_the_sources_are_quiet() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (job_seen, job_done) = (seen.clone(), done.clone());
        let options = RunOptions {
            parallelism: 2,
            ..RunOptions::default()
        };
        let job = spawn_keyed_pass_through(job_seen, options, move |instance, _| GoesQuiet {
            values: (0..5).map(|v| instance as i64 * 100 + v).collect(),
            done: job_done.clone(),
        });
        let started = Instant::now();
        let arrived = loop {
            let arrived = seen.lock().map(|records| records.len()).unwrap_or(0);
            if arrived == 10 || started.elapsed() > Duration::from_secs(10) {
                break arrived;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        done.store(true, Ordering::SeqCst);
        if let Err(e) = job.join().expect("the job's thread does not panic") {
            panic!("the job failed: {e}");
        }
        assert_eq!(arrived, 10, "the results waited for the end of input");
    }

    #[test]
    fn workers_sending_to_each_other_through_tiny_channels_deliver_everything_once() {
        for parallelism in [2, 3] {
            let options = RunOptions {
                parallelism,
                batch_size: 8,
                channel_capacity: 1,
                ..RunOptions::default()
            };
            let started = Instant::now();
            let (values, _) = run_two_stages(200_000, Duration::ZERO, options);
            assert_eq!(
                values,
                (0..200_000).collect::<Vec<_>>(),
                "P = {parallelism}"
            );
            assert!(started.elapsed() < Duration::from_secs(60));
        }
    }

    /// Instance 1 makes `0..2_000`, 8 a poll; instance 0 waits (`Pending`) until instance 1
    /// is done, then makes `2_000..2_008`. Both say they keep together by themselves.
    struct WaitsForSibling {
        instance: usize,
        next: i64,
        sibling_done: Arc<AtomicBool>,
        polls_waited: u32,
        gave_up: Arc<AtomicBool>,
    }

    impl Source for WaitsForSibling {
        type Item = i64;
        fn poll_batch(&mut self, out: &mut Vec<i64>, _: usize) -> Result<SourceStatus, BoxError> {
            if self.instance == 1 {
                out.extend(self.next..self.next + 8);
                self.next += 8;
                if self.next < 2_000 {
                    return Ok(SourceStatus::More);
                }
                self.sibling_done.store(true, Ordering::SeqCst);
                return Ok(SourceStatus::Exhausted);
            }
            if !self.sibling_done.load(Ordering::SeqCst) {
                // Held in step, instance 1 could make only a few polls per poll of this one.
                if self.polls_waited < 200 {
                    self.polls_waited += 1;
                    return Ok(SourceStatus::Pending(Duration::from_millis(5)));
                }
                self.gave_up.store(true, Ordering::SeqCst);
            }
            out.extend(2_000..2_008);
            Ok(SourceStatus::Exhausted)
        }
        fn aligns_instances(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "waits for its sibling".into()
        }
    }

    #[test]
    fn instances_that_keep_together_by_themselves_are_not_held_in_step() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (sibling_done, gave_up) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (job_seen, job_gave_up) = (seen.clone(), gave_up.clone());
        let options = RunOptions {
            parallelism: 2,
            batch_size: 8,
            channel_capacity: 4,
            ..RunOptions::default()
        };
        let job = spawn_keyed_pass_through(job_seen, options, move |instance, _| WaitsForSibling {
            instance,
            next: 0,
            sibling_done: sibling_done.clone(),
            polls_waited: 0,
            gave_up: job_gave_up.clone(),
        });
        if let Err(e) = job.join().expect("the job's thread does not panic") {
            panic!("the job failed: {e}");
        }
        let mut values: Vec<i64> = seen
            .lock()
            .map(|records| records.iter().map(|r| r.value).collect())
            .unwrap_or_default();
        values.sort_unstable();
        assert_eq!(values, (0..2_008).collect::<Vec<_>>());
        assert!(
            !gave_up.load(Ordering::SeqCst),
            "instance 1 was held back while instance 0 waited for it"
        );
    }

    #[test]
    fn a_fast_source_instance_waits_for_a_slow_one() {
        let options = RunOptions {
            parallelism: 2,
            batch_size: 8,
            channel_capacity: 4,
            ..RunOptions::default()
        };
        // Instance 0 sleeps 1 ms per poll; instance 1 could finish its 250 polls at once.
        let (values, lead) = run_two_stages(4_000, Duration::from_millis(1), options);
        assert_eq!(values, (0..4_000).collect::<Vec<_>>());
        // It may poll while at most `channel_capacity` polls ahead, so it leads by at most
        // one more than that.
        assert!(lead <= 5, "instance 1 ran {lead} polls ahead of instance 0");
    }
}
