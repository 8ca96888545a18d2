//! Answering a query from one instance's table: [`QueryableTable`], which an operator with a
//! queryable table implements (usually through [`answer_from_map`] over its [`MapState`]).
//!
//! # Key order
//! Keys are compared as JSON: strings by their bytes, numbers numerically, anything else
//! (and mixed kinds) by its JSON text. A scan keeps the `limit + 1` smallest matching keys
//! while it visits the table (a heap), so its memory is bounded by the limit whatever the
//! table's size; the extra entry tells the caller that more matched.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;
use serde_json::Value;

use super::{parse_key, Entry, QueryError, TableQuery};
use crate::state::{MapState, StateKey};

/// A table an operator answers queries from (see [`crate::query`]).
pub trait QueryableTable {
    /// Answers `query` from this instance's entries: a lookup gives at most one entry, a
    /// scan at most `limit + 1`, in key order. `table` is the queryable name, for errors.
    fn answer(&mut self, table: &str, query: &TableQuery) -> Result<Vec<Entry>, QueryError>;
}

/// Answers `query` from `map`, showing each value as `project` makes it.
pub fn answer_from_map<K, V, M>(
    map: &mut M,
    table: &str,
    query: &TableQuery,
    project: impl Fn(&V) -> Value,
) -> Result<Vec<Entry>, QueryError>
where
    K: StateKey,
    M: MapState<K, V>,
{
    let failed = |e: crate::state::StateError| QueryError::Failed {
        table: table.to_string(),
        reason: e.to_string(),
    };
    match query {
        TableQuery::Get(text) => {
            let key: K = key_of(table, text)?;
            let value = map.read(&key, |v| v.map(&project)).map_err(failed)?;
            Ok(value
                .map(|value| Entry {
                    key: json(&key),
                    value,
                })
                .into_iter()
                .collect())
        }
        TableQuery::Scan(scan) => {
            let bound = |text: &Option<String>| {
                text.as_deref()
                    .map(|t| key_of::<K>(table, t).map(|k| json(&k)))
                    .transpose()
            };
            let (from, to) = (bound(&scan.from)?, bound(&scan.to)?);
            let mut kept = Smallest::new(scan.limit + 1);
            let mut not_a_string = false;
            map.scan(|key, value| {
                let key = json(&key);
                if !in_range(&key, from.as_ref(), to.as_ref()) {
                    return;
                }
                if let Some(prefix) = &scan.prefix {
                    match key.as_str() {
                        Some(k) if k.starts_with(prefix.as_str()) => {}
                        Some(_) => return,
                        None => {
                            not_a_string = true;
                            return;
                        }
                    }
                }
                // Only keys that could be kept pay for their value's projection.
                if !kept.would_keep(&key) {
                    return;
                }
                let value = project(&value);
                if scan.filter.as_ref().is_none_or(|f| f.accepts(&value)) {
                    kept.push(Entry { key, value });
                }
            })
            .map_err(failed)?;
            if not_a_string {
                return Err(QueryError::BadQuery(format!(
                    "prefix= works on string keys only; table `{table}` has other keys"
                )));
            }
            Ok(kept.into_sorted())
        }
    }
}

fn key_of<K: StateKey>(table: &str, text: &str) -> Result<K, QueryError> {
    parse_key(text).map_err(|reason| QueryError::BadKey {
        table: table.to_string(),
        key: text.to_string(),
        reason,
    })
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn in_range(key: &Value, from: Option<&Value>, to: Option<&Value>) -> bool {
    from.is_none_or(|f| key_order(key, f) != Ordering::Less)
        && to.is_none_or(|t| key_order(key, t) == Ordering::Less)
}

/// The order of keys (see the module docs): the order of scan answers, for callers that
/// merge several (the tasks of a job run per Kafka partition).
pub fn key_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .unwrap_or(f64::NAN)
                .total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
        },
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// An entry ordered by its key.
struct ByKey(Entry);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        key_order(&self.0.key, &other.0.key)
    }
}

/// The `capacity` entries with the smallest keys among those pushed.
pub(crate) struct Smallest {
    heap: BinaryHeap<ByKey>,
    capacity: usize,
}

impl Smallest {
    pub(crate) fn new(capacity: usize) -> Self {
        Smallest {
            heap: BinaryHeap::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    /// True if an entry with `key` would be kept now.
    pub(crate) fn would_keep(&self, key: &Value) -> bool {
        self.heap.len() < self.capacity
            || self
                .heap
                .peek()
                .is_some_and(|largest| key_order(key, &largest.0.key) == Ordering::Less)
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        if self.would_keep(&entry.key) {
            self.heap.push(ByKey(entry));
            if self.heap.len() > self.capacity {
                self.heap.pop();
            }
        }
    }

    /// The kept entries, smallest key first.
    pub(crate) fn into_sorted(self) -> Vec<Entry> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Filter, Scan};
    use crate::state::{MemoryBackend, StateBackend};
    use serde_json::json;

    fn table() -> impl MapState<String, i64> {
        let mut backend = MemoryBackend::new();
        let mut map = backend.map_state::<String, i64>("t").expect("open");
        for (i, balance) in [5, 20_000, 300, 15_000, 7, 10_000].into_iter().enumerate() {
            map.put(format!("a{}", i + 1), balance).expect("put");
        }
        map.put("b1".into(), 50_000).expect("put");
        map
    }

    fn keys(entries: &[Entry]) -> Vec<&str> {
        entries.iter().filter_map(|e| e.key.as_str()).collect()
    }

    fn scan(map: &mut impl MapState<String, i64>, s: Scan) -> Vec<Entry> {
        answer_from_map(map, "t", &TableQuery::Scan(s), |b| json!({ "balance": b })).expect("scan")
    }

    #[test]
    fn a_lookup_gives_the_entry_or_nothing() {
        let mut map = table();
        let get = |map: &mut _, k: &str| {
            answer_from_map(map, "t", &TableQuery::Get(k.into()), |b: &i64| json!(b)).expect("get")
        };
        assert_eq!(
            get(&mut map, "a2"),
            vec![Entry {
                key: json!("a2"),
                value: json!(20_000)
            }]
        );
        assert!(get(&mut map, "zz").is_empty());
    }

    #[test]
    fn scans_keep_the_smallest_keys_in_range_with_prefix_and_filter() {
        let mut map = table();
        let range = Scan {
            from: Some("a2".into()),
            to: Some("a5".into()),
            ..Scan::default()
        };
        assert_eq!(
            keys(&scan(&mut map, range)),
            ["a2", "a3", "a4"],
            "to is exclusive"
        );
        let limited = Scan {
            limit: 2,
            ..Scan::default()
        };
        assert_eq!(
            keys(&scan(&mut map, limited)),
            ["a1", "a2", "a3"],
            "limit + 1 kept"
        );
        let prefixed = Scan {
            prefix: Some("b".into()),
            ..Scan::default()
        };
        assert_eq!(keys(&scan(&mut map, prefixed)), ["b1"]);
        let rich = Scan {
            filter: Some(Filter::parse("balance>10000").expect("filter")),
            ..Scan::default()
        };
        assert_eq!(keys(&scan(&mut map, rich)), ["a2", "a4", "b1"]);
    }

    #[test]
    fn numeric_keys_order_numerically() {
        assert_eq!(key_order(&json!(9), &json!(10)), Ordering::Less);
        assert_eq!(key_order(&json!("9"), &json!("10")), Ordering::Greater);
        let mut backend = MemoryBackend::new();
        let mut map = backend.map_state::<u64, i64>("n").expect("open");
        for k in [10, 9, 100, 1] {
            map.put(k, 0).expect("put");
        }
        let from_9 = Scan {
            from: Some("9".into()),
            ..Scan::default()
        };
        let got =
            answer_from_map(&mut map, "n", &TableQuery::Scan(from_9), |v| json!(v)).expect("scan");
        let got: Vec<u64> = got.iter().filter_map(|e| e.key.as_u64()).collect();
        assert_eq!(got, [9, 10, 100]);
        let e = answer_from_map(&mut map, "n", &TableQuery::Get("x".into()), |v| json!(v));
        assert!(matches!(e, Err(QueryError::BadKey { .. })), "{e:?}");
        let prefix = Scan {
            prefix: Some("1".into()),
            ..Scan::default()
        };
        let e = answer_from_map(&mut map, "n", &TableQuery::Scan(prefix), |v| json!(v));
        assert!(matches!(e, Err(QueryError::BadQuery(_))), "{e:?}");
    }
}
