//! Time-to-live for keyed state, and list state.
//!
//! [`TtlMap`] wraps any backend's [`MapState`] and stamps every write with the table's
//! current time. An entry whose `written + ttl <= now` is expired: it is invisible at once
//! (reads see nothing, `update` starts afresh), and it is removed when touched or by a sweep
//! that runs each time the clock has moved by the TTL (so the cost is amortized, and the
//! table holds at most about two TTLs' worth of entries).
//!
//! A sweep visits only the keys written a TTL ago or earlier, found in an in-memory index
//! of write times (bounded like the table: an entry per key and write time within about two
//! TTLs); it never scans the table, whose deleted entries RocksDB would otherwise walk over
//! again on every sweep until compaction. Entries the table held before this instance
//! existed (restored from a checkpoint) are indexed by one full scan at the first sweep.
//!
//! # Which clock
//! The owner of the table moves its clock ([`TtlMap::advance_time`]). weir's operators use
//! event time (the watermark), as Flink's state TTL would with event time: a replay from a
//! checkpoint then expires exactly the same entries, so results stay deterministic. Writes
//! refresh the stamp; reads do not (Flink's `OnCreateAndWrite`).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{MapState, StateError, StateKey, StateTable, StateValue};
use crate::time::{Timestamp, MIN_WATERMARK};

/// A value with the time it was last written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expiring<V> {
    /// When the value was last written (the table's clock then).
    pub written: Timestamp,
    /// The value.
    pub value: V,
}

/// A [`MapState`] whose entries expire `ttl` after they were last written.
#[derive(Debug)]
pub struct TtlMap<K, V, M> {
    inner: M,
    ttl: i64,
    now: Timestamp,
    next_sweep: Timestamp,
    /// `(time written, key)` in time order (a key may be listed at several times; only the
    /// entry's own stamp counts). Writes at the table's clock come in order: appended.
    writes: VecDeque<(Timestamp, K)>,
    /// Whether entries written before this instance are in `writes` (after a first sweep).
    indexed: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: StateKey, V: StateValue, M: MapState<K, Expiring<V>>> TtlMap<K, V, M> {
    /// Wraps `inner`; entries live for `ttl` of the table's clock.
    pub fn new(inner: M, ttl: Duration) -> Self {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        TtlMap {
            inner,
            ttl,
            now: MIN_WATERMARK,
            next_sweep: MIN_WATERMARK,
            writes: VecDeque::new(),
            indexed: false,
            _types: PhantomData,
        }
    }

    /// The table's current time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves the table's clock to `now` (it never goes back); sweeps expired entries out
    /// once the clock has moved by the TTL since the last sweep. Returns how many entries
    /// the sweep removed.
    pub fn advance_time(&mut self, now: Timestamp) -> Result<usize, StateError> {
        if now <= self.now {
            return Ok(0);
        }
        self.now = now;
        if self.next_sweep == MIN_WATERMARK {
            self.next_sweep = now.saturating_add(self.ttl);
            return Ok(0);
        }
        if now < self.next_sweep {
            return Ok(0);
        }
        self.next_sweep = now.saturating_add(self.ttl);
        self.sweep()
    }

    /// Removes every expired entry now.
    pub fn sweep(&mut self) -> Result<usize, StateError> {
        let (ttl, now) = (self.ttl, self.now);
        let mut removed = 0;
        if !self.indexed {
            let (mut expired, mut live) = (Vec::new(), Vec::new());
            self.inner.scan(|key, e| {
                if alive(&e, ttl, now) {
                    live.push((e.written, key));
                } else {
                    expired.push(key);
                }
            })?;
            for (written, key) in live {
                self.note(key, written);
            }
            for key in &expired {
                self.inner.take(key)?;
            }
            self.indexed = true;
            removed += expired.len();
        }
        while let Some((written, _)) = self.writes.front() {
            if written.saturating_add(ttl) > now {
                break;
            }
            let Some((_, key)) = self.writes.pop_front() else {
                break;
            };
            // Still expired? (It may have been written again, or removed.)
            let expired = self
                .inner
                .read(&key, |e| e.is_some_and(|e| !alive(e, ttl, now)))?;
            if expired {
                self.inner.take(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Records that `key` was written at `written`.
    fn note(&mut self, key: K, written: Timestamp) {
        if self.writes.back().is_none_or(|(last, _)| *last <= written) {
            self.writes.push_back((written, key));
        } else {
            // An explicit stamp in the past (`insert_new_at`): keep the order.
            let at = self.writes.partition_point(|(t, _)| *t <= written);
            self.writes.insert(at, (written, key));
        }
    }

    /// Stores `value` under `key` as if written at `written` (for example the event's own
    /// time) rather than at the table's current time, unless a live entry is there (which
    /// keeps its value and stamp); returns whether it stored. One lookup of the key: on
    /// RocksDB a `read` then a `put` of a new key looked it up twice (dedup's every new id).
    pub fn insert_new_at(
        &mut self,
        key: K,
        value: V,
        written: Timestamp,
    ) -> Result<bool, StateError> {
        let (ttl, now) = (self.ttl, self.now);
        // An expired entry is replaced, as if the sweep had removed it already.
        let stored = self
            .inner
            .put_unless(&key, Expiring { written, value }, |e| alive(e, ttl, now))?;
        if stored {
            self.note(key, written);
        }
        Ok(stored)
    }

    fn stamp(&self, value: V) -> Expiring<V> {
        Expiring {
            written: self.now,
            value,
        }
    }
}

#[inline]
fn alive<V>(e: &Expiring<V>, ttl: i64, now: Timestamp) -> bool {
    e.written.saturating_add(ttl) > now
}

impl<K: StateKey, V: StateValue, M: MapState<K, Expiring<V>>> StateTable for TtlMap<K, V, M> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Entries held, including expired ones not swept yet.
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.inner.flush()
    }
}

impl<K: StateKey, V: StateValue, M: MapState<K, Expiring<V>>> MapState<K, V> for TtlMap<K, V, M> {
    fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        self.read(key, |v| v.cloned())
    }

    fn read<R>(&self, key: &K, f: impl FnOnce(Option<&V>) -> R) -> Result<R, StateError> {
        let (ttl, now) = (self.ttl, self.now);
        self.inner.read(key, |e| {
            f(e.filter(|e| alive(e, ttl, now)).map(|e| &e.value))
        })
    }

    fn modify<R>(
        &mut self,
        key: &K,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, StateError> {
        if self.get(key)?.is_none() {
            // Absent, or expired: an expired entry goes now that it was touched.
            self.inner.take(key)?;
            return Ok(None);
        }
        let now = self.now;
        let (stamped, result) = self
            .inner
            .modify(key, |e| {
                (std::mem::replace(&mut e.written, now), change(&mut e.value))
            })?
            .unzip();
        if stamped.is_some_and(|before| before != now) {
            self.note(key.clone(), now);
        }
        Ok(result)
    }

    fn update<R>(
        &mut self,
        key: &K,
        init: impl FnOnce() -> V,
        change: impl FnOnce(&mut V) -> R,
    ) -> Result<R, StateError> {
        let (ttl, now) = (self.ttl, self.now);
        // `init` runs only if the entry is new or expired; either closure may take it.
        let init = std::cell::Cell::new(Some(init));
        let fresh = || Expiring {
            written: now,
            value: init
                .take()
                .map_or_else(|| unreachable!("init runs once"), |f| f()),
        };
        // Whether a live entry already had this stamp (then it is indexed at it already).
        let stamped_now = std::cell::Cell::new(false);
        let result = self.inner.update(key, fresh, |e| {
            if !alive(e, ttl, now) {
                *e = fresh();
            } else {
                stamped_now.set(e.written == now);
            }
            e.written = now;
            change(&mut e.value)
        })?;
        // `init` was used (a new or expired entry), or the stamp moved: a write to index.
        let created = init.take().is_none();
        if created || !stamped_now.get() {
            self.note(key.clone(), now);
        }
        Ok(result)
    }

    fn put(&mut self, key: K, value: V) -> Result<(), StateError> {
        let stamped = self.stamp(value);
        self.note(key.clone(), stamped.written);
        self.inner.put(key, stamped)
    }

    fn take(&mut self, key: &K) -> Result<Option<V>, StateError> {
        let (ttl, now) = (self.ttl, self.now);
        Ok(self
            .inner
            .take(key)?
            .filter(|e| alive(e, ttl, now))
            .map(|e| e.value))
    }

    fn scan(&mut self, mut f: impl FnMut(K, V)) -> Result<(), StateError> {
        let (ttl, now) = (self.ttl, self.now);
        self.inner.scan(|k, e| {
            if alive(&e, ttl, now) {
                f(k, e.value);
            }
        })
    }
}

/// List state: a list of values per key, over any map table of `Vec`s.
pub trait ListState<K, V>: MapState<K, Vec<V>> {
    /// Appends `value` to the list of `key`.
    fn append(&mut self, key: &K, value: V) -> Result<(), StateError> {
        self.update(key, Vec::new, |list| list.push(value))
    }

    /// The list of `key` (empty if none), consuming it.
    fn take_list(&mut self, key: &K) -> Result<Vec<V>, StateError> {
        Ok(self.take(key)?.unwrap_or_default())
    }
}

impl<K, V, M: MapState<K, Vec<V>>> ListState<K, V> for M {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{shared_block_cache, MemoryBackend, RocksBackend, RocksStore, StateBackend};

    /// Runs the same TTL story against a backend.
    fn expiry_story<S: StateBackend>(mut backend: S) -> Result<(), StateError> {
        let mut table: TtlMap<String, i64, _> =
            TtlMap::new(backend.map_state("seen")?, Duration::from_millis(100));
        let k = |s: &str| s.to_string();
        table.advance_time(1_000)?;
        table.put(k("a"), 1)?;
        table.advance_time(1_050)?;
        table.update(&k("b"), || 0, |v| *v += 2)?;
        assert_eq!(table.get(&k("a"))?, Some(1));
        // `a` was written at 1000: at 1100 it is gone, at once, for every kind of access.
        table.advance_time(1_100)?;
        assert_eq!(table.get(&k("a"))?, None);
        assert_eq!(table.modify(&k("a"), |v| *v)?, None);
        assert_eq!(table.get(&k("b"))?, Some(2));
        // Writing refreshes: `b` lives until 1130 + 100.
        table.advance_time(1_130)?;
        table.update(&k("b"), || 0, |v| *v += 1)?;
        table.advance_time(1_200)?;
        assert_eq!(table.get(&k("b"))?, Some(3));
        // Entries created by `update` are swept too (the sweep finds them by write time).
        table.update(&k("d"), || 5, |_| ())?;
        // An expired entry updated starts afresh.
        table.put(k("c"), 7)?;
        table.advance_time(1_400)?;
        assert_eq!(table.update(&k("c"), || 0, |v| *v)?, 0);
        // The sweep has removed `b` (expired at 1230): only `c` is held.
        assert_eq!(table.len(), 1);
        let mut live = Vec::new();
        table.scan(|key, v| live.push((key, v)))?;
        assert_eq!(live, vec![(k("c"), 0)]);
        // `insert_new_at` stores only where no live entry is; a live one keeps its value and
        // its stamp.
        assert!(table.insert_new_at(k("e"), 9, 1_350)?);
        assert!(!table.insert_new_at(k("e"), 10, 1_399)?);
        assert_eq!(table.get(&k("e"))?, Some(9));
        table.advance_time(1_449)?;
        assert_eq!(table.get(&k("e"))?, Some(9));
        // Written at 1350 (the refused insert did not restamp it): gone at 1450, and stored
        // again.
        table.advance_time(1_450)?;
        assert_eq!(table.get(&k("e"))?, None);
        assert!(table.insert_new_at(k("e"), 11, 1_450)?);
        assert_eq!(table.get(&k("e"))?, Some(11));
        Ok(())
    }

    #[test]
    fn entries_expire_at_once_and_are_swept_in_memory() -> Result<(), StateError> {
        expiry_story(MemoryBackend::new())
    }

    #[test]
    fn entries_expire_at_once_and_are_swept_in_rocksdb() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        // A cache of 1 entry: everything goes through RocksDB.
        Ok(expiry_story(RocksBackend::new(store, "op", 1))?)
    }

    #[test]
    fn lists_append_and_are_taken_whole() -> Result<(), StateError> {
        let mut lists = MemoryBackend::new().map_state::<u32, Vec<String>>("l")?;
        let s = |text: &str| text.to_string();
        lists.append(&1, s("placed"))?;
        lists.append(&1, s("paid"))?;
        lists.append(&2, s("placed"))?;
        assert_eq!(lists.take_list(&1)?, vec![s("placed"), s("paid")]);
        assert_eq!(lists.take_list(&1)?, Vec::<String>::new());
        assert_eq!(lists.get(&2)?, Some(vec![s("placed")]));
        Ok(())
    }
}
