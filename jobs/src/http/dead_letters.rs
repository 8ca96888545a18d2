//! The last dead letters of a run, read from the end of its dead-letter file for
//! `GET /api/v1/dead-letters`. Reads at most [`MAX_TAIL_BYTES`] from the end, so a large
//! file costs no more than a small one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How many bytes from the end of the file are read at most (a dead letter keeps at most
/// about 1.4 KiB of its record, so this holds the last 1000 of them).
pub(crate) const MAX_TAIL_BYTES: u64 = 4 << 20;

/// The most dead letters one request returns.
pub(crate) const MAX_LIMIT: usize = 1000;

/// The last `limit` dead letters (one JSON object each), oldest first. A file not written
/// yet has none; a line cut off by a write in progress is left out.
pub(crate) fn tail(path: &Path, limit: usize) -> std::io::Result<Vec<serde_json::Value>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    // Only whole lines: after the first line break when reading from the middle, up to
    // the last line break.
    let from = match start {
        0 => 0,
        _ => bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1),
    };
    let to = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let whole = bytes.get(from..to.max(from)).unwrap_or_default();
    let mut letters: Vec<serde_json::Value> = whole
        .split(|&b| b == b'\n')
        .rev()
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .take(limit)
        .collect();
    letters.reverse();
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gives_the_last_whole_lines_oldest_first() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("weir-dead-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("dead.jsonl");
        let mut f = File::create(&path)?;
        for line in 1..=5 {
            writeln!(
                f,
                r#"{{"source":"in","line":{line},"error":"bad","raw":"x"}}"#
            )?;
        }
        write!(f, r#"{{"source":"in","line":6,"err"#)?;
        drop(f);
        let last = tail(&path, 2)?;
        let lines: Vec<u64> = last.iter().filter_map(|l| l["line"].as_u64()).collect();
        assert_eq!(lines, vec![4, 5], "a line being written is left out");
        assert!(tail(&dir.join("none.jsonl"), 2)?.is_empty());
        std::fs::remove_dir_all(&dir)
    }
}
