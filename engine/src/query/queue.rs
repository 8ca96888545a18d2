//! The request queues between callers and keyed instances: [`QueryableState`] (the job's
//! tables by name) and [`TableHandle`] (a caller's side: routing, sending, waiting,
//! merging); the instance's side is [`QueryInbox`] (`inbox.rs`). The tests here drive both
//! sides of the state machine, in one thread.
//!
//! # Lifecycle of a table
//! `Declared` when [`crate::Stream::queryable`] names it; `Serving` once the run created
//! its instances (one queue each, with the routing of keys to instances for this run's
//! parallelism); `Finished` when the run ends. A request in a queue whose instance ended is
//! dropped with its reply channel, which its caller sees as [`QueryError::JobFinished`].
//!
//! # Invariants
//! - A caller never blocks on a queue: a full one refuses at once ([`QueryError::Busy`]).
//! - A caller waits for answers at most its timeout, for all instances of a scan together.
//! - An instance answers at most one scan and [`LOOKUPS_PER_BOUNDARY`] lookups per call of
//!   [`QueryInbox::drain`], so queries delay its next batch by a bounded amount of work.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

pub(crate) use super::inbox::QueryInbox;
use super::table::key_order;
use super::{Entry, Freshness, Lookup, QueryError, Scan, ScanResult, TableQuery, MAX_LIMIT};
use crate::runtime::ThreadWaker as Waker;

/// Requests an instance's queue holds before callers are refused.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// Point lookups an instance answers at most per batch boundary.
pub(crate) const LOOKUPS_PER_BOUNDARY: usize = 256;

/// Which instance owns a key (given as text), for one run's parallelism.
pub(crate) type Route = Arc<dyn Fn(&str) -> Result<usize, String> + Send + Sync>;

type Answered = Result<(Vec<Entry>, Freshness), QueryError>;

/// A query waiting in an instance's queue.
pub(crate) struct Request {
    pub(super) query: TableQuery,
    pub(super) reply: Sender<Answered>,
}

/// A caller's end of an instance's queue, and the thread that drains it.
#[derive(Clone)]
pub(crate) struct Queue {
    tx: Sender<Request>,
    /// Woken after each send: a thread waiting for input (a followed file at its end)
    /// answers at once instead of after its poll interval.
    thread: Arc<OnceLock<Waker>>,
}

enum Phase {
    Declared,
    /// A run's queues by instance; `None` until the instance is created.
    Serving {
        queues: Vec<Option<Queue>>,
        route: Route,
    },
    Finished,
}

struct Table {
    operator: String,
    phase: Mutex<Phase>,
}

/// The queryable tables of a job, by name (see [`crate::query`]). Shared between the job,
/// which serves them while it runs, and whoever asks ([`QueryableState::table`]).
#[derive(Default)]
pub struct QueryableState {
    tables: Mutex<BTreeMap<String, Arc<Table>>>,
}

impl std::fmt::Debug for QueryableState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryableState")
            .field("tables", &self.names())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl QueryableState {
    /// The names of the queryable tables, sorted.
    pub fn names(&self) -> Vec<String> {
        lock(&self.tables).keys().cloned().collect()
    }

    /// Every table's name with the operator that keeps it, sorted by name.
    pub fn tables(&self) -> Vec<(String, String)> {
        lock(&self.tables)
            .iter()
            .map(|(name, t)| (name.clone(), t.operator.clone()))
            .collect()
    }

    /// A handle to the table `name`.
    pub fn table(&self, name: &str) -> Result<TableHandle, QueryError> {
        let tables = lock(&self.tables);
        match tables.get(name) {
            Some(table) => Ok(TableHandle {
                name: name.to_string(),
                table: table.clone(),
            }),
            None => Err(QueryError::UnknownTable {
                table: name.to_string(),
                known: tables.keys().cloned().collect(),
            }),
        }
    }

    /// Names `table` as the table of `operator`; the name of the operator that already
    /// has it, if taken.
    pub(crate) fn declare(&self, table: &str, operator: &str) -> Result<(), String> {
        let mut tables = lock(&self.tables);
        if let Some(t) = tables.get(table) {
            return Err(t.operator.clone());
        }
        tables.insert(
            table.to_string(),
            Arc::new(Table {
                operator: operator.to_string(),
                phase: Mutex::new(Phase::Declared),
            }),
        );
        Ok(())
    }

    /// Opens the queue of instance `instance` of `parallelism` of `table` for a run, which
    /// routes keys with `route`; the instance's end of it.
    pub(crate) fn open(
        &self,
        table: &str,
        instance: usize,
        parallelism: usize,
        route: Route,
        applied: Arc<AtomicI64>,
        capacity: usize,
    ) -> Result<QueryInbox, QueryError> {
        let t = self.table(table)?.table;
        let (tx, rx) = bounded(capacity);
        let thread = Arc::new(OnceLock::new());
        let mut phase = lock(&t.phase);
        let fresh = || (0..parallelism).map(|_| None).collect::<Vec<_>>();
        if !matches!(&*phase, Phase::Serving { queues, .. } if queues.len() == parallelism) {
            *phase = Phase::Serving {
                queues: fresh(),
                route,
            };
        }
        if let Phase::Serving { queues, .. } = &mut *phase {
            if let Some(slot) = queues.get_mut(instance) {
                *slot = Some(Queue {
                    tx,
                    thread: thread.clone(),
                });
            }
        }
        Ok(QueryInbox::new(table, rx, applied, thread))
    }

    /// The run ended: every table stops being served.
    pub(crate) fn finish(&self) {
        for t in lock(&self.tables).values() {
            *lock(&t.phase) = Phase::Finished;
        }
    }
}

/// A caller's handle to one queryable table.
#[derive(Clone)]
pub struct TableHandle {
    name: String,
    table: Arc<Table>,
}

impl std::fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Queries sent and not answered yet (see [`TableHandle`]).
pub(crate) struct Pending {
    table: String,
    replies: Vec<Receiver<Answered>>,
}

impl TableHandle {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value under `key` (a string key as is, other keys as JSON), waiting at most
    /// `timeout` for the instance that owns it.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Lookup, QueryError> {
        let pending = self.send_get(key)?;
        let (mut entries, freshness) = pending.wait(timeout)?;
        Ok(Lookup {
            entry: entries.pop(),
            freshness,
        })
    }

    /// Entries in key order as `scan` says, from every instance, waiting at most `timeout`.
    pub fn scan(&self, scan: &Scan, timeout: Duration) -> Result<ScanResult, QueryError> {
        let limit = scan.limit;
        let (mut entries, freshness) = self.send_scan(scan)?.wait(timeout)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(ScanResult {
            entries,
            more,
            freshness,
        })
    }

    fn serving(&self) -> Result<(Vec<Queue>, Route), QueryError> {
        let not_running = || QueryError::NotRunning {
            table: self.name.clone(),
        };
        match &*lock(&self.table.phase) {
            // Instances are created one after the other: the table is served once all are.
            Phase::Serving { queues, route } => Ok((
                queues
                    .iter()
                    .map(|q| q.clone().ok_or_else(not_running))
                    .collect::<Result<_, _>>()?,
                route.clone(),
            )),
            Phase::Declared => Err(not_running()),
            Phase::Finished => Err(QueryError::JobFinished {
                table: self.name.clone(),
            }),
        }
    }

    pub(crate) fn send_get(&self, key: &str) -> Result<Pending, QueryError> {
        let (queues, route) = self.serving()?;
        let instance = route(key).map_err(|reason| QueryError::BadKey {
            table: self.name.clone(),
            key: key.to_string(),
            reason,
        })?;
        let queue = queues.get(instance).ok_or_else(|| QueryError::Failed {
            table: self.name.clone(),
            reason: format!(
                "internal: key routed to instance {instance} of {}",
                queues.len()
            ),
        })?;
        self.send(
            std::slice::from_ref(queue),
            TableQuery::Get(key.to_string()),
        )
    }

    pub(crate) fn send_scan(&self, scan: &Scan) -> Result<Pending, QueryError> {
        if !(1..=MAX_LIMIT).contains(&scan.limit) {
            return Err(QueryError::BadQuery(format!(
                "limit {}: give a number from 1 to {MAX_LIMIT}",
                scan.limit
            )));
        }
        let (queues, _) = self.serving()?;
        self.send(&queues, TableQuery::Scan(scan.clone()))
    }

    fn send(&self, queues: &[Queue], query: TableQuery) -> Result<Pending, QueryError> {
        let mut replies = Vec::with_capacity(queues.len());
        for queue in queues {
            let (reply, answer) = bounded(1);
            let request = Request {
                query: query.clone(),
                reply,
            };
            match queue.tx.try_send(request) {
                Ok(()) => {
                    if let Some(waker) = queue.thread.get() {
                        waker.wake();
                    }
                    replies.push(answer)
                }
                Err(TrySendError::Full(_)) => {
                    return Err(QueryError::Busy {
                        table: self.name.clone(),
                        waiting: queue.tx.capacity().unwrap_or(0),
                    })
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(QueryError::JobFinished {
                        table: self.name.clone(),
                    })
                }
            }
        }
        Ok(Pending {
            table: self.name.clone(),
            replies,
        })
    }
}

impl Pending {
    /// Waits at most `timeout` for every answer; merges them in key order, the freshness
    /// being the oldest watermark and the newest checkpoint.
    pub(crate) fn wait(self, timeout: Duration) -> Answered {
        let deadline = Instant::now() + timeout;
        let mut entries = Vec::new();
        let mut freshness: Option<Freshness> = None;
        for reply in &self.replies {
            let left = deadline.saturating_duration_since(Instant::now());
            let (mut got, f) = match reply.recv_timeout(left) {
                Ok(answer) => answer?,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(QueryError::Timeout {
                        table: self.table.clone(),
                        waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(QueryError::JobFinished {
                        table: self.table.clone(),
                    })
                }
            };
            entries.append(&mut got);
            freshness = Some(match freshness {
                None => f,
                Some(seen) => Freshness {
                    watermark: seen.watermark.min(f.watermark),
                    checkpoint: seen.checkpoint.max(f.checkpoint),
                },
            });
        }
        entries.sort_by(|a, b| key_order(&a.key, &b.key));
        Ok((
            entries,
            freshness.unwrap_or(Freshness {
                watermark: None,
                checkpoint: None,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::table::QueryableTable;
    use serde_json::json;

    /// A table of `(key, value)` rows that records which queries it answered.
    struct Rows {
        rows: Vec<(&'static str, i64)>,
        asked: Vec<TableQuery>,
    }

    impl QueryableTable for Rows {
        fn answer(&mut self, table: &str, query: &TableQuery) -> Result<Vec<Entry>, QueryError> {
            self.asked.push(query.clone());
            let entry = |&(k, v): &(&str, i64)| Entry {
                key: json!(k),
                value: json!({ "balance": v }),
            };
            match query {
                TableQuery::Get(k) if k == "broken" => Err(QueryError::Failed {
                    table: table.into(),
                    reason: "disk".into(),
                }),
                TableQuery::Get(k) => {
                    Ok(self.rows.iter().filter(|r| r.0 == k).map(entry).collect())
                }
                TableQuery::Scan(s) => Ok(self.rows.iter().take(s.limit + 1).map(entry).collect()),
            }
        }
    }

    fn rows(rows: Vec<(&'static str, i64)>) -> Rows {
        Rows {
            rows,
            asked: Vec::new(),
        }
    }

    /// Keys starting with `a` belong to instance 0, the others to instance 1.
    fn by_first_letter() -> Route {
        Arc::new(|key: &str| match key.chars().next() {
            Some('a') => Ok(0),
            Some(_) => Ok(1),
            None => Err("empty key".into()),
        })
    }

    fn serving(capacity: usize) -> (QueryableState, Vec<QueryInbox>) {
        let state = QueryableState::default();
        state.declare("balances", "accounts").expect("new name");
        let inboxes = (0..2)
            .map(|i| {
                state
                    .open(
                        "balances",
                        i,
                        2,
                        by_first_letter(),
                        Arc::default(),
                        capacity,
                    )
                    .expect("declared")
            })
            .collect();
        (state, inboxes)
    }

    const AT: Freshness = Freshness {
        watermark: Some(1_000),
        checkpoint: Some(3),
    };

    #[test]
    fn a_name_is_taken_once_and_unknown_names_list_the_known_ones() {
        let state = QueryableState::default();
        state.declare("balances", "accounts").expect("new");
        assert_eq!(state.declare("balances", "other"), Err("accounts".into()));
        let e = state.table("balance").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "no queryable table `balance`: the job's queryable tables are [balances]"
        );
        let handle = state.table("balances").expect("known");
        assert!(matches!(
            handle.get("a1", Duration::ZERO),
            Err(QueryError::NotRunning { .. })
        ));
        let first = state.open("balances", 0, 2, by_first_letter(), Arc::default(), 1);
        assert!(
            matches!(
                handle.get("a1", Duration::ZERO),
                Err(QueryError::NotRunning { .. })
            ),
            "served once every instance is"
        );
        drop(first);
        state.finish();
        assert!(matches!(
            handle.get("a1", Duration::ZERO),
            Err(QueryError::JobFinished { .. })
        ));
    }

    #[test]
    fn a_lookup_goes_to_the_owner_only_and_is_answered_at_the_next_boundary() {
        let (state, inboxes) = serving(8);
        let handle = state.table("balances").expect("known");
        let mut tables = [rows(vec![("a1", 5)]), rows(vec![("b1", 7)])];
        let pending = handle.send_get("b1").expect("sent");
        assert!(inboxes[0].is_empty() && !inboxes[1].is_empty());
        assert_eq!(inboxes[0].drain(&mut tables[0], AT), 0);
        assert_eq!(inboxes[1].drain(&mut tables[1], AT), 1);
        let (entries, freshness) = pending.wait(Duration::ZERO).expect("answered");
        assert_eq!(
            entries,
            vec![Entry {
                key: json!("b1"),
                value: json!({"balance": 7})
            }]
        );
        assert_eq!(freshness, AT);
        // Not drained: the caller gives up after its timeout.
        let pending = handle.send_get("a1").expect("sent");
        assert!(matches!(
            pending.wait(Duration::ZERO),
            Err(QueryError::Timeout { .. })
        ));
        let bad = handle.send_get("").err();
        assert!(matches!(bad, Some(QueryError::BadKey { .. })), "{bad:?}");
        let broken = handle.send_get("broken").expect("sent");
        inboxes[1].drain(&mut tables[1], AT);
        assert!(matches!(
            broken.wait(Duration::ZERO),
            Err(QueryError::Failed { .. })
        ));
    }

    #[test]
    fn a_drain_answers_one_scan_or_a_bounded_number_of_lookups() {
        let (state, inboxes) = serving(LOOKUPS_PER_BOUNDARY + 10);
        let handle = state.table("balances").expect("known");
        let mut table = rows(vec![("a1", 1)]);
        let scan = Scan::default();
        let first = handle.send_get("a1").expect("sent");
        let scans = [
            handle.send_scan(&scan).expect("sent"),
            handle.send_scan(&scan).expect("sent"),
        ];
        // The lookup and the first scan, then the drain stops.
        assert_eq!(inboxes[0].drain(&mut table, AT), 2);
        assert!(first.wait(Duration::ZERO).is_ok());
        assert_eq!(
            inboxes[0].drain(&mut table, AT),
            1,
            "the second scan, next boundary"
        );
        for _ in 0..LOOKUPS_PER_BOUNDARY + 5 {
            handle.send_get("a1").expect("room");
        }
        assert_eq!(inboxes[0].drain(&mut table, AT), LOOKUPS_PER_BOUNDARY);
        assert_eq!(inboxes[0].drain(&mut table, AT), 5);
        drop(scans);
    }

    #[test]
    fn a_scan_merges_the_instances_in_key_order_with_the_oldest_watermark() {
        let (state, inboxes) = serving(8);
        let handle = state.table("balances").expect("known");
        let mut tables = [
            rows(vec![("a1", 1), ("a3", 3)]),
            rows(vec![("b2", 2), ("c1", 4)]),
        ];
        let scan = Scan {
            limit: 3,
            ..Scan::default()
        };
        let pending = handle.send_scan(&scan).expect("sent");
        inboxes[1].drain(
            &mut tables[1],
            Freshness {
                watermark: Some(500),
                checkpoint: Some(3),
            },
        );
        inboxes[0].drain(&mut tables[0], AT);
        let (entries, freshness) = pending.wait(Duration::ZERO).expect("answered");
        let keys: Vec<_> = entries.iter().filter_map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a1", "a3", "b2", "c1"]);
        assert_eq!(freshness.watermark, Some(500));
        let e = handle
            .send_scan(&Scan {
                limit: 0,
                ..Scan::default()
            })
            .err();
        assert!(matches!(e, Some(QueryError::BadQuery(_))), "{e:?}");
    }

    #[test]
    fn a_full_queue_refuses_and_an_ended_job_says_so() {
        let (state, inboxes) = serving(1);
        let handle = state.table("balances").expect("known");
        let waiting = handle.send_get("a1").expect("room for one");
        assert!(matches!(
            handle.send_get("a2").err(),
            Some(QueryError::Busy { waiting: 1, .. })
        ));
        // The instance ends with the request in its queue.
        drop(inboxes);
        assert!(matches!(
            waiting.wait(Duration::ZERO),
            Err(QueryError::JobFinished { .. })
        ));
        assert!(matches!(
            handle.send_get("a1").err(),
            Some(QueryError::JobFinished { .. })
        ));
        state.finish();
        assert!(matches!(
            handle.get("a1", Duration::ZERO),
            Err(QueryError::JobFinished { .. })
        ));
    }
}
