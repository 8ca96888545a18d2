//! Keyed operators: the node that builds an operator instance per worker with its state
//! backend, and [`KeyedRunner`], which drives one instance (records, watermarks, barriers,
//! and the queries on its queryable table, answered between batches: see [`crate::query`]).

use std::any::Any;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;

use super::alarm;
use super::build::{erase, Build, NodeImpl};
use super::exchange::{Exchange, ExchangePush};
use super::keyed_snapshot::{
    import_keyed_state, store_name, InstanceState, KeyedCheckpoint, KeyedSnapshot, KeyedStore,
};
use super::push::{Flush, Push};
use super::run::panic_message;
use crate::checkpoint::{CheckpointId, ParticipantState};
use crate::clock::ProcessingClock;
use crate::error::{BoxError, EngineError, Result};
use crate::job::NodeId;
use crate::keys::{key_group_of, key_groups_of_worker, worker_for_key_group, StableHash};
use crate::metrics::OperatorMetrics;
use crate::operator::{KeyedOperator, OperatorContext, OperatorFactory, Output};
use crate::query::queue::{QueryInbox, Route, QUEUE_CAPACITY};
use crate::query::{parse_key, Freshness};
use crate::record::{Batch, Data, Keyed, Record};
use crate::state::{
    write_snapshot, MemoryBackend, MemorySnapshots, RocksBackend, RocksStore, StateBackend,
    StateConfig, StateKey,
};
use crate::time::{Timestamp, END_WATERMARK, MIN_WATERMARK};

pub(crate) struct KeyedNode<F, KF> {
    factory: F,
    key: KF,
}

impl<F, KF> KeyedNode<F, KF> {
    pub(crate) fn new(factory: F, key: KF) -> Self {
        KeyedNode { factory, key }
    }
}

/// How the records of a keyed operator's instance reach it: the type its channel carries,
/// and the instance, whatever its backend, as a receiver of that type.
pub(super) trait Wire<F: OperatorFactory> {
    /// What the instance's channel carries.
    type Item: Data;
    /// The instance as the receiver of its channel.
    fn wrap<S: StateBackend>(runner: KeyedRunner<F::Operator<S>>) -> Box<dyn Push<Self::Item>>;
}

/// The wire of a keyed operator: records with their keys.
pub(super) struct ByKey;

impl<F: OperatorFactory> Wire<F> for ByKey {
    type Item = Keyed<F::Key, F::In>;
    fn wrap<S: StateBackend>(runner: KeyedRunner<F::Operator<S>>) -> Box<dyn Push<Self::Item>> {
        Box::new(runner)
    }
}

impl<F, KF> KeyedNode<F, KF>
where
    F: OperatorFactory,
    F::Key: StateKey,
{
    /// Creates instance `instance` over the job's state backend, wired to its downstream,
    /// taking its input as `W` delivers it.
    pub(super) fn runner<W: Wire<F>>(
        &self,
        b: &mut Build<'_>,
        me: NodeId,
        instance: usize,
    ) -> Result<Box<dyn Push<W::Item>>> {
        let name = b.name(me);
        let invalid = |reason: String| EngineError::InvalidJob {
            job: b.metrics.job().to_string(),
            reason,
        };
        match (&b.options.state, b.rocksdb.clone()) {
            (StateConfig::RocksDb { cache_entries, .. }, Some((root, cache))) => {
                let dir = root.join(store_name(&name, instance));
                let store =
                    RocksStore::open_fresh(&dir, &cache).map_err(|e| invalid(e.to_string()))?;
                b.metrics.observe_store(&name, instance, store.clone());
                let backend = RocksBackend::new(store.clone(), &name, *cache_entries);
                let state = Some(InstanceState::Rocks(store));
                Ok(W::wrap(self.runner_over(b, me, instance, backend, state)?))
            }
            _ if b.checkpointing.is_some() => {
                let snapshots = Arc::new(MemorySnapshots::default());
                let backend = MemoryBackend::checkpointed(snapshots.clone(), &name);
                let state = Some(InstanceState::Memory(snapshots));
                Ok(W::wrap(self.runner_over(b, me, instance, backend, state)?))
            }
            _ => Ok(W::wrap(self.runner_over(
                b,
                me,
                instance,
                MemoryBackend::new(),
                None,
            )?)),
        }
    }

    /// The instance over `state`; `checkpointed` is how its state is snapshotted, if the
    /// job takes checkpoints.
    fn runner_over<S: StateBackend>(
        &self,
        b: &mut Build<'_>,
        me: NodeId,
        instance: usize,
        state: S,
        checkpointed: Option<InstanceState>,
    ) -> Result<KeyedRunner<F::Operator<S>>> {
        let name = b.name(me);
        let store = checkpointed.map(|state| KeyedStore {
            state,
            name: store_name(&name, instance),
        });
        let parallelism = b.options.parallelism;
        let metrics = b.metrics.operator(&name, instance);
        let key_groups = key_groups_of_worker(instance, parallelism);
        let ctx = OperatorContext {
            name: name.clone(),
            instance,
            parallelism,
            key_groups: key_groups.clone(),
            metrics: metrics.clone(),
            clock: ProcessingClock::system(),
        };
        let op_err = |source| EngineError::Operator {
            name: name.clone(),
            source,
        };
        // Restored state goes into the database before the operator opens its tables.
        let restored = match (&b.checkpointing, &store) {
            (Some(c), Some(store)) => import_keyed_state(c, &b.uid(me), &key_groups, &store.state)?,
            _ => None,
        };
        let mut operator = self.factory.create(&ctx, state).map_err(op_err)?;
        if let Some(restored) = restored {
            if let Some(bytes) = &restored.broadcast {
                operator.restore_broadcast_state(bytes).map_err(op_err)?;
            }
            operator.restore(&restored.operators).map_err(op_err)?;
        }
        let tables = table_gauges(b, me, instance, &mut operator)?;
        let queries = match &b.graph.nodes[me].queryable {
            Some(table) => {
                if operator.queryable().is_none() {
                    return Err(EngineError::InvalidJob {
                        job: b.metrics.job().to_string(),
                        reason: format!(
                            "`{name}` has no table that can be queried (queryable table \
                             `{table}`): `.queryable(..)` works after process_with_state, \
                             and on a window before its aggregate (`.window(..).queryable(..)`)"
                        ),
                    });
                }
                Some(open_queries::<F::Key>(b, table, instance)?)
            }
            None => None,
        };
        let participant = b.participant(format!("{}#{instance}", b.uid(me)));
        let down = b.downstream::<F::Out>(me, instance)?;
        Ok(KeyedRunner {
            name,
            instance,
            operator,
            queries,
            out: Output::connected(down, b.options.batch_size),
            metrics,
            tables,
            checkpoint: participant.map(|participant| KeyedCheckpoint {
                participant,
                key_groups,
                store,
            }),
        })
    }
}

impl<F, KF> NodeImpl for KeyedNode<F, KF>
where
    F: OperatorFactory,
    F::Key: StateKey,
    KF: Fn(&F::In) -> F::Key + Clone + Send + 'static,
{
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        if b.chained(me) {
            let runner = self.runner::<ByKey>(b, me, 0)?;
            return Ok(erase(Box::new(KeyedChained {
                key: self.key.clone(),
                runner,
                _types: PhantomData,
            })));
        }
        let workers = b.options.parallelism;
        let producer = b.next_producer(me);
        let senders = b
            .channels::<Keyed<F::Key, F::In>>(me, workers)
            .senders
            .clone();
        Ok(erase::<F::In>(Box::new(ExchangePush {
            key: self.key.clone(),
            exchange: Exchange::new(b.name(me), producer, senders),
        })))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Ok(());
        }
        let workers = b.options.parallelism;
        for instance in 0..workers {
            let runner = self.runner::<ByKey>(b, me, instance)?;
            b.spawn_receiver::<Keyed<F::Key, F::In>>(me, instance, workers, runner)?;
        }
        Ok(())
    }
}

/// The `weir_state_table_entries` gauges of instance `instance` of node `me`, one per
/// state table in the order the operator lists them, after checking that the operator
/// opened the tables its factory declared (what `weir describe` shows).
fn table_gauges<O: KeyedOperator>(
    b: &Build<'_>,
    me: NodeId,
    instance: usize,
    operator: &mut O,
) -> Result<Vec<IntGauge>> {
    let name = b.name(me);
    let declared = &b.graph.nodes[me].tables;
    let opened: Vec<String> = operator
        .tables()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    if &opened != declared {
        return Err(EngineError::InvalidJob {
            job: b.metrics.job().to_string(),
            reason: format!(
                "operator `{name}` opened the state tables {opened:?}, but its factory \
                 declares {declared:?}: make `OperatorFactory::tables` list the tables its \
                 operator's `tables()` returns, in the same order"
            ),
        });
    }
    Ok(declared
        .iter()
        .map(|table| b.metrics.state_table(&name, instance, table))
        .collect())
}

/// Opens instance `instance`'s queue of queryable table `table`, whose keys are routed to
/// instances as the exchange routes them: by the key group of the key's stable hash.
fn open_queries<K: StateKey>(b: &Build<'_>, table: &str, instance: usize) -> Result<QueryInbox> {
    let parallelism = b.options.parallelism;
    let route: Route = Arc::new(move |text: &str| {
        let key: K = parse_key(text)?;
        Ok(worker_for_key_group(key_group_of(&key), parallelism))
    });
    let applied = b.metrics.projection(table);
    b.queries
        .open(table, instance, parallelism, route, applied, QUEUE_CAPACITY)
        .map_err(|e| EngineError::Internal {
            reason: e.to_string(),
        })
}

/// Raises the table's last-applied event time to the newest event of `records` (kept out
/// of line: only queryable instances call it, and the batch loop of the others stays as
/// it was).
#[inline(never)]
fn note_applied<T>(queries: &QueryInbox, records: &[Record<T>]) {
    if let Some(latest) = records.iter().map(|r| r.ts).max() {
        queries.applied(latest);
    }
}

/// Runs one keyed operator instance and forwards its output.
pub(super) struct KeyedRunner<O: KeyedOperator> {
    name: String,
    /// Its index among the operator's instances: instance 0 checkpoints the broadcast state.
    instance: usize,
    operator: O,
    /// The queue of queries on the operator's queryable table, if it is queryable.
    queries: Option<QueryInbox>,
    /// Connected to the downstream: results go on in chunks as they are emitted.
    out: Output<O::Out>,
    metrics: OperatorMetrics,
    /// `weir_state_table_entries` of each of the operator's tables, in its order.
    tables: Vec<IntGauge>,
    checkpoint: Option<KeyedCheckpoint>,
}

impl<O: KeyedOperator> KeyedRunner<O> {
    /// Flushes the operator's state and checkpoints its database into checkpoint `id`.
    fn snapshot(&mut self, id: CheckpointId) -> std::result::Result<ParticipantState, String> {
        let Some(c) = &self.checkpoint else {
            return Err("internal: not a checkpoint participant".into());
        };
        let Some(store) = &c.store else {
            return Err("internal: a checkpoint participant without state".into());
        };
        let dir = c.participant.checkpointing().dir(id).join(&store.name);
        let operator = match &store.state {
            InstanceState::Rocks(db) => {
                let operator = self.operator.snapshot().map_err(|e| e.to_string())?;
                db.checkpoint_to(&dir).map_err(|e| e.to_string())?;
                operator
            }
            InstanceState::Memory(tables) => {
                // The operator's flushes hand the tables over while the snapshot is open.
                tables.begin();
                let operator = self.operator.snapshot();
                let taken = tables.take();
                let operator = operator.map_err(|e| e.to_string())?;
                write_snapshot(&dir, taken).map_err(|e| e.to_string())?;
                operator
            }
        };
        // Every instance holds the same broadcast state: one copy is enough, whatever the
        // parallelism, and a restore at any parallelism gives it to every instance.
        let broadcast = match self.instance {
            0 => self.operator.broadcast_state().map_err(|e| e.to_string())?,
            _ => None,
        };
        let broadcast = match broadcast {
            Some(bytes) => {
                let file = format!("{}.broadcast", store.name);
                let path = c.participant.checkpointing().dir(id).join(&file);
                std::fs::write(&path, bytes)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Some(file)
            }
            None => None,
        };
        Ok(ParticipantState::Keyed(KeyedSnapshot {
            key_groups: (c.key_groups.start, c.key_groups.end),
            store: store.name.clone(),
            operator,
            broadcast,
        }))
    }

    /// Runs `f` on the operator, which runs user code (aggregates, process functions): a
    /// panic is caught so that it fails the job like an error does. What the operator
    /// emitted before it failed (windows that fired) still reaches the sinks, which flush
    /// it before the job ends with the error.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut O, &mut Output<O::Out>) -> std::result::Result<(), crate::BoxError>,
    ) -> Result<()> {
        let (operator, out) = (&mut self.operator, &mut self.out);
        let error = match std::panic::catch_unwind(AssertUnwindSafe(|| f(operator, out))) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => EngineError::Operator {
                name: self.name.clone(),
                source,
            },
            Err(payload) => EngineError::Panicked {
                name: self.name.clone(),
                message: panic_message(payload.as_ref()),
            },
        };
        self.out.forward()?;
        self.out.downstream().flush(Flush::All)?;
        Err(error)
    }

    /// Fires the processing-time timers that are due and sets the thread's alarm for the
    /// next one (out of line: only operators with pending processing-time timers call it).
    #[inline(never)]
    fn processing_time(&mut self) -> Result<()> {
        let mut next = None;
        self.guarded(|operator, out| {
            next = operator.on_processing_time(out)?;
            Ok(())
        })?;
        if let Some(wait) = next {
            alarm::wake_by(Instant::now() + wait);
        }
        Ok(())
    }

    /// Sets each table's `weir_state_table_entries` (once per batch, as the other state
    /// gauges; out of line, so operators without tables pay one branch).
    #[inline(never)]
    fn sample_tables(&mut self) {
        for (gauge, table) in self.tables.iter().zip(self.operator.tables()) {
            gauge.set(table.len() as i64);
        }
    }

    /// Answers the queries waiting for this instance (between batches: the table holds
    /// every batch applied so far and nothing of the next).
    #[cold]
    fn answer_queries(&mut self) {
        let Some(queries) = &self.queries else {
            return;
        };
        let watermark = self
            .operator
            .watermark()
            .map_or(self.out.watermark(), |w| w.max(self.out.watermark()));
        let freshness = Freshness {
            watermark: (watermark > MIN_WATERMARK).then_some(watermark),
            checkpoint: self
                .checkpoint
                .as_ref()
                .map(|c| c.participant.checkpointing().completed())
                .filter(|&id| id > 0),
        };
        if let Some(table) = self.operator.queryable() {
            queries.drain(table, freshness);
        }
    }
}

/// The `barrier`, `finish` and `flush` of a [`KeyedRunner`], whatever its wire.
macro_rules! runner_control {
    () => {
        fn barrier(&mut self, id: CheckpointId) -> Result<()> {
            self.on_barrier(id)
        }
        fn finish(&mut self) -> Result<()> {
            self.on_finish()
        }
        fn flush(&mut self, what: Flush) -> Result<()> {
            self.on_flush(what)
        }
    };
}
pub(super) use runner_control;

impl<O: KeyedOperator> Push<Keyed<O::Key, O::In>> for KeyedRunner<O> {
    fn push(&mut self, batch: Batch<Keyed<O::Key, O::In>>) -> Result<()> {
        self.note_input(&batch.records);
        let (records, watermark) = (batch.records, batch.watermark);
        self.run_batch(batch.ingested, watermark, |operator, out| {
            operator.process(records, out)
        })
    }
    runner_control!();
}

impl<O: KeyedOperator> KeyedRunner<O> {
    /// Counts a batch's `records` in, and raises the queryable table's event time to them.
    pub(super) fn note_input<T>(&self, records: &[Record<T>]) {
        self.metrics.events_in.inc_by(records.len() as u64);
        if let Some(queries) = &self.queries {
            note_applied(queries, records);
        }
    }

    /// Runs `work` (the operator on a batch's records), then the batch's `watermark`, and
    /// forwards the results; the batch was read at `ingested`.
    pub(super) fn run_batch(
        &mut self,
        ingested: Option<std::time::Instant>,
        watermark: Timestamp,
        work: impl FnOnce(&mut O, &mut Output<O::Out>) -> std::result::Result<(), BoxError>,
    ) -> Result<()> {
        // Timers the clock reached while no input came fire before this batch.
        if self.operator.has_processing_timers() {
            self.processing_time()?;
        }
        // Results are due because of this batch (its records or its watermark): they are
        // timed from its ingestion.
        self.out.set_ingested(ingested);
        self.guarded(|operator, out| {
            work(operator, out)?;
            operator.on_watermark(watermark, out)
        })?;
        self.out.advance_watermark(watermark);
        if watermark != END_WATERMARK {
            self.metrics.watermark.set(watermark);
        }
        self.metrics
            .state_entries
            .set(self.operator.state_entries() as i64);
        if !self.tables.is_empty() {
            self.sample_tables();
        }
        // The batch may have registered timers (due already, or later: the alarm).
        if self.operator.has_processing_timers() {
            self.processing_time()?;
        }
        let forwarded = self.out.forward()?;
        self.metrics.events_out.inc_by(forwarded as u64);
        if self.queries.as_ref().is_some_and(|q| !q.is_empty()) {
            self.answer_queries();
        }
        Ok(())
    }

    /// A checkpoint barrier passed every input: snapshot, acknowledge, pass it on.
    pub(super) fn on_barrier(&mut self, id: CheckpointId) -> Result<()> {
        // A failed snapshot fails only this checkpoint: the state is still intact in memory
        // and the next checkpoint tries again.
        let snapshot = self.snapshot(id);
        if let Some(c) = &self.checkpoint {
            c.participant.ack(id, snapshot);
        }
        self.out.downstream().barrier(id)
    }

    /// The end of input: passed on.
    pub(super) fn on_finish(&mut self) -> Result<()> {
        self.out.downstream().finish()
    }

    /// The thread is between batches: due processing-time timers fire, queries are
    /// answered, the downstream flushed.
    pub(super) fn on_flush(&mut self, what: Flush) -> Result<()> {
        // The thread is between batches, maybe about to wait for the next: due
        // processing-time timers fire here, and the alarm is set for the next one.
        if self.operator.has_processing_timers() {
            self.processing_time()?;
            // Only results go on: an empty batch would cross to the next stage at every
            // step of the worker while a timer waits.
            if self.out.has_results() {
                let forwarded = self.out.forward()?;
                self.metrics.events_out.inc_by(forwarded as u64);
            }
        }
        // Queries asked while the input is quiet are answered here (and wake it up while it
        // waits).
        if let Some(queries) = &self.queries {
            queries.drained_here();
            if !queries.is_empty() {
                self.answer_queries();
            }
        }
        self.out.downstream().flush(what)
    }
}

/// A keyed operator chained into its input's thread (P = 1): keys are computed in place.
pub(super) struct KeyedChained<KF, K, T> {
    key: KF,
    runner: Box<dyn Push<Keyed<K, T>>>,
    _types: PhantomData<fn() -> (K, T)>,
}

impl<KF, K, T> Push<T> for KeyedChained<KF, K, T>
where
    K: Data + StableHash,
    T: Data,
    KF: Fn(&T) -> K + Send,
{
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let records = batch
            .records
            .into_iter()
            .map(|r| {
                let key = (self.key)(&r.value);
                Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: Keyed {
                        key,
                        value: r.value,
                    },
                }
            })
            .collect();
        self.runner
            .push(Batch::new(records, batch.watermark).ingested_at(batch.ingested))
    }
    pass_on_control!(runner);
}
