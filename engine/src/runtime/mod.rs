//! Turning a job graph into threads and bounded channels, and running it.
//!
//! # Where things are
//! | file | what |
//! |---|---|
//! | `push.rs` | the `Push` trait: how a batch, barrier, end or flush reaches the next operator |
//! | `build.rs` | turning graph nodes (`NodeImpl`) into pushes, channels and tasks |
//! | `source.rs` | polling a source, injecting barriers, the lockstep of parallel instances |
//! | `event_time.rs` | timestamps and watermark generation |
//! | `stateless.rs` | chained map, filter, flat_map and user operators; fan-out |
//! | `split.rs` | side outputs: one operator's output routed to two streams without copies |
//! | `exchange.rs` | how a record crosses threads: one channel, or by key group to a worker |
//! | `inbox.rs` | the receiving end of a channel: watermark minimum over producers, idleness |
//! | `alignment.rs` | where a checkpoint barrier is aligned |
//! | `keyed.rs`, `keyed_snapshot.rs` | keyed operator instances, and their state in checkpoints |
//! | `broadcast.rs` | a keyed operator connected to a broadcast stream: every instance gets its elements |
//! | `union.rs`, `sink.rs` | unions, and sinks with their pre-commit and commit |
//! | `run.rs` | threads, the checkpoint coordinator, progress, failure reporting |
//! | `worker.rs` | the worker threads of parallelism > 1 |
//!
//! # Scheduling
//! - At parallelism P > 1 the job runs P worker threads ([`worker`]): worker `w` runs
//!   instance `w` of every source added with [`crate::Job::parallel_source`] and of every
//!   keyed operator. Keyed input is routed by key group through channels; a record whose
//!   key group belongs to the worker that made it never leaves that thread. The instances
//!   of a parallel source move in step ([`source::Lockstep`]), unless they keep together by
//!   themselves ([`crate::Source::aligns_instances`]). A checkpoint holds one position per
//!   instance, so a parallel source resumes only with as many instances as it had.
//! - Any other source runs in a task (thread) of its own, as does a parallel source at
//!   P = 1, each instance with its own chain of stateless operators after it.
//! - Stateless operators are chained: they run as plain calls in the thread of their input.
//! - At P = 1 a keyed operator is chained too when it has a single upstream instance, and
//!   otherwise runs in a task of its own fed by a bounded channel.
//! - Sinks run where their single input runs, or in a task of their own fed by a channel
//!   when several upstream instances deliver to them. A union of branches of one stream
//!   (all its inputs in one thread, instance by instance) is chained into that thread
//!   ([`union::UnionMerge`]); a union of streams from different threads has a task of its own.
//! - What goes to a sink's own task is held back a little ([`exchange::Held`]): results are sent
//!   when a batch's worth or 1 ms of them has gathered, and whenever the producing thread
//!   goes quiet ([`Push::flush`]; not when it only waits for a slower worker); a watermark
//!   without results waits up to 10 ms. The sink's task sleeps on a
//!   [`doorbell::Doorbell`], not in the channel's spin-then-yield wait.
//!
//! # Backpressure
//! Channels hold at most [`RunOptions::channel_capacity`] batches. A full channel blocks the
//! sender, so a slow sink slows the source instead of growing memory. Channels into worker
//! threads cannot block their senders (workers send to each other); sources stop polling
//! while any of them holds that many messages instead ([`worker::Backlog`]).
//!
//! # Watermarks across channels
//! A receiver with several producers tracks each producer's watermark; its watermark (and
//! the watermark stamped on each record it forwards) is the minimum over producers.
//!
//! # Checkpoints
//! With [`RunOptions::checkpoints`], barriers travel with the batches (see
//! [`crate::checkpoint`]): a receiver with several producers aligns them in [`inbox::Inbox`] ([`alignment::Alignment`]), keyed
//! operator instances snapshot in [`keyed::KeyedRunner`], sinks pre-commit in [`sink::SinkPush`], and
//! sources inject barriers between polls. Each keyed instance has a RocksDB database of its
//! own under `<state-dir>/<job>/rocksdb/`.
//!
//! # Shutdown
//! A source that is exhausted sends the end watermark (`i64::MAX`), which fires every
//! window, then an end marker. A source of a job that is stopping ([`crate::JobControl::stop`])
//! sends only the end marker, so open windows stay open; with checkpoints, sources end only
//! after the final checkpoint, which the coordinator takes once every source ended its
//! input either way. Receivers pass the end on once all their producers ended, adding no
//! watermark of their own. A task that fails drops its channels; its neighbours notice
//! ([`crate::EngineError::DownstreamGone`] / [`crate::EngineError::UpstreamGone`]) and stop, and
//! the run reports the first real cause.

use std::time::Duration;

use crate::checkpoint::CheckpointConfig;
use crate::latency::LatencySummary;
use crate::state::StateConfig;
use crate::time::Timestamp;

mod doorbell;
mod state_dir;
mod worker;

/// How a job runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Number of workers of each keyed operator (1..=128).
    pub parallelism: usize,
    /// Largest number of events a source hands over at once.
    pub batch_size: usize,
    /// Batches a channel holds before its sender blocks.
    pub channel_capacity: usize,
    /// Print progress (events, events/s, watermark) to stderr this often.
    pub progress_interval: Option<Duration>,
    /// An input of a multi-input operator that delivers nothing for this long is idle and
    /// left out of the watermark minimum until it delivers again (default: never).
    pub idle_timeout: Option<Duration>,
    /// Where keyed operators keep their state.
    pub state: StateConfig,
    /// Periodic checkpoints, and resuming from the newest one (with either state backend).
    pub checkpoints: Option<CheckpointConfig>,
    /// Skip events whose event time is before this (a replay from a point in time).
    pub replay_from: Option<Timestamp>,
    /// Names this run in progress lines and messages when it is one of several tasks of a
    /// job in one process (e.g. `partition 3`).
    pub task: Option<String>,
    /// How long to wait for another run to release the state directory before refusing to
    /// start (default zero: refused at once, naming the holder).
    pub state_dir_wait: Duration,
    /// Restore a checkpoint even if some of its state has no operator (by uid) in the job,
    /// dropping that state (Flink's `--allowNonRestoredState`). Default: refuse.
    pub allow_non_restored_state: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallelism: 1,
            batch_size: 1024,
            channel_capacity: 16,
            progress_interval: None,
            idle_timeout: None,
            state: StateConfig::Memory,
            checkpoints: None,
            replay_from: None,
            task: None,
            state_dir_wait: Duration::ZERO,
            allow_non_restored_state: false,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Events read by all sources.
    pub events_read: u64,
    /// Records sent to dead-letter outputs.
    pub dead_letters: u64,
    /// Events dropped from windows as late.
    pub late_events: u64,
    /// Records received by the sinks of results (not by side outputs' sinks).
    pub results_written: u64,
    /// Wall-clock duration of the run.
    pub elapsed: Duration,
    /// The last event-time watermark before the end of input, if any events had times.
    pub watermark: Option<Timestamp>,
    /// End-to-end latency of the results the sinks received (see [`crate::latency`]).
    pub latency: Option<LatencySummary>,
    /// The run ended because it was stopped ([`crate::JobControl::stop`]), not at the end of its
    /// input: windows still open were not fired (with checkpoints they are in the final
    /// checkpoint, and the next run goes on from there).
    pub stopped: bool,
}

/// The `barrier`, `finish` and `flush` of a push that passes them on to `self.$down`
/// unchanged (most of them).
macro_rules! pass_on_control {
    ($down:ident) => {
        fn barrier(&mut self, id: CheckpointId) -> Result<()> {
            self.$down.barrier(id)
        }
        fn finish(&mut self) -> Result<()> {
            self.$down.finish()
        }
        fn flush(&mut self, what: Flush) -> Result<()> {
            self.$down.flush(what)
        }
    };
}

mod alarm;
mod alignment;
mod broadcast;
mod build;
mod event_time;
mod exchange;
mod inbox;
mod keyed;
mod keyed_snapshot;
mod push;
mod run;
mod sink;
mod source;
mod split;
mod stateless;
mod union;

pub(crate) use broadcast::BroadcastNode;
pub(crate) use build::NodeImpl;
pub(crate) use event_time::TimestampPush;
pub(crate) use keyed::KeyedNode;
pub(crate) use push::{Flush, Push};
pub(crate) use run::run;
pub(crate) use sink::SinkNode;
pub(crate) use source::SourceNode;
pub use split::Routed;
pub(crate) use split::{PortNode, SplitNode};
pub(crate) use stateless::{ChainedPush, FilterPush, FlatMapPush, MapPush, StatelessNode};
pub(crate) use union::UnionNode;
pub(crate) use worker::bell as worker_bell;

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
