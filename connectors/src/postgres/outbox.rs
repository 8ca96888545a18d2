//! The outbox relay: a source reading the rows of an outbox table in PostgreSQL (the
//! transactional outbox pattern: a service saves an entity and the event about it in one
//! transaction; the relay publishes the events), with exactly-once delivery through
//! checkpoints.
//!
//! `postgres://USER@HOST:PORT/DB?outbox=TABLE` (also `postgresql://`). Parameters:
//! - `id=COL`: the integer column that orders rows (default `id`);
//! - `payload=COL`: the column holding the event, JSON text or `jsonb` (default: the whole
//!   row as a JSON object, `row_to_json`);
//! - `poll=D`: how often to look for new rows when there are none (default 200ms);
//! - `batch=N`: rows per query (default 10,000);
//! - `until=end`: end the input once every row committed before the job started is read
//!   (a backfill, or a test); without it the relay runs until the job is stopped;
//! - `connect_timeout=D` and the client's own parameters, as for the PostgreSQL sink.
//!
//! Each row's payload goes through the job's decoder like a line of a file; a payload that
//! does not decode is a dead letter whose `line` is the row's id, handed to the runtime like
//! every source's ([`Source::take_dead_letters`]).
//!
//! # Rows committed out of id order are not skipped
//! Ids come from a sequence when a row is inserted, but transactions commit in any order:
//! reading "ids after the last one read" would skip a row whose transaction took a smaller
//! id and committed later. So the relay does not follow ids; it follows the transaction
//! horizon, the oldest transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`).
//! Every transaction older than the horizon has ended, so the rows they inserted are final.
//! The relay reads, in id order, the rows whose inserting transaction (`xmin`, widened to
//! 64 bits against the current epoch) lies between the previous horizon and the current
//! one, then moves on. Each row is in exactly one such range, whatever its id and however
//! its transaction used savepoints (a subtransaction's id is above its parent's, which holds
//! the horizon until it ends).
//!
//! The position in a checkpoint is the horizon reached, plus the range being read and the
//! last id read in it: a restore continues exactly there.
//!
//! # What it asks of the outbox
//! - Rows are appended, never updated: an update gives the row a new `xmin`, and it is
//!   published again. Delete rows only once they are relayed (a job's completed checkpoint
//!   covers them); a row deleted before it is read is not published.
//! - Each poll scans the table (the horizon test is on `xmin`, which no index covers), so
//!   keep the table pruned.
//! - A transaction that stays open anywhere in the cluster holds the horizon, and rows
//!   committed after it wait for it to end: delayed, never lost.
//! - Rows whose transaction is more than 2^31 transactions old are placed by their 32-bit
//!   id alone and may be published again on a fresh start (an outbox this old should have
//!   been pruned).
//! - A lost connection fails the job; with checkpoints, a restart resumes where the last
//!   completed checkpoint stood.

use std::time::{Duration, Instant};

use std::collections::VecDeque;

use postgres::{Client, NoTls, Row, Statement};
use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Source, SourceStatus, Timestamp};

use super::uri::{self, parse_connection, positive};
use super::{reason, PostgresError};
use crate::dead_letter::{DeadLetter, Raw};
use crate::format::Decoder;
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames};

/// What outbox URIs look like, for error messages.
const USAGE: &str = "use postgres://USER@HOST:PORT/DB?outbox=TABLE[&id=COLUMN][&payload=COLUMN]";

/// Where an outbox relay reads.
#[derive(Clone)]
pub struct OutboxSpec {
    config: postgres::Config,
    /// The outbox table.
    pub table: String,
    /// The column that orders rows.
    pub id: String,
    /// The column holding the event; `None`: the whole row as JSON.
    pub payload: Option<String>,
    /// How long to wait between looks when no new rows came.
    pub poll: Duration,
    /// Rows per query.
    pub batch: usize,
    /// End once the rows committed before the start are read (`until=end`).
    pub until_end: bool,
}

impl std::fmt::Debug for OutboxSpec {
    // Not derived: the client's settings hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl OutboxSpec {
    /// `None` if `uri` is not a `postgres://` URI with `outbox=`; else the spec or what is
    /// wrong with it.
    pub fn parse(uri: &str) -> Option<Result<OutboxSpec, PostgresError>> {
        let scheme = uri::scheme(uri)?;
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        if !query.split('&').any(|p| p.starts_with("outbox=")) {
            return None;
        }
        Some(uri::named(uri, parse_outbox(uri, scheme)))
    }

    /// `postgres://USER@HOST:PORT/DB outbox T`, for `weir describe` and dead letters.
    pub fn describe(&self) -> String {
        format!(
            "postgres://{}@{}/{} outbox {}",
            self.config.get_user().unwrap_or(""),
            uri::endpoint(&self.config),
            uri::database(&self.config),
            self.table
        )
    }

    /// The text of a statement of this relay that failed.
    fn failed(&self, action: &str, error: &postgres::Error) -> PostgresError {
        PostgresError::Statement {
            endpoint: format!(
                "{}/{}",
                uri::endpoint(&self.config),
                uri::database(&self.config)
            ),
            action: format!("{action} of outbox `{}`", self.table),
            reason: reason(error),
        }
    }
}

fn parse_outbox(uri: &str, scheme: &str) -> Result<OutboxSpec, String> {
    let (mut table, mut id, mut payload) = (String::new(), "id".to_string(), None);
    let (mut poll, mut batch, mut until_end) = (Duration::from_millis(200), 10_000, false);
    let config = parse_connection(uri, scheme, USAGE, |name, value| {
        match name {
            "outbox" => table = value,
            "id" => id = value,
            "payload" => payload = Some(value),
            "batch" => batch = positive(name, &value)?,
            "until" if value == "end" => until_end = true,
            "until" => return Err(format!("until={value}: the one choice is until=end")),
            "poll" => {
                poll = weir_engine::parse_duration(&value)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("poll={value}: give a duration, e.g. 200ms"))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if table.is_empty() || id.is_empty() || payload.as_deref() == Some("") {
        return Err(format!("outbox=, id= and payload= need a name ({USAGE})"));
    }
    Ok(OutboxSpec {
        config,
        table,
        id,
        payload,
        poll,
        batch,
        until_end,
    })
}

/// Where the relay stands: every row of a transaction below `done_below` was returned,
/// and of the range `[done_below, range_end)` the rows up to id `after_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OutboxPosition {
    /// The horizon reached (a 64-bit transaction id).
    done_below: i64,
    /// The horizon of the range being read, if one is.
    range_end: Option<i64>,
    /// The last id returned from that range.
    after_id: Option<i64>,
    /// The highest event time accepted (for `--max-future`).
    highest_event_time: Option<Timestamp>,
}

impl ConnectorStateType for OutboxPosition {
    const KIND: &'static str = "postgres outbox source";
    const VERSION: u32 = 1;
}

/// The statements of one connection.
struct Session {
    client: Client,
    horizon: Statement,
    rows: Statement,
}

/// Reads new rows of an outbox table and decodes their payloads (see the module docs).
pub struct OutboxSource<D: Decoder> {
    spec: OutboxSpec,
    decoder: D,
    /// Rows that did not decode since the runtime last took them.
    rejected: Vec<DeadLetter>,
    future: Option<MaxFuture<D::Item>>,
    session: Option<Session>,
    position: OutboxPosition,
    /// When to take the next horizon while no range is being read.
    next_look: Instant,
    /// With `until=end`: the horizon at the first look, where the input ends.
    end: Option<i64>,
    /// Rows read from the server and not returned yet (the position counts returned ones).
    fetched: VecDeque<Row>,
    /// Whether `fetched` holds the end of the range being read.
    range_fetched: bool,
}

impl<D: Decoder> std::fmt::Debug for OutboxSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxSource")
            .field("spec", &self.spec)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<D: Decoder> OutboxSource<D> {
    /// Relays the outbox of `spec`, decoding payloads with `decoder`; rows that do not
    /// decode are its dead letters ([`Source::take_dead_letters`]).
    pub fn new(spec: OutboxSpec, decoder: D) -> Self {
        OutboxSource {
            spec,
            decoder,
            rejected: Vec::new(),
            future: None,
            session: None,
            position: OutboxPosition::default(),
            next_look: Instant::now(),
            end: None,
            fetched: VecDeque::new(),
            range_fetched: false,
        }
    }

    /// Events more than `max_ahead` ahead of the largest event time accepted so far are
    /// dead letters (see [`crate::max_future`]). `None` (the default): all accepted.
    pub fn max_future(mut self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        self.future = max_ahead.map(|max_ahead| MaxFuture::new(time, max_ahead));
        self
    }

    /// The words for where a record was read (its row id), for aggregate errors.
    pub fn origin_names(&self) -> OriginNames {
        OriginNames::Table {
            name: self.spec.describe(),
        }
    }

    /// Starts the next range if the horizon moved; false if there is nothing new.
    fn next_range(&mut self) -> Result<bool, BoxError> {
        if matches!(self.end, Some(end) if self.position.done_below >= end) {
            return Ok(false);
        }
        let now = Instant::now();
        if now < self.next_look {
            // Sources wait briefly, not for long (engine::source): the runtime polls again.
            std::thread::sleep((self.next_look - now).min(Duration::from_millis(50)));
            return Ok(false);
        }
        self.next_look = now + self.spec.poll;
        let session = open(&mut self.session, &self.spec)?;
        let row = session
            .client
            .query_one(&session.horizon, &[])
            .map_err(|e| self.spec.failed("read the transaction horizon", &e))?;
        let mut horizon: i64 = row.get(0);
        if self.spec.until_end {
            horizon = *self.end.get_or_insert(horizon);
        }
        if horizon <= self.position.done_below {
            return Ok(false);
        }
        self.position.range_end = Some(horizon);
        self.position.after_id = None;
        Ok(true)
    }

    /// Reads the next `batch` rows of the range being read into `fetched`.
    fn fetch(&mut self) -> Result<(), BoxError> {
        let OutboxPosition {
            done_below,
            range_end: Some(range_end),
            after_id,
            ..
        } = self.position
        else {
            return Ok(());
        };
        let session = open(&mut self.session, &self.spec)?;
        let rows = session
            .client
            .query(
                &session.rows,
                &[
                    &done_below,
                    &range_end,
                    &after_id.unwrap_or(i64::MIN),
                    &(self.spec.batch as i64),
                ],
            )
            .map_err(|e| self.spec.failed("read new rows", &e))?;
        self.range_fetched = rows.len() < self.spec.batch;
        self.fetched = rows.into();
        Ok(())
    }

    /// Decodes the payload of row `id` into `out`, or says why it is a dead letter.
    fn take(
        &mut self,
        id: i64,
        payload: Option<&str>,
        out: &mut Vec<D::Item>,
    ) -> Option<DeadLetter> {
        let number = u64::try_from(id).unwrap_or(0);
        let (error, raw) = match payload {
            None => (format!("row id {id} has no payload (NULL)"), ""),
            Some(payload) => match self.decoder.decode(payload) {
                Ok(mut item) => match self.future.as_mut().map(|f| f.admit(&item)) {
                    Some(Err(error)) => (error, payload),
                    _ => {
                        self.decoder.set_origin(&mut item, Origin::line(number));
                        out.push(item);
                        return None;
                    }
                },
                Err(error) => (error, payload),
            },
        };
        Some(DeadLetter {
            source: self.spec.describe(),
            line: number,
            error,
            raw: Raw::from(raw),
        })
    }
}

/// The session of `spec`, connecting first if there is none.
fn open<'s>(
    session: &'s mut Option<Session>,
    spec: &OutboxSpec,
) -> Result<&'s mut Session, PostgresError> {
    if let Some(open) = session.take() {
        return Ok(session.insert(open));
    }
    let mut client = spec
        .config
        .connect(NoTls)
        .map_err(|e| PostgresError::Connect {
            endpoint: uri::endpoint(&spec.config),
            database: uri::database(&spec.config).to_string(),
            user: spec.config.get_user().unwrap_or_default().to_string(),
            reason: reason(&e),
        })?;
    // The read filters on `xmin`, whose selectivity the planner cannot estimate: it guesses
    // few rows match and scans every row above the last id, then sorts (645 ms a query of
    // 10,000 rows over a 1 M-row outbox). Rows in id order from the primary key, stopping
    // at the limit, take 33 ms; this connection runs only the relay's two statements.
    // Without parallel workers: starting them cost 10 ms a query.
    client
        .batch_execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; \
             SET max_parallel_workers_per_gather = 0",
        )
        .map_err(|e| spec.failed("set the read's plan", &e))?;
    let horizon = client
        .prepare(HORIZON)
        .map_err(|e| spec.failed("read the transaction horizon", &e))?;
    let rows = client
        .prepare(&rows_query(spec))
        .map_err(|e| spec.failed("prepare the read", &e))?;
    Ok(session.insert(Session {
        client,
        horizon,
        rows,
    }))
}

/// The horizon: the oldest transaction still running, as a 64-bit id.
const HORIZON: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// The rows of transactions in `[$1, $2)` with ids above `$3`, at most `$4`, in id order.
/// A row's `xmin` is 32 bits; it is widened with the epoch of the next transaction id
/// (one epoch back if that would put it in the future).
fn rows_query(spec: &OutboxSpec) -> String {
    let id = super::sql::ident(&spec.id);
    let payload = match &spec.payload {
        Some(column) => format!("o.{}::text", super::sql::ident(column)),
        None => "row_to_json(o)::text".to_string(),
    };
    format!(
        "SELECT id, payload FROM (\
           SELECT o.{id}::bigint AS id, {payload} AS payload, \
             h.epoch + o.xmin::text::bigint \
               - CASE WHEN h.epoch + o.xmin::text::bigint > h.next THEN 4294967296 ELSE 0 END \
               AS xid \
           FROM {table} o, \
             (SELECT n AS next, (n >> 32) << 32 AS epoch FROM \
               (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n) s) h\
         ) candidates \
         WHERE xid >= $1 AND xid < $2 AND id > $3 ORDER BY id LIMIT $4",
        table = super::sql::ident(&spec.table),
    )
}

impl<D: Decoder> Source for OutboxSource<D> {
    type Item = D::Item;

    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        if self.fetched.is_empty() {
            if self.position.range_end.is_none() && !self.next_range()? {
                return Ok(match self.end {
                    Some(end) if self.position.done_below >= end => SourceStatus::Exhausted,
                    _ => SourceStatus::Idle,
                });
            }
            self.fetch()?;
        }
        for _ in 0..max.max(1) {
            let Some(row) = self.fetched.pop_front() else {
                break;
            };
            let id: i64 = row.get(0);
            let payload: Option<&str> = row.get(1);
            if let Some(letter) = self.take(id, payload, out) {
                self.rejected.push(letter);
            }
            self.position.after_id = Some(id);
        }
        if self.fetched.is_empty() && self.range_fetched {
            if let Some(range_end) = self.position.range_end.take() {
                self.position.done_below = range_end;
            }
            self.position.after_id = None;
        }
        Ok(SourceStatus::More)
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        out.append(&mut self.rejected);
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        let position = OutboxPosition {
            highest_event_time: self.future.as_ref().and_then(MaxFuture::highest),
            ..self.position
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let position: OutboxPosition = position.decode()?;
        if let Some(future) = self.future.as_mut() {
            future.resume(position.highest_event_time);
        }
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<OutboxSpec, String> {
        match OutboxSpec::parse(uri) {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err("not an outbox URI".into()),
        }
    }

    #[test]
    fn parses_the_outbox_and_its_columns() {
        let spec = parse(
            "postgres://weir@127.0.0.1:5433/shop?outbox=public.outbox&id=seq&payload=event\
             &poll=1s&batch=10&application_name=relay",
        )
        .unwrap();
        assert_eq!(
            (
                spec.table.as_str(),
                spec.id.as_str(),
                spec.payload.as_deref()
            ),
            ("public.outbox", "seq", Some("event"))
        );
        assert_eq!((spec.poll, spec.batch), (Duration::from_secs(1), 10));
        assert_eq!(
            spec.describe(),
            "postgres://weir@127.0.0.1:5433/shop outbox public.outbox"
        );
        let plain = parse("postgresql://u@h:1/d?outbox=o").unwrap();
        assert_eq!((plain.id.as_str(), plain.payload), ("id", None));
    }

    #[test]
    fn a_sink_uri_is_not_an_outbox_and_mistakes_are_named() {
        assert_eq!(
            parse("postgres://u@h:1/d?table=t&key=k").unwrap_err(),
            "not an outbox URI"
        );
        for (uri, wanted) in [
            ("postgres://u@h:1/d?outbox=", "need a name"),
            ("postgres://u@h:1/d?outbox=o&poll=0s", "poll=0s"),
            ("postgres://u@h:1/d?outbox=o&batch=x", "batch=x"),
            ("postgres://h:1/d?outbox=o", "names no user"),
        ] {
            let error = parse(uri).unwrap_err();
            assert!(error.contains(wanted), "{uri}: {error}");
        }
    }

    #[test]
    fn the_read_quotes_names_and_widens_xmin() {
        let spec = parse("postgres://u@h:1/d?outbox=my\"box&payload=ev").unwrap();
        let sql = rows_query(&spec);
        assert!(sql.contains(r#"FROM "my""box" o"#), "{sql}");
        assert!(sql.contains(r#"o."ev"::text AS payload"#), "{sql}");
        assert!(sql.contains("o.xmin::text::bigint"), "{sql}");
    }
}
