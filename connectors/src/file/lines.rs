//! Lines of a file read in large chunks and handed out in place.
//!
//! A chunk of complete lines is checked for UTF-8 once, as a whole, and becomes a `String`
//! without a copy; each line is then a slice of it. Only the part of a line that a read cut
//! off is copied, to the front of the next chunk. A chunk that is not UTF-8 is cut before
//! its first bad line; that line and the rest of the chunk are checked line by line.
//!
//! # Invariants
//! - `chunk[at..]` is a sequence of lines each ending in `\n`, except the last line of a
//!   file without a final line break, handed out only when the reader is told the file is
//!   complete.
//! - Lines come from `chunk`, then `unchecked`, then `rest`: the bytes read after them and
//!   not checked yet, in file order.

use std::fs::File;
use std::io::{self, Read};

/// Bytes asked of the file per read.
const CHUNK: usize = 256 * 1024;
/// Alignment of the address the file is read to (a cache line).
const ALIGN: usize = 64;

/// One line of the file, with its line break if it has one.
#[derive(Debug)]
pub(super) enum Line<'a> {
    /// A UTF-8 line.
    Text(&'a str),
    /// A line that is not UTF-8, and why.
    NotUtf8(Vec<u8>, std::str::Utf8Error),
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
}

impl LineReader {
    /// Reads `file` from where it stands.
    pub(super) fn new(file: File) -> Self {
        LineReader {
            file,
            chunk: String::new(),
            at: 0,
            unchecked: Vec::new(),
            unchecked_at: 0,
            rest: Vec::new(),
        }
    }

    /// The file, to seek it; buffered lines are dropped.
    pub(super) fn file_mut(&mut self) -> &mut File {
        self.chunk.clear();
        self.at = 0;
        self.unchecked.clear();
        self.unchecked_at = 0;
        self.rest.clear();
        &mut self.file
    }

    /// The next line, or `None` if the file has no complete line now. With `complete`, the
    /// file has ended for good and a last line without a line break is a line too; without,
    /// it waits for its line break (the file is being written).
    pub(super) fn next_line(&mut self, complete: bool) -> io::Result<Option<Line<'_>>> {
        while self.at == self.chunk.len() && self.unchecked_at == self.unchecked.len() {
            if !self.refill(complete)? {
                return Ok(None);
            }
        }
        if self.at < self.chunk.len() {
            let ahead = &self.chunk.as_bytes()[self.at..];
            let len = memchr::memchr(b'\n', ahead).map_or(ahead.len(), |i| i + 1);
            let line = &self.chunk[self.at..self.at + len];
            self.at += len;
            return Ok(Some(Line::Text(line)));
        }
        let ahead = &self.unchecked[self.unchecked_at..];
        let len = memchr::memchr(b'\n', ahead).map_or(ahead.len(), |i| i + 1);
        let start = self.unchecked_at;
        self.unchecked_at += len;
        let bytes = &self.unchecked[start..start + len];
        Ok(Some(match std::str::from_utf8(bytes) {
            Ok(text) => Line::Text(text),
            Err(e) => Line::NotUtf8(bytes.to_vec(), e),
        }))
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
            unsearched = len;
            bytes.resize(len + CHUNK, 0);
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
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, content)?;
        let mut reader = LineReader::new(File::open(&path)?);
        let mut seen = Vec::new();
        while let Some(line) = reader.next_line(true)? {
            seen.push(match line {
                Line::Text(text) => text.to_string(),
                Line::NotUtf8(bytes, why) => {
                    format!("BAD {} ({why})", String::from_utf8_lossy(&bytes))
                }
            });
        }
        Ok(seen)
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
        let mut reader = LineReader::new(File::open(&path)?);
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("a\n"))));
        assert!(reader.next_line(false)?.is_none());
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(b"c\n")?;
        assert!(matches!(reader.next_line(false)?, Some(Line::Text("bc\n"))));
        assert!(reader.next_line(false)?.is_none());
        Ok(())
    }
}
