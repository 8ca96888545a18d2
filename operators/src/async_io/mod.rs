//! Asynchronous I/O (Flink's `AsyncDataStream`): [`AsyncExt::map_async`] enriches each event
//! from an external service (HTTP, a database) with at most N requests in flight per
//! instance, results in input order or as they finish, a timeout and retries per request,
//! and the requests in flight kept in checkpoints.
//!
//! ```
//! use std::time::Duration;
//! use weir_engine::{Job, Watermarks};
//! use weir_operators::prelude::*;
//! # use weir_engine::{BoxError, Record, Sink, Source, SourceStatus};
//! # struct Ids(Vec<u64>);
//! # impl Source for Ids {
//! #     type Item = u64;
//! #     fn poll_batch(&mut self, out: &mut Vec<u64>, _: usize) -> Result<SourceStatus, BoxError> {
//! #         out.append(&mut self.0); Ok(SourceStatus::Exhausted)
//! #     }
//! #     fn describe(&self) -> String { "ids".into() }
//! # }
//! # struct Print;
//! # impl<T: std::fmt::Debug + Send + 'static> Sink<T> for Print {
//! #     fn write(&mut self, r: &[Record<T>]) -> Result<(), BoxError> { Ok(()) }
//! #     fn finish(&mut self) -> Result<(), BoxError> { Ok(()) }
//! #     fn describe(&self) -> String { "print".into() }
//! # }
//! let job = Job::new("enrich");
//! job.source("ids", Ids(vec![1, 2, 3]))
//!     .timestamps(|id| *id as i64, Watermarks::ascending())
//!     // A real function would call a service here (an HTTP client's request).
//!     .map_async(100, |id: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         Ok::<_, String>(format!("customer-{id}"))
//!     })
//!     .sink("out", Print);
//! job.run(&Default::default())?;
//! # Ok::<(), weir_engine::EngineError>(())
//! ```
//!
//! # How it runs
//! - The futures run on one tokio runtime for the whole process ([`runtime`]): a
//!   multi-thread runtime of two worker threads, made on first use. Not the HTTP API's
//!   runtime (`weir_jobs::http`): that one is a current-thread runtime that exists only when
//!   `weir run` serves the API, and a user's future that computes for a while (parsing a
//!   large response) would stall the API's answers and metrics scrapes, and they its
//!   requests. Two threads because the futures mostly wait on sockets and timers: more
//!   would only take cores from the dataflow threads.
//! - The dataflow thread never waits on the runtime for a request: it spawns the future,
//!   whose task sends the outcome down a channel and wakes the thread
//!   ([`weir_engine::ThreadWaker`]); the runtime collects it between batches
//!   ([`weir_engine::KeyedOperator::poll`]). It waits only when all N slots are taken (the
//!   input stalls: backpressure) and at the end of input, for a request to finish, never
//!   longer than a request can take with its retries.
//! - Memory: at most N inputs per instance, in flight or (ordered) finished and waiting for
//!   an earlier one; a batch's records wait in the batch until a slot frees.
//! - A request that failed after its retries (timeouts or errors of the function) becomes a
//!   [`DeadLetter`] with the input as JSON and the reason, counted in
//!   `weir_dead_letter_records_total{operator=NAME}`, and the job goes on.
//!
//! # Checkpoints
//! At a barrier each instance writes the inputs whose results have not gone downstream (in
//! flight, or finished and waiting for their turn) into its state table `in_flight`
//! (typed keyed state: the input under its key and a sequence number, so entries follow
//! their key groups on a restore at another parallelism), and removes those written at an
//! earlier barrier that went since. A restore takes them out and issues them again, before
//! any new input. Results that went before the barrier are in the checkpoint's output,
//! those after it are not and come again: each exactly once downstream with a
//! transactional sink. A plain stream's events are keyed round-robin for this (an exchange
//! at parallelism > 1); a keyed stream's keep their key, and a key's results keep their
//! order in ordered mode.
//!
//! # Ordering
//! See [`queue`]: ordered results go in input order; unordered ones as they finish, but
//! never across a watermark (nor, as every input of a checkpoint is either in its output or
//! in its state, across a barrier).

mod operator;
mod queue;

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Runtime;
use weir_engine::keys::StableHash;
use weir_engine::{Data, DeadLetter, KeyedStream, Routed, StateKey, StateValue, Stream};

use operator::AsyncFactory;

/// How an asynchronous operator issues its requests; [`AsyncOptions::default`] is 100 in
/// flight, ordered, a 5 s timeout and 2 retries 10 ms and 20 ms apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncOptions {
    /// At most this many inputs per instance whose results have not gone downstream (in
    /// flight, or finished and waiting for an earlier one in ordered mode).
    pub concurrency: usize,
    /// Results in input order (true) or as they finish (within watermarks).
    pub ordered: bool,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts after the first, when one times out or fails.
    pub retries: u32,
    /// The wait before the first retry, doubled before each further one.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            concurrency: 100,
            ordered: true,
            timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl AsyncOptions {
    /// The defaults with `concurrency` requests in flight.
    pub fn new(concurrency: usize) -> Self {
        AsyncOptions {
            concurrency,
            ..AsyncOptions::default()
        }
    }

    /// Results as they finish (still never across a watermark).
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Each attempt may take at most `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `retries` attempts after the first, `backoff` before the first retry, doubling.
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// The wait before attempt `attempt` (1 is the first retry).
    fn backoff_before(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The longest one input's attempts and waits can take together.
    fn longest_request(&self) -> Duration {
        (1..=self.retries).fold(self.timeout, |total, attempt| {
            total + self.timeout + self.backoff_before(attempt)
        })
    }
}

/// Why an asynchronous operator failed the job.
#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    /// The tokio runtime could not be built.
    #[error("the runtime for asynchronous functions could not start: {0}")]
    Runtime(String),
    /// The user's future panicked.
    #[error("`{operator}`: the asynchronous function panicked")]
    Panicked {
        /// The operator's name.
        operator: String,
    },
    /// No request finished for longer than a request can take (a future that ignores
    /// its timeout, blocking its runtime thread).
    #[error("`{operator}`: no request finished within {waited:?}")]
    Stuck {
        /// The operator's name.
        operator: String,
        /// How long it waited.
        waited: Duration,
    },
    /// `concurrency` was 0.
    #[error("`{operator}`: the concurrency of map_async must be at least 1")]
    NoConcurrency {
        /// The operator's name.
        operator: String,
    },
}

/// The tokio runtime every asynchronous operator of the process runs its futures on (see
/// the module docs for why its own). Users' futures may use its timers and sockets.
pub fn runtime() -> Result<&'static Runtime, AsyncError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("weir-async")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| AsyncError::Runtime(e.clone()))
}

/// Runs `f(input)` until it succeeds, at most `1 + retries` times, each attempt under the
/// timeout; the last reason if none succeeded.
async fn attempts<T, U, F, Fut, E>(f: &F, input: T, options: &AsyncOptions) -> Result<U, String>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<U, E>>,
    E: Display,
{
    let mut attempt = 0;
    loop {
        let reason = match tokio::time::timeout(options.timeout, f(input.clone())).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {:?}", options.timeout),
        };
        if attempt == options.retries {
            return Err(format!(
                "{reason} (attempt {} of {})",
                attempt + 1,
                attempt + 1
            ));
        }
        attempt += 1;
        tokio::time::sleep(options.backoff_before(attempt)).await;
    }
}

/// Adds `map_async` to streams and keyed streams.
pub trait AsyncExt<T> {
    /// Replaces each event by what `f(event)` resolves to, with at most `concurrency`
    /// requests in flight per instance, in input order, with the default timeout and
    /// retries ([`AsyncOptions`]). Events whose requests failed for good are counted and
    /// dropped; [`AsyncExt::map_async_with`] returns them as dead letters.
    fn map_async<U, F, Fut, E>(self, concurrency: usize, f: F) -> Stream<U>
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static;

    /// As [`AsyncExt::map_async`], named `name` and with `options`; returns the results
    /// and the dead letters of the events whose requests failed for good (the input as
    /// JSON in `raw`, the reason in `error`, the operator's name as `source`, `line` 0).
    fn map_async_with<U, F, Fut, E>(
        self,
        name: &str,
        options: AsyncOptions,
        f: F,
    ) -> (Stream<U>, Stream<DeadLetter>)
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static;
}

impl<K, T, KF> AsyncExt<T> for KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data + StateValue,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn map_async<U, F, Fut, E>(self, concurrency: usize, f: F) -> Stream<U>
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static,
    {
        let requests = requests(self, "map_async", AsyncOptions::new(concurrency), f);
        // Failed requests were counted (`weir_dead_letter_records_total`); only results go
        // on.
        requests
            .clone()
            .flat_map(|r: Routed<U, DeadLetter>| match r {
                Routed::Main(result) => Some(result),
                Routed::Side(_) | Routed::Dropped => None,
            })
            .uid_names(&requests)
    }

    fn map_async_with<U, F, Fut, E>(
        self,
        name: &str,
        options: AsyncOptions,
        f: F,
    ) -> (Stream<U>, Stream<DeadLetter>)
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static,
    {
        let requests = requests(self, name, options, f);
        let (results, failed) = requests
            .clone()
            .split(&format!("{name}.outcome"), |r: Routed<U, DeadLetter>| r);
        // `.map_async_with(..).0.uid("x")` names the operator whose state holds the
        // requests in flight, not the split after it.
        (results.uid_names(&requests), failed)
    }
}

/// The asynchronous operator named `name` on `keyed`: results and dead letters in one
/// stream.
fn requests<K, T, KF, U, F, Fut, E>(
    keyed: KeyedStream<K, T, KF>,
    name: &str,
    options: AsyncOptions,
    f: F,
) -> Stream<Routed<U, DeadLetter>>
where
    K: StateKey + StableHash + Data,
    T: Data + StateValue,
    KF: Fn(&T) -> K + Clone + Send + 'static,
    U: Data,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<U, E>> + Send + 'static,
    E: Display + 'static,
{
    let order = if options.ordered {
        "ordered"
    } else {
        "unordered"
    };
    let detail = format!(
        "{} in flight, {order}, timeout {:?}, {} retries",
        options.concurrency, options.timeout, options.retries
    );
    let factory = AsyncFactory {
        f: Arc::new(f),
        options,
        _types: PhantomData,
    };
    keyed.process(name, detail, factory)
}

impl<T: Data + StateValue> AsyncExt<T> for Stream<T> {
    fn map_async<U, F, Fut, E>(self, concurrency: usize, f: F) -> Stream<U>
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static,
    {
        round_robin(self).map_async(concurrency, f)
    }

    fn map_async_with<U, F, Fut, E>(
        self,
        name: &str,
        options: AsyncOptions,
        f: F,
    ) -> (Stream<U>, Stream<DeadLetter>)
    where
        U: Data,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
        E: Display + 'static,
    {
        round_robin(self).map_async_with(name, options, f)
    }
}

/// `stream` keyed by a counter: its events spread evenly over the instances, and each
/// has a key its in-flight entry is kept under.
#[allow(clippy::type_complexity)]
fn round_robin<T: Data>(
    stream: Stream<T>,
) -> KeyedStream<u64, T, impl Fn(&T) -> u64 + Clone + Send + 'static> {
    let counter = Arc::new(AtomicU64::new(0));
    stream.key_by(move |_: &T| counter.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn on_runtime<R>(future: impl Future<Output = R>) -> R {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn a_failing_attempt_is_retried_with_backoff() {
        let calls = AtomicU32::new(0);
        let options = AsyncOptions::new(1).retries(3, Duration::from_millis(5));
        let started = std::time::Instant::now();
        let result = on_runtime(attempts(
            &|x: u32| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match call {
                        0 | 1 => Err(format!("call {call} failed")),
                        _ => Ok(x * 2),
                    }
                }
            },
            21,
            &options,
        ));
        assert_eq!(result, Ok(42));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 5 ms, then 10 ms of backoff.
        assert!(started.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn an_attempt_that_outlives_its_timeout_is_abandoned_and_the_last_reason_kept() {
        let calls = AtomicU32::new(0);
        let options = AsyncOptions::new(1)
            .timeout(Duration::from_millis(20))
            .retries(1, Duration::from_millis(1));
        let started = std::time::Instant::now();
        let result = on_runtime(attempts(
            &|_: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<u32, String>(0)
                }
            },
            1,
            &options,
        ));
        assert_eq!(result, Err("timed out after 20ms (attempt 2 of 2)".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_up_to_its_limit_and_bounds_a_request() {
        let options = AsyncOptions {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(30),
            retries: 3,
            timeout: Duration::from_millis(100),
            ..AsyncOptions::default()
        };
        let waits: Vec<_> = (1..=3).map(|a| options.backoff_before(a)).collect();
        assert_eq!(
            waits,
            [10, 20, 30].map(Duration::from_millis).to_vec(),
            "doubling, capped"
        );
        assert_eq!(options.longest_request(), Duration::from_millis(460));
    }
}
