//! Where a barrier is aligned: [`Alignment`] holds a producer's later messages once its
//! barrier arrived, until every producer that has not ended delivered it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::push::{Envelope, Message};
use crate::checkpoint::CheckpointId;

/// Barrier alignment of one receiving task (see [`crate::checkpoint`]): once a producer's
/// barrier arrived, that producer's later messages are held until every producer that has
/// not ended delivered the same barrier.
pub(super) struct Alignment<T> {
    /// Producers whose barrier for the checkpoint being aligned arrived.
    arrived: Vec<bool>,
    ended: Vec<bool>,
    aligning: Option<(CheckpointId, Instant)>,
    held: VecDeque<Envelope<T>>,
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

    /// Takes `message` from `producer`: holds it if that producer's barrier arrived and the
    /// alignment is not complete yet, takes note of a barrier or of the producer's end.
    /// Returns the message if it is to be handled now (a batch or the end).
    pub(super) fn admit(&mut self, producer: usize, message: Message<T>) -> Option<Message<T>> {
        if self.arrived[producer] {
            self.held.push_back((producer, message));
            return None;
        }
        match message {
            Message::Barrier(id) => {
                self.arrived[producer] = true;
                self.aligning.get_or_insert((id, Instant::now()));
                None
            }
            Message::End => {
                self.ended[producer] = true;
                Some(Message::End)
            }
            batch @ Message::Batch(_) => Some(batch),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Batch, Record};

    fn batch(value: i64) -> Message<i64> {
        let record = Record {
            ts: value,
            watermark: value,
            value,
        };
        Message::Batch(Batch::new(vec![record], value))
    }

    /// What a message carries, to compare: a batch's value, `-1` for an end.
    fn seen(message: &Message<i64>) -> i64 {
        match message {
            Message::Batch(b) => b.records[0].value,
            Message::Barrier(id) => -(*id as i64) - 100,
            Message::End => -1,
        }
    }

    fn released(alignment: &mut Alignment<i64>) -> Vec<(usize, i64)> {
        alignment
            .released
            .drain(..)
            .map(|(p, m)| (p, seen(&m)))
            .collect()
    }

    #[test]
    fn a_producers_batches_after_its_barrier_wait_until_every_producer_sent_it() {
        let mut alignment = Alignment::new(2);
        assert!(alignment.admit(0, Message::Barrier(1)).is_none());
        // Producer 0's batch after its barrier belongs to the next checkpoint: held.
        assert!(alignment.admit(0, batch(10)).is_none());
        // Producer 1 has not sent the barrier: its batches go on.
        assert_eq!(alignment.admit(1, batch(20)).as_ref().map(seen), Some(20));
        assert!(
            alignment.complete().is_none(),
            "one producer's barrier is missing"
        );
        assert!(alignment.admit(1, Message::Barrier(1)).is_none());
        let (id, _) = alignment
            .complete()
            .expect("every producer sent the barrier");
        assert_eq!(id, 1);
        assert_eq!(released(&mut alignment), [(0, 10)]);
        // Aligned: producer 0's batches flow again.
        assert_eq!(alignment.admit(0, batch(11)).as_ref().map(seen), Some(11));
    }

    #[test]
    fn an_ended_producer_never_blocks_a_barrier() {
        let mut alignment = Alignment::new(3);
        assert_eq!(
            alignment.admit(2, Message::End).as_ref().map(seen),
            Some(-1)
        );
        assert!(alignment.admit(0, Message::Barrier(4)).is_none());
        assert!(alignment.complete().is_none());
        assert!(alignment.admit(1, Message::Barrier(4)).is_none());
        assert_eq!(alignment.complete().map(|(id, _)| id), Some(4));
    }

    #[test]
    fn held_messages_keep_each_producers_order_and_the_next_barrier_waits_its_turn() {
        let mut alignment = Alignment::new(2);
        alignment.admit(0, Message::Barrier(1));
        for message in [batch(1), Message::Barrier(2), batch(2), Message::End] {
            assert!(
                alignment.admit(0, message).is_none(),
                "held behind barrier 1"
            );
        }
        alignment.admit(1, Message::Barrier(1));
        assert_eq!(alignment.complete().map(|(id, _)| id), Some(1));
        // Barrier 2 is released, not taken as arrived: it is handled in its turn.
        assert_eq!(
            released(&mut alignment),
            [(0, 1), (0, -102), (0, 2), (0, -1)]
        );
        assert!(alignment.complete().is_none());
    }
}
