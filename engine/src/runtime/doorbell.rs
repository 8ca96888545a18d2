//! A wake-up for the thread draining a sink's channel that does not spin.
//!
//! A crossbeam receiver that finds its channel empty spins and then yields the CPU a few
//! times before it sleeps. A sink fed by P workers wakes for every batch they send it, and
//! on a machine with P cores each of those yields took a core from a worker: at P = 2, q3's
//! sink thread yielded about 30,000 times in 4 s. The sink's thread waits on a [`Doorbell`]
//! instead, which producers ring after each send.
//!
//! # Invariant
//! No wake-up is lost: the waiter announces itself and then looks at the channel, a ringer
//! sends and then looks for a waiter, with a sequentially consistent fence between each
//! pair, so at least one of them sees the other. The wait also ends after a timeout.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

#[derive(Debug, Default)]
pub(super) struct Doorbell {
    waiting: AtomicBool,
    lock: Mutex<()>,
    rung: Condvar,
}

impl Doorbell {
    /// Wakes the waiter, if there is one; call after sending.
    pub(super) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) {
            let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.rung.notify_one();
        }
    }

    /// Sleeps while `empty()` holds, until rung or for at most `timeout`.
    pub(super) fn wait_while(&self, empty: impl Fn() -> bool, timeout: Duration) {
        let held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if empty() {
            // A ring after the check needs the lock, which the wait releases only once
            // it is waiting.
            let _ = self.rung.wait_timeout(held, timeout);
        }
        self.waiting.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_waiter_wakes_for_every_message_long_before_its_timeout() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let bell = Arc::new(Doorbell::default());
        let ringer = bell.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..2_000 {
                tx.send(i).expect("the receiver outlives the sender");
                ringer.ring();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let started = Instant::now();
        let mut received = 0;
        while received < 2_000 {
            match rx.try_recv() {
                Ok(_) => received += 1,
                // A lost wake-up would cost the whole timeout; 2,000 of them a minute.
                Err(_) => bell.wait_while(|| rx.is_empty(), Duration::from_secs(30)),
            }
        }
        sender.join().expect("the sender does not panic");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}: a wake-up was lost",
            started.elapsed()
        );
    }
}
