//! Broadcast state (Flink's broadcast `MapState`): a small map that every instance of a
//! keyed operator holds in full, written only by the elements of a broadcast (control)
//! stream, and read by the keyed side for every key.
//!
//! It lives in memory whatever the state backend, as in Flink: it is meant for rules,
//! thresholds and lookup tables, not for data that grows with the keyed input. Every
//! instance sees the same control elements, so every instance holds the same map, and a
//! checkpoint keeps it once (instance 0's copy, see `runtime::keyed`), encoded with
//! [`BroadcastState::encode`]; on a restore, at any parallelism, every instance loads
//! that one copy ([`BroadcastState::decode`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{StateError, StateTable, StateValue};

/// What can be a key of broadcast state: ordered, so the map iterates (and is checkpointed)
/// in the same order on every instance.
pub trait BroadcastKey: Ord + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Ord + Clone + Send + Serialize + DeserializeOwned + 'static> BroadcastKey for T {}

/// Names a broadcast state and its key and value types (Flink's `MapStateDescriptor` given
/// to `broadcast(..)`): the name is the operator's state table in `weir describe` and the
/// metrics.
///
/// ```
/// use weir_engine::state::BroadcastStateDescriptor;
/// const THRESHOLDS: BroadcastStateDescriptor<String, i64> =
///     BroadcastStateDescriptor::new("thresholds");
/// assert_eq!(THRESHOLDS.name(), "thresholds");
/// ```
#[derive(Debug)]
pub struct BroadcastStateDescriptor<K, V> {
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> BroadcastStateDescriptor<K, V> {
    /// A broadcast state called `name`.
    pub const fn new(name: &'static str) -> Self {
        BroadcastStateDescriptor {
            name,
            _types: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// The broadcast state of one operator instance: a map from `K` to `V`, in key order. The
/// keyed side gets it as `&BroadcastState` (read only); the broadcast side as
/// `&mut BroadcastState`.
#[derive(Debug, Clone)]
pub struct BroadcastState<K, V> {
    name: &'static str,
    entries: BTreeMap<K, V>,
}

impl<K: BroadcastKey, V: StateValue> BroadcastState<K, V> {
    /// An empty broadcast state named by `descriptor`.
    pub fn new(descriptor: &BroadcastStateDescriptor<K, V>) -> Self {
        BroadcastState {
            name: descriptor.name,
            entries: BTreeMap::new(),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    /// The value under `key`, to change in place.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key)
    }

    /// True if `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.entries.insert(key, value)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entries, encoded (bincode, in key order) for a checkpoint.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        let entries: Vec<(&K, &V)> = self.entries.iter().collect();
        bincode::serialize(&entries).map_err(|e| self.error("cannot encode", e))
    }

    /// Replaces the entries by those `bytes` encode ([`BroadcastState::encode`]).
    pub fn decode(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let entries: Vec<(K, V)> =
            bincode::deserialize(bytes).map_err(|e| self.error("cannot decode", e))?;
        self.entries = entries.into_iter().collect();
        Ok(())
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> StateError {
        StateError {
            table: self.name.to_string(),
            message: format!("{what} the broadcast state: {e}"),
        }
    }
}

/// Listed with the operator's tables, so `weir describe` and `weir_state_table_entries`
/// show it like the others.
impl<K: BroadcastKey, V: StateValue> StateTable for BroadcastState<K, V> {
    fn name(&self) -> &str {
        self.name
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn flush(&mut self) -> Result<(), StateError> {
        // In memory only: a checkpoint takes it whole (`encode`).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: BroadcastStateDescriptor<String, f64> = BroadcastStateDescriptor::new("rates");

    #[test]
    fn entries_survive_encoding_in_key_order() {
        let mut state = BroadcastState::new(&RATES);
        state.insert("USD".into(), 1.1);
        state.insert("CHF".into(), 0.95);
        assert_eq!(state.insert("USD".into(), 1.08), Some(1.1));
        let bytes = state.encode().unwrap();
        let mut restored = BroadcastState::new(&RATES);
        restored.insert("GBP".into(), 0.8);
        restored.decode(&bytes).unwrap();
        let entries: Vec<_> = restored.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(
            entries,
            [("CHF".to_string(), 0.95), ("USD".to_string(), 1.08)]
        );
        assert_eq!((restored.name(), restored.len()), ("rates", 2));
    }

    #[test]
    fn bytes_of_another_type_are_an_error_naming_the_state() {
        let mut state = BroadcastState::new(&RATES);
        let error = state.decode(&[1, 2, 3]).unwrap_err();
        assert_eq!(error.table, "rates");
        assert!(error.message.contains("cannot decode"), "{error}");
    }
}
