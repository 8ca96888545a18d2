//! The requests of one asynchronous operator instance, in input order, and which of their
//! results may go downstream now ([`Queue::drain`]): everything that decides ordering and
//! watermarks, without threads or a runtime, so it is tested on its own.
//!
//! # Invariants
//! - A result never crosses a watermark: one for an input that came before watermark `W`
//!   goes downstream before `W`, one for an input that came after `W` after it. So the
//!   output watermark is at most the watermark that preceded the oldest input whose result
//!   has not gone yet, and a result goes only once the output watermark reached the
//!   watermark that preceded its input (Flink's unordered queue, segment by segment).
//! - Ordered: results go in input order, a finished one waits for every earlier one.
//! - Unordered: within those bounds, results go as they finish.

use std::collections::VecDeque;

use weir_engine::time::MIN_WATERMARK;
use weir_engine::Timestamp;

/// One input whose result has not gone downstream yet.
#[derive(Debug)]
pub(super) struct Slot<K, T, U> {
    pub(super) seq: u64,
    pub(super) key: K,
    pub(super) ts: Timestamp,
    /// The input watermark that preceded the input.
    pub(super) watermark: Timestamp,
    pub(super) input: T,
    /// Set once its request finished: the value, or why it failed for good.
    pub(super) result: Option<Result<U, String>>,
}

/// What [`Queue::drain`] hands on, in the order it must go downstream.
#[derive(Debug)]
pub(super) enum Drained<K, T, U> {
    /// The output watermark may move to this.
    Watermark(Timestamp),
    /// A finished request.
    Done(Slot<K, T, U>),
}

/// The requests of an instance in input order (both those in flight and, in ordered mode,
/// finished ones waiting for their turn).
#[derive(Debug)]
pub(super) struct Queue<K, T, U> {
    slots: VecDeque<Slot<K, T, U>>,
    ordered: bool,
    /// The newest input watermark.
    input_watermark: Timestamp,
    /// What went downstream last.
    output_watermark: Timestamp,
}

impl<K, T, U> Queue<K, T, U> {
    pub(super) fn new(ordered: bool) -> Self {
        Queue {
            slots: VecDeque::new(),
            ordered,
            input_watermark: MIN_WATERMARK,
            output_watermark: MIN_WATERMARK,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(super) fn slots(&self) -> impl Iterator<Item = &Slot<K, T, U>> {
        self.slots.iter()
    }

    /// Adds the input `seq` (larger than every earlier one), preceded by `watermark`.
    pub(super) fn push(&mut self, seq: u64, key: K, ts: Timestamp, watermark: Timestamp, input: T) {
        self.input_watermark = self.input_watermark.max(watermark);
        self.slots.push_back(Slot {
            seq,
            key,
            ts,
            watermark: self.input_watermark,
            input,
            result: None,
        });
    }

    /// The input watermark moved to `watermark` (after the inputs pushed so far).
    pub(super) fn advance_input(&mut self, watermark: Timestamp) {
        self.input_watermark = self.input_watermark.max(watermark);
    }

    /// Request `seq` finished; false if no such request waits (it went already).
    pub(super) fn complete(&mut self, seq: u64, result: Result<U, String>) -> bool {
        match self.slots.binary_search_by_key(&seq, |s| s.seq) {
            Ok(i) => {
                self.slots[i].result = Some(result);
                true
            }
            Err(_) => false,
        }
    }

    /// Hands `emit` what may go downstream now, in order; true if it handed anything.
    pub(super) fn drain(&mut self, mut emit: impl FnMut(Drained<K, T, U>)) -> bool {
        let mut any = false;
        loop {
            let limit = self.slots.front().map_or(self.input_watermark, |s| {
                s.watermark.min(self.input_watermark)
            });
            if limit > self.output_watermark {
                self.output_watermark = limit;
                emit(Drained::Watermark(limit));
                any = true;
            }
            let mut emitted = false;
            let mut i = 0;
            while i < self.slots.len() && self.slots[i].watermark <= self.output_watermark {
                if self.slots[i].result.is_none() {
                    if self.ordered {
                        break;
                    }
                    i += 1;
                    continue;
                }
                if let Some(slot) = self.slots.remove(i) {
                    emit(Drained::Done(slot));
                    emitted = true;
                }
            }
            if !emitted {
                return any;
            }
            any = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a drain handed on: `W(w)` for a watermark, `R(seq)` for a result.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        W(Timestamp),
        R(u64),
    }

    fn drain(q: &mut Queue<(), (), u64>) -> Vec<Out> {
        let mut out = Vec::new();
        q.drain(|d| {
            out.push(match d {
                Drained::Watermark(w) => Out::W(w),
                Drained::Done(s) => Out::R(s.seq),
            })
        });
        out
    }

    fn queue(ordered: bool, watermarks: &[Timestamp]) -> Queue<(), (), u64> {
        let mut q = Queue::new(ordered);
        for (seq, &w) in watermarks.iter().enumerate() {
            q.push(seq as u64, (), 100 + seq as i64, w, ());
        }
        q
    }

    #[test]
    fn ordered_results_wait_for_every_earlier_one() {
        let mut q = queue(true, &[0, 0, 0]);
        q.complete(2, Ok(2));
        q.complete(1, Ok(1));
        assert_eq!(drain(&mut q), vec![Out::W(0)]);
        q.complete(0, Ok(0));
        assert_eq!(drain(&mut q), vec![Out::R(0), Out::R(1), Out::R(2)]);
        assert!(q.is_empty());
    }

    #[test]
    fn unordered_results_go_as_they_finish() {
        let mut q = queue(false, &[0, 0, 0]);
        q.complete(2, Ok(2));
        assert_eq!(drain(&mut q), vec![Out::W(0), Out::R(2)]);
        q.complete(0, Ok(0));
        assert_eq!(drain(&mut q), vec![Out::R(0)]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn an_unordered_result_never_overtakes_a_watermark() {
        // Inputs 0 and 1 before watermark 10, input 2 after it; input 3 after 20.
        let mut q = queue(false, &[0, 0, 10, 20]);
        q.advance_input(30);
        q.complete(2, Ok(2));
        q.complete(3, Ok(3));
        // Watermark 10 waits for inputs 0 and 1; so do the results after it.
        assert_eq!(drain(&mut q), vec![Out::W(0)]);
        q.complete(1, Ok(1));
        assert_eq!(drain(&mut q), vec![Out::R(1)]);
        q.complete(0, Ok(0));
        assert_eq!(
            drain(&mut q),
            vec![
                Out::R(0),
                Out::W(10),
                Out::R(2),
                Out::W(20),
                Out::R(3),
                Out::W(30)
            ]
        );
    }

    #[test]
    fn the_watermark_waits_for_the_oldest_request_in_flight() {
        let mut q = queue(true, &[5]);
        q.advance_input(50);
        assert_eq!(drain(&mut q), vec![Out::W(5)]);
        assert_eq!(drain(&mut q), vec![]);
        q.complete(0, Ok(0));
        assert_eq!(drain(&mut q), vec![Out::R(0), Out::W(50)]);
    }

    #[test]
    fn a_result_for_a_request_that_went_is_refused() {
        let mut q = queue(true, &[0]);
        assert!(q.complete(0, Err("failed".into())));
        assert_eq!(drain(&mut q), vec![Out::W(0), Out::R(0)]);
        assert!(!q.complete(0, Ok(0)));
    }
}
