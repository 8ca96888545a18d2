//! The read side of a window: each key's latest result, kept in the state table
//! `window-latest` when the job makes the window queryable
//! ([`super::WindowedStream::queryable`]), and answered from there while the job runs
//! (`GET /api/v1/state/{table}/{key}`).
//!
//! # Invariants
//! - A key's entry is the result of the window that ends last among the key's fired
//!   windows. An update of an older window (a late event within the allowed lateness)
//!   replaces it only if that window ends as late: it does not hide a newer result.
//! - The table is written where results are emitted ([`emit_result`]), in the same step,
//!   so it is in every checkpoint with the results it has sent and a restore brings back
//!   the answers of that checkpoint.
//! - Windows that are not queryable open no table and pay one branch per result.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use weir_engine::error::BoxError;
use weir_engine::query::{answer_from_map, Entry, QueryableTable, TableQuery};
use weir_engine::QueryError;
use weir_engine::{MapState, StateBackend, StateKey, StateTable, StateValue};

use super::{Window, WindowEvent, WindowOutput, WindowResult};

/// The name of the table of latest results.
pub(super) const LATEST: &str = "window-latest";

/// A key's latest window result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestWindow<R> {
    /// The window.
    pub window: Window,
    /// Its aggregate.
    pub result: R,
}

impl<R: Serialize> LatestWindow<R> {
    /// What a query answers: the aggregate's fields (or `result` when it is not a JSON
    /// object) with the window's bounds as `window_start` and `window_end`, the columns a
    /// window-agg row has.
    fn to_json(&self) -> Value {
        let mut fields = match serde_json::to_value(&self.result) {
            Ok(Value::Object(fields)) => fields,
            Ok(other) => Map::from_iter([("result".to_string(), other)]),
            Err(e) => Map::from_iter([("error".to_string(), Value::String(e.to_string()))]),
        };
        fields.insert("window_start".into(), self.window.start.into());
        fields.insert("window_end".into(), self.window.end.into());
        Value::Object(fields)
    }
}

/// Each key's latest window result, for queries.
pub(crate) struct LatestResults<S: StateBackend, K: StateKey, R: StateValue> {
    table: S::Map<K, LatestWindow<R>>,
}

impl<S: StateBackend, K: StateKey, R: StateValue> LatestResults<S, K, R> {
    /// Opens the table if the window is queryable.
    pub(crate) fn open_if(queryable: bool, state: &mut S) -> Result<Option<Self>, BoxError> {
        if !queryable {
            return Ok(None);
        }
        Ok(Some(LatestResults {
            table: state.map_state(LATEST)?,
        }))
    }

    /// Keeps `result` as its key's latest, unless the key has one of a window that ends
    /// later (see the module's invariants). One lookup of the key (a `read` then a `put`
    /// looked a key RocksDB does not hold up twice).
    fn record(&mut self, result: &WindowResult<K, R>) -> Result<(), BoxError> {
        let latest = LatestWindow {
            window: result.window,
            result: result.value.clone(),
        };
        self.table.put_unless(&result.key, latest, |kept| {
            kept.window.end > result.window.end
        })?;
        Ok(())
    }

    /// The table, for the operator's list of tables.
    pub(crate) fn table(&mut self) -> &mut dyn StateTable {
        &mut self.table
    }
}

impl<S: StateBackend, K: StateKey, R: StateValue> QueryableTable for LatestResults<S, K, R> {
    fn answer(&mut self, table: &str, query: &TableQuery) -> Result<Vec<Entry>, QueryError> {
        answer_from_map(&mut self.table, table, query, LatestWindow::to_json)
    }
}

/// Emits a fired window's `result` (at the window's last millisecond), keeping it in
/// `latest` first when the window is queryable.
#[inline]
pub(crate) fn emit_result<S, K, R, T>(
    latest: &mut Option<LatestResults<S, K, R>>,
    result: WindowResult<K, R>,
    out: &mut WindowOutput<K, R, T>,
) -> Result<(), BoxError>
where
    S: StateBackend,
    K: StateKey,
    R: StateValue,
{
    if let Some(latest) = latest {
        latest.record(&result)?;
    }
    out.emit(result.window.end - 1, WindowEvent::Result(result));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::query::Scan;
    use weir_engine::state::{shared_block_cache, RocksBackend, RocksStore};
    use weir_engine::MemoryBackend;

    fn result(key: &str, start: i64, end: i64, count: u64) -> WindowResult<String, u64> {
        WindowResult {
            key: key.to_string(),
            window: Window { start, end },
            value: count,
            is_update: false,
            timing: crate::window::Timing::OnTime,
        }
    }

    /// Results through `emit_result` into a queryable window's table on `state`.
    fn latest_story<S: StateBackend>(mut state: S) {
        let mut latest: Option<LatestResults<S, String, u64>> =
            LatestResults::open_if(true, &mut state).unwrap();
        let mut out = WindowOutput::<String, u64, ()>::default();
        for r in [
            result("a", 0, 10, 1),
            result("a", 10, 20, 2),
            // An update of the older window, through allowed lateness.
            result("a", 0, 10, 3),
            result("b", 0, 10, 4),
            // An update of the same window replaces its result.
            result("b", 0, 10, 5),
        ] {
            emit_result(&mut latest, r, &mut out).unwrap();
        }
        assert_eq!(out.len(), 5, "every result is emitted");
        let table = latest.as_mut().unwrap();
        let get = |table: &mut LatestResults<S, String, u64>, key: &str| {
            table
                .answer("windows", &TableQuery::Get(key.into()))
                .unwrap()[0]
                .value
                .clone()
        };
        assert_eq!(
            get(table, "a"),
            serde_json::json!({"result": 2, "window_start": 10, "window_end": 20})
        );
        assert_eq!(
            get(table, "b"),
            serde_json::json!({"result": 5, "window_start": 0, "window_end": 10})
        );
        let all = table
            .answer("windows", &TableQuery::Scan(Scan::default()))
            .unwrap();
        let keys: Vec<_> = all.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, vec![serde_json::json!("a"), serde_json::json!("b")]);
    }

    #[test]
    fn a_key_keeps_the_window_that_ends_last_and_an_older_update_does_not_hide_it() {
        latest_story(MemoryBackend::default());
    }

    #[test]
    fn the_same_holds_on_rocksdb_with_every_record_read_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache()).unwrap();
        // A cache of 1 entry: each record reads and writes RocksDB.
        latest_story(RocksBackend::new(store, "op", 1));
    }

    #[test]
    fn a_window_that_is_not_queryable_opens_no_table() {
        let mut state = MemoryBackend::default();
        let latest: Option<LatestResults<MemoryBackend, String, u64>> =
            LatestResults::open_if(false, &mut state).unwrap();
        assert!(latest.is_none());
    }
}
