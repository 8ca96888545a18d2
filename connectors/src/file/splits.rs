//! A file read by several readers at once: byte ranges, whose lines each reader finds on
//! its own, and how the ranges left unread are shared out again after a restore.
//!
//! # Ranges
//! A [`Range`] `[from, to)` stands for the lines that *start* in it. A line starts at
//! byte 0 or just after a `\n`; the line that starts before `to` and runs past it belongs
//! to the range. A reader of a range that starts elsewhere than 0 reads from `from - 1` and
//! drops the first line it finds there (the tail of a line of the range before, or the
//! line break just before `from`). So a file cut anywhere is read whole and once, and a
//! range left partly read continues from the start of its next line, with the same rule.
//!
//! # Sharing out
//! A fresh run cuts the file at multiples of the split size ([`DEFAULT_SPLIT_BYTES`])
//! and reader `i` of `n` takes every `n`-th piece, so the readers move through the file
//! together (one piece apart) and event time advances alike in all of them. A reader's
//! position is the list of ranges it has not read yet; a restore collects every reader's
//! list, cuts again and shares out by the same rule, for any number of readers.
//!
//! # Line numbers
//! A range knows how many lines start before it when it begins the file or continues
//! where its reader just finished reading (or stopped at a checkpoint); a range a reader
//! jumps to does not, until a record of it must be reported. Then [`LineCounter`] counts
//! the line breaks before it, once per range, reading the file forward from where it
//! counted last: reports cost a read of the file at most once per reader, and records that
//! are never reported cost nothing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The size of the pieces a file is cut into for several readers: 8 MiB. Readers read
/// up to one read buffer (256 KiB) past the end of each piece, about 3 % more than the
/// file; smaller pieces would waste more, larger ones would leave one reader with more
/// pieces than another for a larger part of the file.
pub const DEFAULT_SPLIT_BYTES: u64 = 8 << 20;

/// Lines of a file that start in `[from, to)` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Range {
    /// The first byte where a line of the range may start.
    pub(super) from: u64,
    /// Lines starting here or after are not the range's; `None`: the end of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) to: Option<u64>,
    /// How many lines start before `from`, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lines_before: Option<u64>,
}

impl Range {
    /// The whole file.
    pub(super) const WHOLE: Range = Range {
        from: 0,
        to: None,
        lines_before: Some(0),
    };
}

/// The most pieces a file is cut into: a larger file has larger pieces, so that a split
/// size far below the file's size cannot make readers hold (and checkpoint) millions of
/// ranges.
const MAX_PIECES: u64 = 4096;

/// The ranges reader `instance` of `instances` reads, from the ranges not read yet by any
/// reader (`unread`, in any order) of a file of `len` bytes cut every `split_bytes` (or
/// into at most [`MAX_PIECES`]). Every reader, given the same `unread`, takes a different
/// share, and together they take all of it.
pub(super) fn share_out(
    mut unread: Vec<Range>,
    len: u64,
    split_bytes: u64,
    instance: usize,
    instances: usize,
) -> Vec<Range> {
    unread.sort_by_key(|r| r.from);
    if instances <= 1 {
        return unread;
    }
    let step = split_bytes.max(len.div_ceil(MAX_PIECES)).max(1);
    let mut pieces = Vec::with_capacity(unread.len());
    for range in unread {
        let end = range.to.unwrap_or(u64::MAX).min(len.max(range.from + 1));
        let mut piece = range;
        // The next cut after `from`; a range ending at the file's end is cut up to it.
        let mut cut = (range.from / step + 1).saturating_mul(step);
        while cut < end {
            pieces.push(Range {
                to: Some(cut),
                ..piece
            });
            piece = Range {
                from: cut,
                to: range.to,
                lines_before: None,
            };
            cut = cut.saturating_add(step);
        }
        pieces.push(piece);
    }
    pieces
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % instances == instance)
        .map(|(_, r)| r)
        .collect()
}

/// Finds the line number of a byte offset by counting line breaks before it, reading
/// forward from the last offset it counted to (see the module docs).
#[derive(Debug, Default)]
pub(super) struct LineCounter {
    /// The offset counted to, and the line breaks before it.
    counted: (u64, u64),
}

impl LineCounter {
    /// How many lines start before `offset` (a line start) in the file at `path`.
    pub(super) fn lines_before(&mut self, path: &Path, offset: u64) -> io::Result<u64> {
        let (from, breaks) = match self.counted {
            (at, breaks) if at <= offset => (at, breaks),
            _ => (0, 0),
        };
        let breaks = breaks + count_breaks(path, from, offset)?;
        self.counted = (offset, breaks);
        Ok(breaks)
    }
}

/// The number (1-based) of the line starting at byte `offset` of the file at `path`.
pub(crate) fn line_at(path: &Path, offset: u64) -> io::Result<u64> {
    Ok(count_breaks(path, 0, offset)? + 1)
}

/// The line breaks in bytes `[from, to)` of the file at `path`.
fn count_breaks(path: &Path, from: u64, to: u64) -> io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut file = file.take(to.saturating_sub(from));
    let mut buffer = vec![0; 1 << 20];
    let mut breaks = 0;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => return Ok(breaks),
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        breaks += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: u64, to: Option<u64>) -> Range {
        Range {
            from,
            to,
            lines_before: None,
        }
    }

    #[test]
    fn a_fresh_file_is_dealt_in_pieces_and_every_byte_goes_to_one_reader() {
        let shares: Vec<Vec<Range>> = (0..3)
            .map(|i| share_out(vec![Range::WHOLE], 25, 10, i, 3))
            .collect();
        assert_eq!(
            shares,
            vec![
                vec![Range {
                    to: Some(10),
                    ..Range::WHOLE
                }],
                vec![range(10, Some(20))],
                vec![range(20, None)],
            ]
        );
        // Two readers: pieces 0 and 2 to the first, piece 1 to the second.
        let first = share_out(vec![Range::WHOLE], 25, 10, 0, 2);
        assert_eq!(first.iter().map(|r| r.from).collect::<Vec<_>>(), [0, 20]);
    }

    #[test]
    fn a_split_size_far_below_the_files_makes_no_more_than_the_most_pieces() {
        let len = 100 * MAX_PIECES;
        let pieces: usize = (0..3)
            .map(|i| share_out(vec![Range::WHOLE], len, 1, i, 3).len())
            .sum();
        assert_eq!(pieces as u64, MAX_PIECES);
    }

    #[test]
    fn one_reader_takes_what_is_left_as_it_is() {
        let unread = vec![range(30, None), range(12, Some(20))];
        assert_eq!(
            share_out(unread, 100, 10, 0, 1),
            vec![range(12, Some(20)), range(30, None)]
        );
    }

    #[test]
    fn what_one_reader_left_is_cut_again_for_more_readers() {
        // A run of one reader stopped at byte 12 of 45, line 3 known.
        let left = Range {
            from: 12,
            to: None,
            lines_before: Some(3),
        };
        let all: Vec<Range> = (0..2)
            .flat_map(|i| share_out(vec![left], 45, 10, i, 2))
            .collect();
        let mut froms: Vec<u64> = all.iter().map(|r| r.from).collect();
        froms.sort();
        assert_eq!(froms, [12, 20, 30, 40]);
        assert_eq!(all[0].lines_before, Some(3), "the piece it continues");
        assert!(all[1..].iter().all(|r| r.lines_before.is_none()));
        assert_eq!(
            all.iter().filter(|r| r.to.is_none()).count(),
            1,
            "the last piece reads to the end, however long the file grew"
        );
    }

    #[test]
    fn line_numbers_are_counted_forward_and_again_from_the_start_if_asked_backwards(
    ) -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, "a\nbb\n\nccc\nd")?;
        let mut counter = LineCounter::default();
        assert_eq!(counter.lines_before(&path, 5)?, 2);
        assert_eq!(counter.lines_before(&path, 11)?, 4);
        assert_eq!(counter.lines_before(&path, 2)?, 1);
        assert_eq!(line_at(&path, 7)?, 4);
        Ok(())
    }
}
