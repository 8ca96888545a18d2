//! `--max-future` in the sources: an event whose time is too far ahead of the stream is a
//! dead letter (with its position and raw record, like a line that does not decode) instead
//! of an event that moves the watermark to the far future.
//!
//! The rule and its reference point are [`weir_engine::FutureGuard`]'s (see
//! `weir_engine::time`, `# Events far in the future`): more than `D` ahead of the largest
//! event time the source accepted so far from the same stream (a file, the TCP input, one
//! Kafka partition). A source checks each decoded event once (one comparison) and keeps the
//! reference in its checkpoint position.

use std::time::Duration;

use weir_engine::{FutureGuard, Timestamp};

/// The event time of a decoded item (for window-agg, `|e| e.ts`).
pub type EventTimeOf<T> = fn(&T) -> Timestamp;

/// A [`FutureGuard`] over decoded items.
#[derive(Debug)]
pub struct MaxFuture<T> {
    time: EventTimeOf<T>,
    max_ahead: Duration,
    guard: FutureGuard,
}

impl<T> Clone for MaxFuture<T> {
    fn clone(&self) -> Self {
        MaxFuture {
            time: self.time,
            max_ahead: self.max_ahead,
            guard: self.guard,
        }
    }
}

impl<T> MaxFuture<T> {
    /// Refuses items whose `time` is more than `max_ahead` ahead of the largest accepted.
    pub fn new(time: EventTimeOf<T>, max_ahead: Duration) -> Self {
        MaxFuture {
            time,
            max_ahead,
            guard: FutureGuard::new(max_ahead),
        }
    }

    /// The same check, with nothing accepted yet (for another stream, e.g. a new Kafka
    /// partition).
    pub fn fresh(&self) -> Self {
        MaxFuture::new(self.time, self.max_ahead)
    }

    /// Accepts `item`, or says why it is refused (the dead letter's error).
    #[inline]
    pub fn admit(&mut self, item: &T) -> Result<(), String> {
        self.guard
            .admit((self.time)(item))
            .map_err(|e| e.to_string())
    }

    /// The largest event time accepted: what a checkpoint keeps.
    pub fn highest(&self) -> Option<Timestamp> {
        self.guard.highest()
    }

    /// Continues from a checkpoint's [`MaxFuture::highest`].
    pub fn resume(&mut self, highest: Option<Timestamp>) {
        self.guard.resume(highest);
    }
}
