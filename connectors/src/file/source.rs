use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Source, SourceStatus};

use super::lines::{Line, LineReader};
use crate::dead_letter::{DeadLetter, DeadLetters, Raw};
use crate::error::ConnectorError;
use crate::format::{Decoder, Format};
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames};

/// The longest line a [`FileSource`] decodes unless told otherwise: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// How long a followed file is left alone when it has no new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// Where a [`FileSource`] stands, as kept in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    /// Byte offset just after the last complete line read.
    offset: u64,
    /// Number of that line (1-based; 0 before the first).
    line: u64,
    /// Length of the dead-letter file at this point.
    dead_letter_bytes: u64,
    /// The largest event time accepted so far, with [`FileSource::max_future`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest_event_time: Option<i64>,
}

impl ConnectorStateType for FilePosition {
    const KIND: &'static str = "file source";
    const VERSION: u32 = 1;
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
pub struct FileSource<D: Decoder> {
    dead_letters: DeadLetters,
    follow: bool,
    /// Longest line decoded; a longer one is a dead letter (its start and length).
    max_line: usize,
    reader: Option<LineReader>,
    lines: LineDecoding<D>,
    offset: u64,
}

/// What turns the lines of one file into events: the decoder and where it stands.
struct LineDecoding<D: Decoder> {
    path: PathBuf,
    format: Format,
    decoder: D,
    line_number: u64,
    header_read: bool,
    rejected: Vec<DeadLetter>,
    /// Refuses events too far ahead of the file's time (`--max-future`).
    future: Option<MaxFuture<D::Item>>,
}

impl<D: Decoder> std::fmt::Debug for FileSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.lines.path)
            .field("format", &self.lines.format)
            .field("line_number", &self.lines.line_number)
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
            dead_letters,
            follow: false,
            max_line: DEFAULT_MAX_LINE,
            reader: None,
            lines: LineDecoding {
                path: path.into(),
                format,
                decoder,
                line_number: 0,
                header_read: false,
                rejected: Vec::new(),
                future: None,
            },
            offset: 0,
        }
    }

    /// Keeps reading appended lines at the end of the file instead of ending.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Lines longer than `bytes` (without their break) are not decoded: each is a dead
    /// letter keeping its first bytes and saying its length, and it is never held whole in
    /// memory. Default [`DEFAULT_MAX_LINE`].
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// Events whose `time` is more than `max_ahead` ahead of the largest event time
    /// accepted so far from this file are dead letters (see [`crate::max_future`]).
    /// `None` (the default): every event is accepted.
    pub fn max_future(mut self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        self.lines.future = max_ahead.map(|max_ahead| MaxFuture::new(time, max_ahead));
        self
    }

    /// The words for the origins this source gives its events (their line numbers,
    /// through [`Decoder::set_origin`]).
    pub fn origin_names(&self) -> OriginNames {
        OriginNames::file(&self.lines.path)
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.lines.path
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
        let file = File::open(&self.lines.path).map_err(|source| ConnectorError::Open {
            path: self.lines.path.clone(),
            source,
        })?;
        self.reader = Some(LineReader::new(file, self.max_line));
        Ok(())
    }
}

impl<D: Decoder> LineDecoding<D> {
    fn reject(&mut self, error: String, raw: Raw) {
        self.rejected.push(DeadLetter {
            source: self.path.display().to_string(),
            line: self.line_number,
            error,
            raw,
        });
    }

    /// Decodes the next line (with its line break, if any) into `out` or the dead letters.
    fn take_line(&mut self, line: Line<'_>, out: &mut Vec<D::Item>) -> Result<(), ConnectorError> {
        self.line_number += 1;
        let text = match line {
            Line::Text(text) => text.get(..without_break(text.as_bytes())).unwrap_or(text),
            Line::NotUtf8(bytes, e) => {
                self.reject(
                    format!("line is not UTF-8: {e}"),
                    Raw::of(&bytes[..without_break(&bytes)]),
                );
                return Ok(());
            }
            Line::TooLong(long) => {
                let (raw, kept) = Raw::of_start(&long.start);
                self.reject(
                    format!(
                        "line of {} bytes is longer than the limit (--max-line); its first \
                         {kept} bytes are kept here",
                        long.bytes,
                    ),
                    raw,
                );
                return Ok(());
            }
        };
        // A byte order mark, which some editors write at the start of a UTF-8 file, is not
        // part of the first record.
        let text = match self.line_number {
            1 => text.strip_prefix('\u{feff}').unwrap_or(text),
            _ => text,
        };
        // Stops at the first character that is not white space (the first, in JSON).
        if text.chars().all(char::is_whitespace) {
            return Ok(());
        }
        if self.format == Format::Csv && !self.header_read {
            self.header_read = true;
            return self
                .decoder
                .header(text)
                .map_err(|message| ConnectorError::Header {
                    path: self.path.clone(),
                    message,
                });
        }
        match self.decoder.decode(text) {
            Ok(mut item) => {
                self.decoder
                    .set_origin(&mut item, Origin::line(self.line_number));
                if let Some(future) = &mut self.future {
                    if let Err(error) = future.admit(&item) {
                        self.reject(error, Raw::from(text));
                        return Ok(());
                    }
                }
                out.push(item)
            }
            Err(error) => self.reject(error, Raw::from(text)),
        }
        Ok(())
    }
}

/// The length of `line` without its line break (`\n`, `\r\n` or more of them).
fn without_break(line: &[u8]) -> usize {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
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
            let read = reader
                .next_line(!self.follow)
                .map_err(|source| ConnectorError::Read {
                    path: self.lines.path.clone(),
                    line: self.lines.line_number,
                    source,
                })?;
            let Some(line) = read else {
                if self.follow {
                    // A partial last line stays in the reader until its writer finishes it.
                    if out.len() == start {
                        // Parked, not asleep: whoever needs this thread before the next
                        // poll (a query on queryable state) unparks it.
                        std::thread::park_timeout(FOLLOW_POLL);
                    }
                    status = SourceStatus::Idle;
                } else {
                    status = SourceStatus::Exhausted;
                }
                break;
            };
            self.offset += match &line {
                Line::Text(text) => text.len() as u64,
                Line::NotUtf8(bytes, _) => bytes.len() as u64,
                Line::TooLong(long) => long.bytes,
            };
            self.lines.take_line(line, out)?;
        }
        if !self.lines.rejected.is_empty() {
            self.dead_letters.write(&self.lines.rejected)?;
            self.lines.rejected.clear();
        }
        Ok(status)
    }

    fn describe(&self) -> String {
        let mode = if self.follow { ", follow" } else { "" };
        format!(
            "file {} ({:?}{mode})",
            self.lines.path.display(),
            self.lines.format
        )
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        let position = FilePosition {
            offset: self.offset,
            line: self.lines.line_number,
            dead_letter_bytes: self.dead_letters.position(),
            highest_event_time: self.lines.future.as_ref().and_then(MaxFuture::highest),
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let position: FilePosition = position.decode()?;
        // Not `open`: that would truncate the dead-letter file, which resumes instead.
        self.dead_letters.resume_at(position.dead_letter_bytes)?;
        let path = self.lines.path.clone();
        let read_err = |source| ConnectorError::Read {
            path: path.clone(),
            line: position.line,
            source,
        };
        self.open_reader()?;
        let reader = self.reader.as_mut().ok_or("the file was just opened")?;
        let len = reader.file_mut().metadata().map_err(read_err)?.len();
        if position.offset > len {
            return Err(format!(
                "{} has {len} bytes but the checkpoint read up to byte {}: the input was \
                 replaced or truncated; restore it or start afresh with a new --state-dir",
                path.display(),
                position.offset
            )
            .into());
        }
        if self.lines.format == Format::Csv && position.offset > 0 {
            // The decoder learns its columns from the header row again.
            // Lines before the header (blank, or rejected then) are passed over again.
            self.lines.header_read = false;
            while !self.lines.header_read {
                let Some(line) = reader.next_line(true).map_err(read_err)? else {
                    break;
                };
                self.lines.take_line(line, &mut Vec::new())?;
            }
            self.lines.rejected.clear();
        }
        let reader = self.reader.as_mut().ok_or("the file was just opened")?;
        reader
            .file_mut()
            .seek(SeekFrom::Start(position.offset))
            .map_err(read_err)?;
        self.offset = position.offset;
        self.lines.line_number = position.line;
        if let Some(future) = &mut self.lines.future {
            future.resume(position.highest_event_time);
        }
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
        assert_eq!(letters[0].raw, Raw::from("not json"));
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
    fn max_future_refuses_a_far_event_and_a_resumed_source_still_does() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        // The first row is accepted whatever its time; 99999 is more than 100 ahead of 3.
        std::fs::write(&input, "key,ts\na,1\nb,3\nc,99999\nd,103\ne,99999\nf,2\n")?;
        let dead_path = dir.path().join("dead.jsonl");
        let source = || -> Result<FileSource<TsColumn>, BoxError> {
            let dead = DeadLetters::to_file(&dead_path, Counter::new("d", "d")?);
            Ok(
                FileSource::new(&input, Format::Csv, TsColumn::default(), dead)
                    .max_future(|ts| *ts, Some(Duration::from_millis(100))),
            )
        };
        let mut first = source()?;
        let mut head = Vec::new();
        first.poll_batch(&mut head, 2)?; // header, a, b
        let position = first.position()?.ok_or("a file is replayable")?;
        let rest = drain(&mut first)?;
        assert_eq!((head, rest.clone()), (vec![1, 3], vec![103, 2]));
        let dead = std::fs::read_to_string(&dead_path)?;
        let lines: Vec<serde_json::Value> = dead
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 2, "{dead}");
        assert_eq!(lines[0]["line"], 4);
        assert_eq!(lines[0]["raw"], "c,99999");
        assert!(
            lines[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("--max-future")),
            "{dead}"
        );

        let mut resumed = source()?;
        resumed.seek(&position)?;
        assert_eq!(
            drain(&mut resumed)?,
            rest,
            "the reference came back with the position"
        );
        assert_eq!(std::fs::read_to_string(&dead_path)?, dead);
        Ok(())
    }

    #[test]
    fn seek_finds_a_header_after_blank_and_bad_lines() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        std::fs::write(&input, b"\n\xff\nkey,ts\na,1\nb,2\n")?;
        let dead_path = dir.path().join("dead.jsonl");
        let source = || -> Result<FileSource<TsColumn>, BoxError> {
            let dead = DeadLetters::to_file(&dead_path, Counter::new("d", "d")?);
            Ok(FileSource::new(
                &input,
                Format::Csv,
                TsColumn::default(),
                dead,
            ))
        };
        let mut first = source()?;
        let mut head = Vec::new();
        first.poll_batch(&mut head, 1)?;
        assert_eq!(head, vec![1]);
        let position = first.position()?.ok_or("a file is replayable")?;
        let mut resumed = source()?;
        resumed.seek(&position)?;
        assert_eq!(drain(&mut resumed)?, vec![2]);
        // The bad second line was a dead letter once, before the position.
        assert_eq!(std::fs::read_to_string(&dead_path)?.lines().count(), 1);
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
