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
//! [`source_with_dead_letters`] adds a source and its dead-letter sink in one call. Bundled
//! jobs add the sink after the rest of the job, so that the operators added before
//! keep the places (and derived uids) they had when sources wrote the file themselves.

use std::path::PathBuf;

use weir_connectors::AppendFileSink;
use weir_engine::{Data, DeadLetter, Job, SinkHandle, Source, Stream};

/// Adds `source` to `job` as `name` (also its uid, which keeps its position in
/// checkpoints) and writes its dead letters to the file `path` by a sink named after it,
/// `NAME.dead-letters` (also its uid): a source in one call, and a job may have several,
/// each with its own file. The runtime counts them in
/// `weir_dead_letter_records_total{operator="NAME"}`.
pub fn source_with_dead_letters<S: Source>(
    job: &Job,
    name: &str,
    source: S,
    path: impl Into<PathBuf>,
) -> Stream<S::Item> {
    let stream = job.source(name, source).uid(name);
    let sink = format!("{name}.dead-letters");
    stream
        .dead_letters()
        .side_output_sink(&sink, AppendFileSink::new(path))
        .uid(&sink);
    stream
}

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
