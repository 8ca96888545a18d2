//! Sinks chosen by `--output`: a file path, `stdout:`, `tcp://HOST:PORT` (a server to send
//! JSON lines to; with `?mode=listen`, served to subscribers), `kafka://BROKER/TOPIC`,
//! `postgres://USER@HOST:PORT/DB?table=T&key=K` (rows upserted into a table), or `null:`
//! (count and discard, for benchmarks). A job with several outputs takes each by name,
//! `--output NAME=SPEC` ([`OutputSink::named`]).

use serde::Serialize;
use weir_connectors::kafka::KeyOf;
use weir_connectors::{
    FileSink, KafkaSink, KafkaSpec, PostgresSink, PostgresSpec, StdoutSink, TcpOutput,
    TcpServerSink, TcpSink,
};
use weir_engine::{BoxError, CheckpointId, ConnectorState, JobMetrics, Record, Sink};

use crate::options::JobOptions;

/// A sink picked at run time from an `--output` value.
#[derive(Debug)]
pub enum OutputSink<T> {
    /// JSON lines to a file.
    File(FileSink<T>),
    /// JSON lines to standard output.
    Stdout(StdoutSink<T>),
    /// JSON lines to a TCP server.
    Tcp(TcpSink<T>),
    /// JSON lines served to TCP subscribers.
    TcpServer(TcpServerSink<T>),
    /// JSON values to a Kafka topic.
    Kafka(Box<KafkaSink<T>>),
    /// Rows upserted into a PostgreSQL table.
    Postgres(Box<PostgresSink<T>>),
    /// Nothing is written.
    Discard,
    /// `--output` could not be used; the job fails with this message when it starts.
    Unusable(String),
}

impl<T> OutputSink<T> {
    /// `stdout:` (also when `spec` is `None`), `null:`, `tcp://...`, `kafka://...`,
    /// `postgres://...`, or a file path.
    pub fn from_spec(spec: Option<&str>) -> Self {
        match spec {
            None | Some("stdout:") | Some("-") => OutputSink::Stdout(StdoutSink::default()),
            Some("null:") => OutputSink::Discard,
            Some(uri) if uri.starts_with("tcp://") => match TcpOutput::parse(uri) {
                Some(Ok(TcpOutput::Connect(addr))) => OutputSink::Tcp(TcpSink::new(addr)),
                Some(Ok(TcpOutput::Listen { addr, subscribers })) => {
                    OutputSink::TcpServer(TcpServerSink::new(addr, subscribers))
                }
                Some(Err(reason)) => OutputSink::Unusable(format!("--output {reason}")),
                None => OutputSink::Unusable(format!("--output {uri}: not a TCP URI")),
            },
            Some(uri) if uri.starts_with("kafka://") => match KafkaSpec::parse(uri) {
                Some(Ok(spec)) => OutputSink::Kafka(Box::new(KafkaSink::new(spec, None))),
                Some(Err(reason)) => OutputSink::Unusable(format!("--output {reason}")),
                None => OutputSink::Unusable(format!("--output {uri}: not a Kafka URI")),
            },
            Some(uri) if uri.starts_with("postgres://") || uri.starts_with("postgresql://") => {
                match PostgresSpec::parse(uri) {
                    Some(Ok(spec)) => OutputSink::Postgres(Box::new(PostgresSink::new(spec))),
                    Some(Err(e)) => OutputSink::Unusable(format!("--output {e}")),
                    None => OutputSink::Unusable(format!("--output {uri}: not a postgres URI")),
                }
            }
            Some(uri) if unknown_scheme(uri).is_some() => OutputSink::Unusable(format!(
                "--output `{uri}`: weir has no `{}` output; use a file path (or file://PATH), \
                 stdout:, null:, tcp://HOST:PORT, kafka://BROKER:PORT/TOPIC or \
                 postgres://USER@HOST:PORT/DB?table=T&key=K",
                unknown_scheme(uri).unwrap_or_default()
            )),
            Some(path) => {
                OutputSink::File(FileSink::new(path.strip_prefix("file://").unwrap_or(path)))
            }
        }
    }

    /// The output a job with several names as `name` (`--output name=SPEC`, see
    /// [`crate::registry::JobSpec::outputs`]); a [`UsageError`](crate::options::UsageError)
    /// if none was given by that name.
    pub fn named(opts: &JobOptions, name: &str) -> anyhow::Result<Self> {
        Ok(OutputSink::from_spec(Some(opts.output_named(name)?)))
    }

    /// Keys Kafka records by `key`, so that results stay partitioned by it (other outputs
    /// have no keys).
    pub fn keyed_by(mut self, key: KeyOf<T>) -> Self {
        if let OutputSink::Kafka(sink) = &mut self {
            sink.set_key(key);
        }
        self
    }
}

/// The scheme of a `SCHEME://..` output weir does not know (file paths have none).
fn unknown_scheme(uri: &str) -> Option<&str> {
    let (scheme, _) = uri.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (is_scheme && !matches!(scheme, "file" | "tcp" | "kafka" | "postgres" | "postgresql"))
        .then_some(scheme)
}

impl<T: Serialize + Send + 'static> Sink<T> for OutputSink<T> {
    fn open(&mut self, metrics: &JobMetrics) -> Result<(), BoxError> {
        match self {
            OutputSink::Kafka(s) => s.open(metrics),
            OutputSink::Postgres(s) => s.open(metrics),
            OutputSink::TcpServer(s) => s.open(metrics),
            OutputSink::Unusable(reason) => Err(reason.clone().into()),
            _ => Ok(()),
        }
    }

    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.write(records),
            OutputSink::Stdout(s) => s.write(records),
            OutputSink::Tcp(s) => s.write(records),
            OutputSink::TcpServer(s) => s.write(records),
            OutputSink::Kafka(s) => s.write(records),
            OutputSink::Postgres(s) => s.write(records),
            OutputSink::Discard | OutputSink::Unusable(_) => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.finish(),
            OutputSink::Stdout(s) => s.finish(),
            OutputSink::Tcp(s) => s.finish(),
            OutputSink::TcpServer(s) => s.finish(),
            OutputSink::Kafka(s) => s.finish(),
            OutputSink::Postgres(s) => s.finish(),
            OutputSink::Discard | OutputSink::Unusable(_) => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.flush(),
            OutputSink::Stdout(s) => s.flush(),
            OutputSink::Tcp(s) => s.flush(),
            OutputSink::TcpServer(s) => s.flush(),
            OutputSink::Kafka(s) => s.flush(),
            OutputSink::Postgres(s) => s.flush(),
            OutputSink::Discard | OutputSink::Unusable(_) => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match self {
            OutputSink::File(s) => s.describe(),
            OutputSink::Stdout(s) => s.describe(),
            OutputSink::Tcp(s) => s.describe(),
            OutputSink::TcpServer(s) => s.describe(),
            OutputSink::Kafka(s) => s.describe(),
            OutputSink::Postgres(s) => s.describe(),
            OutputSink::Discard => "discard".into(),
            OutputSink::Unusable(reason) => reason.clone(),
        }
    }

    // Files, Kafka and PostgreSQL are transactional (Kafka unless its URI says
    // at-least-once); the other outputs repeat rows replayed after a restart.
    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.begin_transactions(restored),
            OutputSink::Kafka(s) => s.begin_transactions(restored),
            OutputSink::Postgres(s) => s.begin_transactions(restored),
            _ => Ok(()),
        }
    }

    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        match self {
            OutputSink::File(s) => s.pre_commit(checkpoint),
            OutputSink::Kafka(s) => s.pre_commit(checkpoint),
            OutputSink::Postgres(s) => s.pre_commit(checkpoint),
            _ => Ok(None),
        }
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        match self {
            OutputSink::File(s) => s.commit(checkpoint),
            OutputSink::Kafka(s) => s.commit(checkpoint),
            OutputSink::Postgres(s) => s.commit(checkpoint),
            _ => Ok(()),
        }
    }
}
