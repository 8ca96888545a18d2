//! Unions: chained ([`UnionMerge`]) when every input runs in one thread, otherwise a task
//! of their own fed by a channel.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::build::{erase, Build, NodeImpl};
use super::inbox::Inputs;
use super::push::{Flush, Push};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::job::NodeId;
use crate::record::{Batch, Data};

pub(crate) struct UnionNode<T> {
    _data: PhantomData<fn() -> T>,
}

impl<T> UnionNode<T> {
    pub(crate) fn new() -> Self {
        UnionNode { _data: PhantomData }
    }
}

impl<T: Data> NodeImpl for UnionNode<T> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, instance: usize) -> Result<Box<dyn Any>> {
        if !b.chained(me) {
            return Ok(erase::<T>(Box::new(b.forward_input::<T>(me, false))));
        }
        let key = (me, instance);
        if !b.unions.contains_key(&key) {
            let inputs = b.graph.nodes[me].inputs.len();
            let down = b.downstream::<T>(me, instance)?;
            let merge = Arc::new(Mutex::new(UnionMerge {
                down,
                inputs: Inputs::new(inputs, None),
                barriers: 0,
            }));
            b.unions.insert(key, (Box::new(merge), 0));
        }
        let (merge, next_input) = b.unions.get_mut(&key).expect("inserted above");
        let input = *next_input;
        *next_input += 1;
        let merge = merge
            .downcast_ref::<Arc<Mutex<UnionMerge<T>>>>()
            .expect("a union's merge always carries its input type")
            .clone();
        Ok(erase::<T>(Box::new(UnionInput { input, merge })))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Ok(());
        }
        let down = b.downstream::<T>(me, 0)?;
        b.spawn_receiver::<T>(me, 0, 1, down)
    }
}

/// One instance of a union whose inputs all run in one thread (branches of one stream):
/// their batches arrive one after another in that thread, so the union merges watermarks
/// as a receiving task does ([`Inputs`]) but without a channel, and a barrier, which comes
/// through every branch before anything after it, goes on once all branches passed it.
pub(super) struct UnionMerge<T> {
    down: Box<dyn Push<T>>,
    inputs: Inputs,
    /// Branches that passed the barrier being aligned.
    barriers: usize,
}

/// The pusher of branch `input` into a [`UnionMerge`].
pub(super) struct UnionInput<T> {
    input: usize,
    merge: Arc<Mutex<UnionMerge<T>>>,
}

impl<T> UnionInput<T> {
    fn merge(&self) -> std::sync::MutexGuard<'_, UnionMerge<T>> {
        // Only this thread locks it; a poisoned lock means a panic that is reported anyway.
        self.merge
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Data> Push<T> for UnionInput<T> {
    fn push(&mut self, mut batch: Batch<T>) -> Result<()> {
        let mut merge = self.merge();
        merge
            .inputs
            .on_batch(self.input, &mut batch, Instant::now());
        merge.down.push(batch)
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        let mut merge = self.merge();
        merge.barriers += 1;
        let open = merge.inputs.watermarks.len() - merge.inputs.ended;
        if merge.barriers < open {
            return Ok(());
        }
        merge.barriers = 0;
        merge.down.barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        let mut merge = self.merge();
        merge.inputs.on_end(self.input);
        if merge.inputs.ended < merge.inputs.watermarks.len() {
            return Ok(());
        }
        // As in `Inbox::finish`: the end watermark came with the inputs' last batches.
        merge.down.finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.merge().down.flush(what)
    }
}
