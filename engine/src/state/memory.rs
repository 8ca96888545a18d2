//! The in-memory state backend: Rust values in hash maps, no serialization on the hot path.
//!
//! # Checkpoints
//! A backend made with [`MemoryBackend::checkpointed`] takes part in checkpoints through a
//! shared [`MemorySnapshots`]: while a snapshot is being taken, each table encodes all its
//! entries (in the layout of [`super::codec`]) when the operator flushes it, and the runtime
//! writes them into the checkpoint (a full copy, as Flink's heap state backend does). On a
//! restore, each table decodes the entries restored for it when the operator opens it.
//!
//! # Invariants
//! - A table's name is `<operator>/<table>`, as in the RocksDB backend, so checkpoints of
//!   either backend restore into the other.

use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::FxHashMap;

use super::codec::{decode_key, decode_value, encode_key, encode_value};
use super::keyed::MemoryKeyedMap;
use super::rocksdb::{EncodedEntry, EncodedTable};
use super::timers::MemoryTimers;
use super::{MapState, StateBackend, StateError, StateKey, StateTable, StateValue, UserKey};

/// Keeps state as Rust values in memory; lost when the process ends unless checkpointed.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    checkpoints: Option<(Arc<MemorySnapshots>, String)>,
}

impl MemoryBackend {
    /// A new, empty backend.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    /// A backend for the tables of `operator` whose snapshots and restored entries go
    /// through `snapshots`.
    pub fn checkpointed(snapshots: Arc<MemorySnapshots>, operator: &str) -> Self {
        MemoryBackend {
            checkpoints: Some((snapshots, operator.to_string())),
        }
    }
}

/// The checkpoint side of the memory tables of one operator instance.
#[derive(Debug, Default)]
pub struct MemorySnapshots {
    inner: Mutex<Snapshots>,
}

#[derive(Debug, Default)]
struct Snapshots {
    /// A snapshot is being taken: flushed tables hand their entries over.
    taking: bool,
    taken: Vec<EncodedTable>,
    /// Entries restored from a checkpoint, by table, until the table is opened.
    restored: FxHashMap<String, Vec<EncodedEntry>>,
}

impl MemorySnapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        // The data is plain vectors: a panic elsewhere leaves nothing half-changed in them.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a snapshot: tables flushed from now on hand over their entries.
    pub fn begin(&self) {
        let mut s = self.lock();
        s.taking = true;
        s.taken.clear();
    }

    /// Ends the snapshot and returns the tables handed over since [`MemorySnapshots::begin`].
    pub fn take(&self) -> Vec<EncodedTable> {
        let mut s = self.lock();
        s.taking = false;
        std::mem::take(&mut s.taken)
    }

    /// Adds a restored entry of `table` (its encoded key and value).
    pub fn restore_entry(&self, table: &str, key: &[u8], value: &[u8]) {
        let entry = (key.to_vec(), value.to_vec());
        let mut s = self.lock();
        // Entries come table by table: the name is copied once per table, not per entry.
        match s.restored.get_mut(table) {
            Some(entries) => entries.push(entry),
            None => {
                s.restored.insert(table.to_string(), vec![entry]);
            }
        }
    }
}

impl StateBackend for MemoryBackend {
    type Map<K: StateKey, V: StateValue> = MemoryMap<K, V>;
    type KeyedMap<K: StateKey, UK: UserKey, UV: StateValue> = MemoryKeyedMap<K, UK, UV>;
    type Timers<K: StateKey> = MemoryTimers<K>;

    fn timer_queue<K: StateKey>(&mut self, _name: &str) -> Result<MemoryTimers<K>, StateError> {
        Ok(MemoryTimers::default())
    }

    fn map_state<K: StateKey, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<MemoryMap<K, V>, StateError> {
        let (restored, checkpoints) = self.open_table(name);
        let table = checkpoints
            .as_ref()
            .map_or(name, |(_, table)| table.as_str());
        let mut entries = FxHashMap::default();
        entries.reserve(restored.len());
        for (key, value) in restored {
            entries.insert(decode_key(table, &key)?, decode_value(table, &value)?);
        }
        Ok(MemoryMap {
            name: name.to_string(),
            entries,
            checkpoints,
        })
    }

    fn keyed_map_state<K: StateKey, UK: UserKey, UV: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<MemoryKeyedMap<K, UK, UV>, StateError> {
        let (restored, checkpoints) = self.open_table(name);
        MemoryKeyedMap::restored(name, restored, checkpoints)
    }
}

impl MemoryBackend {
    /// The entries restored for table `name` (none if not checkpointed), and where the
    /// table hands its entries at a snapshot.
    pub(crate) fn open_table(&self, name: &str) -> (Vec<EncodedEntry>, Checkpoints) {
        let Some((snapshots, operator)) = &self.checkpoints else {
            return (Vec::new(), None);
        };
        let table = format!("{operator}/{name}");
        let restored = snapshots.lock().restored.remove(&table).unwrap_or_default();
        (restored, Some((snapshots.clone(), table)))
    }
}

/// Where a memory table hands its entries at a snapshot, and its full name there.
pub(crate) type Checkpoints = Option<(Arc<MemorySnapshots>, String)>;

/// Hands a table's entries, encoded by `encode`, to the snapshot being taken (if one is).
pub(crate) fn hand_over(
    checkpoints: &Checkpoints,
    encode: impl FnOnce(&str) -> Result<Vec<EncodedEntry>, StateError>,
) -> Result<(), StateError> {
    let Some((snapshots, table)) = checkpoints else {
        return Ok(());
    };
    if !snapshots.lock().taking {
        return Ok(());
    }
    let encoded = encode(table)?;
    let mut s = snapshots.lock();
    // A table flushed twice in one snapshot hands over its latest entries only.
    s.taken.retain(|(name, _)| name != table);
    s.taken.push((table.clone(), encoded));
    Ok(())
}

/// An in-memory [`MapState`].
#[derive(Debug)]
pub struct MemoryMap<K, V> {
    name: String,
    entries: FxHashMap<K, V>,
    /// Where a flush during a snapshot hands the entries, and this table's name.
    checkpoints: Checkpoints,
}

impl<K: StateKey, V: StateValue> StateTable for MemoryMap<K, V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn flush(&mut self) -> Result<(), StateError> {
        hand_over(&self.checkpoints, |table| {
            let mut encoded = Vec::with_capacity(self.entries.len());
            for (key, value) in &self.entries {
                encoded.push((encode_key(table, key)?, encode_value(table, value)?));
            }
            Ok(encoded)
        })
    }
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

    fn scan(&mut self, mut f: impl FnMut(K, V)) -> Result<(), StateError> {
        for (k, v) in &self.entries {
            f(k.clone(), v.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{key_group_of, MAX_KEY_GROUPS};
    use crate::state::rocksdb::{read_key_groups, write_snapshot};
    use crate::state::{shared_block_cache, MapState, RocksBackend, RocksStore};

    /// The entries of the lower half of the key groups in the snapshot at `snapshot`, as a
    /// restore at parallelism 2 hands them to its first instance; the range, and how many.
    pub(crate) fn restore_half(
        snapshot: &std::path::Path,
    ) -> Result<(Arc<MemorySnapshots>, std::ops::Range<u16>, u64), StateError> {
        let half = 0..MAX_KEY_GROUPS / 2;
        let restored = Arc::new(MemorySnapshots::default());
        let read = read_key_groups(snapshot, half.clone(), |t, k, v| {
            restored.restore_entry(t, k, v);
            Ok(())
        })?;
        Ok((restored, half, read))
    }

    #[test]
    fn a_snapshot_restores_its_key_groups_into_memory_or_rocksdb(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let snapshots = Arc::new(MemorySnapshots::default());
        let mut backend = MemoryBackend::checkpointed(snapshots.clone(), "op");
        let mut table: MemoryMap<String, i64> = backend.map_state("sums")?;
        for i in 0..200 {
            table.put(format!("k{i}"), i)?;
        }
        table.flush()?;
        assert!(
            snapshots.take().is_empty(),
            "a flush outside a snapshot hands nothing"
        );
        snapshots.begin();
        table.flush()?;
        table.put("after".into(), -1)?;
        let tables = snapshots.take();
        assert_eq!(tables.len(), 1);
        let dir = tempfile::tempdir()?;
        let snapshot = dir.path().join("snapshot");
        write_snapshot(&snapshot, tables)?;

        // Half the key groups into a memory backend, as a restore at parallelism 2 does.
        let (restored, half, read) = restore_half(&snapshot)?;
        let mut memory: MemoryMap<String, i64> =
            MemoryBackend::checkpointed(restored, "op").map_state("sums")?;
        // All key groups into a RocksDB backend: the layouts are the same.
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        assert_eq!(store.import_key_groups(&snapshot, 0..MAX_KEY_GROUPS)?, 200);
        let rocks: crate::state::RocksMap<String, i64> =
            RocksBackend::new(store, "op", 16).map_state("sums")?;
        assert!(
            read > 0 && read < 200,
            "{read} of 200 keys in half the key groups"
        );
        assert_eq!(memory.len() as u64, read);
        for i in 0..200 {
            let key = format!("k{i}");
            let in_half = half.contains(&key_group_of(&key));
            assert_eq!(memory.get(&key)?, in_half.then_some(i), "{key} in memory");
            assert_eq!(rocks.get(&key)?, Some(i), "{key} in RocksDB");
        }
        assert_eq!(
            memory.take(&"after".to_string())?,
            None,
            "written after the snapshot"
        );
        Ok(())
    }

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
