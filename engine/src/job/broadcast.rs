//! [`BroadcastConnectedStream`]: a keyed stream connected to a broadcast stream (Flink's
//! broadcast state pattern), where operators that implement
//! [`crate::operator::BroadcastOperator`] apply.

use std::marker::PhantomData;
use std::rc::Rc;

use super::keyed::short_type_name;
use super::{KeyedStream, NodeKind, Stream};
use crate::keys::StableHash;
use crate::operator::{BroadcastOperatorFactory, Connected};
use crate::record::Data;
use crate::runtime::BroadcastNode;
use crate::state::{BroadcastStateDescriptor, StateKey};

/// A keyed stream connected to a broadcast stream of control elements (rules, thresholds,
/// a currency table): every instance of the operator applied to it receives every control
/// element, and keeps a broadcast state named by the descriptor
/// ([`crate::state::BroadcastState`]) that its keyed side reads for every key.
pub struct BroadcastConnectedStream<K, T, KF, C, BK, BV> {
    keyed: KeyedStream<K, T, KF>,
    control: Stream<C>,
    descriptor: &'static str,
    _state: PhantomData<fn() -> (BK, BV)>,
}

impl<K, T, KF, C, BK, BV> std::fmt::Debug for BroadcastConnectedStream<K, T, KF, C, BK, BV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastConnectedStream")
            .field("keyed", &self.keyed)
            .field("control", &self.control)
            .field("descriptor", &self.descriptor)
            .finish()
    }
}

impl<K, T, KF> KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// Connects this keyed stream to `control`, broadcast to every instance of the
    /// operator applied next, which keeps the broadcast state `descriptor` (Flink's
    /// `keyed.connect(control.broadcast(descriptor))`).
    ///
    /// The operator's watermark is the minimum of both streams' (so if this stream has
    /// event times, `control` needs them too: a job where only this one has them is
    /// refused, since its watermark would wait for `control` to end). The order in which
    /// an instance sees keyed and control elements follows arrival and may differ between
    /// instances; see `docs/SEMANTICS.md`.
    pub fn connect_broadcast<C: Data, BK, BV>(
        self,
        control: Stream<C>,
        descriptor: &BroadcastStateDescriptor<BK, BV>,
    ) -> BroadcastConnectedStream<K, T, KF, C, BK, BV> {
        if !Rc::ptr_eq(&self.stream.job.inner, &control.job.inner) {
            self.stream.invalid(format!(
                "the broadcast stream of `{}` belongs to another job",
                descriptor.name()
            ));
        } else if self.stream.timed && !control.timed {
            self.stream.invalid(format!(
                "the keyed stream connected to broadcast state `{}` has event times but its \
                 broadcast stream has none: the operator's watermark is the smaller of both \
                 and would wait for the broadcast stream to end; give the broadcast stream \
                 `.timestamps(..)` (and `--idle-timeout` if it is quiet for long)",
                descriptor.name()
            ));
        }
        BroadcastConnectedStream {
            keyed: self,
            control,
            descriptor: descriptor.name(),
            _state: PhantomData,
        }
    }
}

impl<K, T, KF, C, BK, BV> BroadcastConnectedStream<K, T, KF, C, BK, BV>
where
    K: StateKey + StableHash + Data,
    T: Data,
    C: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// The keyed stream.
    pub fn keyed(&self) -> &KeyedStream<K, T, KF> {
        &self.keyed
    }

    /// The descriptor of the broadcast state.
    pub fn descriptor(&self) -> BroadcastStateDescriptor<BK, BV> {
        BroadcastStateDescriptor::new(self.descriptor)
    }

    /// Applies a connected operator made by `factory`, one instance per worker; its
    /// tables must include the broadcast state. Its results keep the event time the
    /// operator gives them.
    pub fn process<F>(self, name: &str, detail: String, factory: F) -> Stream<F::Out>
    where
        F: BroadcastOperatorFactory<Key = K, In = T, Control = C>,
    {
        let tables = factory.tables();
        if !tables.iter().any(|t| t == self.descriptor) {
            self.keyed.stream.invalid(format!(
                "`{name}` does not list its broadcast state `{}` among its tables {tables:?}",
                self.descriptor
            ));
        }
        // Both inputs are tagged into one type: the operator has one channel per instance,
        // where its inbox aligns barriers and takes the watermark minimum over both.
        let elements = self.keyed.stream.clone().map(Connected::<T, C>::Element);
        let controls = self.control.clone().map(Connected::<T, C>::Broadcast);
        let (elements, controls) = (elements.internal(), controls.internal());
        let job = self.keyed.stream.job.clone();
        let id = job.add(
            name,
            NodeKind::Keyed,
            detail,
            &[elements.node, controls.node],
            Rc::new(BroadcastNode::new(factory, self.keyed.key)),
        );
        let mut graph = job.inner.graph.borrow_mut();
        graph.nodes[id].tables = tables;
        graph.nodes[id].key = Some(short_type_name::<K>());
        drop(graph);
        Stream::new(job, id, self.keyed.stream.timed && self.control.timed)
    }
}
