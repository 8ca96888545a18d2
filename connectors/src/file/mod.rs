//! Files: a line-oriented source (JSON lines or CSV) and two JSON-lines sinks: one that
//! commits part files of a directory with checkpoints ([`FileSink`]), and one that keeps
//! one file and cuts it back to its checkpointed length on a restore ([`AppendFileSink`],
//! what dead letters are written with).
//!
//! # Source positions
//! The source tracks the line number and byte offset of every line it reads, so dead
//! letters name their line and checkpoints can later record where to resume.
//!
//! # Several readers
//! A file that is not followed is read by one reader per worker, each taking byte ranges
//! in turn ([`splits`]).
//!
//! # Memory
//! The source reads in chunks of 256 KiB and decodes lines in place ([`lines`]): a file of
//! any size is never held in memory (a single line is, however long).

mod append;
mod lines;
mod sink;
mod source;
mod splits;

pub use append::AppendFileSink;
pub use sink::FileSink;
pub use source::{FileSource, DEFAULT_MAX_LINE};
pub(crate) use splits::line_at;
pub use splits::DEFAULT_SPLIT_BYTES;
