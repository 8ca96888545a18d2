use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::Serialize;
use weir_engine::{BoxError, Record, Sink};

use crate::error::{create_file, ConnectorError};

/// Writes each result as one JSON line to a file.
///
/// The file is created (truncated) at the first write or at the end of the job, whichever
/// comes first. Each batch is flushed to the operating system as it is written, so the rows
/// of a long-running (`--follow`) job are visible at once and survive the process being
/// killed; the file is synced to disk when the job finishes.
pub struct FileSink<T> {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    _item: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T> FileSink<T> {
    /// A sink writing to `path`; parent directories are created as needed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSink {
            path: path.into(),
            writer: None,
            _item: PhantomData,
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, ConnectorError> {
        if self.writer.is_none() {
            let file = create_file(&self.path)?;
            self.writer = Some(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(self.writer.as_mut().expect("writer was just created"))
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for FileSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let path = self.path.clone();
        let w = self.writer()?;
        for r in records {
            serde_json::to_writer(&mut *w, &r.value).map_err(|source| ConnectorError::Encode {
                path: path.clone(),
                source,
            })?;
            w.write_all(b"\n").map_err(|source| ConnectorError::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        let path = self.path.clone();
        let w = self.writer()?;
        w.flush()
            .and_then(|()| w.get_ref().sync_all())
            .map_err(|source| ConnectorError::Write { path, source })?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {} (JSON lines)", self.path.display())
    }
}
