use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, Source, SourceStatus};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::error::ConnectorError;
use crate::format::{Decoder, Format};

/// How long a followed file is left alone when it has no new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
const READ_BUFFER: usize = 256 * 1024;

/// Where a [`FileSource`] stands, as kept in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    /// Byte offset just after the last complete line read.
    offset: u64,
    /// Number of that line (1-based; 0 before the first).
    line: u64,
    /// Length of the dead-letter file at this point.
    dead_letter_bytes: u64,
}

/// Reads a file line by line and decodes each line with a [`Decoder`].
///
/// Lines that fail to decode (or are not UTF-8) go to the [`DeadLetters`] with their line
/// number; blank lines are skipped. Bounded by default: the source ends at the end of the
/// file. With [`FileSource::follow`] it keeps reading lines appended later, like `tail -f`,
/// and a last line without a line break is only read once it is complete.
///
/// Replayable: its position is the byte offset after the last line it returned (and the
/// dead-letter file's length), and [`Source::seek`] continues from such a position.
pub struct FileSource<D> {
    path: PathBuf,
    format: Format,
    decoder: D,
    dead_letters: DeadLetters,
    follow: bool,
    reader: Option<BufReader<File>>,
    line: Vec<u8>,
    line_number: u64,
    offset: u64,
    header_read: bool,
    rejected: Vec<DeadLetter>,
}

impl<D> std::fmt::Debug for FileSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("line_number", &self.line_number)
            .finish_non_exhaustive()
    }
}

impl<D: Decoder> FileSource<D> {
    /// Reads `path` in `format`, decoding with `decoder`; rejects go to `dead_letters`.
    pub fn new(
        path: impl Into<PathBuf>,
        format: Format,
        decoder: D,
        dead_letters: DeadLetters,
    ) -> Self {
        FileSource {
            path: path.into(),
            format,
            decoder,
            dead_letters,
            follow: false,
            reader: None,
            line: Vec::with_capacity(256),
            line_number: 0,
            offset: 0,
            header_read: false,
            rejected: Vec::new(),
        }
    }

    /// Keeps reading appended lines at the end of the file instead of ending.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset just after the last complete line read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn open(&mut self) -> Result<(), ConnectorError> {
        self.open_reader()?;
        self.dead_letters.open()
    }

    fn open_reader(&mut self) -> Result<(), ConnectorError> {
        let file = File::open(&self.path).map_err(|source| ConnectorError::Open {
            path: self.path.clone(),
            source,
        })?;
        self.reader = Some(BufReader::with_capacity(READ_BUFFER, file));
        Ok(())
    }

    fn reject(&mut self, error: String, raw: &[u8]) {
        self.rejected.push(DeadLetter {
            source: self.path.display().to_string(),
            line: self.line_number,
            error,
            raw: String::from_utf8_lossy(raw).into_owned(),
        });
    }

    /// Decodes the complete line in `self.line` into `out` (or the dead letters).
    fn take_line(&mut self, out: &mut Vec<D::Item>) -> Result<(), ConnectorError> {
        let mut end = self.line.len();
        while end > 0 && matches!(self.line[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let line = std::mem::take(&mut self.line);
        let result = match std::str::from_utf8(&line[..end]) {
            Err(e) => Err(format!("line is not UTF-8: {e}")),
            // Stops at the first character that is not white space (the first, in JSON).
            Ok(text) if text.chars().all(char::is_whitespace) => Ok(None),
            Ok(text) if self.format == Format::Csv && !self.header_read => {
                self.header_read = true;
                self.decoder
                    .header(text)
                    .map_err(|message| ConnectorError::Header {
                        path: self.path.clone(),
                        message,
                    })?;
                Ok(None)
            }
            Ok(text) => self.decoder.decode(text).map(Some),
        };
        match result {
            Ok(Some(item)) => out.push(item),
            Ok(None) => {}
            Err(error) => self.reject(error, &line[..end]),
        }
        self.line = line;
        self.line.clear();
        Ok(())
    }
}

impl<D: Decoder> Source for FileSource<D> {
    type Item = D::Item;

    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        if self.reader.is_none() {
            self.open()?;
        }
        let mut status = SourceStatus::More;
        let start = out.len();
        while out.len() - start < max {
            let Some(reader) = self.reader.as_mut() else {
                break;
            };
            let read = reader.read_until(b'\n', &mut self.line).map_err(|source| {
                ConnectorError::Read {
                    path: self.path.clone(),
                    line: self.line_number,
                    source,
                }
            })?;
            let complete = self.line.last() == Some(&b'\n');
            if read == 0 || (!complete && self.follow) {
                if !self.follow {
                    if !self.line.is_empty() {
                        self.line_number += 1;
                        self.take_line(out)?;
                    }
                    status = SourceStatus::Exhausted;
                } else {
                    // Keep the partial line; the writer has not finished it yet.
                    if out.len() == start {
                        std::thread::sleep(FOLLOW_POLL);
                    }
                    status = SourceStatus::Idle;
                }
                break;
            }
            self.line_number += 1;
            self.offset += self.line.len() as u64;
            self.take_line(out)?;
        }
        if !self.rejected.is_empty() {
            self.dead_letters.write(&self.rejected)?;
            self.rejected.clear();
        }
        Ok(status)
    }

    fn describe(&self) -> String {
        let mode = if self.follow { ", follow" } else { "" };
        format!("file {} ({:?}{mode})", self.path.display(), self.format)
    }

    fn position(&mut self) -> Result<Option<serde_json::Value>, BoxError> {
        let position = FilePosition {
            offset: self.offset,
            line: self.line_number,
            dead_letter_bytes: self.dead_letters.position(),
        };
        Ok(Some(serde_json::to_value(position)?))
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<(), BoxError> {
        let position: FilePosition = serde_json::from_value(position.clone())
            .map_err(|e| format!("{position} is not a file position: {e}"))?;
        // Not `open`: that would truncate the dead-letter file, which resumes instead.
        self.dead_letters.resume_at(position.dead_letter_bytes)?;
        self.open_reader()?;
        let read_err = |source| ConnectorError::Read {
            path: self.path.clone(),
            line: position.line,
            source,
        };
        let reader = self.reader.as_mut().ok_or("the file was just opened")?;
        let len = reader.get_ref().metadata().map_err(read_err)?.len();
        if position.offset > len {
            return Err(format!(
                "{} has {len} bytes but the checkpoint read up to byte {}: the input was \
                 replaced or truncated; restore it or start afresh with a new --state-dir",
                self.path.display(),
                position.offset
            )
            .into());
        }
        if self.format == Format::Csv && position.offset > 0 {
            // The decoder learns its columns from the header row again.
            let mut header = Vec::new();
            reader.read_until(b'\n', &mut header).map_err(read_err)?;
            let text = String::from_utf8_lossy(&header);
            self.decoder
                .header(text.trim_end_matches(['\r', '\n']))
                .map_err(|message| ConnectorError::Header {
                    path: self.path.clone(),
                    message,
                })?;
            self.header_read = true;
        }
        let reader = self.reader.as_mut().ok_or("the file was just opened")?;
        reader
            .seek(SeekFrom::Start(position.offset))
            .map_err(read_err)?;
        self.offset = position.offset;
        self.line_number = position.line;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde::Deserialize;
    use weir_engine::metrics::Counter;

    use super::*;
    use crate::format::Json;

    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct Ev {
        ts: i64,
        key: String,
    }

    fn drain<D: Decoder>(src: &mut FileSource<D>) -> Result<Vec<D::Item>, BoxError> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            let status = src.poll_batch(&mut all, 2)?;
            if status == SourceStatus::Exhausted {
                return Ok(all);
            }
        }
        Err("source never ended".into())
    }

    #[test]
    fn malformed_lines_go_to_dead_letters_with_line_numbers() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"ts\":1,\"key\":\"a\"}\nnot json\n\n{\"ts\":2}\n{\"ts\":3,\"key\":\"b\"}",
        )?;
        let dead_path = dir.path().join("dead.jsonl");
        let counter = Counter::new("dead", "dead letters")?;
        let dead = DeadLetters::to_file(&dead_path, counter.clone());
        let mut src = FileSource::new(&input, Format::JsonLines, Json::<Ev>::default(), dead);
        let events = drain(&mut src)?;
        assert_eq!(
            events,
            vec![
                Ev {
                    ts: 1,
                    key: "a".into()
                },
                Ev {
                    ts: 3,
                    key: "b".into()
                }
            ]
        );
        let letters: Vec<DeadLetter> = std::fs::read_to_string(&dead_path)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(
            letters.iter().map(|l| l.line).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert_eq!(letters[0].raw, "not json");
        assert!(
            letters[1].error.contains("missing field `key`"),
            "{}",
            letters[1].error
        );
        assert_eq!(counter.get(), 2);
        Ok(())
    }

    /// A CSV decoder that needs the header row to find its column.
    #[derive(Default)]
    struct TsColumn(Option<usize>);

    impl Decoder for TsColumn {
        type Item = i64;
        fn header(&mut self, line: &str) -> Result<(), String> {
            self.0 = line.split(',').position(|c| c == "ts");
            Ok(())
        }
        fn decode(&mut self, line: &str) -> Result<i64, String> {
            let column = self.0.ok_or("no header seen")?;
            let field = line.split(',').nth(column).ok_or("short row")?;
            field.parse().map_err(|e| format!("bad ts: {e}"))
        }
    }

    #[test]
    fn seek_resumes_after_the_position_with_header_and_dead_letters() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "key,ts\na,1\nb,x\nc,3\nd,y\ne,5\n")?;
        let dead_path = dir.path().join("dead.jsonl");
        let source = |dead_path: &Path| -> Result<FileSource<TsColumn>, BoxError> {
            let dead = DeadLetters::to_file(dead_path, Counter::new("d", "d")?);
            Ok(FileSource::new(
                &input,
                Format::Csv,
                TsColumn::default(),
                dead,
            ))
        };
        let mut first = source(&dead_path)?;
        let mut head = Vec::new();
        first.poll_batch(&mut head, 2)?; // header, a, b (rejected), c
        let position = first.position()?.ok_or("a file is replayable")?;
        let rest_uninterrupted = drain(&mut first)?;
        let dead_uninterrupted = std::fs::read_to_string(&dead_path)?;

        // A restart from `position`: same rows after it, the dead letters after it once.
        let mut resumed = source(&dead_path)?;
        resumed.seek(&position)?;
        assert_eq!(drain(&mut resumed)?, rest_uninterrupted);
        assert_eq!(head, vec![1, 3]);
        assert_eq!(rest_uninterrupted, vec![5]);
        assert_eq!(std::fs::read_to_string(&dead_path)?, dead_uninterrupted);
        assert_eq!(dead_uninterrupted.lines().count(), 2);
        Ok(())
    }

    #[test]
    fn follow_reads_appended_lines_and_waits_for_partial_ones() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"ts\":1,\"key\":\"a\"}\n")?;
        let dead = DeadLetters::to_file(dir.path().join("d"), Counter::new("d", "d")?);
        let mut src =
            FileSource::new(&input, Format::JsonLines, Json::<Ev>::default(), dead).follow(true);
        let mut out = Vec::new();
        assert_eq!(src.poll_batch(&mut out, 10)?, SourceStatus::Idle);
        assert_eq!(out.len(), 1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&input)?;
        f.write_all(b"{\"ts\":2,\"key\":")?;
        f.flush()?;
        assert_eq!(src.poll_batch(&mut out, 10)?, SourceStatus::Idle);
        assert_eq!(out.len(), 1, "a partial line must wait for its line break");
        f.write_all(b"\"b\"}\n")?;
        f.flush()?;
        assert_eq!(src.poll_batch(&mut out, 10)?, SourceStatus::Idle);
        assert_eq!(
            out,
            vec![
                Ev {
                    ts: 1,
                    key: "a".into()
                },
                Ev {
                    ts: 2,
                    key: "b".into()
                }
            ]
        );
        Ok(())
    }

    #[test]
    fn missing_file_names_the_path() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let dead = DeadLetters::to_file(dir.path().join("d"), Counter::new("d", "d")?);
        let mut src = FileSource::new(
            dir.path().join("nope.jsonl"),
            Format::JsonLines,
            Json::<Ev>::default(),
            dead,
        );
        let err = src
            .poll_batch(&mut Vec::new(), 10)
            .expect_err("missing file");
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
        Ok(())
    }
}
