//! Files: a line-oriented source (JSON lines or CSV) and a JSON-lines sink.
//!
//! # Source positions
//! The source tracks the line number and byte offset of every line it reads, so dead
//! letters name their line and checkpoints can later record where to resume.
//!
//! # Memory
//! The source reads through a fixed-size buffer, one line at a time: a file of any size is
//! never held in memory.

mod sink;
mod source;

pub use sink::FileSink;
pub use source::FileSource;
