//! [`ThreadWaker`]: how code outside the dataflow threads (a query's caller, a tokio task
//! that finished an asynchronous request) wakes the dataflow thread that must act on what it
//! left behind, without that thread polling.
//!
//! A dataflow thread waits in one of two ways: a worker waits for a message on any of its
//! inboxes or its bell ([`super::worker`]), a source thread parks while its input is quiet
//! ([`std::thread::park_timeout`]). A waker does both, so it wakes whichever its thread is.
//! A keyed instance that runs in a receiver task of its own (several producers at
//! parallelism 1) waits on its channel with a timeout instead, and notices within
//! [`super::inbox::IDLE_CHECK`].

use std::thread::Thread;

use crossbeam_channel::Sender;

/// Wakes the dataflow thread that created it, wherever it waits.
#[derive(Debug, Clone)]
pub struct ThreadWaker {
    thread: Thread,
    bell: Option<Sender<()>>,
}

impl ThreadWaker {
    /// The waker of the calling thread: call it in the thread to be woken (from an
    /// operator's `process` or `poll`, say), not where the operator is created.
    pub fn current() -> Self {
        ThreadWaker {
            thread: std::thread::current(),
            bell: super::worker::bell(),
        }
    }

    /// Wakes the thread if it waits; a spurious wake-up costs it one more look around.
    pub fn wake(&self) {
        self.thread.unpark();
        if let Some(bell) = &self.bell {
            // Full: a wake-up is already pending.
            let _ = bell.try_send(());
        }
    }
}
