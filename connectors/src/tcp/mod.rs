//! TCP: a source reading newline-delimited records, either as a server that accepts many
//! clients (`--input tcp://HOST:PORT`) or as a client of one server that reconnects when the
//! connection drops (`--input tcp://HOST:PORT?mode=connect`) ([`TcpSource`]); and a client
//! sink that sends results as JSON lines to a server ([`TcpSink`], `--output
//! tcp://HOST:PORT`).
//!
//! TCP has no replay and no acknowledgements: a job reading TCP cannot checkpoint, and the
//! sink cannot know what a peer received before a connection broke (see [`TcpSink`]).

mod sink;
mod source;

use std::time::Duration;

pub use sink::TcpSink;
pub use source::{TcpMode, TcpSource, TcpSpec};

/// Waits between connection attempts: 0.1 s, doubling up to 5 s, back to 0.1 s once a
/// connection worked.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    /// The next wait, in seconds (for the message announcing it).
    fn next_secs(&self) -> f64 {
        self.0.as_secs_f64()
    }

    /// Sleeps the next wait and lengthens the one after.
    fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}
