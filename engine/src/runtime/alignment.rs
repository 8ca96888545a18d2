//! Where a barrier is aligned: [`Alignment`] holds a producer's later messages once its
//! barrier arrived, until every producer that has not ended delivered it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::push::Envelope;
use crate::checkpoint::CheckpointId;

/// Barrier alignment of one receiving task (see [`crate::checkpoint`]): once a producer's
/// barrier arrived, that producer's later messages are held until every producer that has
/// not ended delivered the same barrier.
pub(super) struct Alignment<T> {
    /// Producers whose barrier for the checkpoint being aligned arrived.
    pub(super) arrived: Vec<bool>,
    pub(super) ended: Vec<bool>,
    pub(super) aligning: Option<(CheckpointId, Instant)>,
    pub(super) held: VecDeque<Envelope<T>>,
    /// Held messages released by a completed alignment, delivered before new ones.
    pub(super) released: VecDeque<Envelope<T>>,
}

impl<T> Alignment<T> {
    pub(super) fn new(producers: usize) -> Self {
        Alignment {
            arrived: vec![false; producers],
            ended: vec![false; producers],
            aligning: None,
            held: Default::default(),
            released: Default::default(),
        }
    }

    /// The barrier id and alignment time, if the barrier has now arrived from every producer.
    pub(super) fn complete(&mut self) -> Option<(CheckpointId, Duration)> {
        let (id, started) = self.aligning?;
        let all = (0..self.arrived.len()).all(|p| self.arrived[p] || self.ended[p]);
        if !all {
            return None;
        }
        self.aligning = None;
        self.arrived.iter_mut().for_each(|a| *a = false);
        // Held messages come after anything their producers sent before, and only blocked
        // producers have held messages, so putting them first keeps every producer's order.
        let mut released = std::mem::take(&mut self.held);
        released.append(&mut self.released);
        self.released = released;
        Some((id, started.elapsed()))
    }
}
