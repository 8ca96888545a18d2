//! A JSON-lines sink on standard output, for trying jobs out and for pipes.

use std::io::Write;
use std::marker::PhantomData;

use serde::Serialize;
use weir_engine::{BoxError, Record, Sink};

/// Writes each result as one JSON line to standard output.
pub struct StdoutSink<T> {
    _item: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for StdoutSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdoutSink")
    }
}

impl<T> Default for StdoutSink<T> {
    fn default() -> Self {
        StdoutSink { _item: PhantomData }
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for StdoutSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let mut out = std::io::stdout().lock();
        for r in records {
            serde_json::to_writer(&mut out, &r.value)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        std::io::stdout().lock().flush()?;
        Ok(())
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}
