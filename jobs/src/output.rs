//! Sinks chosen by `--output`: a file path, `stdout:`, or `null:` (count and discard,
//! for benchmarks).

use serde::Serialize;
use weir_connectors::{FileSink, StdoutSink};
use weir_engine::{BoxError, CheckpointId, Record, Sink};

/// A sink picked at run time from an `--output` value.
#[derive(Debug)]
pub enum OutputSink<T> {
    /// JSON lines to a file.
    File(FileSink<T>),
    /// JSON lines to standard output.
    Stdout(StdoutSink<T>),
    /// Nothing is written.
    Discard,
}

impl<T> OutputSink<T> {
    /// `stdout:` (also when `spec` is `None`), `null:`, or a file path.
    pub fn from_spec(spec: Option<&str>) -> Self {
        match spec {
            None | Some("stdout:") | Some("-") => OutputSink::Stdout(StdoutSink::default()),
            Some("null:") => OutputSink::Discard,
            Some(path) => {
                OutputSink::File(FileSink::new(path.strip_prefix("file://").unwrap_or(path)))
            }
        }
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for OutputSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.write(records),
            OutputSink::Stdout(s) => s.write(records),
            OutputSink::Discard => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.finish(),
            OutputSink::Stdout(s) => s.finish(),
            OutputSink::Discard => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match self {
            OutputSink::File(s) => s.describe(),
            OutputSink::Stdout(s) => s.describe(),
            OutputSink::Discard => "discard".into(),
        }
    }

    // Only files are transactional; stdout repeats rows replayed after a restart.
    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, &serde_json::Value)>,
    ) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.begin_transactions(restored),
            _ => Ok(()),
        }
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<serde_json::Value, BoxError> {
        match self {
            OutputSink::File(s) => s.pre_commit(checkpoint),
            _ => Ok(serde_json::Value::Null),
        }
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.commit(checkpoint),
            _ => Ok(()),
        }
    }
}
