//! The RocksDB state backend: state larger than memory.
//!
//! # Layout
//! One database per keyed operator instance ([`RocksStore`]), so each instance can take a
//! RocksDB checkpoint (hard links) of exactly its own state when its barrier passes; one
//! column family per state table (`<operator>/<table>`). A key is stored as its key group (2 bytes, big endian) followed by
//! its bincode encoding, so one key group's state is one contiguous key range: it can be
//! scanned, snapshotted, dropped or moved on its own. Values are bincode (no JSON here).
//!
//! # Cache
//! Each table keeps up to `cache_entries` decoded entries in memory in front of RocksDB,
//! written back in one `WriteBatch` when the cache is full (and then emptied). Hot keys are
//! therefore read and changed at memory speed, while the total state is bounded only by
//! disk. The write-ahead log is off: durability comes from checkpoints, not from logging
//! every write ([`crate::StateTable::flush`] writes the cache back before a checkpoint).
//!
//! # Timers
//! Timer queues ([`RocksTimers`]) are column families of a second database beside the
//! state's (`<dir>.timers`), which checkpoints leave out: timers are derived from the
//! state tables, and operators rebuild them on a restore. A timer is keyed by the due time (8 bytes, big endian, sign bit flipped so that byte order is time
//! order) followed by the bincode of the key, with empty values. Registrations are buffered
//! in memory up to `cache_entries` and then written in one batch; due timers are read in key
//! order, a chunk at a time, and removed with point deletes.
//!
//! # Invariants
//! - A cached entry is the truth for its key; RocksDB holds what was last written back.
//! - `Deleted` is only cached for keys that may exist in RocksDB (a tombstone to write back).
//! - A database holds only the key groups of its instance (restores import exactly those).

use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{
    checkpoint::Checkpoint,
    statistics::{StatsLevel, Ticker},
    BlockBasedIndexType, BlockBasedOptions, BoundColumnFamily, Cache, DBWithThreadMode, Direction,
    IteratorMode, MultiThreaded, Options, ReadOptions, WriteBatch, WriteBufferManager,
    WriteOptions,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::codec::{decode_key, decode_value, encode_key, encode_value};
use super::keyed::RocksKeyedMap;
use super::timers::{MemoryTimers, TimerQueue};
use super::{MapState, StateBackend, StateError, StateKey, StateTable, StateValue, UserKey};
use crate::keys::KeyGroup;
use crate::time::Timestamp;

type Db = DBWithThreadMode<MultiThreaded>;

/// Block cache shared by all state databases of one run.
const STATE_BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Memtable bytes all state databases of one run hold together before RocksDB flushes
/// (its `WriteBufferManager`), charged to the shared block cache: without it every column
/// family grew its own memtables to 64 MiB each (a sliding window fed by a TCP flood:
/// 40-84 MB of memtables in 90 s, BENCHMARKS.md), so RocksDB's memory had no bound but the
/// number of tables and instances. The budget is kept by flushing in the background, not by
/// stalling writes: while a flush runs, the memtables it is writing out still count, so
/// memory may stand above the budget for as long as a flush takes.
const STATE_WRITE_BUFFER_BYTES: usize = 32 << 20;

/// Entries per write batch when importing state from a checkpoint.
const IMPORT_BATCH: usize = 16_384;

/// What the state databases of one run share: the block cache, and the memtable budget
/// charged to it, so that RocksDB's memory (blocks and memtables, the SST readers aside)
/// stays within the cache's capacity however many tables and instances the job has.
#[derive(Clone)]
pub struct SharedCache {
    blocks: Cache,
    write_buffers: WriteBufferManager,
    /// Whether the databases keep RocksDB's statistics (see [`SharedCache::with_statistics`]).
    statistics: bool,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("write_buffer_bytes", &self.write_buffers.get_usage())
            .finish_non_exhaustive()
    }
}

/// The block cache and memtable budget the state databases of one run share.
pub fn shared_block_cache() -> SharedCache {
    let blocks = Cache::new_lru_cache(STATE_BLOCK_CACHE_BYTES);
    // No stall: a write over the budget makes RocksDB flush the largest memtable instead of
    // waiting (a stalled worker would hold up barriers and the watermark).
    let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
        STATE_WRITE_BUFFER_BYTES,
        false,
        blocks.clone(),
    );
    SharedCache {
        blocks,
        write_buffers,
        statistics: false,
    }
}

impl SharedCache {
    /// Makes the databases keep RocksDB's statistics (tickers only: no histograms or
    /// timers), which the block cache hit ratio metric is computed from. Off by default, as
    /// Flink's RocksDB native metrics are: every read then pays for several per-core
    /// counters (18 % of dedup on RocksDB's time, BENCHMARKS.md).
    pub fn with_statistics(mut self) -> Self {
        self.statistics = true;
        self
    }
}

/// The RocksDB database of one keyed operator instance.
pub struct RocksStore {
    pub(super) db: Db,
    /// Timer queues: a second database beside `db`, never checkpointed (timers are rebuilt
    /// from state on a restore), so they cost checkpoints nothing.
    timers: Db,
    path: PathBuf,
    db_options: Options,
    table_options: Options,
    /// The column families (tables) of `db` and of `timers`, for the size properties,
    /// which RocksDB reports per column family.
    tables: Mutex<Vec<String>>,
    timer_tables: Mutex<Vec<String>>,
    /// The run's block cache and memtable budget.
    shared: SharedCache,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub(super) fn rocks_error(table: &str, what: &str, e: impl std::fmt::Display) -> StateError {
    StateError {
        table: table.to_string(),
        message: format!("{what}: {e}"),
    }
}

impl RocksStore {
    /// Opens a fresh database at `path`, replacing whatever was there (a run starts from
    /// empty state or imports it from a checkpoint), with blocks cached in `shared`'s
    /// cache and memtables within its budget.
    pub fn open_fresh(path: &Path, shared: &SharedCache) -> Result<Arc<Self>, StateError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| StateError {
            table: "<database>".into(),
            message: format!("{what} {}: {e} (check --state-dir)", path.display()),
        };
        let timers_path = Self::timers_path(path);
        for dir in [path, &timers_path] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| fail("cannot clear", &e))?;
            }
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", &e))?;
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        if shared.statistics {
            // Tickers (block cache hits and misses) for the metrics; no timers and
            // histograms, which cost a clock read per get.
            options.enable_statistics();
            options.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
        }
        options.set_write_buffer_manager(&shared.write_buffers);
        let db = Db::open(&options, path).map_err(|e| fail("cannot open RocksDB at", &e))?;
        let timers =
            Db::open(&options, &timers_path).map_err(|e| fail("cannot open RocksDB at", &e))?;
        // State tables are read mostly for keys that may not exist (a new key or window):
        // bloom filters answer those without touching SST blocks.
        let mut blocks = BlockBasedOptions::default();
        blocks.set_bloom_filter(10.0, false);
        blocks.set_block_cache(&shared.blocks);
        blocks.set_cache_index_and_filter_blocks(true);
        // Filters and indexes in 4 KiB partitions: a whole-file filter of a large SST is
        // bigger than a block cache shard (64 MiB / 64 shards), so it never stayed cached
        // and every get read and checksummed it from disk again (3 M keys: under 5 K
        // gets/s). Partitions are cached like data blocks; the top level stays pinned.
        blocks.set_partition_filters(true);
        blocks.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        blocks.set_metadata_block_size(4096);
        blocks.set_pin_top_level_index_and_filter(true);
        let mut table_options = Options::default();
        table_options.set_block_based_table_factory(&blocks);
        // The same for the memtable: a get of a key that is not there (dedup's every new id)
        // otherwise walks the memtable's skip list, a third of dedup's profile. A whole-key
        // bloom filter answers most of those misses. Every memtable allocates its filter
        // up front, sized from the write buffer size (64 MiB), so the ratio is kept small
        // (256 KiB a memtable): with 2 % the filters alone broke the shared memtable budget.
        table_options.set_memtable_prefix_bloom_ratio(0.004);
        table_options.set_memtable_whole_key_filtering(true);
        Ok(Arc::new(RocksStore {
            db,
            timers,
            path: path.to_path_buf(),
            db_options: options,
            table_options,
            tables: Mutex::default(),
            timer_tables: Mutex::default(),
            shared: shared.clone(),
        }))
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of the timer database beside the one at `path`.
    fn timers_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".timers");
        path.with_file_name(name)
    }

    pub(super) fn column_family(
        &self,
        name: &str,
    ) -> Result<Arc<BoundColumnFamily<'_>>, StateError> {
        self.column_family_in(&self.db, name)
    }

    fn column_family_in<'a>(
        &self,
        db: &'a Db,
        name: &str,
    ) -> Result<Arc<BoundColumnFamily<'a>>, StateError> {
        if let Some(cf) = db.cf_handle(name) {
            return Ok(cf);
        }
        // Two workers of one operator may race to create the table: the loser finds it.
        match db.create_cf(name, &self.table_options) {
            Ok(()) => {
                let tables = match std::ptr::eq(db, &self.timers) {
                    true => &self.timer_tables,
                    false => &self.tables,
                };
                tables
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name.to_string());
            }
            Err(e) if db.cf_handle(name).is_none() => {
                return Err(rocks_error(name, "cannot create column family", e));
            }
            Err(_) => {}
        }
        db.cf_handle(name)
            .ok_or_else(|| rocks_error(name, "column family vanished", "after creation"))
    }

    /// Writes a RocksDB checkpoint of this database to `dir` (which must not exist): memtables
    /// are flushed and SST files hard-linked, so it costs a flush, not a copy.
    pub fn checkpoint_to(&self, dir: &Path) -> Result<(), StateError> {
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| {
                rocks_error(
                    "<database>",
                    &format!("cannot checkpoint into {}", dir.display()),
                    e,
                )
            })
    }

    /// Copies the entries of key groups `groups` from the database (a checkpoint) at `from`
    /// into this one, table by table; returns how many entries were copied.
    pub fn import_key_groups(
        &self,
        from: &Path,
        groups: Range<KeyGroup>,
    ) -> Result<u64, StateError> {
        let mut batch = WriteBatch::default();
        // The table being copied and its column family here, looked up once per table.
        let mut current: Option<(String, Arc<BoundColumnFamily<'_>>)> = None;
        let copied = read_key_groups(from, groups, |table, key, value| {
            let cf = match &current {
                Some((name, cf)) if name == table => cf,
                _ => {
                    if let Some((name, _)) = &current {
                        self.write_import(std::mem::take(&mut batch), name)?;
                    }
                    let cf = self.column_family(table)?;
                    &current.insert((table.to_string(), cf)).1
                }
            };
            batch.put_cf(cf, key, value);
            if batch.len() >= IMPORT_BATCH {
                self.write_import(std::mem::take(&mut batch), table)?;
            }
            Ok(())
        })?;
        if let Some((name, _)) = &current {
            self.write_import(batch, name)?;
        }
        Ok(copied)
    }

    fn write_import(&self, batch: WriteBatch, table: &str) -> Result<(), StateError> {
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| rocks_error(table, "import write failed (is the disk full?)", e))
    }

    /// RocksDB's estimate of bytes waiting for compaction.
    pub fn pending_compaction_bytes(&self) -> u64 {
        self.sum_over_tables("rocksdb.estimate-pending-compaction-bytes", false)
    }

    /// `property` summed over the state tables (and the timer tables, with `timers`).
    fn sum_over_tables(&self, property: &str, timers: bool) -> u64 {
        let mut sum = 0;
        let mut databases = vec![(&self.db, &self.tables)];
        if timers {
            databases.push((&self.timers, &self.timer_tables));
        }
        for (db, tables) in databases {
            let tables = tables.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for table in tables {
                if let Some(cf) = db.cf_handle(&table) {
                    sum += db
                        .property_int_value_cf(&cf, property)
                        .ok()
                        .flatten()
                        .unwrap_or(0);
                }
            }
        }
        sum
    }

    /// Memtable flushes of this database's state and timer tables that are pending or
    /// running.
    #[cfg(test)]
    fn flushes_in_flight(&self) -> u64 {
        let running: u64 = [&self.db, &self.timers]
            .iter()
            .map(|db| {
                db.property_int_value("rocksdb.num-running-flushes")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum();
        running + self.sum_over_tables("rocksdb.mem-table-flush-pending", true)
    }

    /// Bytes written to the state and timer databases so far (RocksDB's
    /// `rocksdb.bytes.written`: what went through the memtables, before compaction); `None`
    /// unless the run keeps statistics ([`SharedCache::with_statistics`]).
    pub fn bytes_written(&self) -> Option<u64> {
        self.keeps_statistics()
            .then(|| self.db_options.get_ticker_count(Ticker::BytesWritten))
    }

    /// Whether this database keeps RocksDB's statistics ([`SharedCache::with_statistics`]).
    pub fn keeps_statistics(&self) -> bool {
        self.shared.statistics
    }

    /// Block cache hits and misses so far; `None` unless the run keeps statistics.
    pub fn block_cache_hits_misses(&self) -> Option<(u64, u64)> {
        self.keeps_statistics().then(|| {
            (
                self.db_options.get_ticker_count(Ticker::BlockCacheHit),
                self.db_options.get_ticker_count(Ticker::BlockCacheMiss),
            )
        })
    }

    /// Memory RocksDB holds for this database outside the shared block cache: the
    /// memtables of the state and timer tables (state written, not yet flushed to files; each
    /// grows to the write buffer size, then is flushed) and the readers of its SST files.
    pub fn memory_bytes(&self) -> u64 {
        self.sum_over_tables("rocksdb.cur-size-all-mem-tables", true)
            + self.sum_over_tables("rocksdb.estimate-table-readers-mem", true)
    }

    /// Bytes in the block cache, which every database of the run shares: blocks, and what
    /// the memtables of the run reserve in it. (Not the `block-cache-usage` property: that
    /// is the default column family's own cache, which holds nothing of the state.)
    pub fn block_cache_bytes(&self) -> u64 {
        self.shared.blocks.get_usage() as u64
    }

    /// Bytes of the state tables' SST files (the current version; what compaction has not
    /// merged yet included). State still in memtables is in [`RocksStore::memory_bytes`].
    pub fn file_bytes(&self) -> u64 {
        self.sum_over_tables("rocksdb.live-sst-files-size", false)
    }

    /// The names of the state tables created so far (timer queues not included).
    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Calls `f(table, key, value)` with every entry of key groups `groups` in the database (a
/// checkpoint) at `from`, table by table; returns how many entries there were.
pub fn read_key_groups(
    from: &Path,
    groups: Range<KeyGroup>,
    mut f: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StateError>,
) -> Result<u64, StateError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| StateError {
        table: "<database>".into(),
        message: format!("{what} {}: {e}", from.display()),
    };
    let options = Options::default();
    let tables = Db::list_cf(&options, from).map_err(|e| fail("cannot list tables of", &e))?;
    let source = Db::open_cf_for_read_only(&options, from, &tables, false)
        .map_err(|e| fail("cannot open checkpoint", &e))?;
    let (start, end) = (groups.start.to_be_bytes(), groups.end.to_be_bytes());
    let mut entries = 0;
    for table in tables.iter().filter(|t| t.as_str() != "default") {
        let cf = source
            .cf_handle(table)
            .ok_or_else(|| fail(&format!("table {table} vanished from"), &"listed"))?;
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        for entry in
            source.iterator_cf_opt(&cf, read, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) =
                entry.map_err(|e| rocks_error(table, "checkpoint read failed", e))?;
            f(table, &key, &value)?;
            entries += 1;
        }
    }
    Ok(entries)
}

/// Writes `tables` (name, encoded entries) as a new RocksDB database at `dir`, in the layout
/// of the RocksDB backend's own checkpoints, so both restore the same way. For state that
/// does not live in RocksDB (a full copy, as Flink's snapshots of heap state).
pub fn write_snapshot(dir: &Path, tables: Vec<EncodedTable>) -> Result<(), StateError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| StateError {
        table: "<snapshot>".into(),
        message: format!("{what} {}: {e} (is the disk full?)", dir.display()),
    };
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_error_if_exists(true);
    let db = Db::open(&options, dir).map_err(|e| fail("cannot create", &e))?;
    let mut write = WriteOptions::default();
    write.disable_wal(true);
    for (table, mut entries) in tables {
        db.create_cf(&table, &Options::default())
            .map_err(|e| fail(&format!("cannot create table {table} in"), &e))?;
        let cf = db
            .cf_handle(&table)
            .ok_or_else(|| fail(&format!("table {table} vanished from"), &"created"))?;
        // Sorted, as the memtable takes ascending keys fastest.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for chunk in entries.chunks(IMPORT_BATCH) {
            let mut batch = WriteBatch::default();
            for (key, value) in chunk {
                batch.put_cf(&cf, key, value);
            }
            db.write_opt(batch, &write)
                .map_err(|e| fail(&format!("cannot write table {table} to"), &e))?;
        }
        // Without a write-ahead log, only flushed tables outlive the database.
        db.flush_cf(&cf).map_err(|e| fail("cannot flush", &e))?;
    }
    // Dropping closes the database, so every file is complete before the manifest lists it.
    drop(db);
    Ok(())
}

/// A state table's name and its entries, encoded as in [`super::codec`].
pub type EncodedTable = (String, Vec<EncodedEntry>);

/// An encoded key and value.
pub type EncodedEntry = (Vec<u8>, Vec<u8>);

/// The state of one operator instance in a shared [`RocksStore`].
#[derive(Debug, Clone)]
pub struct RocksBackend {
    store: Arc<RocksStore>,
    operator: String,
    cache_entries: usize,
}

impl RocksBackend {
    /// Tables of `operator` in `store`, each caching up to `cache_entries` entries.
    pub fn new(store: Arc<RocksStore>, operator: &str, cache_entries: usize) -> Self {
        RocksBackend {
            store,
            operator: operator.to_string(),
            cache_entries: cache_entries.max(1),
        }
    }
}

impl StateBackend for RocksBackend {
    type Map<K: StateKey, V: StateValue> = RocksMap<K, V>;
    type KeyedMap<K: StateKey, UK: UserKey, UV: StateValue> = RocksKeyedMap<K, UK, UV>;
    type Timers<K: StateKey> = RocksTimers<K>;

    fn timer_queue<K: StateKey>(&mut self, name: &str) -> Result<RocksTimers<K>, StateError> {
        let table = format!("{}/{name}", self.operator);
        self.store.column_family_in(&self.store.timers, &table)?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(RocksTimers {
            store: self.store.clone(),
            table,
            pending: MemoryTimers::default(),
            pending_len: 0,
            capacity: self.cache_entries,
            head: None,
            write_options,
        })
    }

    fn map_state<K: StateKey, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<RocksMap<K, V>, StateError> {
        let table = format!("{}/{name}", self.operator);
        let column = TableColumn::try_new(self.store.clone(), |store| store.column_family(&table))?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(RocksMap {
            column,
            table,
            cache: FxHashMap::default(),
            absent: FxHashSet::default(),
            loads: std::cell::Cell::new(0),
            prefetch_found: true,
            capacity: self.cache_entries,
            entries: 0,
            write_options,
            read_options: ReadOptions::default(),
            _value: PhantomData,
        })
    }

    fn keyed_map_state<K: StateKey, UK: UserKey, UV: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<RocksKeyedMap<K, UK, UV>, StateError> {
        Ok(RocksKeyedMap::new(self.map_state(name)?))
    }
}

pub(super) enum Slot<V> {
    /// `in_db`: RocksDB may hold an older version (so a delete needs a tombstone).
    Live {
        value: V,
        dirty: bool,
        in_db: bool,
    },
    Deleted,
}

/// An `Arc` of a column family handle, borrowed from its database.
type ColumnFamilyRef<'db> = Arc<BoundColumnFamily<'db>>;

self_cell::self_cell!(
    /// A table's column family handle, held together with the store it borrows from: looked
    /// up once when the table is opened, not per get (rust-rocksdb's lookup takes a lock,
    /// hashes the name and clones an `Arc`: 8 % of dedup on RocksDB). Column families are
    /// never dropped while the store lives, so the handle stays valid.
    struct TableColumn {
        owner: Arc<RocksStore>,
        #[covariant]
        dependent: ColumnFamilyRef,
    }
);

/// A [`MapState`] in RocksDB with a write-back cache.
pub struct RocksMap<K, V> {
    column: TableColumn,
    pub(super) table: String,
    pub(super) cache: FxHashMap<K, Slot<V>>,
    /// Keys a prefetch found absent from RocksDB and the cache: no lookup needed until
    /// the next write-back (emptied there, as the keys may then be written).
    absent: FxHashSet<K>,
    /// Keys looked up one by one since the last prefetch, and whether that prefetch found
    /// keys to read: while neither, the keys in use are all cached and a prefetch would
    /// only cost a hash lookup per key (see [`MapState::prefetch`]).
    loads: std::cell::Cell<usize>,
    prefetch_found: bool,
    capacity: usize,
    pub(super) entries: usize,
    pub(super) write_options: WriteOptions,
    /// Made once: a fresh `ReadOptions` per get cost 3 % of dedup's profile.
    read_options: ReadOptions,
    _value: PhantomData<fn() -> V>,
}

impl<K, V> std::fmt::Debug for RocksMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksMap")
            .field("table", &self.table)
            .field("entries", &self.entries)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl<K, V> RocksMap<K, V> {
    /// The database this table is a column family of.
    pub(super) fn store(&self) -> &Arc<RocksStore> {
        self.column.borrow_owner()
    }
}

impl<K: StateKey, V: StateValue> RocksMap<K, V> {
    fn load(&self, key: &K) -> Result<Option<V>, StateError> {
        self.loads.set(self.loads.get() + 1);
        let key = encode_key(&self.table, key)?;
        self.column.with_dependent(|store, cf| {
            let bytes = store
                .db
                .get_pinned_cf_opt(cf, key, &self.read_options)
                .map_err(|e| rocks_error(&self.table, "read failed", e))?;
            bytes.map(|b| decode_value(&self.table, &b)).transpose()
        })
    }

    /// Makes sure `key` is in the cache if it exists at all; writes back first if full.
    fn ensure_cached(&mut self, key: &K) -> Result<(), StateError> {
        if self.cache.contains_key(key) || self.absent.contains(key) {
            return Ok(());
        }
        if self.cache.len() >= self.capacity {
            self.write_back()?;
        }
        if let Some(value) = self.load(key)? {
            self.cache.insert(
                key.clone(),
                Slot::Live {
                    value,
                    dirty: false,
                    in_db: true,
                },
            );
        }
        Ok(())
    }

    /// Writes changed entries and tombstones in one batch and empties the cache.
    pub fn write_back(&mut self) -> Result<(), StateError> {
        self.write_changes()?;
        self.cache.clear();
        self.absent.clear();
        Ok(())
    }

    /// Writes changed entries and tombstones in one batch; the cache keeps its entries,
    /// now clean, so a checkpoint does not cost the hot keys their place in memory.
    pub(super) fn write_clean(&mut self) -> Result<(), StateError> {
        self.write_changes()?;
        self.absent.clear();
        self.cache.retain(|_, slot| match slot {
            Slot::Live { dirty, in_db, .. } => {
                *dirty = false;
                *in_db = true;
                true
            }
            Slot::Deleted => false,
        });
        Ok(())
    }

    fn write_changes(&self) -> Result<(), StateError> {
        // Borrow while building the batch: on any error the cache is still the truth.
        let mut changes = Vec::new();
        for (key, slot) in &self.cache {
            match slot {
                Slot::Live {
                    value, dirty: true, ..
                } => {
                    changes.push((
                        encode_key(&self.table, key)?,
                        Some(encode_value(&self.table, value)?),
                    ));
                }
                Slot::Live { dirty: false, .. } => {}
                Slot::Deleted => changes.push((encode_key(&self.table, key)?, None)),
            }
        }
        write_sorted(
            self.store(),
            &self.store().db,
            &self.table,
            changes,
            &self.write_options,
        )
    }
}

/// Writes `changes` (a value, or `None` for a delete) in one batch, in key order: the
/// memtable's skip list inserts a run of ascending keys from where the previous one went
/// instead of searching from the top for each (the cache hands them over in hash order).
fn write_sorted(
    store: &RocksStore,
    db: &Db,
    table: &str,
    mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    options: &WriteOptions,
) -> Result<(), StateError> {
    if changes.is_empty() {
        return Ok(());
    }
    changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let cf = store.column_family_in(db, table)?;
    let mut batch = WriteBatch::default();
    for (key, value) in changes {
        match value {
            Some(value) => batch.put_cf(&cf, key, value),
            None => batch.delete_cf(&cf, key),
        }
    }
    db.write_opt(batch, options)
        .map_err(|e| rocks_error(table, "write failed (is the disk full?)", e))
}

impl<K: StateKey, V: StateValue> StateTable for RocksMap<K, V> {
    fn name(&self) -> &str {
        // The column family is `<operator>/<table>`.
        self.table.rsplit('/').next().unwrap_or(&self.table)
    }

    fn len(&self) -> usize {
        self.entries
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.write_clean()
    }
}

impl<K: StateKey, V: StateValue> MapState<K, V> for RocksMap<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        self.read(key, |v| v.cloned())
    }

    fn read<R>(&self, key: &K, f: impl FnOnce(Option<&V>) -> R) -> Result<R, StateError> {
        match self.cache.get(key) {
            Some(Slot::Live { value, .. }) => Ok(f(Some(value))),
            Some(Slot::Deleted) => Ok(f(None)),
            None if self.absent.contains(key) => Ok(f(None)),
            None => Ok(f(self.load(key)?.as_ref())),
        }
    }

    fn prefetch<'a>(&mut self, keys: impl Iterator<Item = &'a K>) -> Result<(), StateError>
    where
        K: 'a,
    {
        if !self.prefetch_found && self.loads.get() == 0 {
            return Ok(());
        }
        self.loads.set(0);
        // Only keys the cache has room for: a prefetch never writes the cache back, which
        // would cost the keys in it their place for keys that may not stay until used.
        let room = self
            .capacity
            .saturating_sub(self.cache.len() + self.absent.len());
        if room == 0 {
            return Ok(());
        }
        let mut wanted = Vec::new();
        for key in keys {
            if !self.cache.contains_key(key) && !self.absent.contains(key) {
                wanted.push((encode_key(&self.table, key)?, key));
            }
        }
        self.prefetch_found = !wanted.is_empty();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        wanted.dedup_by(|a, b| a.0 == b.0);
        if wanted.len() > room {
            // Some would be looked up one by one anyway, and the write-back their first
            // lookup causes would drop the prefetched ones before their use.
            return Ok(());
        }
        let table = self.table.as_str();
        let found = self.column.with_dependent(|store, cf| {
            let encoded = wanted.iter().map(|(encoded, _)| encoded.as_slice());
            let results = store
                .db
                .batched_multi_get_cf_opt(cf, encoded, true, &self.read_options);
            let mut found = Vec::with_capacity(results.len());
            for result in results {
                let bytes = result.map_err(|e| rocks_error(table, "read failed", e))?;
                found.push(bytes.map(|b| decode_value::<V>(table, &b)).transpose()?);
            }
            Ok::<_, StateError>(found)
        })?;
        for ((_, key), value) in wanted.into_iter().zip(found) {
            match value {
                Some(value) => {
                    let slot = Slot::Live {
                        value,
                        dirty: false,
                        in_db: true,
                    };
                    self.cache.insert(key.clone(), slot);
                }
                None => {
                    self.absent.insert(key.clone());
                }
            }
        }
        Ok(())
    }

    fn modify<R>(
        &mut self,
        key: &K,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, StateError> {
        self.ensure_cached(key)?;
        Ok(match self.cache.get_mut(key) {
            Some(Slot::Live { value, dirty, .. }) => {
                *dirty = true;
                Some(change(value))
            }
            _ => None,
        })
    }

    #[inline]
    fn update<R>(
        &mut self,
        key: &K,
        init: impl FnOnce() -> V,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<R, StateError> {
        // The hot path: a cached key needs one hash lookup and no I/O.
        if let Some(Slot::Live { value, dirty, .. }) = self.cache.get_mut(key) {
            *dirty = true;
            return Ok(change(value));
        }
        self.ensure_cached(key)?;
        let in_db = match self.cache.get_mut(key) {
            Some(Slot::Live { value, dirty, .. }) => {
                *dirty = true;
                return Ok(change(value));
            }
            Some(Slot::Deleted) => true,
            None => false,
        };
        let mut value = init();
        let result = change(&mut value);
        self.cache.insert(
            key.clone(),
            Slot::Live {
                value,
                dirty: true,
                in_db,
            },
        );
        self.entries += 1;
        Ok(result)
    }

    fn put(&mut self, key: K, value: V) -> Result<(), StateError> {
        self.ensure_cached(&key)?;
        let in_db = match self.cache.get(&key) {
            Some(Slot::Live { in_db, .. }) => *in_db,
            Some(Slot::Deleted) => {
                self.entries += 1;
                true
            }
            None => {
                self.entries += 1;
                false
            }
        };
        self.cache.insert(
            key,
            Slot::Live {
                value,
                dirty: true,
                in_db,
            },
        );
        Ok(())
    }

    fn take(&mut self, key: &K) -> Result<Option<V>, StateError> {
        self.ensure_cached(key)?;
        let in_db = match self.cache.get(key) {
            Some(Slot::Live { in_db, .. }) => *in_db,
            _ => return Ok(None),
        };
        self.entries -= 1;
        // Only an entry RocksDB may hold needs a tombstone; a cache-only one just goes.
        let slot = if in_db {
            self.cache.insert(key.clone(), Slot::Deleted)
        } else {
            self.cache.remove(key)
        };
        Ok(match slot {
            Some(Slot::Live { value, .. }) => Some(value),
            _ => None,
        })
    }

    fn scan(&mut self, mut f: impl FnMut(K, V)) -> Result<(), StateError> {
        self.write_clean()?;
        let table = self.table.as_str();
        let entries = self.column.with_dependent(|store, cf| {
            let mut entries = 0;
            for entry in store.db.iterator_cf(cf, IteratorMode::Start) {
                let (key, value) = entry.map_err(|e| rocks_error(table, "scan failed", e))?;
                f(decode_key(table, &key)?, decode_value(table, &value)?);
                entries += 1;
            }
            Ok::<_, StateError>(entries)
        })?;
        // After a restore the database is the only truth about how many entries exist.
        self.entries = entries;
        Ok(())
    }
}

/// A [`TimerQueue`] in a RocksDB column family, with registrations buffered in memory.
pub struct RocksTimers<K> {
    store: Arc<RocksStore>,
    table: String,
    /// Registrations not written to RocksDB yet.
    pending: MemoryTimers<K>,
    pending_len: usize,
    /// Registrations buffered before a write, and keys read per chunk.
    capacity: usize,
    /// The earliest timer in RocksDB (its encoded key), or `None` if it holds none. Always
    /// known, so that asking whether a timer is due never costs a seek.
    head: Option<Vec<u8>>,
    write_options: WriteOptions,
}

impl<K> std::fmt::Debug for RocksTimers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksTimers")
            .field("table", &self.table)
            .field("pending", &self.pending_len)
            .field("head", &self.head.as_deref().and_then(time_of_key))
            .finish_non_exhaustive()
    }
}

/// A time as 8 bytes whose byte order is time order.
fn time_prefix(time: Timestamp) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The due time of an encoded timer.
fn time_of_key(bytes: &[u8]) -> Option<Timestamp> {
    let prefix: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(prefix) ^ (1 << 63)) as Timestamp)
}

impl<K: StateKey> RocksTimers<K> {
    /// Writes the buffered registrations to RocksDB in one batch.
    fn spill(&mut self) -> Result<(), StateError> {
        let mut changes = Vec::with_capacity(self.pending_len);
        for (time, keys) in self.pending.drain() {
            for key in keys {
                let mut bytes = time_prefix(time).to_vec();
                bincode::serialize_into(&mut bytes, &key)
                    .map_err(|e| rocks_error(&self.table, "cannot encode timer key", e))?;
                changes.push((bytes, Some(Vec::new())));
            }
        }
        self.pending_len = 0;
        let Some(first) = changes.iter().map(|(key, _)| key).min().cloned() else {
            return Ok(());
        };
        write_sorted(
            &self.store,
            &self.store.timers,
            &self.table,
            changes,
            &self.write_options,
        )?;
        if self.head.as_ref().is_none_or(|head| first < *head) {
            self.head = Some(first);
        }
        Ok(())
    }

    /// Reads and removes up to `capacity` timers due at `time`, the time of the head, from
    /// RocksDB into `keys`; the entry after them is the new head.
    fn pop_from_db(&mut self, time: Timestamp, keys: &mut Vec<K>) -> Result<(), StateError> {
        let Some(from) = self.head.take() else {
            return Ok(());
        };
        let prefix = time_prefix(time);
        let cf = self
            .store
            .column_family_in(&self.store.timers, &self.table)?;
        let mut batch = WriteBatch::default();
        // Popped timers get point deletes, which a later seek (from the new head, past
        // them) never visits; range deletes would be re-read by every new iterator.
        for entry in self
            .store
            .timers
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, _) = entry.map_err(|e| rocks_error(&self.table, "timer read failed", e))?;
            if !key.starts_with(&prefix) || keys.len() >= self.capacity {
                self.head = Some(key.into_vec());
                break;
            }
            keys.push(
                bincode::deserialize(&key[8..])
                    .map_err(|e| rocks_error(&self.table, "cannot decode timer key", e))?,
            );
            batch.delete_cf(&cf, key);
        }
        self.store
            .timers
            .write_opt(batch, &self.write_options)
            .map_err(|e| rocks_error(&self.table, "timer delete failed", e))
    }
}

impl<K: StateKey> TimerQueue<K> for RocksTimers<K> {
    #[inline]
    fn register(&mut self, time: Timestamp, key: K) -> Result<(), StateError> {
        self.pending.insert(time, key);
        self.pending_len += 1;
        if self.pending_len >= self.capacity {
            self.spill()?;
        }
        Ok(())
    }

    fn pop_due(
        &mut self,
        due: impl Fn(Timestamp) -> bool,
    ) -> Result<Option<(Timestamp, Vec<K>)>, StateError> {
        let Some(time) = self.next_time().filter(|&time| due(time)) else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        if self.pending.first_time() == Some(time) {
            keys = self.pending.remove(time);
            self.pending_len -= keys.len();
        }
        if self.head.as_deref().and_then(time_of_key) == Some(time) {
            self.pop_from_db(time, &mut keys)?;
        }
        Ok(Some((time, keys)))
    }

    fn next_time(&self) -> Option<Timestamp> {
        let in_memory = self.pending.first_time();
        let in_db = self.head.as_deref().and_then(time_of_key);
        in_memory.into_iter().chain(in_db).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{key_group_of, MAX_KEY_GROUPS};

    #[test]
    fn memtables_of_a_run_stay_within_the_budget_charged_to_the_block_cache(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // 64 MiB written through two databases of one run (two tables each): without the
        // shared budget each table's memtable held everything written to it (up to 64 MiB
        // before its first flush).
        let dir = tempfile::tempdir()?;
        let shared = shared_block_cache();
        let value = "v".repeat(1024);
        let mut stores = Vec::new();
        for db in ["a", "b"] {
            let store = RocksStore::open_fresh(&dir.path().join(db), &shared)?;
            let mut backend = RocksBackend::new(store.clone(), "op", 64);
            for name in ["t", "u"] {
                let mut table: RocksMap<u64, String> = backend.map_state(name)?;
                for key in 0..16_384u64 {
                    table.put(key, value.clone())?;
                }
                table.flush()?;
            }
            stores.push(store);
        }
        // The budget is kept by flushing, in the background (writes do not stall): memtables
        // being flushed still count until their flush ends, and on a busy machine that took
        // long enough to see 55 MB here. What must hold is that nothing stays above the
        // budget once those flushes end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while stores.iter().any(|s| s.flushes_in_flight() > 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "flushes still running after 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let memtables: u64 = stores.iter().map(|s| s.memory_bytes()).sum();
        let budget = STATE_WRITE_BUFFER_BYTES as u64;
        assert!(
            memtables <= budget + budget / 2,
            "memtables {memtables} bytes, budget {budget}"
        );
        // What the memtables reserve is charged to the shared cache, so its gauge shows it.
        assert!(
            stores[0].block_cache_bytes() >= memtables / 2,
            "block cache {} bytes, memtables {memtables}",
            stores[0].block_cache_bytes()
        );
        Ok(())
    }

    #[test]
    fn entries_survive_write_back_and_deletes_reach_rocksdb(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        let mut backend = RocksBackend::new(store.clone(), "op", 2);
        let mut table: RocksMap<String, Vec<i64>> = backend.map_state("t")?;
        for i in 0..10 {
            // A cache of 2 forces write-backs and reloads.
            table.update(&format!("k{}", i % 5), Vec::new, |v| v.push(i))?;
        }
        assert_eq!(table.len(), 5);
        assert_eq!(table.get(&"k3".to_string())?, Some(vec![3, 8]));
        assert_eq!(table.take(&"k3".to_string())?, Some(vec![3, 8]));
        assert_eq!(table.take(&"k3".to_string())?, None);
        assert_eq!(table.modify(&"k4".to_string(), |v| v.len())?, Some(2));
        assert_eq!(table.modify(&"nope".to_string(), |v| v.len())?, None);
        table.write_back()?;
        assert_eq!(
            table.get(&"k3".to_string())?,
            None,
            "the delete was written back"
        );
        assert_eq!(
            table.read(&"k1".to_string(), |v| v.cloned())?,
            Some(vec![1, 6])
        );
        assert_eq!(table.len(), 4);
        // Another table of the same operator is a separate column family.
        let other: RocksMap<String, Vec<i64>> = backend.map_state("u")?;
        assert_eq!(other.get(&"k1".to_string())?, None);
        Ok(())
    }

    #[test]
    fn prefetched_entries_and_absences_agree_with_rocksdb() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        let mut backend = RocksBackend::new(store, "op", 8);
        let mut table: RocksMap<String, i64> = backend.map_state("t")?;
        for i in 0..20 {
            table.put(format!("k{i}"), i)?;
        }
        table.write_back()?;
        let keys = ["k3", "k5", "x1", "x2", "k3"].map(String::from);
        table.prefetch(keys.iter())?;
        assert_eq!(table.cache.len(), 2, "the present keys, once each");
        assert_eq!(table.absent.len(), 2, "the absent keys");
        assert_eq!(table.get(&keys[0])?, Some(3));
        assert_eq!(table.get(&keys[2])?, None);
        table.update(&keys[2], || 0, |v| *v += 7)?;
        assert_eq!(table.get(&keys[2])?, Some(7), "written after its prefetch");
        // A write-back forgets the absences: x1 is in RocksDB now.
        table.write_back()?;
        assert!(table.absent.is_empty());
        assert_eq!(table.get(&keys[2])?, Some(7));
        // More keys than the cache has room for: none prefetched, all read when used.
        let many: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
        table.prefetch(many.iter())?;
        assert!(table.cache.is_empty() && table.absent.is_empty());
        for (i, key) in many.iter().enumerate() {
            let want = (i < 20).then_some(i as i64);
            assert_eq!(table.get(key)?, want, "{key}");
        }
        Ok(())
    }

    #[test]
    fn flush_writes_everything_and_keeps_the_cache() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        let mut backend = RocksBackend::new(store.clone(), "op", 100);
        let mut table: RocksMap<String, i64> = backend.map_state("t")?;
        for i in 0..10 {
            table.put(format!("k{i}"), i)?;
        }
        table.take(&"k3".to_string())?;
        table.flush()?;
        assert_eq!(table.cache.len(), 9, "clean entries stay cached");
        // What a checkpoint sees: a second view of the table with an empty cache.
        let mut fresh: RocksMap<String, i64> = backend.map_state("t")?;
        let mut seen = Vec::new();
        fresh.scan(|k, v| seen.push((k, v)))?;
        seen.sort();
        assert_eq!(seen.len(), 9);
        assert_eq!(fresh.len(), 9, "a scan recounts the entries");
        assert!(!seen.iter().any(|(k, _)| k == "k3"));
        // Changes after the flush are written by the next one, deletes included.
        table.put("k1".into(), 100)?;
        table.take(&"k2".to_string())?;
        table.flush()?;
        assert_eq!(fresh.get(&"k1".to_string())?, Some(100));
        assert_eq!(fresh.get(&"k2".to_string())?, None);
        Ok(())
    }

    #[test]
    fn a_checkpoint_imports_key_group_ranges_exactly() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = shared_block_cache();
        let old = RocksStore::open_fresh(&dir.path().join("old"), &cache)?;
        let mut table: RocksMap<String, u64> =
            RocksBackend::new(old.clone(), "op", 8).map_state("t")?;
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            table.put(key.clone(), i as u64)?;
        }
        table.flush()?;
        old.checkpoint_to(&dir.path().join("chk"))?;

        // Two new instances split the key groups at 50, as parallelism 2 would at 128 / 2.
        let mut seen = 0;
        for (name, groups) in [("low", 0..50), ("high", 50..MAX_KEY_GROUPS)] {
            let new = RocksStore::open_fresh(&dir.path().join(name), &cache)?;
            let copied = new.import_key_groups(&dir.path().join("chk"), groups.clone())?;
            let mut imported: RocksMap<String, u64> =
                RocksBackend::new(new, "op", 8).map_state("t")?;
            let mut entries = Vec::new();
            imported.scan(|k, v| entries.push((k, v)))?;
            assert_eq!(entries.len() as u64, copied);
            for (key, value) in &entries {
                assert!(
                    groups.contains(&key_group_of(key)),
                    "{key} is not in {groups:?}"
                );
                assert_eq!(keys[*value as usize], *key);
            }
            seen += entries.len();
        }
        assert_eq!(seen, keys.len(), "every key lands in exactly one range");
        Ok(())
    }

    /// Pops everything due at or before `upto`, as `(time, key)` pairs in pop order.
    fn pop_all(
        timers: &mut RocksTimers<String>,
        upto: Timestamp,
    ) -> Result<Vec<(Timestamp, String)>, StateError> {
        let mut popped = Vec::new();
        while let Some((time, keys)) = timers.pop_due(|t| t <= upto)? {
            popped.extend(keys.into_iter().map(|k| (time, k)));
        }
        Ok(popped)
    }

    #[test]
    fn timers_spill_to_rocksdb_and_pop_in_time_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        // A capacity of 4 makes most timers go through RocksDB and pops come in chunks.
        let mut timers: RocksTimers<String> =
            RocksBackend::new(store.clone(), "op", 4).timer_queue("fire")?;
        let mut expected = Vec::new();
        for i in 0..50i64 {
            // Negative and positive times, out of order, many keys per time.
            let time = (i * 7919) % 13 - 6;
            timers.register(time, format!("k{i:02}"))?;
            expected.push((time, format!("k{i:02}")));
        }
        assert_eq!(timers.pop_due(|t| t < -6)?, None, "nothing is due yet");
        assert_eq!(timers.next_time(), Some(-6));
        let first = pop_all(&mut timers, 0)?;
        // Timers registered below what was popped (a late event) still come out; five of
        // them make the buffer spill below the popped range.
        for i in 0..5 {
            timers.register(-100, format!("late{i}"))?;
            expected.push((-100, format!("late{i}")));
        }
        let second = pop_all(&mut timers, Timestamp::MAX)?;
        assert_eq!(
            timers.pop_due(|_| true)?,
            None,
            "everything was popped once"
        );
        for popped in [&first, &second] {
            let times: Vec<Timestamp> = popped.iter().map(|(t, _)| *t).collect();
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        }
        assert!(first.iter().all(|(t, _)| *t <= 0) && first.len() > 4);
        let mut popped = [first, second].concat();
        popped.sort();
        expected.sort();
        assert_eq!(popped, expected);
        Ok(())
    }

    #[test]
    fn timers_are_not_imported_from_a_checkpoint() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = shared_block_cache();
        let old = RocksStore::open_fresh(&dir.path().join("old"), &cache)?;
        let mut backend = RocksBackend::new(old.clone(), "op", 1);
        let mut timers: RocksTimers<String> = backend.timer_queue("fire")?;
        timers.register(5, "a".to_string())?;
        let mut table: RocksMap<String, u64> = backend.map_state("t")?;
        table.put("a".to_string(), 1)?;
        table.flush()?;
        old.checkpoint_to(&dir.path().join("chk"))?;

        let new = RocksStore::open_fresh(&dir.path().join("new"), &cache)?;
        let copied = new.import_key_groups(&dir.path().join("chk"), 0..MAX_KEY_GROUPS)?;
        assert_eq!(copied, 1, "the table entry, not the timer");
        let mut restored: RocksTimers<String> =
            RocksBackend::new(new, "op", 1).timer_queue("fire")?;
        assert_eq!(restored.pop_due(|_| true)?, None);
        Ok(())
    }

    #[test]
    fn keys_start_with_their_key_group() -> Result<(), StateError> {
        let key = "customer-17".to_string();
        let bytes = encode_key("t", &key)?;
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), key_group_of(&key));
        Ok(())
    }
}
