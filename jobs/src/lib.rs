//! # weir-jobs: the `weir` command line, as a library, and the bundled jobs
//!
//! A job is a function that builds a dataflow from parsed options. A crate that defines its
//! own jobs registers them and gets the whole CLI (`jobs`, `describe`, `run`, `bench`,
//! Prometheus metrics, progress) from one call:
//!
//! ```no_run
//! use weir_jobs::prelude::*;
//!
//! fn build(opts: &JobOptions) -> anyhow::Result<Job> {
//!     let job = Job::new("my-job");
//!     // job.source(..)...sink(..);
//!     Ok(job)
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // The options it reads besides every job's (`--output`, `--parallelism`, state and
//!     // checkpoints): the CLI refuses others instead of ignoring them.
//!     let job = JobSpec::new("my-job", "What it computes", build).reads(&["input"]);
//!     weir_jobs::cli::main(Registry::new().register(job))
//! }
//! ```
//!
//! Modules: [`cli`] (subcommands), [`registry`] (jobs by name), [`options`] (the flags
//! every job can read), [`input`] (sources chosen by `--input`), [`output`] (sinks chosen
//! by `--output`), [`dead_letters`] (the
//! dead-letter file), [`window_agg`], [`order_analytics`] and [`account_balances`]
//! (bundled jobs), [`arrow_events`] (window-agg's Arrow IPC input and
//! its generator), [`generate`] (deterministic test and bench streams), [`mod@bench`] (the
//! `weir bench` harness), [`partitioned`] (a job run as one task per Kafka partition, for
//! scale-out over a consumer group), [`new_crate`] (`weir new`: a crate of your own).

pub mod account_balances;
pub mod arrow_events;
pub mod bench;
pub mod cli;
pub mod dead_letters;
pub mod generate;
mod http;
pub mod input;
pub mod new_crate;
pub mod nexmark;
pub mod operator_bench;
pub mod options;
pub mod order_analytics;
pub mod output;
pub mod partitioned;
pub mod registry;
pub mod saga_monitor;
mod stop_signal;
mod temporary_state;
pub mod window_agg;

pub use weir_connectors as connectors;
pub use weir_engine as engine;
pub use weir_operators as operators;

/// What a job definition usually needs, in one import.
pub mod prelude {
    pub use crate::dead_letters::{source_with_dead_letters, write_dead_letters};
    pub use crate::input::{read_input, read_input_timed, InputSource, InputSpec};
    pub use crate::options::JobOptions;
    pub use crate::output::OutputSink;
    pub use crate::registry::{JobSpec, Registry};
    pub use weir_connectors::{FileSink, FileSource, Format, Json, StdoutSink};
    /// `#[derive(StableHash)]` for crates that depend on `weir-jobs` alone: it names the
    /// engine as `weir_jobs::engine` (the trait comes with the operators' prelude).
    pub use weir_derive::StableHashViaJobs as StableHash;
    pub use weir_engine::{Job, SinkHandle, Stream, Watermarks};
    pub use weir_operators::prelude::*;
}
