//! The dead-letter output: input records that could not be decoded, with where they came
//! from, so nothing is lost silently and the job goes on.
//!
//! Each record is one JSON line: `{"source":PATH,"line":N,"error":MSG,"raw":LINE}`.
//! The file is created (truncated) when the job starts reading, and flushed after every
//! batch of dead letters, so it is complete even if the job is killed. A job resuming from
//! a checkpoint cuts the file back to its length at that checkpoint
//! ([`DeadLetters::resume_at`]), so replayed input does not reject the same line twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use weir_engine::metrics::Counter;

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
    /// The record as it was read.
    pub raw: String,
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
