//! The dead-letter output: input records that could not be decoded, with where they came
//! from, so nothing is lost silently and the job goes on.
//!
//! Each record is one JSON line: `{"source":PATH,"line":N,"error":MSG,"raw":LINE}`.
//! The file is created (truncated) when the job starts reading, and flushed after every
//! batch of dead letters, so it is complete even if the job is killed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use weir_engine::metrics::Counter;

use crate::error::{create_file, ConnectorError};

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
    file: Arc<Mutex<Option<BufWriter<File>>>>,
    counter: Counter,
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
            let file = create_file(&self.path)?;
            *guard = Some(BufWriter::new(file));
        }
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
            for letter in letters {
                serde_json::to_writer(&mut *w, letter).map_err(|source| {
                    ConnectorError::Encode {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                w.write_all(b"\n").map_err(write_err)?;
            }
            w.flush().map_err(write_err)?;
        }
        self.counter.inc_by(letters.len() as u64);
        Ok(())
    }
}
