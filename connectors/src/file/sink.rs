use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_engine::{
    BoxError, CheckpointId, ConnectorState, ConnectorStateType, Record, Sink, StateMismatch,
};

use crate::error::{create_file, ConnectorError};

/// Writes each result as one JSON line to a file, or, in a job with checkpoints, to part
/// files of a directory committed with each checkpoint.
///
/// # Plain mode
/// The file is created (truncated) at the first write or at the end of the job, whichever
/// comes first. Rows are buffered and handed to the operating system whenever the job goes
/// quiet and at least once a second ([`Sink::flush`]), so the rows of a long-running
/// (`--follow`) job are visible within a second and survive the process being killed; the
/// file is synced to disk when the job finishes.
///
/// # Transactional mode (checkpoints; two-phase commit as Flink's `FileSink`)
/// The path is a directory. Rows go to a hidden in-progress file
/// `.part-NNNNNN.jsonl.inprogress`; at a checkpoint barrier it is synced and closed
/// (pre-commit), and once the checkpoint is complete it is renamed to `part-NNNNNN.jsonl`
/// (commit). Readers take `part-*.jsonl` only and never see uncommitted rows. A restart
/// commits what the restored checkpoint covered and deletes in-progress files and parts of
/// later checkpoints (their rows are derived again); a fresh start deletes old parts.
pub struct FileSink<T> {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    transactions: Option<Transactions>,
    _item: PhantomData<fn(T)>,
}

/// State of transactional mode.
#[derive(Debug, Default)]
struct Transactions {
    /// Number of the part file being written (or to be written next).
    part: CheckpointId,
    /// Closed part files waiting for the checkpoint that covers them.
    pending: Vec<PendingPart>,
}

/// A closed part file and the checkpoint whose completion commits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingPart {
    checkpoint: CheckpointId,
    part: CheckpointId,
}

/// What the sink keeps in a checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkSnapshot {
    pending: Vec<PendingPart>,
}

impl ConnectorStateType for SinkSnapshot {
    const KIND: &'static str = "file sink";
    const VERSION: u32 = 1;
}

impl<T> std::fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn committed_name(part: CheckpointId) -> String {
    format!("part-{part:06}.jsonl")
}

fn in_progress_name(part: CheckpointId) -> String {
    format!(".part-{part:06}.jsonl.inprogress")
}

/// The part number of a committed (`part-N.jsonl`) or in-progress file name.
fn part_of(name: &str) -> Option<(CheckpointId, bool)> {
    if let Some(n) = name
        .strip_prefix("part-")
        .and_then(|n| n.strip_suffix(".jsonl"))
    {
        return n.parse().ok().map(|n| (n, true));
    }
    name.strip_prefix(".part-")
        .and_then(|n| n.strip_suffix(".jsonl.inprogress"))
        .and_then(|n| n.parse().ok())
        .map(|n| (n, false))
}

fn sync_dir(dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ConnectorError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

impl<T> FileSink<T> {
    /// A sink writing to `path`; parent directories are created as needed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSink {
            path: path.into(),
            writer: None,
            transactions: None,
            _item: PhantomData,
        }
    }

    fn file_path(&self) -> PathBuf {
        match &self.transactions {
            Some(t) => self.path.join(in_progress_name(t.part)),
            None => self.path.clone(),
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, ConnectorError> {
        if self.writer.is_none() {
            let file = create_file(&self.file_path())?;
            self.writer = Some(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(self.writer.as_mut().expect("writer was just created"))
    }

    /// Renames the in-progress file of `part` to its committed name, if not done already.
    fn commit_part(&self, part: CheckpointId) -> Result<(), ConnectorError> {
        let from = self.path.join(in_progress_name(part));
        let to = self.path.join(committed_name(part));
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Committed before a crash (the rename happened, the next checkpoint did not).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ConnectorError::MissingPart {
                    dir: self.path.clone(),
                    part,
                    in_progress: in_progress_name(part),
                    committed: committed_name(part),
                })
            }
            Err(source) => Err(ConnectorError::Write { path: from, source }),
        }
    }
}

/// Writes each record's value as one JSON line to `w`, the buffer of the file `path`.
pub(super) fn write_json_lines<T: Serialize>(
    w: &mut impl Write,
    path: &Path,
    records: &[Record<T>],
) -> Result<(), ConnectorError> {
    for r in records {
        serde_json::to_writer(&mut *w, &r.value).map_err(|source| match source.is_io() {
            // The writer failed (a full disk), not the encoding.
            true => ConnectorError::Write {
                path: path.to_path_buf(),
                source: source.into(),
            },
            false => ConnectorError::Encode {
                path: path.to_path_buf(),
                source,
            },
        })?;
        w.write_all(b"\n").map_err(|source| ConnectorError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

impl<T: Serialize + Send + 'static> Sink<T> for FileSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let path = self.file_path();
        let w = self.writer()?;
        Ok(write_json_lines(w, &path, records)?)
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        if self.transactions.is_some() {
            // Everything was pre-committed at the final checkpoint and committed with it.
            return Ok(());
        }
        let path = self.path.clone();
        let w = self.writer()?;
        w.flush()
            .and_then(|()| w.get_ref().sync_all())
            .map_err(|source| ConnectorError::Write { path, source })?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        // In transactional mode the in-progress file is not for readers before its commit.
        if self.transactions.is_some() {
            return Ok(());
        }
        let path = self.path.clone();
        if let Some(w) = &mut self.writer {
            w.flush()
                .map_err(|source| ConnectorError::Write { path, source })?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {} (JSON lines)", self.path.display())
    }

    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        let dir = self.path.clone();
        if dir.is_file() {
            return Err(format!(
                "{} is a file, but a job with checkpoints writes part files into a directory: \
                 pass a directory to --output",
                dir.display()
            )
            .into());
        }
        std::fs::create_dir_all(&dir).map_err(|source| ConnectorError::Open {
            path: dir.clone(),
            source,
        })?;
        let (restored_id, snapshot) = match restored {
            Some((id, Some(state))) => (id, state.decode::<SinkSnapshot>()?),
            Some((_, None)) => {
                return Err(StateMismatch::Missing {
                    kind: SinkSnapshot::KIND,
                }
                .into())
            }
            None => (0, SinkSnapshot::default()),
        };
        let transactions = Transactions {
            part: restored_id + 1,
            pending: Vec::new(),
        };
        // The restored checkpoint completed, so everything it pre-committed is committed.
        for p in &snapshot.pending {
            self.commit_part(p.part)?;
        }
        let listing = std::fs::read_dir(&dir).map_err(|source| ConnectorError::Open {
            path: dir.clone(),
            source,
        })?;
        for entry in listing {
            let entry = entry.map_err(|source| ConnectorError::Open {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some((part, committed)) = name.to_str().and_then(part_of) else {
                continue;
            };
            // In-progress files were never covered by a checkpoint; parts after the
            // restored checkpoint are derived again from the replayed input.
            if !committed || part > restored_id {
                std::fs::remove_file(entry.path()).map_err(|source| ConnectorError::Write {
                    path: entry.path(),
                    source,
                })?;
            }
        }
        sync_dir(&dir)?;
        self.transactions = Some(transactions);
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        let Some(writer) = self.writer.take() else {
            // Nothing written since the last checkpoint: no part file. The next part still
            // takes the next number, so a part numbered N only ever holds rows from after
            // checkpoint N - 1 (restoring checkpoint S keeps exactly the parts up to S).
            let t = self
                .transactions
                .as_mut()
                .ok_or("pre_commit before begin_transactions")?;
            t.part = checkpoint + 1;
            return Ok(Some(ConnectorState::encode(&SinkSnapshot {
                pending: t.pending.clone(),
            })?));
        };
        let path = self.file_path();
        let file = writer.into_inner().map_err(|e| ConnectorError::Write {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(|source| ConnectorError::Write { path, source })?;
        sync_dir(&self.path)?;
        let t = self
            .transactions
            .as_mut()
            .ok_or("pre_commit before begin_transactions")?;
        t.pending.push(PendingPart {
            checkpoint,
            part: t.part,
        });
        t.part = checkpoint + 1;
        Ok(Some(ConnectorState::encode(&SinkSnapshot {
            pending: t.pending.clone(),
        })?))
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        let Some(t) = self.transactions.as_mut() else {
            return Ok(());
        };
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut t.pending)
            .into_iter()
            .partition(|p| p.checkpoint <= checkpoint);
        t.pending = waiting;
        for p in &due {
            self.commit_part(p.part)?;
        }
        if !due.is_empty() {
            sync_dir(&self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Records of `values`, each at the event time of its value (shared with the append
    /// sink's tests).
    pub(in crate::file) fn rows(values: &[i64]) -> Vec<Record<i64>> {
        values
            .iter()
            .map(|&v| Record {
                ts: v,
                watermark: 0,
                value: v,
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// `/dev/full` fails every write with ENOSPC, as a full disk does.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_is_reported_as_one_not_as_an_encoding_error() {
        let mut sink = FileSink::<i64>::new("/dev/full");
        // More than the 1 MiB buffer, so the failing write happens inside the encoder.
        let values: Vec<i64> = (1_000_000..1_200_000).collect();
        let error = sink
            .write(&rows(&values))
            .and_then(|()| sink.flush())
            .expect_err("/dev/full took the rows")
            .to_string();
        assert!(
            error.contains("cannot write /dev/full (the disk is full") && !error.contains("JSON"),
            "{error}"
        );
    }

    #[test]
    fn rows_become_visible_only_when_their_checkpoint_completes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut sink = FileSink::<i64>::new(&out);
        sink.begin_transactions(None).unwrap();
        sink.write(&rows(&[1, 2])).unwrap();
        let state = sink.pre_commit(1).unwrap();
        sink.write(&rows(&[3])).unwrap();
        assert_eq!(
            names(&out),
            vec![
                ".part-000001.jsonl.inprogress",
                ".part-000002.jsonl.inprogress"
            ]
        );
        sink.commit(1).unwrap();
        assert_eq!(
            names(&out),
            vec![".part-000002.jsonl.inprogress", "part-000001.jsonl"]
        );
        assert_eq!(
            std::fs::read_to_string(out.join("part-000001.jsonl")).unwrap(),
            "1\n2\n"
        );

        // A crash now: the restart from checkpoint 1 drops the uncommitted row 3 (it is
        // replayed) and keeps part 1 even if its rename had not happened yet.
        std::fs::rename(
            out.join("part-000001.jsonl"),
            out.join(".part-000001.jsonl.inprogress"),
        )
        .unwrap();
        std::fs::write(out.join(".part-000002.jsonl.inprogress"), "3\n").unwrap();
        std::fs::write(out.join("part-000007.jsonl"), "from a later checkpoint\n").unwrap();
        let mut restarted = FileSink::<i64>::new(&out);
        restarted
            .begin_transactions(Some((1, state.as_ref())))
            .unwrap();
        assert_eq!(names(&out), vec!["part-000001.jsonl"]);
        restarted.write(&rows(&[3])).unwrap();
        restarted.pre_commit(2).unwrap();
        restarted.commit(2).unwrap();
        assert_eq!(names(&out), vec!["part-000001.jsonl", "part-000002.jsonl"]);
    }

    #[test]
    fn a_part_never_holds_rows_from_before_an_empty_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::<i64>::new(dir.path());
        sink.begin_transactions(None).unwrap();
        sink.write(&rows(&[1])).unwrap();
        sink.pre_commit(1).unwrap();
        let state_2 = sink.pre_commit(2).unwrap(); // nothing written in between
        sink.write(&rows(&[3])).unwrap();
        sink.pre_commit(3).unwrap();
        sink.commit(3).unwrap();
        assert_eq!(
            names(dir.path()),
            vec!["part-000001.jsonl", "part-000003.jsonl"]
        );
        // Going back to checkpoint 2 withdraws row 3, which came after it.
        FileSink::<i64>::new(dir.path())
            .begin_transactions(Some((2, state_2.as_ref())))
            .unwrap();
        assert_eq!(names(dir.path()), vec!["part-000001.jsonl"]);
    }

    #[test]
    fn a_failed_checkpoint_is_committed_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::<i64>::new(dir.path());
        sink.begin_transactions(None).unwrap();
        sink.write(&rows(&[1])).unwrap();
        sink.pre_commit(1).unwrap();
        // Checkpoint 1 failed elsewhere; checkpoint 2 covers its rows too.
        sink.write(&rows(&[2])).unwrap();
        sink.pre_commit(2).unwrap();
        sink.commit(2).unwrap();
        assert_eq!(
            names(dir.path()),
            vec!["part-000001.jsonl", "part-000002.jsonl"]
        );
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.jsonl");
        std::fs::write(&file, "").unwrap();
        let err = FileSink::<i64>::new(&file)
            .begin_transactions(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pass a directory to --output"), "{err}");
    }
}
