//! The PostgreSQL sink: results upserted into a table, a read model that a service queries
//! with SQL while the job runs (the read side of CQRS). And the outbox relay, a source
//! reading the events a service wrote to an outbox table ([`OutboxSource`]).
//!
//! `postgres://USER[:PASSWORD]@HOST:PORT/DB?table=T&key=K1[,K2..]` (also `postgresql://`)
//! upserts each result, a flat JSON object, as one row of `T` keyed by the fields `K1..`
//! (`INSERT .. ON CONFLICT (K1, ..) DO UPDATE`). Other parameters:
//! - `sink=NAME`: the sink's name in `weir_commits` (default: the table's name);
//! - `connect_timeout=D`: how long connecting may take (default 10s);
//! - `batch=N`: rows per flush without checkpoints (default 5000);
//! - `max_pending=N`: distinct keys a checkpoint interval may change (default 1,000,000).
//!
//! Any other parameter is the client's own (`sslmode`, `application_name`, ..); weir
//! connects without TLS, so the server must allow plain connections.
//!
//! # Table
//! Created if missing, one column per field of the first row, named as the field and typed
//! by its JSON value (integer `BIGINT`, float `DOUBLE PRECISION`, string `TEXT`, boolean
//! `BOOLEAN`, anything else `JSONB`), with the key fields as its primary key. A field a
//! later row brings is added as a column (`ALTER TABLE .. ADD COLUMN`); a field a row lacks
//! is `NULL` in it. An existing table is used as it is; it needs a primary key or unique
//! index on exactly the key columns.
//!
//! # Changelogs
//! A row with a field `op` of `+I`, `+U`, `-U` or `-D` (a changelog, as the continuous top-N
//! emits) is applied by its kind: `+I`/`+U` upsert, `-U`/`-D` delete the row of its key;
//! `op` is not a column.
//!
//! # Delivery
//! Rows are kept per key between flushes (a later row of a key replaces the earlier one, so
//! a batch never changes a row twice, as `ON CONFLICT DO UPDATE` requires). A batch is
//! `COPY`ed into a temporary table and upserted from there in one statement: 1.5x the
//! rows a second of multi-row `INSERT .. ON CONFLICT` statements (BENCHMARKS.md).
//! - Without checkpoints: at-least-once. Rows are written every `batch` keys, when the job
//!   goes quiet, at least once a second, and at the end; a restarted job writes its rows
//!   again, and the upserts make that harmless.
//! - With checkpoints: exactly-once, see [`transactions`].
//!
//! # Why the `postgres` crate
//! The sink runs on a synchronous thread of its own; `postgres` (the rust-postgres
//! project's blocking client, a thin layer over `tokio-postgres` with a current-thread
//! runtime inside) is the maintained client that fits that, with the `COPY` and
//! transactions the sink needs. `tokio-postgres` directly would mean a runtime of weir's
//! own to drive it from that thread; `sqlx` and `diesel` bring query builders and
//! compile-time schemas a table derived at run time has no use for.

mod changes;
mod outbox;
mod sink;
mod sql;
mod transactions;
mod uri;
mod writer;

use std::time::Duration;

pub use outbox::{OutboxSource, OutboxSpec};
pub use sink::PostgresSink;
pub use uri::PostgresSpec;

/// How long connecting waits unless the URI says `connect_timeout=`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL sink could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The `postgres://` URI cannot be used.
    #[error("`{uri}`: {problem}")]
    Uri {
        /// The URI as given (without its password).
        uri: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// No connection to the server.
    #[error(
        "cannot connect to PostgreSQL at {endpoint} (database `{database}`, user `{user}`): \
         {reason}; check that the server runs and accepts TCP connections there, and the \
         user, database and password in the URI"
    )]
    Connect {
        /// `HOST:PORT`.
        endpoint: String,
        /// The database.
        database: String,
        /// The user.
        user: String,
        /// The client's or server's error.
        reason: String,
    },
    /// A statement failed.
    #[error("postgres {endpoint}: cannot {action}: {reason}")]
    Statement {
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// What was being done, with the table.
        action: String,
        /// The server's message (with its detail and hint), or the client's.
        reason: String,
    },
    /// A result cannot be a row of the table.
    #[error("postgres table `{table}`: the result {row} {problem}")]
    Row {
        /// The table.
        table: String,
        /// The result as JSON (cut when long).
        row: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The checkpoint bookkeeping in `weir_commits` does not match this run.
    #[error("postgres {endpoint}: weir_commits (job `{job}`, sink `{sink}`): {problem}")]
    Commits {
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// The job.
        job: String,
        /// The sink.
        sink: String,
        /// What does not match, and what to do.
        problem: String,
    },
}

/// The message of a client error: the server's message with its detail and hint for a
/// statement the server refused, else the client's error and its causes.
fn reason(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(&format!(": {more}"));
        }
        cause = c.source();
    }
    text
}
