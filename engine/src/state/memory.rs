//! The in-memory state backend: Rust values in hash maps, no serialization.

use rustc_hash::FxHashMap;

use super::{MapState, StateBackend, StateError, StateKey, StateValue};

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

    fn flush(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    fn scan(&mut self, mut f: impl FnMut(K, V)) -> Result<(), StateError> {
        for (k, v) in &self.entries {
            f(k.clone(), v.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MapState;

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
