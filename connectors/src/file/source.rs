use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Source, SourceStatus};

use super::lines::{Line, LineReader};
use crate::dead_letter::{refuse_old_dead_letters, DeadLetter, Raw};
use crate::error::ConnectorError;
use crate::format::{Decoder, Format, Json};
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
    /// Version 1 only: the length of the dead-letter file the source wrote itself (see
    /// [`refuse_old_dead_letters`]); never written since.
    #[serde(default, skip_serializing)]
    dead_letter_bytes: u64,
    /// The largest event time accepted so far, with [`FileSource::max_future`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest_event_time: Option<i64>,
}

impl ConnectorStateType for FilePosition {
    const KIND: &'static str = "file source";
    /// 2: without `dead_letter_bytes` (dead letters leave by the source's side output).
    const VERSION: u32 = 2;
}

/// Reads a file line by line and decodes each line with a [`Decoder`].
///
/// Lines that fail to decode (or are not UTF-8) are dead letters with their line
/// number; blank lines are skipped. Bounded by default: the source ends at the end of the
/// file. With [`FileSource::follow`] it keeps reading lines appended later, like `tail -f`,
/// and a last line without a line break is only read once it is complete.
///
/// Replayable: its position is the byte offset after the last line it returned, and
/// [`Source::seek`] continues from such a position.
pub struct FileSource<D: Decoder> {
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
    /// Reads `path` in `format`, decoding with `decoder`; rejected lines are its dead
    /// letters ([`Source::take_dead_letters`]).
    pub fn new(path: impl Into<PathBuf>, format: Format, decoder: D) -> Self {
        FileSource {
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

    fn open_reader(&mut self) -> Result<(), ConnectorError> {
        let file = File::open(&self.lines.path).map_err(|source| ConnectorError::Open {
            path: self.lines.path.clone(),
            source,
        })?;
        self.reader = Some(LineReader::new(file, self.max_line));
        Ok(())
    }
}

impl<T: serde::de::DeserializeOwned + weir_engine::Data> FileSource<Json<T>> {
    /// A file read into any `serde` type in one line: JSON lines, or CSV by its header's
    /// column names if the path ends in `.csv` (`FileSource::<Json<T>>::json(path)`, or
    /// `FileSource::json(path)` where the stream's type says `T`).
    pub fn json(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let format = Format::from_path(&path);
        FileSource::new(path, format, Json::default())
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
            self.open_reader()?;
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
        Ok(status)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        out.append(&mut self.lines.rejected);
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
            dead_letter_bytes: 0,
            highest_event_time: self.lines.future.as_ref().and_then(MaxFuture::highest),
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let position: FilePosition = position.decode()?;
        refuse_old_dead_letters(FilePosition::KIND, position.dead_letter_bytes)?;
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

    /// The dead letters `src` has not handed over yet.
    fn letters<D: Decoder>(src: &mut FileSource<D>) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        src.take_dead_letters(&mut letters);
        letters
    }

    #[test]
    fn malformed_lines_go_to_dead_letters_with_line_numbers() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"ts\":1,\"key\":\"a\"}\nnot json\n\n{\"ts\":2}\n{\"ts\":3,\"key\":\"b\"}",
        )?;
        let mut src = FileSource::new(&input, Format::JsonLines, Json::<Ev>::default());
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
        let letters = letters(&mut src);
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
        let source = || FileSource::new(&input, Format::Csv, TsColumn::default());
        let mut first = source();
        let mut head = Vec::new();
        first.poll_batch(&mut head, 2)?; // header, a, b (rejected), c
        let position = first.position()?.ok_or("a file is replayable")?;
        let dead_before = letters(&mut first);
        let rest_uninterrupted = drain(&mut first)?;
        let dead_after = letters(&mut first);

        // A restart from `position`: same rows and dead letters after it.
        let mut resumed = source();
        resumed.seek(&position)?;
        assert_eq!(drain(&mut resumed)?, rest_uninterrupted);
        assert_eq!(letters(&mut resumed), dead_after);
        assert_eq!(head, vec![1, 3]);
        assert_eq!(rest_uninterrupted, vec![5]);
        let lines = |letters: &[DeadLetter]| letters.iter().map(|l| l.line).collect::<Vec<_>>();
        assert_eq!(
            (lines(&dead_before), lines(&dead_after)),
            (vec![3], vec![5])
        );
        Ok(())
    }

    #[test]
    fn max_future_refuses_a_far_event_and_a_resumed_source_still_does() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        // The first row is accepted whatever its time; 99999 is more than 100 ahead of 3.
        std::fs::write(&input, "key,ts\na,1\nb,3\nc,99999\nd,103\ne,99999\nf,2\n")?;
        let source = || {
            FileSource::new(&input, Format::Csv, TsColumn::default())
                .max_future(|ts| *ts, Some(Duration::from_millis(100)))
        };
        let mut first = source();
        let mut head = Vec::new();
        first.poll_batch(&mut head, 2)?; // header, a, b
        let position = first.position()?.ok_or("a file is replayable")?;
        let rest = drain(&mut first)?;
        assert_eq!((head, rest.clone()), (vec![1, 3], vec![103, 2]));
        let dead = letters(&mut first);
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[0].line, 4);
        assert_eq!(dead[0].raw, Raw::from("c,99999"));
        assert!(dead[0].error.contains("--max-future"), "{dead:?}");

        let mut resumed = source();
        resumed.seek(&position)?;
        assert_eq!(
            drain(&mut resumed)?,
            rest,
            "the reference came back with the position"
        );
        assert_eq!(letters(&mut resumed), dead);
        Ok(())
    }

    #[test]
    fn seek_finds_a_header_after_blank_and_bad_lines() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        std::fs::write(&input, b"\n\xff\nkey,ts\na,1\nb,2\n")?;
        let source = || FileSource::new(&input, Format::Csv, TsColumn::default());
        let mut first = source();
        let mut head = Vec::new();
        first.poll_batch(&mut head, 1)?;
        assert_eq!(head, vec![1]);
        // The bad second line was a dead letter once, before the position.
        assert_eq!(letters(&mut first).len(), 1);
        let position = first.position()?.ok_or("a file is replayable")?;
        let mut resumed = source();
        resumed.seek(&position)?;
        assert_eq!(drain(&mut resumed)?, vec![2]);
        assert_eq!(letters(&mut resumed), Vec::new());
        Ok(())
    }

    #[test]
    fn follow_reads_appended_lines_and_waits_for_partial_ones() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"ts\":1,\"key\":\"a\"}\n")?;
        let mut src =
            FileSource::new(&input, Format::JsonLines, Json::<Ev>::default()).follow(true);
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
        let mut src = FileSource::new(
            dir.path().join("nope.jsonl"),
            Format::JsonLines,
            Json::<Ev>::default(),
        );
        let err = src
            .poll_batch(&mut Vec::new(), 10)
            .expect_err("missing file");
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
        Ok(())
    }

    #[test]
    fn a_position_of_the_release_that_wrote_dead_letters_itself_loads_only_without_any() {
        let old = |bytes: u64| {
            let state = serde_json::json!({
                "kind": "file source",
                "version": 1,
                "state": {"offset": 0, "line": 0, "dead_letter_bytes": bytes},
            });
            serde_json::from_value::<ConnectorState>(state).expect("a connector state")
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"ts\":1,\"key\":\"a\"}\n").expect("input written");
        let source = || FileSource::new(&input, Format::JsonLines, Json::<Ev>::default());
        assert!(source().seek(&old(0)).is_ok());
        let refused = source()
            .seek(&old(57))
            .expect_err("57 bytes of dead letters");
        assert!(
            refused.to_string().contains("57 bytes of dead letters"),
            "{refused}"
        );
    }
}
