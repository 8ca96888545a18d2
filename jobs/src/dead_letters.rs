//! Where a job's dead letters go: the records its source rejected
//! ([`weir_engine::Stream::dead_letters`]), one JSON line each in one file
//! (`--output`'s path plus `.dead.jsonl`, see [`crate::options::JobOptions::dead_letter_path`]).
//!
//! The file is written by an ordinary sink, [`AppendFileSink`], named `dead-letters` with the
//! uid `dead-letters`: without checkpoints a plain file, created when the job starts writing
//! and complete when it ends; with checkpoints each dead letter is in it exactly once after
//! any number of crashes, because a restore cuts the file back to its length at the
//! restored checkpoint and the replayed input rejects the rest again. Readers (`tail -f`,
//! `GET /api/v1/dead-letters`) may see lines a restore then withdraws and writes again.
//!
//! Bundled jobs add the sink after the rest of the job, so that the operators added before
//! keep the places (and derived uids) they had when sources wrote the file themselves.

use std::path::PathBuf;

use weir_connectors::AppendFileSink;
use weir_engine::{Data, DeadLetter, SinkHandle, Stream};

/// Writes the dead letters of `source` (a stream a source returned) to the file `path`.
pub fn write_dead_letters<T: Data>(source: &Stream<T>, path: impl Into<PathBuf>) -> SinkHandle {
    dead_letter_sink(source.dead_letters(), path)
}

/// Writes `letters` (a source's dead letters, perhaps joined by an operator's rejects) to
/// the file `path`.
pub fn dead_letter_sink(letters: Stream<DeadLetter>, path: impl Into<PathBuf>) -> SinkHandle {
    letters
        .side_output_sink("dead-letters", AppendFileSink::new(path))
        .uid("dead-letters")
}
