//! [`AppendFileSink`]: JSON lines appended to one file, exactly once with checkpoints by
//! cutting the file back to the length its restored checkpoint recorded.
//!
//! # Why one file and not part files
//! [`super::FileSink`] with checkpoints writes a directory of part files, each made visible
//! when its checkpoint completes (Flink's `FileSink`). For a file people read as it grows
//! (`tail -f`, the HTTP dead-letter tail) and pass by name (`<output>.dead.jsonl`), one file
//! is simpler: it is complete when the job ends and never moves. The price is that readers
//! see lines before their checkpoint completes, and a restore withdraws those written
//! after the checkpoint it resumes from (they are written again from the replayed input).
//! The sink's state is one length; the file is the truth for everything before it.
//!
//! # Invariants
//! - At a barrier ([`Sink::pre_commit`]) everything written is flushed and synced, and the
//!   file's length is the state: the length a restore of that checkpoint cuts back to.
//! - A restore never lengthens the file: a file shorter than its checkpoint says was cut or
//!   replaced, and the restore is refused rather than missing lines silently.
//! - Without checkpoints it is a plain file sink: created (truncated) at the first write,
//!   flush or finish, synced at the end.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weir_engine::{
    BoxError, CheckpointId, ConnectorState, ConnectorStateType, Record, Sink, StateMismatch,
};

use super::sink::write_json_lines;
use crate::error::{create_file, ConnectorError};

/// Writes each record as one JSON line to one file; with checkpoints, a restart cuts the
/// file back to its length at the restored checkpoint, so every line is in it exactly once.
///
/// At each barrier the file is flushed and synced and its length is the sink's checkpoint
/// state (`append file sink`, version 1). Readers see lines before their checkpoint
/// completes, and a restore withdraws those written after the checkpoint it resumes from
/// (the replayed input writes them again); a file shorter than its checkpoint says is
/// refused. Without checkpoints it is a plain file, created (truncated) at the first
/// write, flush or finish. One file instead of [`crate::FileSink`]'s part files keeps a
/// path people `tail -f` or pass by name complete when the job ends.
pub struct AppendFileSink<T> {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    _item: PhantomData<fn(T)>,
}

/// What the sink keeps in a checkpoint: the file's length at the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct AppendFileState {
    bytes: u64,
}

impl ConnectorStateType for AppendFileState {
    const KIND: &'static str = "append file sink";
    const VERSION: u32 = 1;
}

impl<T> std::fmt::Debug for AppendFileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendFileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T> AppendFileSink<T> {
    /// A sink writing to the file `path`; parent directories are created as needed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AppendFileSink {
            path: path.into(),
            writer: None,
            _item: PhantomData,
        }
    }

    fn write_err(&self) -> impl Fn(std::io::Error) -> ConnectorError + '_ {
        |source| ConnectorError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// The file's writer; without checkpoints the file is created at the first use.
    fn writer(&mut self) -> Result<&mut BufWriter<File>, ConnectorError> {
        if self.writer.is_none() {
            self.writer = Some(BufWriter::new(create_file(&self.path)?));
        }
        Ok(self.writer.as_mut().expect("the writer was just created"))
    }

    /// Opens the file of an earlier run and cuts it back to its first `bytes` bytes.
    fn resume_at(&mut self, bytes: u64, checkpoint: CheckpointId) -> Result<(), BoxError> {
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
        if len < bytes {
            return Err(format!(
                "{} has {len} bytes, but checkpoint {checkpoint} recorded {bytes}: the file \
                 was cut or replaced since; put it back, or start over with --replay-from \
                 beginning",
                self.path.display()
            )
            .into());
        }
        file.set_len(bytes).map_err(self.write_err())?;
        file.seek(SeekFrom::Start(bytes))
            .map_err(self.write_err())?;
        self.writer = Some(BufWriter::new(file));
        Ok(())
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for AppendFileSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let path = self.path.clone();
        Ok(write_json_lines(self.writer()?, &path, records)?)
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        let path = self.path.clone();
        let w = self.writer()?;
        w.flush()
            .and_then(|()| w.get_ref().sync_all())
            .map_err(|source| ConnectorError::Write { path, source })?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        // Visible at once, also with checkpoints (see the module docs).
        let path = self.path.clone();
        self.writer()?
            .flush()
            .map_err(|source| ConnectorError::Write { path, source })?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {} (JSON lines, appended)", self.path.display())
    }

    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        match restored {
            None => self.resume_at(0, 0),
            Some((checkpoint, Some(state))) => {
                let state: AppendFileState = state.decode()?;
                self.resume_at(state.bytes, checkpoint)
            }
            Some((_, None)) => Err(StateMismatch::Missing {
                kind: AppendFileState::KIND,
            }
            .into()),
        }
    }

    fn pre_commit(&mut self, _: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        let path = self.path.clone();
        let io_err = |source| ConnectorError::Write {
            path: path.clone(),
            source,
        };
        let w = self.writer()?;
        w.flush().map_err(&io_err)?;
        let file = w.get_mut();
        file.sync_data().map_err(&io_err)?;
        let bytes = file.stream_position().map_err(&io_err)?;
        Ok(Some(ConnectorState::encode(&AppendFileState { bytes })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::sink::tests::rows;

    #[test]
    fn a_restore_keeps_what_its_checkpoint_covered_and_the_replay_adds_the_rest_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("dead.jsonl");
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(&path, "left by an earlier job\n").unwrap();
        let mut sink = AppendFileSink::<i64>::new(&path);
        // A fresh start with checkpoints begins an empty file.
        sink.begin_transactions(None).unwrap();
        sink.write(&rows(&[1, 2])).unwrap();
        let first = sink.pre_commit(1).unwrap();
        sink.write(&rows(&[3])).unwrap();
        let second = sink.pre_commit(2).unwrap();
        sink.write(&rows(&[4])).unwrap();
        sink.flush().unwrap();
        // Readers see lines before their checkpoint completes.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n4\n");

        // A crash; the restart resumes from checkpoint 1, whose lines stay.
        let mut restarted = AppendFileSink::<i64>::new(&path);
        restarted
            .begin_transactions(Some((1, first.as_ref())))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
        restarted.write(&rows(&[3, 4])).unwrap();
        restarted.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n4\n");

        // A file shorter than its checkpoint says is refused, not extended.
        std::fs::write(&path, "1\n").unwrap();
        let refused = AppendFileSink::<i64>::new(&path)
            .begin_transactions(Some((2, second.as_ref())))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("checkpoint 2 recorded 6") && refused.contains("has 2 bytes"),
            "{refused}"
        );
        // A checkpoint without the sink's state is one taken with another output.
        let missing = AppendFileSink::<i64>::new(&path)
            .begin_transactions(Some((2, None)))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("append file sink"), "{missing}");
    }

    #[test]
    fn without_checkpoints_the_file_is_created_even_when_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut sink = AppendFileSink::<i64>::new(&path);
        sink.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
