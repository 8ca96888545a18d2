//! # weir-connectors: where events come from and results go
//!
//! - [`arrow`]: an Arrow IPC file source (record batches decoded row by row);
//! - [`mod@file`]: a file source (JSON lines or CSV with a header row, bounded or followed like
//!   `tail -f`) and two JSON-lines file sinks (part files, or one file cut back on a
//!   restore);
//! - [`stdout`]: a JSON-lines sink on standard output;
//! - [`tcp`]: a TCP source for newline-delimited records, as a server for many clients or
//!   as a reconnecting client of one server; a TCP client sink and a server sink for
//!   subscribers;
//! - [`kafka`]: a source of every partition of its topics and a producer sink, by
//!   `kafka://` URI, and the consumer-group member of jobs run as one task per partition;
//! - [`postgres`]: a sink that upserts results into a PostgreSQL table (a read model),
//!   exactly-once with checkpoints;
//! - [`dead_letter`]: records that cannot be decoded, with their source position;
//! - [`origin`]: where a record was read, carried with it for messages about it later;
//! - [`max_future`]: `--max-future`, events too far ahead of their stream as dead letters;
//! - [`serde_rows`]: any `serde` type read from CSV lines and Arrow rows by column name;
//! - [`schema`]: versioned events lifted to the current schema by upcasters.
//!
//! Connectors do no I/O until the job runs, so a job can be described without its files.

pub mod arrow;
pub mod dead_letter;
pub mod error;
pub mod file;
pub mod format;
pub mod kafka;
pub mod max_future;
pub mod origin;
pub mod postgres;
pub mod schema;
pub mod serde_rows;
pub mod stdout;
pub mod tcp;

pub use arrow::{ArrowFileSource, RowDecoder};
pub use dead_letter::{DeadLetter, Raw};
pub use error::ConnectorError;
pub use file::{AppendFileSink, FileSink, FileSource};
pub use format::{CsvHeader, Decoder, Format, Json};
pub use kafka::{KafkaSink, KafkaSource, KafkaSpec};
pub use max_future::MaxFuture;
pub use origin::{Origin, OriginNames};
pub use postgres::{OutboxSource, OutboxSpec, PostgresSink, PostgresSpec};
pub use schema::Upcasting;
pub use serde_rows::ArrowRows;
pub use stdout::StdoutSink;
pub use tcp::{TcpMode, TcpOutput, TcpServerSink, TcpSink, TcpSource, TcpSpec};
