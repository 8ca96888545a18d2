//! Map state: many `(user key, value)` entries under each stream key (Flink's `MapState`),
//! for a key whose state is a collection too big to read and write back whole on each event.
//!
//! # Layout
//! Each entry is stored on its own, under the [`Namespaced`] key `(stream key, user key)`:
//! in RocksDB its key is the stream key's key group (2 bytes), the bincode of the stream
//! key, then the bincode of the user key ([`super::codec`]), as Flink's `RocksDBMapState`
//! puts the user key after the key group, key and namespace. So
//! - a put or remove writes one small RocksDB entry, whatever the size of the key's map;
//! - a key's entries are one contiguous key range (bincode encodings are self-delimiting,
//!   so no other key's encoding starts with this key's): iterating them is a prefix scan,
//!   and the range lies inside the key group's range, so key-group restores move it whole.
//!
//! In memory the state is a nested hash map (stream key, then user key), encoded at a
//! checkpoint in the same layout, so a checkpoint of either backend restores into the
//! other, at any parallelism.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use rustc_hash::FxHashMap;

use super::codec::{decode_key, decode_value, encode_key, encode_value};
use super::memory::{hand_over, Checkpoints};
use super::rocksdb::{rocks_error, EncodedEntry, RocksMap};
use super::{MapState, Namespaced, StateError, StateKey, StateTable, StateValue, UserKey};

/// The entries of one stream key, in no particular order (a prefix scan in RocksDB).
pub type MapEntries<'a, UK, UV> = Box<dyn Iterator<Item = Result<(UK, UV), StateError>> + 'a>;

/// A map-state table: entries `(user key, value)` under each stream key.
pub trait KeyedMapState<K, UK, UV>: StateTable + 'static {
    /// The value under `user_key` in `key`'s map.
    fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError>;

    /// Whether `key`'s map has an entry under `user_key`.
    fn contains(&self, key: &K, user_key: &UK) -> Result<bool, StateError>;

    /// Stores `value` under `user_key` in `key`'s map.
    fn put(&mut self, key: &K, user_key: UK, value: UV) -> Result<(), StateError>;

    /// Removes and returns the value under `user_key` in `key`'s map.
    fn remove(&mut self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError>;

    /// Every entry of `key`'s map, read as the iterator goes.
    fn entries(&mut self, key: &K) -> Result<MapEntries<'_, UK, UV>, StateError>;

    /// Removes `key`'s whole map; returns how many entries it had.
    fn clear(&mut self, key: &K) -> Result<usize, StateError>;

    /// Counts the entries again after a restore filled the table behind its back (the
    /// count is what [`StateTable::len`] reports).
    fn recount(&mut self) -> Result<(), StateError>;
}

fn namespaced<K: Clone, UK: Clone>(key: &K, user_key: &UK) -> Namespaced<K, UK> {
    Namespaced {
        key: key.clone(),
        namespace: user_key.clone(),
    }
}

/// Map state in memory: a map per stream key.
#[derive(Debug)]
pub struct MemoryKeyedMap<K, UK, UV> {
    name: String,
    maps: FxHashMap<K, FxHashMap<UK, UV>>,
    entries: usize,
    checkpoints: Checkpoints,
}

impl<K: StateKey, UK: UserKey, UV: StateValue> MemoryKeyedMap<K, UK, UV> {
    /// A table holding the `restored` entries (encoded as in [`super::codec`]).
    pub(crate) fn restored(
        name: &str,
        restored: Vec<EncodedEntry>,
        checkpoints: Checkpoints,
    ) -> Result<Self, StateError> {
        let table = checkpoints.as_ref().map_or(name, |(_, t)| t.as_str());
        let mut maps: FxHashMap<K, FxHashMap<UK, UV>> = FxHashMap::default();
        let entries = restored.len();
        for (key, value) in restored {
            let Namespaced { key, namespace } = decode_key(table, &key)?;
            let value = decode_value(table, &value)?;
            maps.entry(key).or_default().insert(namespace, value);
        }
        Ok(MemoryKeyedMap {
            name: name.to_string(),
            maps,
            entries,
            checkpoints,
        })
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue> StateTable for MemoryKeyedMap<K, UK, UV> {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> usize {
        self.entries
    }

    fn flush(&mut self) -> Result<(), StateError> {
        hand_over(&self.checkpoints, |table| {
            let mut encoded = Vec::with_capacity(self.entries);
            for (key, map) in &self.maps {
                for (user_key, value) in map {
                    encoded.push((
                        encode_key(table, &namespaced(key, user_key))?,
                        encode_value(table, value)?,
                    ));
                }
            }
            Ok(encoded)
        })
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue> KeyedMapState<K, UK, UV>
    for MemoryKeyedMap<K, UK, UV>
{
    fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError> {
        Ok(self.maps.get(key).and_then(|m| m.get(user_key)).cloned())
    }

    fn contains(&self, key: &K, user_key: &UK) -> Result<bool, StateError> {
        Ok(self.maps.get(key).is_some_and(|m| m.contains_key(user_key)))
    }

    fn put(&mut self, key: &K, user_key: UK, value: UV) -> Result<(), StateError> {
        // get_mut first: a key with a map already must not clone the key.
        let map = match self.maps.get_mut(key) {
            Some(map) => map,
            None => self.maps.entry(key.clone()).or_default(),
        };
        if map.insert(user_key, value).is_none() {
            self.entries += 1;
        }
        Ok(())
    }

    fn remove(&mut self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError> {
        let Some(map) = self.maps.get_mut(key) else {
            return Ok(None);
        };
        let removed = map.remove(user_key);
        if removed.is_some() {
            self.entries -= 1;
        }
        if map.is_empty() {
            self.maps.remove(key);
        }
        Ok(removed)
    }

    fn entries(&mut self, key: &K) -> Result<MapEntries<'_, UK, UV>, StateError> {
        let entries = self.maps.get(key).into_iter().flatten();
        Ok(Box::new(entries.map(|(k, v)| Ok((k.clone(), v.clone())))))
    }

    fn clear(&mut self, key: &K) -> Result<usize, StateError> {
        let cleared = self.maps.remove(key).map_or(0, |m| m.len());
        self.entries -= cleared;
        Ok(cleared)
    }

    fn recount(&mut self) -> Result<(), StateError> {
        self.entries = self.maps.values().map(|m| m.len()).sum();
        Ok(())
    }
}

/// Map state in RocksDB: one RocksDB entry per map entry, behind the write-back cache of a
/// [`RocksMap`] keyed by `(stream key, user key)`.
pub struct RocksKeyedMap<K, UK, UV> {
    inner: RocksMap<Namespaced<K, UK>, UV>,
}

impl<K, UK, UV> std::fmt::Debug for RocksKeyedMap<K, UK, UV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKeyedMap")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue> RocksKeyedMap<K, UK, UV> {
    pub(crate) fn new(inner: RocksMap<Namespaced<K, UK>, UV>) -> Self {
        RocksKeyedMap { inner }
    }

    /// Read options bounding an iterator to the keys starting with `prefix`.
    fn prefix_bound(prefix: &[u8]) -> ReadOptions {
        let mut read = ReadOptions::default();
        // The first key after every key that starts with `prefix`: the prefix with its last
        // byte below 0xFF incremented (and what follows it dropped).
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                read.set_iterate_upper_bound(end);
                break;
            }
        }
        read
    }

    /// The encoded keys of `key`'s entries in RocksDB (the cache written back first, so
    /// RocksDB holds every entry).
    fn encoded_prefix(&mut self, key: &K) -> Result<Vec<u8>, StateError> {
        self.inner.write_clean()?;
        encode_key(&self.inner.table, key)
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue> StateTable for RocksKeyedMap<K, UK, UV> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.inner.flush()
    }
}

impl<K: StateKey, UK: UserKey, UV: StateValue> KeyedMapState<K, UK, UV>
    for RocksKeyedMap<K, UK, UV>
{
    fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError> {
        self.inner.get(&namespaced(key, user_key))
    }

    fn contains(&self, key: &K, user_key: &UK) -> Result<bool, StateError> {
        self.inner
            .read(&namespaced(key, user_key), |value| value.is_some())
    }

    fn put(&mut self, key: &K, user_key: UK, value: UV) -> Result<(), StateError> {
        let entry = Namespaced {
            key: key.clone(),
            namespace: user_key,
        };
        self.inner.put(entry, value)
    }

    fn remove(&mut self, key: &K, user_key: &UK) -> Result<Option<UV>, StateError> {
        self.inner.take(&namespaced(key, user_key))
    }

    fn entries(&mut self, key: &K) -> Result<MapEntries<'_, UK, UV>, StateError> {
        let prefix = self.encoded_prefix(key)?;
        let (store, table) = (self.inner.store(), self.inner.table.as_str());
        let cf = store.column_family(table)?;
        let scan = store.db.iterator_cf_opt(
            &cf,
            Self::prefix_bound(&prefix),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        Ok(Box::new(scan.map(move |entry| {
            let (key, value) = entry.map_err(|e| rocks_error(table, "scan failed", e))?;
            let entry: Namespaced<K, UK> = decode_key(table, &key)?;
            Ok((entry.namespace, decode_value(table, &value)?))
        })))
    }

    fn clear(&mut self, key: &K) -> Result<usize, StateError> {
        let prefix = self.encoded_prefix(key)?;
        let store = Arc::clone(self.inner.store());
        let table = self.inner.table.as_str();
        let cf = store.column_family(table)?;
        let mut batch = WriteBatch::default();
        // Point deletes of exactly the entries there are (a range delete would be re-read
        // by every later scan of the table until compaction).
        for entry in store.db.iterator_cf_opt(
            &cf,
            Self::prefix_bound(&prefix),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (encoded, _) = entry.map_err(|e| rocks_error(table, "scan failed", e))?;
            batch.delete_cf(&cf, encoded);
        }
        let cleared = batch.len();
        store
            .db
            .write_opt(batch, &self.inner.write_options)
            .map_err(|e| rocks_error(table, "write failed (is the disk full?)", e))?;
        // The cache is clean (written back above): its entries of `key` just go.
        self.inner.cache.retain(|entry, _| entry.key != *key);
        self.inner.entries = self.inner.entries.saturating_sub(cleared);
        Ok(cleared)
    }

    fn recount(&mut self) -> Result<(), StateError> {
        self.inner.write_clean()?;
        let store = Arc::clone(self.inner.store());
        let table = self.inner.table.as_str();
        let cf = store.column_family(table)?;
        let mut entries = 0;
        for entry in store.db.iterator_cf(&cf, IteratorMode::Start) {
            entry.map_err(|e| rocks_error(table, "scan failed", e))?;
            entries += 1;
        }
        self.inner.entries = entries;
        Ok(())
    }
}

#[cfg(test)]
#[path = "keyed_tests.rs"]
mod tests;
