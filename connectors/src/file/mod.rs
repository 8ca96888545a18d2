//! Files: a line-oriented source (JSON lines or CSV) and a JSON-lines sink.
//!
//! # Source positions
//! The source tracks the line number and byte offset of every line it reads, so dead
//! letters name their line and checkpoints can later record where to resume.
//!
//! # Memory
//! The source reads in chunks of 256 KiB and decodes lines in place ([`lines`]): a file of
//! any size is never held in memory (a single line is, however long).

mod lines;
mod sink;
mod source;

pub use sink::FileSink;
pub use source::{FileSource, DEFAULT_MAX_LINE};
