//! The asynchronous operator: a [`KeyedOperator`] that spawns each input's request on the
//! shared runtime and emits results as [`super::queue`] lets them go (see the module docs
//! of [`super`] for the protocol).

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use weir_engine::metrics::OperatorMetrics;
use weir_engine::operator::OperatorFactory;
use weir_engine::state::Namespaced;
use weir_engine::time::END_WATERMARK;
use weir_engine::{
    BoxError, Data, DeadLetter, Keyed, KeyedOperator, MapState, OperatorContext, Output, Record,
    Routed, StateBackend, StateKey, StateTable, StateValue, ThreadWaker, Timestamp,
};

use super::queue::{Drained, Queue};
use super::{attempts, runtime, AsyncError, AsyncOptions};

/// The name of the table of inputs in flight at a checkpoint.
const IN_FLIGHT: &str = "in_flight";

/// Makes the instances of one `map_async`.
pub(super) struct AsyncFactory<K, T, U, F> {
    pub(super) f: Arc<F>,
    pub(super) options: AsyncOptions,
    pub(super) _types: Types<K, T, U>,
}

/// The key, input and result types a factory makes operators for.
pub(super) type Types<K, T, U> = PhantomData<fn() -> (K, T, U)>;

/// An input kept in a checkpoint: its event time and the input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InFlight<T> {
    ts: Timestamp,
    input: T,
}

impl<K, T, U, F, Fut, E> OperatorFactory for AsyncFactory<K, T, U, F>
where
    K: StateKey + Data,
    T: Data + StateValue,
    U: Data,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<U, E>> + Send + 'static,
    E: Display + 'static,
{
    type Key = K;
    type In = T;
    type Out = Routed<U, DeadLetter>;
    type Operator<S: StateBackend> = AsyncOperator<S, K, T, U, F>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        if self.options.concurrency == 0 {
            return Err(AsyncError::NoConcurrency {
                operator: ctx.name.clone(),
            }
            .into());
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(AsyncOperator {
            name: ctx.name.clone(),
            f: self.f.clone(),
            options: self.options.clone(),
            runtime: runtime()?,
            queue: Queue::new(self.options.ordered),
            done_tx,
            done_rx,
            waker: None,
            next_seq: 0,
            changed: false,
            restored: Vec::new(),
            table: state.map_state(IN_FLIGHT)?,
            persisted: FxHashMap::default(),
            metrics: ctx.metrics.clone(),
        })
    }

    fn tables(&self) -> Vec<String> {
        vec![IN_FLIGHT.to_string()]
    }
}

/// What a request's task sends back: its sequence number and outcome (`None`: the future
/// panicked).
type Done<U> = (u64, Option<Result<U, String>>);

/// One instance of a `map_async`.
pub(super) struct AsyncOperator<S: StateBackend, K: StateKey, T: StateValue, U, F> {
    name: String,
    f: Arc<F>,
    options: AsyncOptions,
    runtime: &'static Runtime,
    queue: Queue<K, T, U>,
    done_tx: Sender<Done<U>>,
    done_rx: Receiver<Done<U>>,
    /// The waker of the thread the instance runs in, known from its first call there.
    waker: Option<ThreadWaker>,
    next_seq: u64,
    /// Something happened since the last drain of the queue (an input, a result, a
    /// watermark): the runtime polls between every batch, and most polls find nothing.
    changed: bool,
    /// Inputs a restore found in flight, issued before any new input.
    restored: Vec<(u64, K, InFlight<T>)>,
    table: S::Map<Namespaced<K, u64>, InFlight<T>>,
    /// The entries of the table: sequence number and key.
    persisted: FxHashMap<u64, K>,
    metrics: OperatorMetrics,
}

/// Sends a request's outcome and wakes the operator's thread; a task whose future panicked
/// drops it unsent, and the drop reports that.
struct Reply<U> {
    seq: u64,
    tx: Sender<Done<U>>,
    waker: ThreadWaker,
    outcome: Option<Result<U, String>>,
}

impl<U> Reply<U> {
    /// Sends `outcome` (the drop does).
    fn send(mut self, outcome: Result<U, String>) {
        // Through `&mut`: an assignment the drop reads counts as unused to the compiler.
        let _ = self.outcome.insert(outcome);
    }
}

impl<U> Drop for Reply<U> {
    fn drop(&mut self) {
        // The operator may be gone (the job failed): nobody to tell.
        let _ = self.tx.send((self.seq, self.outcome.take()));
        self.waker.wake();
    }
}

impl<S, K, T, U, F, Fut, E> AsyncOperator<S, K, T, U, F>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data + StateValue,
    U: Data,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<U, E>> + Send + 'static,
    E: Display + 'static,
{
    /// Issues what a restore found, once, from the thread the instance runs in.
    fn issue_restored(&mut self, out: &mut Output<Routed<U, DeadLetter>>) -> Result<(), BoxError> {
        for (seq, key, entry) in std::mem::take(&mut self.restored) {
            self.issue(
                seq,
                key,
                entry.ts,
                weir_engine::time::MIN_WATERMARK,
                entry.input,
                out,
            )?;
        }
        Ok(())
    }

    /// Spawns the request for `input`, once a slot is free.
    fn issue(
        &mut self,
        seq: u64,
        key: K,
        ts: Timestamp,
        watermark: Timestamp,
        input: T,
        out: &mut Output<Routed<U, DeadLetter>>,
    ) -> Result<(), BoxError> {
        while self.queue.len() >= self.options.concurrency {
            self.wait_for_one(out)?;
        }
        let waker = self.waker.get_or_insert_with(ThreadWaker::current).clone();
        let reply = Reply {
            seq,
            tx: self.done_tx.clone(),
            waker,
            outcome: None,
        };
        let (f, options, request) = (self.f.clone(), self.options.clone(), input.clone());
        self.queue.push(seq, key, ts, watermark, input);
        self.changed = true;
        self.runtime.spawn(async move {
            reply.send(attempts(&*f, request, &options).await);
        });
        Ok(())
    }

    /// Records the outcome of a finished request.
    fn complete(&mut self, (seq, outcome): Done<U>) -> Result<(), BoxError> {
        let Some(result) = outcome else {
            return Err(AsyncError::Panicked {
                operator: self.name.clone(),
            }
            .into());
        };
        self.queue.complete(seq, result);
        self.changed = true;
        Ok(())
    }

    /// Waits until a request finishes (never longer than a request can take, and then some)
    /// and emits what that let go.
    fn wait_for_one(&mut self, out: &mut Output<Routed<U, DeadLetter>>) -> Result<(), BoxError> {
        let waited = self.options.longest_request() + Duration::from_secs(10);
        match self.done_rx.recv_timeout(waited) {
            Ok(done) => self.complete(done)?,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                return Err(AsyncError::Stuck {
                    operator: self.name.clone(),
                    waited,
                }
                .into())
            }
        }
        self.collect(out)?;
        Ok(())
    }

    /// Takes every finished request and emits what may go; true if anything went (or the
    /// watermark moved).
    fn collect(&mut self, out: &mut Output<Routed<U, DeadLetter>>) -> Result<bool, BoxError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.complete(done)?;
        }
        if !std::mem::take(&mut self.changed) {
            return Ok(false);
        }
        let (name, dead_letters) = (&self.name, &self.metrics.dead_letters);
        Ok(self.queue.drain(|drained| match drained {
            Drained::Watermark(w) => out.advance_watermark(w),
            Drained::Done(slot) => match slot.result {
                Some(Ok(value)) => out.emit(slot.ts, Routed::Main(value)),
                Some(Err(reason)) => {
                    dead_letters.inc();
                    let raw = serde_json::to_vec(&slot.input).unwrap_or_default();
                    let letter = DeadLetter::new(name.clone(), 0, reason, &raw);
                    out.emit(slot.ts, Routed::Side(letter));
                }
                None => {}
            },
        }))
    }
}

impl<S, K, T, U, F, Fut, E> KeyedOperator for AsyncOperator<S, K, T, U, F>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data + StateValue,
    U: Data,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<U, E>> + Send + 'static,
    E: Display + 'static,
{
    type Key = K;
    type In = T;
    type Out = Routed<U, DeadLetter>;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, T>>>,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        self.issue_restored(out)?;
        for r in records {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.issue(seq, r.value.key, r.ts, r.watermark, r.value.value, out)?;
        }
        self.collect(out)?;
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        self.queue.advance_input(watermark);
        self.changed = true;
        if watermark == END_WATERMARK {
            // The end of input: every result goes before the end does.
            self.issue_restored(out)?;
            while !self.queue.is_empty() {
                self.wait_for_one(out)?;
            }
        }
        self.collect(out)?;
        Ok(())
    }

    fn poll(&mut self, out: &mut Output<Self::Out>) -> Result<bool, BoxError> {
        self.issue_restored(out)?;
        self.collect(out)
    }

    fn holds_watermark(&self) -> bool {
        true
    }

    fn state_entries(&self) -> usize {
        self.queue.len() + self.restored.len()
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.table]
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        let mut live = FxHashSet::default();
        let waiting = self.queue.slots().map(|s| (s.seq, &s.key, s.ts, &s.input));
        let restored = self
            .restored
            .iter()
            .map(|(seq, key, e)| (*seq, key, e.ts, &e.input));
        for (seq, key, ts, input) in waiting.chain(restored) {
            live.insert(seq);
            if !self.persisted.contains_key(&seq) {
                let entry = InFlight {
                    ts,
                    input: input.clone(),
                };
                self.table.put(namespaced(key, seq), entry)?;
                self.persisted.insert(seq, key.clone());
            }
        }
        let gone: Vec<(u64, K)> = self
            .persisted
            .iter()
            .filter(|(seq, _)| !live.contains(seq))
            .map(|(seq, key)| (*seq, key.clone()))
            .collect();
        for (seq, key) in gone {
            self.table.take(&namespaced(&key, seq))?;
            self.persisted.remove(&seq);
        }
        self.table.flush()?;
        Ok(serde_json::Value::Null)
    }

    fn restore(&mut self, _: &[serde_json::Value]) -> Result<(), BoxError> {
        let mut found = Vec::new();
        self.table.scan(|key, entry| found.push((key, entry)))?;
        // Sequence numbers order one former instance's inputs; a key's were all in one.
        found.sort_by_key(|(key, _)| key.namespace);
        for (key, entry) in found {
            self.table.take(&key)?;
            self.restored.push((self.next_seq, key.key, entry));
            self.next_seq += 1;
        }
        Ok(())
    }
}

fn namespaced<K: Clone>(key: &K, seq: u64) -> Namespaced<K, u64> {
    Namespaced {
        key: key.clone(),
        namespace: seq,
    }
}

#[cfg(test)]
#[path = "operator_tests.rs"]
mod tests;
