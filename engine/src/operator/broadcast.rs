//! Operators over a keyed stream connected to a broadcast stream (Flink's
//! `KeyedBroadcastProcessFunction`): [`BroadcastOperator`], a [`KeyedOperator`] that also
//! takes the elements of a control stream every instance receives, and
//! [`BroadcastEventTimeOperator`], its event-time form, which [`EventTime`] runs.
//!
//! The runtime delivers both inputs through one channel per instance, in arrival order,
//! as [`Connected`] records (see `runtime::broadcast`); the operator's broadcast state is
//! checkpointed once ([`KeyedOperator::broadcast_state`]).

use super::{
    EventTime, EventTimeOperator, KeyedOperator, OperatorContext, OperatorFactory, Output,
};
use crate::error::BoxError;
use crate::record::{Data, Record};
use crate::state::StateBackend;
use crate::time::Timestamp;

/// One record of a connected operator's input: an element of the keyed stream (with its
/// key), or an element of the broadcast stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Connected<T, C> {
    /// From the keyed stream.
    Element(T),
    /// From the broadcast stream: every instance gets it.
    Broadcast(C),
}

/// A keyed operator that also takes a broadcast stream's elements.
pub trait BroadcastOperator: KeyedOperator {
    /// The broadcast stream's element type.
    type Control: Data;

    /// Handles broadcast elements in stream order (the same elements, in the same order
    /// per producer, at every instance). They carry the watermark that preceded them.
    fn process_broadcast(
        &mut self,
        records: Vec<Record<Self::Control>>,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError>;
}

/// The event-time logic of a [`BroadcastOperator`]; [`EventTime`] runs it, advancing the
/// watermark (and firing timers) before each broadcast element as before each keyed one.
pub trait BroadcastEventTimeOperator: EventTimeOperator {
    /// The broadcast stream's element type.
    type Control: Data;

    /// Handles one broadcast element with event time `ts`; `watermark` preceded it.
    fn on_broadcast(
        &mut self,
        ts: Timestamp,
        control: Self::Control,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError>;
}

impl<O: BroadcastEventTimeOperator> BroadcastOperator for EventTime<O> {
    type Control = O::Control;

    fn process_broadcast(
        &mut self,
        records: Vec<Record<O::Control>>,
        out: &mut Output<O::Out>,
    ) -> Result<(), BoxError> {
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            self.operator
                .on_broadcast(r.ts, r.value, self.watermark, out)?;
        }
        Ok(())
    }
}

/// Creates [`BroadcastOperator`] instances, one per worker (as [`OperatorFactory`]).
pub trait BroadcastOperatorFactory: Send + 'static {
    /// The key type.
    type Key: Data;
    /// The keyed stream's element type.
    type In: Data;
    /// The broadcast stream's element type.
    type Control: Data;
    /// The result type.
    type Out: Data;
    /// The operator over backend `S`.
    type Operator<S: StateBackend>: BroadcastOperator<
        Key = Self::Key,
        In = Self::In,
        Control = Self::Control,
        Out = Self::Out,
    >;

    /// Creates the instance described by `ctx`, with its keyed state in `state`.
    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        state: S,
    ) -> Result<Self::Operator<S>, BoxError>;

    /// The names of its state tables, the broadcast state's among them (see
    /// [`OperatorFactory::tables`]).
    fn tables(&self) -> Vec<String>;
}

/// A [`BroadcastOperatorFactory`] seen as an [`OperatorFactory`], so the runtime builds
/// its instances as any keyed operator's.
pub(crate) struct AsKeyed<F>(pub(crate) F);

impl<F: BroadcastOperatorFactory> OperatorFactory for AsKeyed<F> {
    type Key = F::Key;
    type In = F::In;
    type Out = F::Out;
    type Operator<S: StateBackend> = F::Operator<S>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        self.0.create(ctx, state)
    }

    fn tables(&self) -> Vec<String> {
        self.0.tables()
    }
}
