//! Keyed state behind the [`StateBackend`] trait.
//!
//! Operators ask their backend for named, typed state tables ([`MapState`]) and never see
//! how they are stored. [`memory`] keeps Rust values in hash maps; [`rocksdb`] keeps them in
//! RocksDB, serialized with serde and bincode, which is why keys and values must be
//! serializable even in memory. Which one a job uses is a run option ([`StateConfig`]);
//! operators are generic over the backend and do not change. [`ttl`] adds expiring
//! entries and list state on top of any backend; [`keyed`] is map state (many entries per
//! stream key, each stored on its own); [`timers`] are the event-time timer
//! queues each backend provides; [`broadcast`] is the state every instance of an operator
//! holds in full, written by a broadcast stream.
//!
//! # Invariants
//! - A backend instance belongs to one operator instance (one thread); no locking.
//! - Entries are only visible through the table they were written to.

pub mod broadcast;
mod codec;
pub mod keyed;
pub mod memory;
pub mod rocksdb;
pub mod timers;
pub mod ttl;

use std::hash::Hash;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::keys::StableHash;

pub use self::broadcast::{BroadcastKey, BroadcastState, BroadcastStateDescriptor};
pub use self::keyed::{KeyedMapState, MapEntries, MemoryKeyedMap, RocksKeyedMap};
pub use self::memory::{MemoryBackend, MemoryMap, MemorySnapshots};
pub use self::rocksdb::{
    read_key_groups, shared_block_cache, write_snapshot, EncodedTable, RocksBackend, RocksMap,
    RocksStore, RocksTimers, SharedCache,
};
pub use self::timers::{MemoryTimers, NoTimers, TimerQueue};
pub use self::ttl::{Expiring, ListState, TtlMap};

/// Where a job keeps its keyed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateConfig {
    /// In memory (fastest; lost when the process ends).
    #[default]
    Memory,
    /// In a RocksDB database under `dir` (state larger than memory).
    RocksDb {
        /// State directory; the database is `dir/<job>/rocksdb`, replaced when a run starts.
        dir: PathBuf,
        /// Entries per state table kept decoded in memory in front of RocksDB.
        cache_entries: usize,
        /// Keep RocksDB's statistics for the block cache hit ratio metric (each read pays
        /// for them; off by default).
        statistics: bool,
    },
}

/// What can be a key of keyed state. The stable hash places it in its key group, which must
/// be the key group of the stream key the entry belongs to (the key the operator is
/// partitioned by): that is how state follows its keys to another worker on a restore with
/// a different parallelism. The stream key itself qualifies; so does [`Namespaced`].
pub trait StateKey:
    Eq + Hash + Clone + Send + Serialize + DeserializeOwned + StableHash + 'static
{
}
impl<T: Eq + Hash + Clone + Send + Serialize + DeserializeOwned + StableHash + 'static> StateKey
    for T
{
}

/// A state key under a stream key (Flink's key and namespace): it hashes like `key` alone,
/// so it lives in `key`'s key group and moves with it when key groups are redistributed.
/// Use it when an operator partitioned by `key` keeps several entries per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Namespaced<K, N> {
    /// The stream key the entry belongs to.
    pub key: K,
    /// Which of the key's entries.
    pub namespace: N,
}

impl<K: StableHash, N> StableHash for Namespaced<K, N> {
    fn stable_hash(&self) -> u64 {
        self.key.stable_hash()
    }
}

/// What can be a user key of map state ([`KeyedMapState`]): any serializable key, stored
/// under its stream key (so it needs no stable hash of its own).
pub trait UserKey: Eq + Hash + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Eq + Hash + Clone + Send + Serialize + DeserializeOwned + 'static> UserKey for T {}

/// What can be a value of keyed state.
pub trait StateValue: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> StateValue for T {}

/// A state access failed (a persistent backend's I/O or codec error).
#[derive(Debug, Clone, thiserror::Error)]
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

    /// The map-state type of this backend (several entries per stream key, see [`keyed`]).
    type KeyedMap<K: StateKey, UK: UserKey, UV: StateValue>: KeyedMapState<K, UK, UV>;

    /// The timer queue type of this backend.
    type Timers<K: StateKey>: TimerQueue<K>;

    /// Opens an empty timer queue `name` (timers are rebuilt from state on a restore).
    fn timer_queue<K: StateKey>(&mut self, name: &str) -> Result<Self::Timers<K>, StateError>;

    /// Opens (or creates) the map table `name`.
    fn map_state<K: StateKey, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<Self::Map<K, V>, StateError>;

    /// Opens (or creates) the map-state table `name`: entries `(user key, value)` under each
    /// stream key, each stored on its own (see [`keyed`]).
    fn keyed_map_state<K: StateKey, UK: UserKey, UV: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<Self::KeyedMap<K, UK, UV>, StateError>;

    /// Opens (or creates) the map table `name` whose entries expire `ttl` after their last
    /// write (see [`ttl`]). For list state, use a `Vec` value and [`ListState`].
    #[allow(clippy::type_complexity)]
    fn map_state_with_ttl<K: StateKey, V: StateValue>(
        &mut self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<TtlMap<K, V, Self::Map<K, Expiring<V>>>, StateError> {
        Ok(TtlMap::new(self.map_state(name)?, ttl))
    }
}

/// What the engine needs of any state table, whatever its key and value types: its name,
/// its size, and making it durable. Object safe, so an operator hands its tables to the
/// engine as `&mut dyn StateTable` (see [`crate::operator::EventTimeOperator::tables`]): the
/// engine flushes them at a checkpoint and shows them in metrics, and no operator can forget
/// one.
pub trait StateTable: Send {
    /// The table's name within its operator (as given to [`StateBackend::map_state`]).
    fn name(&self) -> &str;

    /// Number of entries.
    fn len(&self) -> usize;

    /// Makes every change so far durable in the backend (before a checkpoint).
    fn flush(&mut self) -> Result<(), StateError>;

    /// True if the table has no entries.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A typed key-value table.
pub trait MapState<K, V>: StateTable + 'static {
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

    /// Stores `value` under `key` unless the entry there is one `keep` holds on to; returns
    /// whether it stored. One lookup of the key (on RocksDB a `read` then a `put` of a key
    /// not cached looks it up twice).
    fn put_unless(
        &mut self,
        key: &K,
        value: V,
        keep: impl FnOnce(&V) -> bool,
    ) -> Result<bool, StateError> {
        // `update` runs `init` (a new key) and then `change`, or only `change`: the value
        // goes to whichever of them stores it.
        let value = std::cell::Cell::new(Some(value));
        let take = || value.take().unwrap_or_else(|| unreachable!("stored once"));
        let created = std::cell::Cell::new(false);
        let init = || {
            created.set(true);
            take()
        };
        self.update(key, init, |kept| {
            if created.get() {
                true
            } else if keep(kept) {
                false
            } else {
                *kept = take();
                true
            }
        })
    }

    /// Reads the entries of `keys` ahead of their use, in one batch: on RocksDB one
    /// MultiGet of the keys not in the cache (sorted, so that keys sharing index, filter and
    /// data blocks look them up once), which leaves those present in the cache and those
    /// absent known as absent, so that the reads and updates that follow cost no lookup
    /// each. In memory, nothing.
    fn prefetch<'a>(&mut self, keys: impl Iterator<Item = &'a K>) -> Result<(), StateError>
    where
        K: 'a,
    {
        drop(keys);
        Ok(())
    }

    /// Calls `f` with every entry, in no particular order (to rebuild timers after a
    /// restore; not for hot paths).
    fn scan(&mut self, f: impl FnMut(K, V)) -> Result<(), StateError>;
}
