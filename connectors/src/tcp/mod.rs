//! TCP: a server source that accepts many clients sending newline-delimited records
//! ([`TcpSource`], `--input tcp://HOST:PORT`), and a client sink that sends results as JSON
//! lines to a server ([`TcpSink`], `--output tcp://HOST:PORT`).
//!
//! TCP has no replay and no acknowledgements: a job reading TCP cannot checkpoint, and the
//! sink cannot know what a peer received before a connection broke (see [`TcpSink`]).

mod sink;
mod source;

pub use sink::TcpSink;
pub use source::{TcpSource, TcpSpec};
