//! # weir-operators: stateful operators of weir
//!
//! - [`aggregate`]: incremental aggregates (count, sum, min, max, avg, all-in-one stats)
//!   and the [`Aggregator`] trait for your own;
//! - [`window`]: event-time windows (tumbling, sliding, session). **Windows fire in
//!   [`window::aligned`] and [`window::session`]**, when the watermark reaches `end - 1`;
//! - [`process`]: a keyed function with per-key state (and event-time timers), for logic
//!   that is not a window, with map and list state per key ([`process_state`]);
//! - [`broadcast`]: a keyed function connected to a broadcast control stream (rules,
//!   thresholds), whose broadcast state every instance holds;
//! - [`join`]: interval, temporal and window joins (tumbling, sliding, session; co-group);
//! - [`cep`]: sequence patterns per key with a timeout output;
//! - [`async_io`]: `map_async`, enrichment from external services on a tokio runtime;
//! - [`topn`] and [`continuous_topn`]: top-N per window, and over running aggregates as a
//!   changelog; [`dedup`]: drop repeated ids within a TTL.
//!
//! Each family adds an extension trait to the engine's [`weir_engine::KeyedStream`], so a
//! job reads as one chain:
//!
//! ```
//! use std::time::Duration;
//! use weir_engine::{Job, Watermarks};
//! use weir_operators::prelude::*;
//! # use weir_engine::{BoxError, Record, Sink, Source, SourceStatus};
//! # #[derive(Clone, Debug)] struct Click { user: String, ts: i64, ms: i64 }
//! # struct Clicks(Vec<Click>);
//! # impl Source for Clicks {
//! #     type Item = Click;
//! #     fn poll_batch(&mut self, out: &mut Vec<Click>, _: usize) -> Result<SourceStatus, BoxError> {
//! #         out.append(&mut self.0); Ok(SourceStatus::Exhausted)
//! #     }
//! #     fn describe(&self) -> String { "clicks".into() }
//! # }
//! # struct Print;
//! # impl<T: std::fmt::Debug + Send + 'static> Sink<T> for Print {
//! #     fn write(&mut self, r: &[Record<T>]) -> Result<(), BoxError> { Ok(()) }
//! #     fn finish(&mut self) -> Result<(), BoxError> { Ok(()) }
//! #     fn describe(&self) -> String { "print".into() }
//! # }
//! # let clicks = Clicks(vec![Click { user: "a".into(), ts: 1, ms: 30 }]);
//! let job = Job::new("dwell");
//! job.source("clicks", clicks)
//!     .timestamps(|c| c.ts, Watermarks::bounded(Duration::from_secs(2)))
//!     .key_by(|c| c.user.clone())
//!     .window(Tumbling::of(Duration::from_secs(10)))
//!     .aggregate(Count.and(Sum::of(|c: &Click| c.ms)))
//!     .sink("out", Print);
//! job.run(&Default::default())?;
//! # Ok::<(), weir_engine::EngineError>(())
//! ```

pub mod aggregate;
pub mod async_io;
pub mod broadcast;
pub mod cep;
pub mod continuous_topn;
pub mod dedup;
#[doc(hidden)]
pub mod doc_support;
pub mod join;
pub mod process;
pub mod process_state;
#[cfg(test)]
mod test_support;
mod time_order;
pub mod topn;
pub mod window;

pub use aggregate::{
    AggregateError, Aggregator, AggregatorExt, Avg, Count, MapResult, Max, Min, Numeric, Stats,
    StatsOutput, Sum,
};
pub use async_io::{AsyncError, AsyncExt, AsyncOptions};
pub use broadcast::{BroadcastContext, BroadcastProcessExt, BroadcastProcessFunction};
pub use cep::{AfterMatchSkip, CepExt, CepOutput, Match, Pattern, TimedOut};
pub use continuous_topn::{ChangeKind, ContinuousTopNExt, RankChange};
pub use dedup::{DedupExt, KeyedDedupExt};
pub use join::{CoGrouped, JoinExt, Side, WindowPair};
pub use process::{ProcessExt, TimeDomain, TimerContext, TimerFunction};
pub use process_state::{
    DeclareState, ListStateDescriptor, ListStateHandle, MapStateDescriptor, MapStateHandle,
};
pub use topn::{Ranked, TopNExt};
pub use window::{
    Rejected, Session, Sliding, Timing, Trigger, Tumbling, Window, WindowAggregateError,
    WindowContext, WindowEvent, WindowExt, WindowResult, WindowSpec, WindowedStream,
};

/// Everything a job definition usually needs.
pub mod prelude {
    pub use crate::aggregate::{Aggregator, AggregatorExt, Avg, Count, Max, Min, Stats, Sum};
    pub use crate::async_io::{AsyncExt, AsyncOptions};
    pub use crate::broadcast::{BroadcastContext, BroadcastProcessExt, BroadcastProcessFunction};
    pub use crate::cep::{AfterMatchSkip, CepExt, CepOutput, Match, Pattern, TimedOut};
    pub use crate::continuous_topn::{ChangeKind, ContinuousTopNExt, RankChange};
    pub use crate::dedup::{DedupExt, KeyedDedupExt};
    pub use crate::join::{CoGrouped, JoinExt, WindowPair};
    pub use crate::process::{ProcessExt, TimeDomain, TimerContext, TimerFunction};
    pub use crate::process_state::{DeclareState, ListStateDescriptor, MapStateDescriptor};
    pub use crate::topn::{Ranked, TopNExt};
    pub use crate::window::{
        Session, Sliding, Timing, Trigger, Tumbling, WindowContext, WindowExt, WindowResult,
        WindowSpec, WindowedStream,
    };
    /// The key trait and its derive, for key types of your own.
    pub use weir_engine::keys::StableHash;
    /// Broadcast state: its descriptor, and the state a broadcast function reads and writes.
    pub use weir_engine::{BroadcastState, BroadcastStateDescriptor};
}
