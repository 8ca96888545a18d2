//! Arrow IPC files: a source reading record batches and turning their rows into events.
//!
//! Columnar input is where Arrow pays in weir (BENCHMARKS.md, Arrow): the values are
//! already binary, so nothing is parsed per event, and a dictionary-encoded string column
//! (the usual encoding of keys) is looked at once per dictionary entry, not once per row.
//! A [`RowDecoder`] binds to each batch's columns once, then decodes rows by index.
//!
//! # Invariants
//! - The position is (record batch, row) of the next row to read, kept in checkpoints; a
//!   restart opens the file at that batch (the IPC file footer indexes batches) and skips
//!   the rows before it, so nothing is read twice or skipped.
//! - A row the decoder rejects (a null where the job needs a value, say) goes to the dead
//!   letters with its row number in the file (1-based, as a line number) and the batch it
//!   is in; the rows around it go on. A batch whose columns do not fit the job (missing, or
//!   of another type) stops the job with the reason: no row of it could be read.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::reader::FileReader;
use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Data, Source, SourceStatus};

use crate::dead_letter::{refuse_old_dead_letters, DeadLetter, Raw};
use crate::error::ConnectorError;
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames};

/// True for a path naming an Arrow IPC file: `.arrow` or `.ipc` (`.arrows`, the stream
/// format, is not read).
pub fn is_arrow_file(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("arrow") || e.eq_ignore_ascii_case("ipc"))
}

/// Turns rows of record batches into events.
pub trait RowDecoder: Send + 'static {
    /// The decoded event.
    type Item: Data;

    /// Looks up the columns of a new batch; an error stops the job (the file does not fit
    /// it).
    fn bind(&mut self, batch: &RecordBatch) -> Result<(), String>;

    /// Decodes row `row` of the batch last bound, or says what is wrong with it.
    fn decode(&mut self, row: usize) -> Result<Self::Item, String>;

    /// Stores where a decoded item was read (its row), as [`crate::Decoder::set_origin`].
    #[inline]
    fn set_origin(&self, item: &mut Self::Item, origin: Origin) {
        let _ = (item, origin);
    }
}

/// Where an [`ArrowFileSource`] stands, as kept in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ArrowPosition {
    /// The record batch it reads.
    batch: u64,
    /// The next row of that batch.
    row: u64,
    /// Rows in the batches before it.
    rows_before: u64,
    /// Version 1 only: the length of the dead-letter file the source wrote itself (see
    /// [`refuse_old_dead_letters`]); never written since.
    #[serde(default, skip_serializing)]
    dead_letter_bytes: u64,
    /// The largest event time accepted so far, with a future guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest_event_time: Option<i64>,
}

impl ConnectorStateType for ArrowPosition {
    const KIND: &'static str = "arrow source";
    /// 2: without `dead_letter_bytes` (dead letters leave by the source's side output).
    const VERSION: u32 = 2;
}

/// Reads an Arrow IPC file (the file format, with its footer) from start to end.
pub struct ArrowFileSource<D: RowDecoder> {
    path: PathBuf,
    decoder: D,
    reader: Option<FileReader<BufReader<File>>>,
    /// The batch being read and the index of its next row.
    batch: Option<RecordBatch>,
    row: usize,
    /// The index of the batch being read (or of the next one, between batches).
    batch_index: usize,
    /// Rows in the batches before it, for row numbers.
    rows_before: u64,
    /// Every batch was read (a restore may land here: a checkpoint after the last batch).
    at_end: bool,
    rejected: Vec<DeadLetter>,
    /// Refuses events too far ahead of the file's time (`--max-future`).
    future: Option<MaxFuture<D::Item>>,
}

impl<D: RowDecoder> std::fmt::Debug for ArrowFileSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowFileSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<D: RowDecoder> ArrowFileSource<D> {
    /// Reads `path` with `decoder`; rejected rows are its dead letters
    /// ([`Source::take_dead_letters`]).
    pub fn new(path: impl Into<PathBuf>, decoder: D) -> Self {
        ArrowFileSource {
            path: path.into(),
            decoder,
            reader: None,
            batch: None,
            row: 0,
            batch_index: 0,
            rows_before: 0,
            at_end: false,
            rejected: Vec::new(),
            future: None,
        }
    }

    /// The words for the origins this source gives its events (their rows, 1-based,
    /// through [`RowDecoder::set_origin`]).
    pub fn origin_names(&self) -> OriginNames {
        OriginNames::File {
            path: self.path.clone(),
            unit: "row",
        }
    }

    /// Rows whose event time (`time` of the decoded event) is more than `max_ahead` ahead
    /// of the largest accepted so far are dead letters (see [`crate::max_future`]).
    /// `None` (the default): all accepted.
    pub fn max_future(mut self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        self.future = max_ahead.map(|max_ahead| MaxFuture::new(time, max_ahead));
        self
    }

    fn error(&self, message: impl ToString) -> ConnectorError {
        ConnectorError::Arrow {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// An error in the batch being read.
    fn batch_error(&self, message: impl std::fmt::Display) -> ConnectorError {
        self.error(format!("record batch {}: {message}", self.batch_index))
    }

    /// Opens the file (once) at batch `self.batch_index`.
    fn open(&mut self) -> Result<(), BoxError> {
        if self.reader.is_some() {
            return Ok(());
        }
        let file = File::open(&self.path).map_err(|source| ConnectorError::Open {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = FileReader::try_new(BufReader::new(file), None).map_err(|e| {
            self.error(format!(
                "not an Arrow IPC file ({e}); write the IPC file format (with its footer), \
                 not the stream format"
            ))
        })?;
        let batches = reader.num_batches();
        if self.batch_index > batches {
            return Err(self
                .error(format!(
                    "the checkpoint is at record batch {} of a file of {batches}: the file \
                     changed since; start with a new --state-dir",
                    self.batch_index
                ))
                .into());
        }
        // A position after the last batch is the end of the file, not a batch to go to.
        self.at_end = self.batch_index == batches;
        if self.batch_index > 0 && !self.at_end {
            reader
                .set_index(self.batch_index)
                .map_err(|e| self.batch_error(e))?;
        }
        self.reader = Some(reader);
        Ok(())
    }

    /// The batch being read, reading (and binding) the next one if needed; `None` at the
    /// end of the file.
    fn current(&mut self) -> Result<Option<&RecordBatch>, BoxError> {
        if self.batch.is_none() {
            let next = match self.reader.as_mut().filter(|_| !self.at_end) {
                None => None,
                Some(reader) => reader.next(),
            };
            let Some(next) = next else {
                self.at_end = true;
                return Ok(None);
            };
            let next = next.map_err(|e| self.batch_error(e))?;
            self.decoder
                .bind(&next)
                .map_err(|reason| self.batch_error(format!("does not fit the job: {reason}")))?;
            self.batch = Some(next);
        }
        Ok(self.batch.as_ref())
    }
}

impl<D: RowDecoder> Source for ArrowFileSource<D> {
    type Item = D::Item;

    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        self.open()?;
        let mut status = SourceStatus::More;
        let mut taken = 0;
        while taken < max {
            let Some(rows) = self.current()?.map(RecordBatch::num_rows) else {
                status = SourceStatus::Exhausted;
                break;
            };
            let end = rows.min(self.row + (max - taken));
            for row in self.row..end {
                let decoded = self.decoder.decode(row).and_then(|item| {
                    match self.future.as_mut().map(|f| f.admit(&item)) {
                        Some(Err(error)) => Err(error),
                        _ => Ok(item),
                    }
                });
                match decoded {
                    Ok(mut item) => {
                        let number = self.rows_before + row as u64 + 1;
                        self.decoder.set_origin(&mut item, Origin::line(number));
                        out.push(item)
                    }
                    Err(error) => self.rejected.push(DeadLetter {
                        source: self.path.display().to_string(),
                        line: self.rows_before + row as u64 + 1,
                        error,
                        raw: Raw::Text(format!("row {row} of record batch {}", self.batch_index)),
                    }),
                }
            }
            taken += end - self.row;
            self.row = end;
            if self.row == rows {
                self.batch = None;
                self.batch_index += 1;
                self.rows_before += rows as u64;
                self.row = 0;
            }
        }
        Ok(status)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        out.append(&mut self.rejected);
    }

    fn describe(&self) -> String {
        format!("{} (Arrow IPC)", self.path.display())
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        let position = ArrowPosition {
            batch: self.batch_index as u64,
            row: self.row as u64,
            rows_before: self.rows_before,
            dead_letter_bytes: 0,
            highest_event_time: self.future.as_ref().and_then(MaxFuture::highest),
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let position: ArrowPosition = position.decode()?;
        self.rows_before = position.rows_before;
        refuse_old_dead_letters(ArrowPosition::KIND, position.dead_letter_bytes)?;
        if let Some(future) = &mut self.future {
            future.resume(position.highest_event_time);
        }
        self.batch_index = usize::try_from(position.batch)?;
        let row = usize::try_from(position.row)?;
        self.open()?;
        if row > 0 {
            let rows = self.current()?.map_or(0, RecordBatch::num_rows);
            if row > rows {
                return Err(self
                    .batch_error(format!(
                        "the checkpoint is at row {row} of a batch of {rows} rows: the file \
                         changed since; start with a new --state-dir"
                    ))
                    .into());
            }
            self.row = row;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow_array::{Array, Int64Array};
    use arrow_ipc::writer::FileWriter;

    use super::*;

    /// Reads column `n`; a null is rejected.
    struct Numbers(Option<Int64Array>);

    impl RowDecoder for Numbers {
        type Item = i64;

        fn bind(&mut self, batch: &RecordBatch) -> Result<(), String> {
            let column = batch.column_by_name("n").ok_or("no column `n`")?;
            let ints = column
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("not Int64")?;
            self.0 = Some(ints.clone());
            Ok(())
        }

        fn decode(&mut self, row: usize) -> Result<i64, String> {
            let ints = self.0.as_ref().ok_or("unbound")?;
            if ints.is_null(row) {
                return Err("`n` is null".into());
            }
            Ok(ints.value(row))
        }
    }

    /// An IPC file of batches holding `0..`, with a null as the 5th value of the 2nd.
    fn write_batches(path: &std::path::Path, sizes: &[i64]) {
        let batch = |start: i64, len: i64, batch: usize| {
            let values = (start..start + len).map(|v| (batch != 1 || v != start + 4).then_some(v));
            let column = Arc::new(Int64Array::from_iter(values)) as _;
            RecordBatch::try_from_iter_with_nullable([("n", column, true)]).unwrap()
        };
        let first = batch(0, sizes[0], 0);
        let mut writer = FileWriter::try_new(File::create(path).unwrap(), &first.schema()).unwrap();
        let mut start = 0;
        for (i, &len) in sizes.iter().enumerate() {
            writer.write(&batch(start, len, i)).unwrap();
            start += len;
        }
        writer.finish().unwrap();
    }

    fn source(dir: &std::path::Path) -> ArrowFileSource<Numbers> {
        ArrowFileSource::new(dir.join("n.arrow"), Numbers(None))
    }

    /// Reads everything left, `chunk` rows a poll.
    fn read_to_end(source: &mut ArrowFileSource<Numbers>, read: &mut Vec<i64>, chunk: usize) {
        while source.poll_batch(read, chunk).unwrap() != SourceStatus::Exhausted {}
    }

    #[test]
    fn a_resumed_source_reads_every_row_once_and_nulls_are_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        write_batches(&dir.path().join("n.arrow"), &[7, 10, 3]);
        let expected: Vec<i64> = (0..20).filter(|&v| v != 11).collect();
        // Positions: the start, a batch boundary, mid-batch, the end of the file.
        for first_rows in [0, 7, 12, 20] {
            let mut first = source(dir.path());
            let mut read = Vec::new();
            if first_rows == 20 {
                read_to_end(&mut first, &mut read, 5);
            } else if first_rows > 0 {
                assert_eq!(
                    first.poll_batch(&mut read, first_rows).unwrap(),
                    SourceStatus::More
                );
            }
            let mut dead = Vec::new();
            first.take_dead_letters(&mut dead);
            let position = first.position().unwrap().unwrap();
            let mut resumed = source(dir.path());
            resumed.seek(&position).unwrap();
            read_to_end(&mut resumed, &mut read, 4);
            resumed.take_dead_letters(&mut dead);
            assert_eq!(
                read, expected,
                "resumed after {first_rows} rows at {position:?}"
            );
            // The null row is a dead letter once, before or after the position.
            assert_eq!(dead.len(), 1, "{dead:?}");
            assert!(
                dead[0].line == 12 && dead[0].error.contains("`n` is null"),
                "{dead:?}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_arrow_or_does_not_fit_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.arrow"), "{\"n\":1}\n").unwrap();
        let err = source(dir.path())
            .poll_batch(&mut Vec::new(), 10)
            .unwrap_err();
        assert!(err.to_string().contains("not an Arrow IPC file"), "{err}");

        let batch =
            RecordBatch::try_from_iter([("m", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        let mut writer = FileWriter::try_new(
            File::create(dir.path().join("n.arrow")).unwrap(),
            &batch.schema(),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let err = source(dir.path())
            .poll_batch(&mut Vec::new(), 10)
            .unwrap_err();
        assert!(err.to_string().contains("no column `n`"), "{err}");
    }
}
