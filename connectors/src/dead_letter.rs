//! The dead-letter output: input records that could not be decoded, with where they came
//! from, so nothing is lost silently and the job goes on.
//!
//! Each record is one JSON line: `{"source":PATH,"line":N,"error":MSG,"raw":LINE}`.
//! `raw` is the record as read, without its line break. A record whose bytes are not UTF-8
//! has `"raw_base64"` instead (standard base64 with padding, RFC 4648), so the exact bytes
//! can be recovered: no replacement characters, nothing guessed. An over-long line keeps
//! its first [`KEPT_OF_LONG_LINE`] bytes, cut back to a whole character when they are text
//! (a cut through a multi-byte character does not make them binary).
//! The file is created (truncated) when the job starts reading, and flushed after every
//! batch of dead letters, so it is complete even if the job is killed. A job resuming from
//! a checkpoint cuts the file back to its length at that checkpoint
//! ([`DeadLetters::resume_at`]), so replayed input does not reject the same line twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use weir_engine::metrics::Counter;
use weir_engine::{BoxError, Record, Sink};

use crate::error::{create_file, ConnectorError};

/// How much of an over-long line (past a source's line limit) its dead letter keeps: the
/// line itself may be of any size, and is never held whole.
pub const KEPT_OF_LONG_LINE: usize = 1024;

/// One rejected input record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from (a path or URI).
    pub source: String,
    /// Its line number (1-based).
    pub line: u64,
    /// Why it was rejected.
    pub error: String,
    /// The record as it was read: `raw` (text) or `raw_base64` (bytes not UTF-8).
    #[serde(flatten)]
    pub raw: Raw,
}

impl DeadLetter {
    /// The dead letter of `raw` (the record's bytes) from `source` at `line`.
    pub fn new(source: String, line: u64, error: String, raw: &[u8]) -> Self {
        DeadLetter {
            source,
            line,
            error,
            raw: Raw::of(raw),
        }
    }
}

/// The bytes of a rejected record, as its dead letter keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Raw {
    /// UTF-8 text as it was read: `"raw": "..."`.
    #[serde(rename = "raw")]
    Text(String),
    /// Bytes that are not UTF-8, in standard base64 with padding: `"raw_base64": "..."`.
    #[serde(rename = "raw_base64")]
    Base64(String),
}

impl Raw {
    /// Text if `bytes` are UTF-8, else their base64.
    pub fn of(bytes: &[u8]) -> Raw {
        match std::str::from_utf8(bytes) {
            Ok(text) => Raw::Text(text.to_string()),
            Err(_) => Raw::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The start of a longer record, and how many of its bytes it keeps: as [`Raw::of`],
    /// but text whose last character was cut in half by the limit stays text, without that
    /// partial character.
    pub fn of_start(bytes: &[u8]) -> (Raw, usize) {
        let kept = match std::str::from_utf8(bytes) {
            // `error_len` is `None` only when the input ends inside a character.
            Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
            _ => bytes,
        };
        (Raw::of(kept), kept.len())
    }

    /// The bytes the record had (kept ones of an over-long line).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Raw::Text(text) => Ok(text.as_bytes().to_vec()),
            Raw::Base64(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded),
        }
    }

    /// The text, if the record was UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Raw::Text(text) => Some(text),
            Raw::Base64(_) => None,
        }
    }
}

impl From<&str> for Raw {
    fn from(text: &str) -> Raw {
        Raw::Text(text.to_string())
    }
}

/// A shared dead-letter file and its counter.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    path: PathBuf,
    file: Arc<Mutex<Option<Writer>>>,
    counter: Counter,
}

#[derive(Debug)]
struct Writer {
    out: BufWriter<File>,
    /// Bytes written to the file so far.
    bytes: u64,
}

impl DeadLetters {
    /// Dead letters go to `path`, counted by `counter`
    /// (e.g. `job.metrics().dead_letters("input")`).
    pub fn to_file(path: impl Into<PathBuf>, counter: Counter) -> Self {
        DeadLetters {
            path: path.into(),
            file: Arc::new(Mutex::new(None)),
            counter,
        }
    }

    /// The same file, counted by `counter` (e.g. the letters of another operator).
    pub fn counted_by(&self, counter: Counter) -> Self {
        DeadLetters {
            path: self.path.clone(),
            file: self.file.clone(),
            counter,
        }
    }

    /// The dead-letter file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (truncates) the file; called when the job starts reading.
    pub fn open(&self) -> Result<(), ConnectorError> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let file = create_file(&self.path).map_err(|e| ConnectorError::DeadLetterFile {
                path: self.path.clone(),
                source: Box::new(e),
            })?;
            *guard = Some(Writer {
                out: BufWriter::new(file),
                bytes: 0,
            });
        }
        Ok(())
    }

    /// Bytes written so far (everything written is flushed).
    pub fn position(&self) -> u64 {
        let guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map_or(0, |w| w.bytes)
    }

    /// Continues the file of an earlier run after its first `bytes` bytes (what it held at
    /// the checkpoint being restored); later lines are removed, they are written again.
    pub fn resume_at(&self, bytes: u64) -> Result<(), ConnectorError> {
        let open_err = |source| ConnectorError::Open {
            path: self.path.clone(),
            source,
        };
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        // A file shorter than the checkpoint says was cut by hand: keep what is there.
        let bytes = bytes.min(len);
        let write_err = |source| ConnectorError::Write {
            path: self.path.clone(),
            source,
        };
        file.set_len(bytes).map_err(write_err)?;
        file.seek(SeekFrom::Start(bytes)).map_err(write_err)?;
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some(Writer {
            out: BufWriter::new(file),
            bytes,
        });
        Ok(())
    }

    /// Writes rejected records and counts them.
    pub fn write(&self, letters: &[DeadLetter]) -> Result<(), ConnectorError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.open()?;
        let write_err = |source| ConnectorError::Write {
            path: self.path.clone(),
            source,
        };
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = guard.as_mut() {
            let mut line = Vec::with_capacity(256);
            for letter in letters {
                line.clear();
                serde_json::to_writer(&mut line, letter).map_err(|source| {
                    ConnectorError::Encode {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                line.push(b'\n');
                w.out.write_all(&line).map_err(write_err)?;
                w.bytes += line.len() as u64;
            }
            w.out.flush().map_err(write_err)?;
        }
        self.counter.inc_by(letters.len() as u64);
        Ok(())
    }
}

/// A sink writing records an operator refused (e.g. events an aggregate could not take,
/// a window's rejects) into a job's dead letters, each made into a
/// [`DeadLetter`] by `letter`. It writes at once, like the sources do: for jobs without
/// checkpoints (a restart from a checkpoint cuts the dead-letter file back to the source's
/// position, which may not cover refused records written after it).
pub struct DeadLetterSink<T> {
    dead: DeadLetters,
    letter: Box<dyn Fn(&T) -> DeadLetter + Send>,
    batch: Vec<DeadLetter>,
}

impl<T> std::fmt::Debug for DeadLetterSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink")
            .field("path", &self.dead.path)
            .finish_non_exhaustive()
    }
}

impl<T> DeadLetterSink<T> {
    /// Writes into `dead` (its file and counter), each record made a letter by `letter`.
    pub fn new(dead: DeadLetters, letter: impl Fn(&T) -> DeadLetter + Send + 'static) -> Self {
        DeadLetterSink {
            dead,
            letter: Box::new(letter),
            batch: Vec::new(),
        }
    }
}

impl<T: Send + 'static> Sink<T> for DeadLetterSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        self.batch.clear();
        self.batch
            .extend(records.iter().map(|r| (self.letter)(&r.value)));
        Ok(self.dead.write(&self.batch)?)
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("dead letters {}", self.dead.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(letter: &DeadLetter) -> String {
        serde_json::to_string(letter).unwrap_or_default()
    }

    #[test]
    fn text_stays_raw_and_other_bytes_are_base64_that_decodes_back() {
        let text = DeadLetter::new("f".into(), 3, "bad".into(), b"not json");
        assert_eq!(
            json(&text),
            r#"{"source":"f","line":3,"error":"bad","raw":"not json"}"#
        );
        let bytes: &[u8] = b"caf\xe9 \xff\x00";
        let binary = DeadLetter::new("f".into(), 4, "not UTF-8".into(), bytes);
        let line = json(&binary);
        assert!(line.contains(r#""raw_base64":""#), "{line}");
        assert!(!line.contains(r#""raw":"#), "{line}");
        let back: Result<DeadLetter, _> = serde_json::from_str(&line);
        assert_eq!(back.as_ref().ok(), Some(&binary));
        assert_eq!(binary.raw.bytes().ok().as_deref(), Some(bytes));
        let back: Result<DeadLetter, _> = serde_json::from_str(&json(&text));
        assert_eq!(back.ok(), Some(text));
    }

    #[test]
    fn the_start_of_a_long_line_cut_inside_a_character_stays_text() {
        let euro = "\u{20ac}".as_bytes();
        let mut cut = b"ab".to_vec();
        cut.extend_from_slice(&euro[..2]);
        assert_eq!(Raw::of_start(&cut), (Raw::Text("ab".into()), 2));
        assert!(matches!(Raw::of(&cut), Raw::Base64(_)));
        let mut bad = b"a\xffb".to_vec();
        bad.extend_from_slice(&euro[..2]);
        let (raw, kept) = Raw::of_start(&bad);
        assert_eq!(kept, bad.len());
        assert_eq!(raw.bytes().ok(), Some(bad));
    }
}
