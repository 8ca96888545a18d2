//! Lines of a file read in large chunks and handed out in place.
//!
//! A chunk of complete lines is checked for UTF-8 once, as a whole, and becomes a `String`
//! without a copy; each line is then a slice of it. Only the part of a line that a read cut
//! off is copied, to the front of the next chunk. A chunk that is not UTF-8 is cut before
//! its first bad line; that line and the rest of the chunk are checked line by line.
//!
//! A line longer than the reader's limit is never held whole: its first bytes are kept
//! and the rest is read past in chunk-sized pieces ([`Line::TooLong`]), so memory stays
//! bounded whatever the file holds.
//!
//! # Invariants
//! - `chunk[at..]` is a sequence of lines each ending in `\n`, except the last line of a
//!   file without a final line break, handed out only when the reader is told the file is
//!   complete.
//! - Lines come from `chunk`, then `unchecked`, then `rest`: the bytes read after them and
//!   not checked yet, in file order.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::dead_letter::KEPT_OF_LONG_LINE;

/// Bytes asked of the file per read.
const CHUNK: usize = 256 * 1024;
/// The least asked of the file per read when the reader knows where the lines it wants end
/// ([`LineReader::want_until`]): enough for the line that crosses that point.
const MIN_READ: usize = 4 * 1024;
/// Alignment of the address the file is read to (a cache line).
const ALIGN: usize = 64;

/// One line of the file, with its line break if it has one.
#[derive(Debug)]
pub(super) enum Line<'a> {
    /// A UTF-8 line.
    Text(&'a str),
    /// A line that is not UTF-8, and why.
    NotUtf8(Vec<u8>, std::str::Utf8Error),
    /// A line longer than the limit: its first bytes, and its length with its break.
    TooLong(LongLine),
}

/// What is kept of a line longer than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LongLine {
    /// Its first [`KEPT_OF_LONG_LINE`] bytes.
    pub(super) start: Vec<u8>,
    /// Its length in bytes, line break included.
    pub(super) bytes: u64,
}

impl LongLine {
    fn of(line: &[u8], bytes: u64) -> Self {
        LongLine {
            start: line[..KEPT_OF_LONG_LINE.min(line.len())].to_vec(),
            bytes,
        }
    }
}

/// Reads the lines of a file through a chunk buffer (see the module docs).
#[derive(Debug)]
pub(super) struct LineReader {
    file: File,
    chunk: String,
    at: usize,
    /// Whole lines after a chunk's first line that is not UTF-8, checked one by one from
    /// `unchecked_at` (a chunk with one bad line is not checked again as a whole).
    unchecked: Vec<u8>,
    unchecked_at: usize,
    rest: Vec<u8>,
    /// Longest line (without its break) handed out whole.
    max_line: usize,
    /// An over-long line being read past (its end not read yet).
    skipping: Option<LongLine>,
    /// An over-long line read to its end, handed out before anything else.
    skipped: Option<LongLine>,
    /// The file offset after the bytes read so far.
    position: u64,
    /// Lines starting at or after this offset are not wanted (a reader of a piece of the
    /// file): reads ask for no more than it takes to get there.
    wanted_end: Option<u64>,
}

impl LineReader {
    /// Reads `file` from where it stands; lines longer than `max_line` bytes (without
    /// their break) come as [`Line::TooLong`].
    pub(super) fn new(file: File, max_line: usize) -> Self {
        LineReader {
            file,
            chunk: String::new(),
            at: 0,
            unchecked: Vec::new(),
            unchecked_at: 0,
            rest: Vec::new(),
            max_line,
            skipping: None,
            skipped: None,
            position: 0,
            wanted_end: None,
        }
    }

    /// Continues at byte `offset` of the file, dropping buffered lines.
    pub(super) fn seek(&mut self, offset: u64) -> io::Result<()> {
        self.chunk.clear();
        self.at = 0;
        self.unchecked.clear();
        self.unchecked_at = 0;
        self.rest.clear();
        self.skipping = None;
        self.skipped = None;
        self.position = self.file.seek(SeekFrom::Start(offset))?;
        Ok(())
    }

    /// Lines starting at or after byte `end` are not wanted (`None`: all are), so reads
    /// stop short of a chunk near it: a reader of a small piece of a large file does not
    /// read a chunk past the piece's end each time.
    pub(super) fn want_until(&mut self, end: Option<u64>) {
        self.wanted_end = end;
    }

    /// How many bytes the next read asks for.
    fn read_size(&self) -> usize {
        match self.wanted_end {
            None => CHUNK,
            Some(end) => usize::try_from(end.saturating_sub(self.position))
                .unwrap_or(CHUNK)
                .clamp(MIN_READ, CHUNK),
        }
    }

    /// `line` (with its break, if any), or what is kept of it if it is over-long.
    fn limited<'a>(&self, line: &'a [u8]) -> Result<&'a [u8], LongLine> {
        let content = line.len() - usize::from(line.last() == Some(&b'\n'));
        if content > self.max_line {
            return Err(LongLine::of(line, line.len() as u64));
        }
        Ok(line)
    }

    /// The next line, or `None` if the file has no complete line now. With `complete`, the
    /// file has ended for good and a last line without a line break is a line too; without,
    /// it waits for its line break (the file is being written).
    pub(super) fn next_line(&mut self, complete: bool) -> io::Result<Option<Line<'_>>> {
        while self.at == self.chunk.len() && self.unchecked_at == self.unchecked.len() {
            // An over-long line just read past comes before the lines after it (a skip
            // leaves the chunk empty).
            if let Some(long) = self.skipped.take() {
                return Ok(Some(Line::TooLong(long)));
            }
            if !self.refill(complete)? {
                return Ok(None);
            }
        }
        if self.at < self.chunk.len() {
            let ahead = &self.chunk.as_bytes()[self.at..];
            let len = memchr::memchr(b'\n', ahead).map_or(ahead.len(), |i| i + 1);
            let start = self.at;
            self.at += len;
            // The common case costs one comparison per line.
            if len > self.max_line {
                if let Err(long) = self.limited(&self.chunk.as_bytes()[start..start + len]) {
                    return Ok(Some(Line::TooLong(long)));
                }
            }
            return Ok(Some(Line::Text(&self.chunk[start..start + len])));
        }
        let ahead = &self.unchecked[self.unchecked_at..];
        let len = memchr::memchr(b'\n', ahead).map_or(ahead.len(), |i| i + 1);
        let start = self.unchecked_at;
        self.unchecked_at += len;
        let bytes = match self.limited(&self.unchecked[start..start + len]) {
            Ok(bytes) => bytes,
            Err(long) => return Ok(Some(Line::TooLong(long))),
        };
        Ok(Some(match std::str::from_utf8(bytes) {
            Ok(text) => Line::Text(text),
            Err(e) => Line::NotUtf8(bytes.to_vec(), e),
        }))
    }

    /// Reads past the rest of the over-long line in `skipping`, through `buffer` (a chunk's
    /// allocation, used from `pad`): true once its break came (it is then in `skipped`,
    /// and what follows it in `rest`) or the complete file ended; false if the file has
    /// nothing more now (the skip goes on at the next refill).
    fn skip(&mut self, mut buffer: Vec<u8>, pad: usize, complete: bool) -> io::Result<bool> {
        loop {
            buffer.resize(pad + CHUNK, 0);
            let read = loop {
                match self.file.read(&mut buffer[pad..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.position += read as u64;
            let Some(long) = self.skipping.as_mut() else {
                return Ok(false);
            };
            let got = &buffer[pad..pad + read];
            if let Some(end) = memchr::memchr(b'\n', got) {
                long.bytes += end as u64 + 1;
                self.rest.extend_from_slice(&got[end + 1..]);
                self.skipped = self.skipping.take();
                return Ok(true);
            }
            long.bytes += read as u64;
            if read == 0 {
                if complete {
                    // The file's last line, without a break.
                    self.skipped = self.skipping.take();
                }
                return Ok(complete);
            }
        }
    }

    /// Reads until `chunk` (or `unchecked`) holds at least one line; false if the file has
    /// none.
    fn refill(&mut self, complete: bool) -> io::Result<bool> {
        // The chunk's allocation is reused, `rest` goes to its front, and spaces before it
        // put the read's destination on a cache line: the kernel copies to an unaligned
        // address about three times slower (5-6 % of the JSONL window job, against 1.6 %).
        let mut bytes = std::mem::take(&mut self.chunk).into_bytes();
        bytes.clear();
        self.at = 0;
        let carried = self.rest.len();
        bytes.reserve(ALIGN + carried + CHUNK);
        let pad = (ALIGN - (bytes.as_ptr() as usize + carried) % ALIGN) % ALIGN;
        bytes.resize(pad, b' ');
        if self.skipping.is_some() {
            return self.skip(bytes, pad, complete);
        }
        bytes.append(&mut self.rest);
        let mut unsearched = pad;
        loop {
            if let Some(end) = memchr::memrchr(b'\n', &bytes[unsearched..]) {
                let end = unsearched + end + 1;
                self.rest.extend_from_slice(&bytes[end..]);
                bytes.truncate(end);
                return Ok(self.check(bytes, pad));
            }
            let len = bytes.len();
            if len - pad > self.max_line {
                // Past the limit without a break: keep its start, read past the rest.
                self.skipping = Some(LongLine::of(&bytes[pad..], (len - pad) as u64));
                bytes.truncate(pad);
                return self.skip(bytes, pad, complete);
            }
            unsearched = len;
            bytes.resize(len + self.read_size(), 0);
            let read = loop {
                match self.file.read(&mut bytes[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    bytes.truncate(len);
                    bytes.drain(..pad);
                    self.rest = bytes;
                    return Err(e);
                }
            };
            bytes.truncate(len + read);
            self.position += read as u64;
            if read == 0 {
                if len == pad || !complete {
                    // Nothing more now: what was read waits in `rest`.
                    bytes.drain(..pad);
                    self.rest = bytes;
                    return Ok(false);
                }
                // The last line, without a line break.
                return Ok(self.check(bytes, pad));
            }
        }
    }

    /// Makes `bytes[from..]` (whole lines) the chunk, or the part before its first line
    /// that is not UTF-8, that line and the ones after it going to `unchecked`.
    fn check(&mut self, bytes: Vec<u8>, from: usize) -> bool {
        let error = match String::from_utf8(bytes) {
            Ok(text) => {
                self.chunk = text;
                self.at = from;
                return true;
            }
            Err(error) => error,
        };
        let valid = error.utf8_error().valid_up_to();
        let mut bytes = error.into_bytes();
        let bad_start = memchr::memrchr(b'\n', &bytes[from..valid]).map_or(from, |i| from + i + 1);
        self.unchecked = bytes.split_off(bad_start);
        self.unchecked_at = 0;
        if let Ok(text) = String::from_utf8(bytes) {
            // Cannot fail: the bytes end before the first invalid one.
            self.chunk = text;
            self.at = from;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines_of(content: &[u8]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        lines_within(content, usize::MAX)
    }

    /// The lines of a file of `content` read with a limit of `max_line` bytes.
    fn lines_within(
        content: &[u8],
        max_line: usize,
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, content)?;
        let mut reader = LineReader::new(File::open(&path)?, max_line);
        let mut seen = Vec::new();
        while let Some(line) = reader.next_line(true)? {
            seen.push(match line {
                Line::Text(text) => text.to_string(),
                Line::NotUtf8(bytes, why) => {
                    format!("BAD {} ({why})", String::from_utf8_lossy(&bytes))
                }
                Line::TooLong(long) => format!(
                    "LONG {} bytes, starts {}",
                    long.bytes,
                    String::from_utf8_lossy(&long.start[..long.start.len().min(3)])
                ),
            });
        }
        Ok(seen)
    }

    #[test]
    fn lines_past_the_limit_come_as_their_start_and_length(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // Within a chunk, across chunks, at the end without a break, and not UTF-8.
        let huge = "y".repeat(CHUNK * 3 + 5);
        let content = format!(
            "ok\nabcdefghij\n{huge}\nok2\n\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\nzzzzzzzzzzz"
        );
        let mut bytes = content.into_bytes();
        bytes.extend_from_slice(
            b"\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\nlast line without a break",
        );
        assert_eq!(
            lines_within(&bytes, 10)?,
            [
                "ok\n".to_string(),
                "abcdefghij\n".to_string(),
                format!("LONG {} bytes, starts yyy", CHUNK * 3 + 6),
                "ok2\n".to_string(),
                "LONG 13 bytes, starts \u{e9}\u{fffd}".to_string(),
                "LONG 12 bytes, starts zzz".to_string(),
                "LONG 12 bytes, starts \u{fffd}\u{fffd}\u{fffd}".to_string(),
                "LONG 25 bytes, starts las".to_string(),
            ]
        );
        Ok(())
    }

    #[test]
    fn an_over_long_line_being_written_is_read_past_as_it_grows(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, "a\n")?;
        let mut reader = LineReader::new(File::open(&path)?, 4);
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("a\n"))));
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(&vec![b'x'; CHUNK + 7])?;
        assert!(reader.next_line(false)?.is_none(), "the line has not ended");
        f.write_all(b"xx\nb\n")?;
        match reader.next_line(false)? {
            Some(Line::TooLong(long)) => assert_eq!(long.bytes, CHUNK as u64 + 10),
            other => panic!("expected the long line, got {other:?}"),
        }
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("b\n"))));
        Ok(())
    }

    #[test]
    fn lines_keep_their_breaks_and_a_last_line_may_have_none(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(lines_of(b"a\n\nbc\r\nd")?, ["a\n", "\n", "bc\r\n", "d"]);
        assert_eq!(lines_of(b"")?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn a_bad_line_comes_alone_between_good_ones() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            lines_of(b"a\nb\xff\nc\n\xfe\nd\n")?,
            [
                "a\n",
                "BAD b\u{fffd}\n (invalid utf-8 sequence of 1 bytes from index 1)",
                "c\n",
                "BAD \u{fffd}\n (invalid utf-8 sequence of 1 bytes from index 0)",
                "d\n"
            ]
        );
        assert_eq!(
            lines_of(b"ok\n\xffend")?,
            [
                "ok\n",
                "BAD \u{fffd}end (invalid utf-8 sequence of 1 bytes from index 0)"
            ]
        );
        Ok(())
    }

    #[test]
    fn a_file_of_bad_lines_reads_each_once() -> Result<(), Box<dyn std::error::Error>> {
        // Latin-1 text: every line is a bad one (this took minutes when each bad line
        // sent the rest of its chunk back to be checked again).
        let content = b"caf\xe9\n".repeat(200_000);
        let lines = lines_of(&content)?;
        assert_eq!(lines.len(), 200_000);
        assert!(lines.iter().all(|l| l.starts_with("BAD caf\u{fffd}\n")));
        Ok(())
    }

    #[test]
    fn lines_across_chunks_and_longer_than_a_chunk_are_whole(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let long = "x".repeat(CHUNK * 2 + 3);
        let mut content = String::new();
        let mut expected = Vec::new();
        for i in 0..40_000 {
            let line = if i == 7_000 {
                format!("{long}\n")
            } else {
                format!("line {i} é\n")
            };
            content.push_str(&line);
            expected.push(line);
        }
        assert_eq!(lines_of(content.as_bytes())?, expected);
        Ok(())
    }

    #[test]
    fn an_unfinished_line_waits_for_its_break() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, "a\nb")?;
        let mut reader = LineReader::new(File::open(&path)?, usize::MAX);
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("a\n"))));
        assert!(reader.next_line(false)?.is_none());
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(b"c\n")?;
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("bc\n"))));
        assert!(reader.next_line(false)?.is_none());
        Ok(())
    }
}
