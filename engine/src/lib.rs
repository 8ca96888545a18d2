//! # weir-engine: the runtime of weir
//!
//! This crate owns everything a job needs at run time that is not a specific operator or
//! connector:
//!
//! - [`record`]: the unit of data ([`Record`]) and how it travels ([`Batch`]);
//! - [`time`]: event time, watermark strategies and duration parsing;
//! - [`clock`]: processing time, from the system clock or a manual one in tests;
//! - [`source`], [`sink`], [`operator`]: the small traits at the seams;
//! - [`dead_letter`]: records a source rejected, which leave it by a side output;
//! - [`state`]: keyed state behind the [`StateBackend`] trait;
//! - [`checkpoint`]: barrier-aligned snapshots, restore, and what sinks may commit;
//! - [`keys`]: stable key hashing, `#[derive(StableHash)]` for key types, key groups;
//! - [`job`]: the typed, fluent job API ([`Job`], [`Stream`], [`KeyedStream`]);
//! - [`runtime`]: turning a job graph into threads and bounded channels, and running it;
//! - [`metrics`]: Prometheus metrics and the `/metrics` HTTP endpoint;
//! - [`latency`]: end-to-end latency from source to sink, in processing time;
//! - [`query`]: reading keyed state while the job runs (queryable state).
//!
//! ```text
//!  source thread                      keyed workers (P)             sink thread
//!  ┌───────────────────────────┐      ┌─────────────────────┐      ┌──────────┐
//!  │ Source -> timestamps ->   │ ──▶  │ window / process -> │ ──▶  │  Sink    │
//!  │ map/filter -> key_by route│ ──▶  │ map/filter          │ ──▶  │          │
//!  └───────────────────────────┘      └─────────────────────┘      └──────────┘
//!        batches over bounded crossbeam channels (backpressure)
//! ```
//!
//! Stateless operators are chained into the thread of their input. A keyed operator runs as
//! P workers fed by a hash exchange over 128 key groups, except at P = 1 with a single input,
//! where it is chained too and the whole job may run on one thread.

// The derives name the engine as `::weir_engine`; this makes that path work inside it too.
extern crate self as weir_engine;

pub mod bytes;
pub mod checkpoint;
pub mod clock;
pub mod dead_letter;
pub mod error;
pub mod intern;
pub mod job;
pub mod keys;
pub mod latency;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod query;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod time;

pub use checkpoint::{
    CheckpointConfig, CheckpointId, ConnectorState, ConnectorStateType, JobControl, Resume,
    StateMismatch,
};
pub use clock::{ManualClock, ProcessingClock};
pub use dead_letter::{DeadLetter, Raw};
pub use error::{BoxError, EngineError, Result};
pub use job::{BroadcastConnectedStream, Job, KeyedStream, SinkHandle, Stream};
pub use keys::{KeyGroup, StableHash, MAX_KEY_GROUPS};
pub use latency::LatencySummary;
pub use metrics::JobMetrics;
pub use operator::{
    BroadcastEventTimeOperator, BroadcastOperator, BroadcastOperatorFactory, ChainedOperator,
    Connected, Due, EventTime, EventTimeOperator, Handled, KeyedOperator, Lateness,
    OperatorContext, Output,
};
pub use plan::JobPlan;
pub use query::{QueryError, QueryableState, TableHandle};
pub use record::{Batch, Data, Keyed, Record, Split};
pub use runtime::{Routed, RunOptions, RunSummary};
pub use sink::Sink;
pub use source::{Source, SourceStatus};
pub use state::{
    BroadcastState, BroadcastStateDescriptor, MapState, MemoryBackend, Namespaced, NoTimers,
    StateBackend, StateConfig, StateKey, StateTable, StateValue, TimerQueue,
};
pub use time::{parse_duration, FutureGuard, Timestamp, TooFarAhead, Watermarks};
