//! [`PostgresSink`]: results upserted into a table; exactly-once with checkpoints (see
//! `transactions`), at-least-once with idempotent upserts without.

use std::marker::PhantomData;

use serde::Serialize;
use weir_engine::checkpoint::ConnectorState;
use weir_engine::{BoxError, CheckpointId, JobMetrics, Record, Sink};

use super::changes::{Change, Changes};
use super::transactions::Transactional;
use super::writer::Writer;
use super::{PostgresError, PostgresSpec};

/// Upserts each result (a flat JSON object) as a row of the spec's table, keyed by the
/// spec's key fields.
pub struct PostgresSink<T> {
    spec: PostgresSpec,
    /// The job's name (for `weir_commits`), known once the job opens the sink.
    job: String,
    /// Connected when the job opens the sink.
    writer: Option<Writer>,
    /// Changes since the last write (at-least-once) or barrier (exactly-once).
    open: Changes,
    /// Set when a job with checkpoints begins transactions.
    transactions: Option<Transactional>,
    rows: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for PostgresSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<T> PostgresSink<T> {
    /// Writes to `spec`'s table; connects when the job runs.
    pub fn new(spec: PostgresSpec) -> Self {
        PostgresSink {
            spec,
            job: String::new(),
            writer: None,
            open: Changes::default(),
            transactions: None,
            rows: PhantomData,
        }
    }

    fn writer(&mut self) -> Result<&mut Writer, BoxError> {
        self.writer.as_mut().ok_or_else(|| not_opened(&self.spec))
    }

    /// At-least-once: writes the open changes in one transaction.
    fn write_open(&mut self) -> Result<(), BoxError> {
        if self.open.is_empty() {
            return Ok(());
        }
        let changes = self.open.take();
        self.writer()?.apply(&changes, |_| Ok(()))?;
        Ok(())
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for PostgresSink<T> {
    /// Connects, so that a server that cannot be reached fails the job when it starts.
    fn open(&mut self, metrics: &JobMetrics) -> Result<(), BoxError> {
        self.job = metrics.job().to_string();
        self.writer = Some(Writer::connect(&self.spec)?);
        Ok(())
    }

    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let (key, table) = (&self.spec.key, &self.spec.table);
        for record in records {
            let change = Change::of(serde_json::to_value(&record.value)?, table)?;
            self.open.add(change, key, table)?;
        }
        match &self.transactions {
            None if self.open.len() >= self.spec.batch => self.write_open(),
            Some(_) if self.open.len() > self.spec.max_pending => Err(PostgresError::Row {
                table: table.clone(),
                row: format!("#{} of this checkpoint interval", self.open.len()),
                problem: format!(
                    "exceeds max_pending={}: the rows of a checkpoint interval wait in memory \
                     until the checkpoint completes; shorten --checkpoint-interval, or raise \
                     max_pending= in the URI",
                    self.spec.max_pending
                ),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// At-least-once: writes what is held. Exactly-once: nothing, rows wait for their
    /// checkpoint.
    fn flush(&mut self) -> Result<(), BoxError> {
        match self.transactions {
            None => self.write_open(),
            Some(_) => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.flush()
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        let Some(writer) = &mut self.writer else {
            return Err(not_opened(&self.spec));
        };
        self.transactions = Some(Transactional::begin(writer, &self.job, restored)?);
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        match &mut self.transactions {
            Some(t) => t.pre_commit(checkpoint, &mut self.open),
            None => Ok(None),
        }
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        let (Some(t), Some(writer)) = (&mut self.transactions, &mut self.writer) else {
            return Ok(());
        };
        t.commit(writer, checkpoint)
    }
}

/// The error of a sink used before the job opened it.
fn not_opened(spec: &PostgresSpec) -> BoxError {
    format!(
        "{}: the sink was not opened by a job (Sink::open)",
        spec.describe()
    )
    .into()
}
