//! Sources chosen by `--input`, the twin of [`crate::output`]: a file of JSON lines or CSV
//! (by `--format` or the extension), an Arrow IPC file (`.arrow`, `.ipc`), `tcp://HOST:PORT`,
//! `kafka://BROKER:PORT/TOPIC` or a PostgreSQL outbox table (`postgres://..?outbox=T`).
//!
//! [`InputSpec::from_spec`] parses the value; [`InputSpec::open`] makes the source with the
//! decoders a job gives ([`InputSpec::open_serde`]: any `serde` type, by field name in all
//! formats); [`read_input`] does both for a job's own type in one call and writes the
//! source's dead letters. The bundled jobs read `--input` through the same functions, so a
//! job of one's own reads every input they read, with the same dead letters (each with its
//! source position, counted in `weir_dead_letter_records_total{operator=SOURCE}`) and the
//! same positions in checkpoints: the sources are the connectors' own, this module only
//! picks one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use weir_connectors::arrow::is_arrow_file;
use weir_connectors::kafka::{EventTime, SetEventTime};
use weir_connectors::max_future::EventTimeOf;
use weir_connectors::{
    ArrowFileSource, ArrowRows, Decoder, FileSource, Format, Json, KafkaSource, KafkaSpec,
    OriginNames, OutboxSource, OutboxSpec, PostgresSpec, RowDecoder, TcpSource, TcpSpec,
};
use weir_engine::{
    BoxError, ConnectorState, Data, DeadLetter, Job, Source, SourceStatus, Split, Stream,
};

use crate::dead_letters::source_with_dead_letters;
use crate::options::{usage, JobOptions};

/// Where `--input` reads from.
#[derive(Debug, Clone)]
pub enum InputSpec {
    /// A text file of JSON lines or CSV with a header row.
    File {
        /// The file.
        path: PathBuf,
        /// How its lines are encoded.
        format: Format,
    },
    /// An Arrow IPC file.
    Arrow(PathBuf),
    /// Newline-delimited JSON over TCP.
    Tcp(TcpSpec),
    /// JSON values of a Kafka topic.
    Kafka(KafkaSpec),
    /// The rows of a PostgreSQL outbox table.
    Outbox(Box<OutboxSpec>),
}

impl InputSpec {
    /// Parses an `--input` value (`format` is `--format`, for files). A URI that does not
    /// parse is a [`UsageError`](crate::options::UsageError) saying why.
    pub fn from_spec(input: &Path, format: Option<Format>) -> anyhow::Result<InputSpec> {
        let uri = input.to_str().unwrap_or_default();
        if let Some(spec) = OutboxSpec::parse(uri) {
            return match spec {
                Ok(spec) => Ok(InputSpec::Outbox(Box::new(spec))),
                Err(e) => usage!("--input {e}"),
            };
        }
        if PostgresSpec::parse(uri).is_some() {
            usage!(
                "--input {uri}: a PostgreSQL input is an outbox table: add outbox=TABLE (and \
                 id=COLUMN, payload=COLUMN if not `id` and the whole row)"
            );
        }
        if let Some(spec) = TcpSpec::parse(uri) {
            return match spec {
                Ok(spec) => Ok(InputSpec::Tcp(spec)),
                Err(e) => usage!("--input {e}"),
            };
        }
        if let Some(spec) = KafkaSpec::parse(uri) {
            return match spec {
                Ok(spec) => Ok(InputSpec::Kafka(spec)),
                Err(e) => usage!("--input {e}"),
            };
        }
        if is_arrow_file(input) {
            return Ok(InputSpec::Arrow(input.to_path_buf()));
        }
        Ok(InputSpec::File {
            path: input.to_path_buf(),
            format: format.unwrap_or_else(|| Format::from_path(input)),
        })
    }

    /// The `--input` of `opts` (an error if there is none: `job` needs one).
    pub fn from_options(opts: &JobOptions, job: &str) -> anyhow::Result<InputSpec> {
        InputSpec::from_spec(opts.require_input(job)?, opts.format)
    }

    /// The source: `lines` decodes the lines of files, TCP, Kafka records and outbox rows,
    /// `rows` the rows of an Arrow file. `--follow` and `--max-line` of `opts` apply to
    /// files; Kafka's metrics are `job`'s. A Kafka URI with `timestamp=kafka` takes event
    /// time from the records with `record_time`, so it is refused if there is none.
    pub fn open<D, A>(
        self,
        lines: D,
        rows: A,
        opts: &JobOptions,
        job: &Job,
        record_time: Option<SetEventTime<D::Item>>,
    ) -> anyhow::Result<InputSource<D, A>>
    where
        D: Decoder,
        A: RowDecoder<Item = D::Item>,
    {
        if opts.follow && !matches!(self, InputSpec::File { .. }) {
            usage!(
                "--follow reads lines appended to a text file; {} is not one: drop --follow",
                self.describe()
            );
        }
        Ok(match self {
            InputSpec::File { path, format } => InputSource::File(
                FileSource::new(path, format, lines)
                    .follow(opts.follow)
                    .max_line(opts.max_line)
                    .split_bytes(opts.split_bytes),
            ),
            InputSpec::Arrow(path) => InputSource::Arrow(ArrowFileSource::new(path, rows)),
            InputSpec::Tcp(spec) => InputSource::Tcp(TcpSource::new(spec, lines)),
            InputSpec::Outbox(spec) => {
                InputSource::Outbox(Box::new(OutboxSource::new(*spec, lines)))
            }
            InputSpec::Kafka(spec) => {
                let by_kafka = spec.event_time == EventTime::Kafka;
                let source = KafkaSource::new(spec, lines, job.metrics().kafka());
                match (by_kafka, record_time) {
                    (true, Some(set)) => InputSource::Kafka(Box::new(source.with_record_time(set))),
                    (true, None) => usage!(
                        "--input {}: job `{}` takes event time from each event, not from \
                         Kafka's record time: drop timestamp=kafka",
                        source.describe(),
                        job.name()
                    ),
                    (false, _) => InputSource::Kafka(Box::new(source)),
                }
            }
        })
    }

    /// The source of any `serde` type `T`: JSON lines and records (CSV rows and Arrow rows
    /// by column name, see `weir_connectors::serde_rows`).
    pub fn open_serde<T: DeserializeOwned + Data>(
        self,
        opts: &JobOptions,
        job: &Job,
    ) -> anyhow::Result<InputSource<Json<T>, ArrowRows<T>>> {
        self.open(Json::default(), ArrowRows::default(), opts, job, None)
    }

    /// The input in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            InputSpec::File { path, .. } | InputSpec::Arrow(path) => path.display().to_string(),
            InputSpec::Tcp(spec) => format!("tcp://{}", spec.addr),
            InputSpec::Kafka(spec) => spec.describe(),
            InputSpec::Outbox(spec) => spec.describe(),
        }
    }
}

/// Reads `--input` into `T` in one call: the source is called `name` (also its uid, which
/// keeps its position in checkpoints), and the lines, rows or records that do not decode
/// into `T` go to the job's dead-letter file (`--output`'s path plus `.dead.jsonl`, see
/// [`JobOptions::dead_letter_path`]) with their position, counted in
/// `weir_dead_letter_records_total{operator="NAME"}` (see [`source_with_dead_letters`]).
///
/// A job that takes `--max-future` reads with [`read_input_timed`].
pub fn read_input<T: DeserializeOwned + Data>(
    job: &Job,
    name: &str,
    opts: &JobOptions,
) -> anyhow::Result<Stream<T>> {
    read_input_with(job, name, opts, |source| source)
}

/// [`read_input`] for a job that takes `--max-future` (list `"max-future"` in
/// [`JobSpec::reads`](crate::registry::JobSpec::reads)): `time` is an event's time, and an
/// event more than `--max-future` ahead of the largest time accepted so far is a dead
/// letter, as in the bundled jobs.
pub fn read_input_timed<T: DeserializeOwned + Data>(
    job: &Job,
    name: &str,
    opts: &JobOptions,
    time: EventTimeOf<T>,
) -> anyhow::Result<Stream<T>> {
    read_input_with(job, name, opts, |source| {
        source.max_future(time, opts.max_future)
    })
}

fn read_input_with<T: DeserializeOwned + Data>(
    job: &Job,
    name: &str,
    opts: &JobOptions,
    adapt: impl FnOnce(SerdeInput<T>) -> SerdeInput<T>,
) -> anyhow::Result<Stream<T>> {
    let source = InputSpec::from_options(opts, job.name())?.open_serde::<T>(opts, job)?;
    let dead_letters = opts.dead_letter_path(job.name());
    Ok(source_with_dead_letters(
        job,
        name,
        adapt(source),
        dead_letters,
    ))
}

/// The source [`InputSpec::open_serde`] opens.
type SerdeInput<T> = InputSource<Json<T>, ArrowRows<T>>;

/// A source picked at run time from an `--input` value ([`InputSpec::open`]).
#[derive(Debug)]
pub enum InputSource<D: Decoder, A: RowDecoder<Item = D::Item>> {
    /// A text file.
    File(FileSource<D>),
    /// An Arrow IPC file.
    Arrow(ArrowFileSource<A>),
    /// A TCP server or client.
    Tcp(TcpSource<D>),
    /// A Kafka topic.
    Kafka(Box<KafkaSource<D>>),
    /// A PostgreSQL outbox table.
    Outbox(Box<OutboxSource<D>>),
}

/// `$body` with `$s` bound to the source inside whichever variant `$self` is.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            InputSource::File($s) => $body,
            InputSource::Arrow($s) => $body,
            InputSource::Tcp($s) => $body,
            InputSource::Kafka($s) => $body,
            InputSource::Outbox($s) => $body,
        }
    };
}

impl<D: Decoder, A: RowDecoder<Item = D::Item>> InputSource<D, A> {
    /// Events whose `time` is more than `max_ahead` ahead of the largest event time
    /// accepted so far from their stream are dead letters (`--max-future`, see
    /// `weir_connectors::max_future`). `None`: all accepted.
    pub fn max_future(self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        match self {
            InputSource::File(s) => InputSource::File(s.max_future(time, max_ahead)),
            InputSource::Arrow(s) => InputSource::Arrow(s.max_future(time, max_ahead)),
            InputSource::Tcp(s) => InputSource::Tcp(s.max_future(time, max_ahead)),
            InputSource::Kafka(s) => InputSource::Kafka(Box::new((*s).max_future(time, max_ahead))),
            InputSource::Outbox(s) => {
                InputSource::Outbox(Box::new((*s).max_future(time, max_ahead)))
            }
        }
    }

    /// Each key's events arrive in the order of the input: a text file is read by one
    /// reader at any parallelism ([`FileSource::in_file_order`]); the other inputs already
    /// deliver in order (a Kafka partition in offset order, as Kafka Streams relies on).
    pub fn in_input_order(self) -> Self {
        match self {
            InputSource::File(s) => InputSource::File(s.in_file_order()),
            other => other,
        }
    }

    /// The words for the origins the source gives its events, for messages about them.
    pub fn origin_names(&self) -> OriginNames {
        each!(self, s => s.origin_names())
    }
}

impl<D: Decoder, A: RowDecoder<Item = D::Item>> Source for InputSource<D, A> {
    type Item = D::Item;

    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        each!(self, s => s.poll_batch(out, max))
    }

    fn describe(&self) -> String {
        each!(self, s => s.describe())
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        each!(self, s => s.take_dead_letters(out))
    }

    fn split_of_batch(&self) -> Option<Split> {
        each!(self, s => s.split_of_batch())
    }

    fn aligns_instances(&self) -> bool {
        each!(self, s => s.aligns_instances())
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        each!(self, s => s.position())
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        each!(self, s => s.seek(position))
    }

    fn split(&self, instance: usize, instances: usize) -> Option<Self> {
        match self {
            InputSource::File(s) => s.split(instance, instances).map(InputSource::File),
            _ => None,
        }
    }

    fn seek_shares(&mut self, positions: &[ConnectorState]) -> Result<(), BoxError> {
        each!(self, s => s.seek_shares(positions))
    }

    fn checkpoint_completed(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        each!(self, s => s.checkpoint_completed(position))
    }
}
