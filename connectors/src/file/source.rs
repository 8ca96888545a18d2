use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Source, SourceStatus};

use super::lines::{Line, LineReader};
use super::splits::{share_out, LineCounter, Range, DEFAULT_SPLIT_BYTES};
use crate::dead_letter::{refuse_old_dead_letters, DeadLetter, Raw};
use crate::error::ConnectorError;
use crate::format::{Decoder, Format, Json};
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames};

/// The longest line a [`FileSource`] decodes unless told otherwise: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// How long a followed file is left alone when it has no new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// Where a reader of a [`FileSource`] stands, as kept in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    /// Version 3: the parts of the file this reader has not read yet (see
    /// [`super::splits`]); the first may be partly read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unread: Option<Vec<Range>>,
    /// Versions 1-2 (one reader): the byte offset just after the last complete line read.
    #[serde(default, skip_serializing)]
    offset: u64,
    /// Versions 1-2: the number of that line (1-based; 0 before the first).
    #[serde(default, skip_serializing)]
    line: u64,
    /// Version 1 only: the length of the dead-letter file the source wrote itself (see
    /// [`refuse_old_dead_letters`]); never written since.
    #[serde(default, skip_serializing)]
    dead_letter_bytes: u64,
    /// The largest event time accepted so far, with [`FileSource::max_future`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest_event_time: Option<i64>,
}

impl FilePosition {
    /// The ranges this reader had not read.
    fn unread(&self) -> Vec<Range> {
        self.unread.clone().unwrap_or_else(|| {
            vec![Range {
                from: self.offset,
                to: None,
                lines_before: Some(self.line),
            }]
        })
    }
}

impl ConnectorStateType for FilePosition {
    const KIND: &'static str = "file source";
    /// 2: without `dead_letter_bytes` (dead letters leave by the source's side output).
    /// 3: the ranges not read (a file read by several readers), instead of one offset.
    const VERSION: u32 = 3;
}

/// Reads a file line by line and decodes each line with a [`Decoder`].
///
/// Lines that fail to decode (or are not UTF-8) are dead letters with their line
/// number; blank lines are skipped. Bounded by default: the source ends at the end of the
/// file. With [`FileSource::follow`] it keeps reading lines appended later, like `tail -f`,
/// and a last line without a line break is only read once it is complete.
///
/// At parallelism > 1 a file that is not followed is read by one reader per worker
/// ([`Source::split`]): it is cut into pieces of [`FileSource::split_bytes`] that the
/// readers take in turn, each finding the lines that start in its pieces (see
/// [`super::splits`]). Each reader has its own watermark, and since every reader reads its
/// pieces in file order and all move through the file together, an input whose disorder
/// is within the job's bound gives the same results at every parallelism.
///
/// Replayable: a reader's position is the byte ranges it has not read yet, and a restore
/// shares out what all readers left among however many readers the new run has.
pub struct FileSource<D: Decoder> {
    follow: bool,
    /// Read by one reader at any parallelism ([`FileSource::in_file_order`]).
    in_file_order: bool,
    /// Longest line decoded; a longer one is a dead letter (its start and length).
    max_line: usize,
    split_bytes: u64,
    /// This reader's number among the readers of the file, and how many there are.
    share: (usize, usize),
    reader: Option<LineReader>,
    lines: LineDecoding<D>,
    /// Before the file is opened: what was left unread by all readers of the restored
    /// checkpoint (`None`: the whole file).
    restored: Option<Vec<Range>>,
    /// This reader's ranges after `current`, in file order.
    queued: VecDeque<Range>,
    /// The range being read; `None` before the file is opened and after the last range.
    current: Option<Range>,
    /// The reader stands at `current.from - 1`, so its first line is not the range's.
    aligning: bool,
    /// The range just finished ended at this byte, where the reader stands: a range
    /// starting there continues without a seek, and with its line numbers.
    continues_at: Option<u64>,
    /// Where the next line starts.
    offset: u64,
}

/// What turns the lines of one file into events: the decoder and where it stands.
struct LineDecoding<D: Decoder> {
    path: PathBuf,
    format: Format,
    decoder: D,
    /// How many lines start before the current range, if known (see [`super::splits`]).
    lines_before: Option<u64>,
    /// Lines of the current range taken so far.
    lines_read: u64,
    counter: LineCounter,
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
            .field("share", &self.share)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<D: Decoder> FileSource<D> {
    /// Reads `path` in `format`, decoding with `decoder`; rejected lines are its dead
    /// letters ([`Source::take_dead_letters`]).
    pub fn new(path: impl Into<PathBuf>, format: Format, decoder: D) -> Self {
        FileSource {
            follow: false,
            in_file_order: false,
            max_line: DEFAULT_MAX_LINE,
            split_bytes: DEFAULT_SPLIT_BYTES,
            share: (0, 1),
            reader: None,
            lines: LineDecoding {
                path: path.into(),
                format,
                decoder,
                lines_before: Some(0),
                lines_read: 0,
                counter: LineCounter::default(),
                header_read: false,
                rejected: Vec::new(),
                future: None,
            },
            restored: None,
            queued: VecDeque::new(),
            current: None,
            aligning: false,
            continues_at: None,
            offset: 0,
        }
    }

    /// Keeps reading appended lines at the end of the file instead of ending. A followed
    /// file is read by one reader.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Reads the file with one reader at any parallelism, so each key's events arrive in
    /// the file's order, for a job whose results follow input order (a running count that
    /// alerts). Readers of pieces deliver one key's events interleaved by timing.
    pub fn in_file_order(mut self) -> Self {
        self.in_file_order = true;
        self
    }

    /// Lines longer than `bytes` (without their break) are not decoded: each is a dead
    /// letter keeping its first bytes and saying its length, and it is never held whole in
    /// memory. Default [`DEFAULT_MAX_LINE`].
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// The size of the pieces several readers take in turn (default
    /// [`super::DEFAULT_SPLIT_BYTES`]); changing it between runs is safe.
    pub fn split_bytes(mut self, bytes: u64) -> Self {
        self.split_bytes = bytes.max(1);
        self
    }

    /// Events whose `time` is more than `max_ahead` ahead of the largest event time
    /// accepted so far by this reader are dead letters (see [`crate::max_future`]).
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

    /// Opens the file and takes this reader's share of what is left to read.
    fn open(&mut self) -> Result<(), BoxError> {
        let path = &self.lines.path;
        let file = File::open(path).map_err(|source| ConnectorError::Open {
            path: path.clone(),
            source,
        })?;
        let len = file.metadata().map_err(|e| self.lines.read_error(e))?.len();
        let unread = self.restored.take().unwrap_or_else(|| vec![Range::WHOLE]);
        if let Some(past) = unread.iter().map(|r| r.from).filter(|&f| f > len).max() {
            return Err(format!(
                "{} has {len} bytes but the checkpoint read up to byte {past}: the input was \
                 replaced or truncated; restore it or start afresh with a new --state-dir",
                path.display(),
            )
            .into());
        }
        let (instance, instances) = self.share;
        self.queued = share_out(unread, len, self.split_bytes, instance, instances).into();
        self.reader = Some(LineReader::new(file, self.max_line));
        let starts_at_the_top = self.queued.front().is_none_or(|r| r.from == 0);
        if self.lines.format == Format::Csv && !starts_at_the_top {
            self.read_header()?;
        }
        self.next_range()?;
        Ok(())
    }

    /// Reads a CSV file's header row from its top: the decoder learns its columns (lines
    /// before it, blank or bad, are passed over again, without dead letters).
    fn read_header(&mut self) -> Result<(), ConnectorError> {
        let reader = self.reader.as_mut().ok_or(ConnectorError::NotOpen)?;
        let mut offset = 0;
        while !self.lines.header_read {
            let read = reader.next_line(true);
            let line = read.map_err(|source| ConnectorError::Read {
                path: self.lines.path.clone(),
                line: 0,
                source,
            })?;
            let Some(line) = line else { break };
            let start = offset;
            offset += line_bytes(&line);
            self.lines.take_line(line, start, &mut Vec::new())?;
        }
        self.lines.rejected.clear();
        self.continues_at = None;
        Ok(())
    }

    /// Moves on to the next range of this reader (none: the reader is done), seeking to it
    /// unless it continues where the reader stands.
    fn next_range(&mut self) -> Result<(), ConnectorError> {
        let carried = self.lines.line_number().filter(|_| self.current.is_some());
        let continues_at = self.continues_at.take();
        self.current = self.queued.pop_front();
        let Some(range) = self.current.as_mut() else {
            return Ok(());
        };
        self.lines.lines_read = 0;
        let reader = self.reader.as_mut().ok_or(ConnectorError::NotOpen)?;
        reader.want_until(range.to);
        if continues_at == Some(range.from) && self.offset >= range.from {
            range.lines_before = range.lines_before.or(carried);
            self.lines.lines_before = range.lines_before;
            return Ok(());
        }
        self.lines.lines_before = range.lines_before;
        let seek_to = range.from.saturating_sub(1);
        self.aligning = range.from > 0;
        let sought = reader.seek(seek_to);
        sought.map_err(|e| self.lines.read_error(e))?;
        self.offset = seek_to;
        Ok(())
    }

    /// The range being read ended at its end (`ended_at`) or the file's (`None`).
    fn finish_range(&mut self, ended_at: Option<u64>) -> Result<(), ConnectorError> {
        self.continues_at = ended_at;
        self.next_range()
    }
}

impl<D: Decoder> FileSource<D> {
    /// The range being read, as a position: from the start of the next line, unless the
    /// reader has not found the range's first line yet.
    fn current_unread(&self) -> Option<Range> {
        let range = self.current?;
        if self.aligning {
            return Some(range);
        }
        Some(Range {
            from: self.offset,
            to: range.to,
            lines_before: self.lines.line_number(),
        })
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

/// The length in bytes of `line` in the file.
fn line_bytes(line: &Line<'_>) -> u64 {
    match line {
        Line::Text(text) => text.len() as u64,
        Line::NotUtf8(bytes, _) => bytes.len() as u64,
        Line::TooLong(long) => long.bytes,
    }
}

impl<D: Decoder> LineDecoding<D> {
    /// The number of the last line taken, if the lines before its range are known.
    fn line_number(&self) -> Option<u64> {
        self.lines_before.map(|before| before + self.lines_read)
    }

    fn read_error(&self, source: std::io::Error) -> ConnectorError {
        ConnectorError::Read {
            path: self.path.clone(),
            line: self.line_number().unwrap_or(0),
            source,
        }
    }

    /// A copy for another reader of the same file, which has read nothing.
    fn for_another_reader(&self) -> Self {
        LineDecoding {
            path: self.path.clone(),
            format: self.format,
            decoder: self.decoder.clone(),
            lines_before: Some(0),
            lines_read: 0,
            counter: LineCounter::default(),
            header_read: false,
            rejected: Vec::new(),
            future: self.future.as_ref().map(MaxFuture::fresh),
        }
    }

    /// Rejects the line starting at byte `start` (the last one taken).
    fn reject(&mut self, start: u64, error: String, raw: Raw) -> Result<(), ConnectorError> {
        let line = match self.line_number() {
            Some(line) => line,
            None => {
                // Counted once per range: the lines after it in the range are numbered.
                let before = self.counter.lines_before(&self.path, start);
                let before = before.map_err(|source| ConnectorError::Read {
                    path: self.path.clone(),
                    line: 0,
                    source,
                })?;
                self.lines_before = Some(before + 1 - self.lines_read);
                before + 1
            }
        };
        self.rejected.push(DeadLetter {
            source: self.path.display().to_string(),
            line,
            error,
            raw,
        });
        Ok(())
    }

    /// Where the line starting at byte `start` (the last one taken) was read: its number,
    /// or its offset while the lines before its range are not counted.
    #[inline]
    fn origin(&self, start: u64) -> Origin {
        match self.lines_before {
            Some(before) => Origin::line(before + self.lines_read),
            None => Origin::file_offset(start),
        }
    }

    /// Decodes the next line (with its line break, if any), which starts at byte `start`,
    /// into `out` or the dead letters.
    fn take_line(
        &mut self,
        line: Line<'_>,
        start: u64,
        out: &mut Vec<D::Item>,
    ) -> Result<(), ConnectorError> {
        self.lines_read += 1;
        let text = match line {
            Line::Text(text) => text.get(..without_break(text.as_bytes())).unwrap_or(text),
            Line::NotUtf8(bytes, e) => {
                return self.reject(
                    start,
                    format!("line is not UTF-8: {e}"),
                    Raw::of(&bytes[..without_break(&bytes)]),
                );
            }
            Line::TooLong(long) => {
                let (raw, kept) = Raw::of_start(&long.start);
                return self.reject(
                    start,
                    format!(
                        "line of {} bytes is longer than the limit (--max-line); its first \
                         {kept} bytes are kept here",
                        long.bytes,
                    ),
                    raw,
                );
            }
        };
        // A byte order mark, which some editors write at the start of a UTF-8 file, is not
        // part of the first record.
        let text = match start {
            0 => text.strip_prefix('\u{feff}').unwrap_or(text),
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
                self.decoder.set_origin(&mut item, self.origin(start));
                if let Some(future) = &mut self.future {
                    if let Err(error) = future.admit(&item) {
                        return self.reject(start, error, Raw::from(text));
                    }
                }
                out.push(item);
                Ok(())
            }
            Err(error) => self.reject(start, error, Raw::from(text)),
        }
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
        let start = out.len();
        let complete = !self.follow;
        loop {
            let Some(range) = self.current else {
                return Ok(SourceStatus::Exhausted);
            };
            let end = range.to.unwrap_or(u64::MAX);
            let reader = self.reader.as_mut().ok_or(ConnectorError::NotOpen)?;
            // Lines of this range, one comparison each to see whether it goes on.
            let ended_at = loop {
                if out.len() - start == max {
                    return Ok(SourceStatus::More);
                }
                if self.offset >= end && !self.aligning {
                    break range.to;
                }
                let read = reader.next_line(complete);
                let Some(line) = read.map_err(|e| self.lines.read_error(e))? else {
                    if complete {
                        break None;
                    }
                    // A partial last line stays in the reader until its writer finishes it.
                    if out.len() == start {
                        // Parked, not asleep: whoever needs this thread before the next
                        // poll (a query on queryable state) unparks it.
                        std::thread::park_timeout(FOLLOW_POLL);
                    }
                    return Ok(SourceStatus::Idle);
                };
                let line_start = self.offset;
                self.offset += line_bytes(&line);
                if self.aligning {
                    // The end of a line of the range before, or the break just before
                    // `from`.
                    self.aligning = false;
                    continue;
                }
                self.lines.take_line(line, line_start, out)?;
            };
            self.finish_range(ended_at)?;
        }
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

    fn split(&self, instance: usize, instances: usize) -> Option<Self> {
        if self.follow || self.in_file_order {
            return None;
        }
        if instances == 1 {
            // Asked whether the file splits at all: a file of one piece (or one that cannot
            // be looked at now) is read by one reader, whatever the parallelism, which keeps
            // small inputs exactly as they were (one watermark, lateness decided by the
            // file alone).
            let len = std::fs::metadata(&self.lines.path).map_or(0, |m| m.len());
            if len <= self.split_bytes {
                return None;
            }
        }
        Some(FileSource {
            follow: false,
            in_file_order: false,
            max_line: self.max_line,
            split_bytes: self.split_bytes,
            share: (instance, instances),
            reader: None,
            lines: self.lines.for_another_reader(),
            restored: None,
            queued: VecDeque::new(),
            current: None,
            aligning: false,
            continues_at: None,
            offset: 0,
        })
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        if self.reader.is_none() {
            // This reader's share is known once the file's length is.
            self.open()?;
        }
        let unread = self.current_unread().into_iter();
        let position = FilePosition {
            unread: Some(unread.chain(self.queued.iter().copied()).collect()),
            offset: 0,
            line: 0,
            dead_letter_bytes: 0,
            highest_event_time: self.lines.future.as_ref().and_then(MaxFuture::highest),
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.seek_shares(std::slice::from_ref(position))
    }

    fn seek_shares(&mut self, positions: &[ConnectorState]) -> Result<(), BoxError> {
        let mut unread = Vec::new();
        let mut highest = None;
        for position in positions {
            let position: FilePosition = position.decode()?;
            refuse_old_dead_letters(FilePosition::KIND, position.dead_letter_bytes)?;
            unread.extend(position.unread());
            highest = highest.max(position.highest_event_time);
        }
        if let Some(future) = &mut self.lines.future {
            future.resume(highest);
        }
        self.restored = Some(unread);
        self.reader = None;
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
    #[derive(Default, Clone)]
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

    /// 60 lines of different lengths: events, blank lines, bad JSON and a line that is
    /// not UTF-8, the first with a byte order mark.
    fn mixed_lines(dir: &Path) -> Result<PathBuf, BoxError> {
        let path = dir.join("mixed.jsonl");
        let mut content = b"\xef\xbb\xbf".to_vec();
        for i in 1..=60 {
            let line = match i % 11 {
                3 => String::new(),
                5 => format!("not json {}", "x".repeat(i % 7)),
                _ => format!("{{\"ts\":{i},\"key\":\"{}\"}}", "k".repeat(1 + i % 5)),
            };
            content.extend_from_slice(line.as_bytes());
            content.extend_from_slice(if i % 4 == 0 { b"\r\n" } else { b"\n" });
            if i == 40 {
                content.extend_from_slice(b"\xff\xfe\n");
            }
        }
        std::fs::write(&path, content)?;
        Ok(path)
    }

    /// The line and raw text of the dead letters `reader` has not handed over yet.
    fn lines_and_raw(reader: &mut FileSource<Json<Ev>>) -> Vec<(u64, Raw)> {
        letters(reader)
            .into_iter()
            .map(|l| (l.line, l.raw))
            .collect()
    }

    /// Events, and dead letters by line and raw text.
    type ReadBy = (Vec<Ev>, Vec<(u64, Raw)>);

    /// What readers `0..instances` of `path` read: events by time, dead letters by line.
    fn read_by(readers: Vec<FileSource<Json<Ev>>>) -> Result<ReadBy, BoxError> {
        let (mut events, mut dead) = (Vec::new(), Vec::new());
        for mut reader in readers {
            events.extend(drain(&mut reader)?);
            dead.extend(lines_and_raw(&mut reader));
        }
        events.sort_by_key(|e| e.ts);
        dead.sort_by_key(|(line, _)| *line);
        Ok((events, dead))
    }

    /// Readers `0..instances` of `path` cut every `split_bytes`; one reader is the source
    /// itself.
    fn readers(path: &Path, split_bytes: u64, instances: usize) -> Vec<FileSource<Json<Ev>>> {
        let whole = FileSource::new(path, Format::JsonLines, Json::<Ev>::default())
            .split_bytes(split_bytes);
        if instances == 1 {
            return vec![whole];
        }
        (0..instances)
            .map(|i| whole.split(i, instances).expect("a file splits"))
            .collect()
    }

    #[test]
    fn readers_of_pieces_read_every_line_once_with_its_true_line_number() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let path = mixed_lines(dir.path())?;
        let (events, dead) = read_by(readers(&path, u64::MAX, 1))?;
        assert_eq!(events.len(), 48, "{events:?}");
        let lines: Vec<u64> = dead.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [5, 16, 27, 38, 41, 50, 61], "41 is not UTF-8");
        // Pieces cut inside lines, at line breaks, and smaller than a line.
        for (split_bytes, instances) in [(7, 2), (23, 3), (64, 2), (1, 4), (500, 5)] {
            let split = read_by(readers(&path, split_bytes, instances))?;
            assert_eq!(
                split,
                (events.clone(), dead.clone()),
                "{split_bytes} x {instances}"
            );
        }
        Ok(())
    }

    #[test]
    fn what_readers_left_at_a_checkpoint_is_read_once_by_any_number_of_readers(
    ) -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let path = mixed_lines(dir.path())?;
        let whole = read_by(readers(&path, u64::MAX, 1))?;
        for (before, after) in [(2, 3), (3, 1), (1, 2), (2, 2)] {
            // The first run's readers read a few batches each, then a checkpoint is taken.
            let mut first = readers(&path, 40, before);
            let mut read = Vec::new();
            let mut positions = Vec::new();
            for (i, reader) in first.iter_mut().enumerate() {
                for _ in 0..=i {
                    reader.poll_batch(&mut read, 3)?;
                }
                positions.push(reader.position()?.ok_or("a file is replayable")?);
            }
            let dead_before: Vec<(u64, Raw)> = first.iter_mut().flat_map(lines_and_raw).collect();
            let mut resumed = readers(&path, 40, after);
            for reader in &mut resumed {
                reader.seek_shares(&positions)?;
            }
            let (rest, mut dead) = read_by(resumed)?;
            read.extend(rest);
            read.sort_by_key(|e| e.ts);
            dead.extend(dead_before);
            dead.sort_by_key(|(line, _)| *line);
            assert_eq!((read, dead), whole, "{before} readers, then {after}");
        }
        Ok(())
    }

    #[test]
    fn readers_of_later_pieces_of_a_csv_file_learn_its_header() -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.csv");
        let rows: String = (1..=30).map(|i| format!("k{i},{i}\n")).collect();
        std::fs::write(&input, format!("key,ts\n{rows}"))?;
        let whole = FileSource::new(&input, Format::Csv, TsColumn::default()).split_bytes(16);
        let mut times = Vec::new();
        for i in 0..3 {
            let mut reader = whole.split(i, 3).ok_or("a file splits")?;
            times.extend(drain(&mut reader)?);
            assert_eq!(letters(&mut reader), Vec::new());
        }
        times.sort();
        assert_eq!(times, (1..=30).collect::<Vec<i64>>());
        Ok(())
    }

    #[test]
    fn a_followed_file_one_in_file_order_and_a_file_of_one_piece_are_not_split(
    ) -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let path = mixed_lines(dir.path())?;
        let source = || FileSource::new(&path, Format::JsonLines, Json::<Ev>::default());
        assert!(source().split_bytes(100).split(0, 1).is_some());
        assert!(source().split_bytes(100).follow(true).split(0, 2).is_none());
        assert!(source()
            .split_bytes(100)
            .in_file_order()
            .split(0, 1)
            .is_none());
        assert!(source()
            .split_bytes(100)
            .in_file_order()
            .split(0, 2)
            .is_none());
        let one_piece = source().split_bytes(1 << 20);
        assert!(
            one_piece.split(0, 1).is_none(),
            "asked whether it splits at all"
        );
        Ok(())
    }

    #[test]
    fn a_position_of_one_reader_before_version_3_resumes_with_its_line_numbers(
    ) -> Result<(), BoxError> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"ts\":1,\"key\":\"a\"}\nbad\n{\"ts\":3,\"key\":\"c\"}\nworse\n",
        )?;
        let state = serde_json::json!({
            "kind": "file source",
            "version": 2,
            "state": {"offset": 19, "line": 1},
        });
        let position: ConnectorState = serde_json::from_value(state)?;
        for instances in [1, 2] {
            let mut read = Vec::new();
            let mut dead = Vec::new();
            for mut reader in readers(&input, 8, instances) {
                reader.seek_shares(std::slice::from_ref(&position))?;
                read.extend(drain(&mut reader)?);
                dead.extend(lines_and_raw(&mut reader).into_iter().map(|(line, _)| line));
            }
            dead.sort();
            assert_eq!(read.iter().map(|e| e.ts).collect::<Vec<_>>(), [3]);
            assert_eq!(dead, [2, 4], "{instances} readers");
        }
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
