//! A keyed operator connected to a broadcast stream ([`crate::KeyedStream::connect_broadcast`]):
//! its node, which builds the instances as any keyed operator's, and the exchange in front
//! of them, which routes keyed elements by key group and sends every broadcast element to
//! every instance.
//!
//! Both inputs reach an instance through its one channel, so its inbox takes the minimum
//! of both inputs' watermarks and aligns checkpoint barriers over both: at a barrier every
//! instance has seen exactly the broadcast elements before it, hence the same broadcast
//! state, which instance 0 alone checkpoints (see `runtime::keyed`).

use std::any::Any;
use std::mem;

use super::build::{erase, Build, NodeImpl};
use super::exchange::{exchange_control, Exchange};
use super::keyed::{runner_control, KeyedNode, KeyedRunner, Wire};
use super::push::{Flush, Message, Push};
use crate::checkpoint::CheckpointId;
use crate::error::{EngineError, Result};
use crate::job::NodeId;
use crate::keys::{key_group_of, worker_for_key_group, StableHash};
use crate::operator::{AsKeyed, BroadcastOperator, BroadcastOperatorFactory, Connected};
use crate::record::{Batch, Data, Keyed, Record};
use crate::state::{StateBackend, StateKey};

/// What an instance's channel carries: keyed elements with their keys, broadcast elements.
type Wired<F> = Connected<
    Keyed<<F as BroadcastOperatorFactory>::Key, <F as BroadcastOperatorFactory>::In>,
    <F as BroadcastOperatorFactory>::Control,
>;

/// The node of a keyed operator connected to a broadcast stream. Its input is the union of
/// both streams, tagged ([`Connected`]) by the job API.
pub(crate) struct BroadcastNode<F, KF> {
    keyed: KeyedNode<AsKeyed<F>, KF>,
    key: KF,
}

impl<F, KF: Clone> BroadcastNode<F, KF> {
    pub(crate) fn new(factory: F, key: KF) -> Self {
        BroadcastNode {
            keyed: KeyedNode::new(AsKeyed(factory), key.clone()),
            key,
        }
    }
}

/// The wire of a connected operator: [`Connected`] records.
struct Broadcasting;

impl<F: BroadcastOperatorFactory> Wire<AsKeyed<F>> for Broadcasting {
    type Item = Wired<F>;
    fn wrap<S: StateBackend>(runner: KeyedRunner<F::Operator<S>>) -> Box<dyn Push<Self::Item>> {
        Box::new(runner)
    }
}

impl<F, KF> NodeImpl for BroadcastNode<F, KF>
where
    F: BroadcastOperatorFactory,
    F::Key: StateKey,
    KF: Fn(&F::In) -> F::Key + Clone + Send + 'static,
{
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        // Never chained: two inputs deliver here, so every instance has a channel.
        let workers = b.options.parallelism;
        let producer = b.next_producer(me);
        let senders = b.channels::<Wired<F>>(me, workers).senders.clone();
        Ok(erase::<Connected<F::In, F::Control>>(Box::new(
            BroadcastExchangePush {
                key: self.key.clone(),
                exchange: Exchange::new(b.name(me), producer, senders),
            },
        )))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Err(EngineError::Internal {
                reason: format!("`{}` has two inputs but was chained", b.name(me)),
            });
        }
        let workers = b.options.parallelism;
        for instance in 0..workers {
            let runner = self.keyed.runner::<Broadcasting>(b, me, instance)?;
            b.spawn_receiver::<Wired<F>>(me, instance, workers, runner)?;
        }
        Ok(())
    }
}

/// Routes keyed elements to the worker owning their key group, and broadcast elements to
/// every worker.
struct BroadcastExchangePush<K, T, C, KF> {
    key: KF,
    exchange: Exchange<Connected<Keyed<K, T>, C>>,
}

impl<K, T, C, KF> Push<Connected<T, C>> for BroadcastExchangePush<K, T, C, KF>
where
    K: Data + StableHash,
    T: Data,
    C: Data,
    KF: Fn(&T) -> K + Send,
{
    fn push(&mut self, batch: Batch<Connected<T, C>>) -> Result<()> {
        let workers = self.exchange.senders.len();
        for r in batch.records {
            let (ts, watermark) = (r.ts, r.watermark);
            match r.value {
                Connected::Element(value) => {
                    let key = (self.key)(&value);
                    let worker = worker_for_key_group(key_group_of(&key), workers);
                    self.exchange.buffers[worker].push(Record {
                        ts,
                        watermark,
                        value: Connected::Element(Keyed { key, value }),
                    });
                }
                Connected::Broadcast(control) => {
                    for buffer in &mut self.exchange.buffers {
                        buffer.push(Record {
                            ts,
                            watermark,
                            value: Connected::Broadcast(control.clone()),
                        });
                    }
                }
            }
        }
        self.exchange.send(batch.watermark, batch.ingested)
    }
    exchange_control!();
}

/// An instance of a connected operator: keyed and broadcast elements go to the operator in
/// the order they arrived, each run of one kind in one call.
impl<O: BroadcastOperator> Push<Connected<Keyed<O::Key, O::In>, O::Control>> for KeyedRunner<O> {
    fn push(&mut self, batch: Batch<Connected<Keyed<O::Key, O::In>, O::Control>>) -> Result<()> {
        self.note_input(&batch.records);
        let (records, watermark) = (batch.records, batch.watermark);
        self.run_batch(batch.ingested, watermark, |operator, out| {
            let mut elements = Vec::new();
            let mut controls = Vec::new();
            for r in records {
                let (ts, watermark) = (r.ts, r.watermark);
                match r.value {
                    Connected::Element(value) => {
                        if !controls.is_empty() {
                            operator.process_broadcast(mem::take(&mut controls), out)?;
                        }
                        elements.push(Record {
                            ts,
                            watermark,
                            value,
                        });
                    }
                    Connected::Broadcast(value) => {
                        if !elements.is_empty() {
                            operator.process(mem::take(&mut elements), out)?;
                        }
                        controls.push(Record {
                            ts,
                            watermark,
                            value,
                        });
                    }
                }
            }
            if !elements.is_empty() {
                operator.process(elements, out)?;
            }
            if !controls.is_empty() {
                operator.process_broadcast(controls, out)?;
            }
            Ok(())
        })
    }
    runner_control!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    fn record<T>(ts: i64, value: T) -> Record<T> {
        Record {
            ts,
            watermark: ts - 1,
            value,
        }
    }

    #[test]
    fn control_elements_reach_every_worker_and_keyed_ones_their_key_groups_owner() {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| unbounded()).unzip();
        let mut push = BroadcastExchangePush {
            key: |v: &u64| *v,
            exchange: Exchange::new("alerts".into(), 0, senders),
        };
        let batch = Batch::new(
            vec![
                record(1, Connected::Element(7u64)),
                record(2, Connected::Broadcast("rule")),
                record(3, Connected::Element(8u64)),
            ],
            2,
        );
        push.push(batch).unwrap();
        push.barrier(5).unwrap();
        for (worker, rx) in receivers.iter().enumerate() {
            let Ok((0, Message::Batch(batch))) = rx.try_recv() else {
                panic!("worker {worker} got no batch first");
            };
            let got: Vec<String> = batch
                .records
                .iter()
                .map(|r| match &r.value {
                    Connected::Element(k) => format!("{}:{}", r.ts, k.key),
                    Connected::Broadcast(c) => format!("{}:{c}", r.ts),
                })
                .collect();
            let mut expected = vec![];
            for (ts, key) in [(1, 7u64), (3, 8)] {
                if worker_for_key_group(key_group_of(&key), 3) == worker {
                    expected.push((ts, key.to_string()));
                }
            }
            expected.push((2, "rule".to_string()));
            expected.sort();
            let expected: Vec<String> = expected.iter().map(|(t, v)| format!("{t}:{v}")).collect();
            assert_eq!(got, expected, "worker {worker}");
            assert_eq!(batch.watermark, 2);
            assert!(
                matches!(rx.try_recv(), Ok((0, Message::Barrier(5)))),
                "the barrier follows, at every worker"
            );
        }
    }
}
