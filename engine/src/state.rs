//! Keyed state behind the [`StateBackend`] trait.
//!
//! Operators ask their backend for named, typed state tables ([`MapState`]) and never see
//! how they are stored. The in-memory backend keeps Rust values in hash maps; a persistent
//! backend (RocksDB) serializes keys and values with serde, which is why keys and values
//! must be serializable even in memory.
//!
//! # Invariants
//! - A backend instance belongs to one operator instance (one thread); no locking.
//! - Entries are only visible through the table they were written to.

use std::hash::Hash;

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What can be a key of keyed state.
pub trait StateKey: Eq + Hash + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Eq + Hash + Clone + Send + Serialize + DeserializeOwned + 'static> StateKey for T {}

/// What can be a value of keyed state.
pub trait StateValue: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> StateValue for T {}

/// A state access failed (a persistent backend's I/O or codec error).
#[derive(Debug, thiserror::Error)]
#[error("state table `{table}`: {message}")]
pub struct StateError {
    /// The table involved.
    pub table: String,
    /// What went wrong.
    pub message: String,
}

/// Storage for the state of one operator instance.
pub trait StateBackend: Send + 'static {
    /// The map table type of this backend.
    type Map<K: StateKey, V: StateValue>: MapState<K, V>;

    /// Opens (or creates) the map table `name`.
    fn map_state<K: StateKey, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<Self::Map<K, V>, StateError>;
}

/// A typed key-value table.
pub trait MapState<K, V>: Send + 'static {
    /// A copy of the value under `key`.
    fn get(&self, key: &K) -> Result<Option<V>, StateError>;

    /// Calls `f` with a reference to the value under `key`, without copying it out.
    fn read<R>(&self, key: &K, f: impl FnOnce(Option<&V>) -> R) -> Result<R, StateError>;

    /// Changes the value under `key` in place if it exists; returns `None` if it does not.
    fn modify<R>(
        &mut self,
        key: &K,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, StateError>;

    /// Changes the value under `key` in place, creating it with `init` first if absent.
    fn update<R>(
        &mut self,
        key: &K,
        init: impl FnOnce() -> V,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<R, StateError>;

    /// Stores `value` under `key`.
    fn put(&mut self, key: K, value: V) -> Result<(), StateError>;

    /// Removes and returns the value under `key`.
    fn take(&mut self, key: &K) -> Result<Option<V>, StateError>;

    /// Number of entries.
    fn len(&self) -> usize;

    /// True if the table has no entries.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps state as Rust values in memory; lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    _private: (),
}

impl MemoryBackend {
    /// A new, empty backend.
    pub fn new() -> Self {
        MemoryBackend::default()
    }
}

impl StateBackend for MemoryBackend {
    type Map<K: StateKey, V: StateValue> = MemoryMap<K, V>;

    fn map_state<K: StateKey, V: StateValue>(
        &mut self,
        _name: &str,
    ) -> Result<MemoryMap<K, V>, StateError> {
        Ok(MemoryMap {
            entries: FxHashMap::default(),
        })
    }
}

/// An in-memory [`MapState`].
#[derive(Debug)]
pub struct MemoryMap<K, V> {
    entries: FxHashMap<K, V>,
}

impl<K: StateKey, V: StateValue> MapState<K, V> for MemoryMap<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        Ok(self.entries.get(key).cloned())
    }

    #[inline]
    fn read<R>(&self, key: &K, f: impl FnOnce(Option<&V>) -> R) -> Result<R, StateError> {
        Ok(f(self.entries.get(key)))
    }

    #[inline]
    fn modify<R>(
        &mut self,
        key: &K,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, StateError> {
        Ok(self.entries.get_mut(key).map(change))
    }

    #[inline]
    fn update<R>(
        &mut self,
        key: &K,
        init: impl FnOnce() -> V,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<R, StateError> {
        // get_mut first: the common case (key present) must not clone the key.
        if let Some(value) = self.entries.get_mut(key) {
            return Ok(change(value));
        }
        let value = self.entries.entry(key.clone()).or_insert_with(init);
        Ok(change(value))
    }

    fn put(&mut self, key: K, value: V) -> Result<(), StateError> {
        self.entries.insert(key, value);
        Ok(())
    }

    fn take(&mut self, key: &K) -> Result<Option<V>, StateError> {
        Ok(self.entries.remove(key))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_update_put_take() -> Result<(), StateError> {
        let mut backend = MemoryBackend::new();
        let mut table: MemoryMap<String, i64> = backend.map_state("sums")?;
        let k = "a".to_string();
        table.update(&k, || 0, |v| *v += 5)?;
        table.update(&k, || 0, |v| *v += 2)?;
        assert_eq!(table.get(&k)?, Some(7));
        assert_eq!(table.read(&k, |v| v.copied())?, Some(7));
        assert_eq!(table.modify(&k, |v| *v *= 2)?, Some(()));
        assert_eq!(table.modify(&"zz".to_string(), |v| *v *= 2)?, None);
        assert_eq!(table.get(&k)?, Some(14));
        table.put("b".into(), 1)?;
        assert_eq!(table.len(), 2);
        assert_eq!(table.take(&k)?, Some(14));
        assert_eq!(table.get(&k)?, None);
        assert_eq!(table.len(), 1);
        Ok(())
    }
}
