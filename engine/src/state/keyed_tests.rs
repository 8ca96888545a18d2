//! Tests of map state on both backends, and of its checkpoint layout.

use super::*;
use crate::keys::{key_group_of, MAX_KEY_GROUPS};
use crate::state::rocksdb::write_snapshot;
use crate::state::{
    shared_block_cache, MemoryBackend, MemorySnapshots, RocksBackend, RocksStore, StateBackend,
};

type Error = Box<dyn std::error::Error>;

fn sorted<UK: Ord, UV: Ord>(entries: MapEntries<'_, UK, UV>) -> Result<Vec<(UK, UV)>, StateError> {
    let mut entries = entries.collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

/// What every backend's map state must do; `"a"` and `"ab"` share their first bytes, so a
/// prefix scan that is not bounded by the whole key would mix them up.
fn exercise(map: &mut impl KeyedMapState<String, u32, String>) -> Result<(), StateError> {
    let (a, ab) = ("a".to_string(), "ab".to_string());
    for i in 0..50 {
        map.put(&a, i, format!("a{i}"))?;
        map.put(&ab, i, format!("ab{i}"))?;
    }
    map.put(&a, 7, "seven".into())?;
    assert_eq!(map.len(), 100, "a put over an entry replaces it");
    assert_eq!(map.get(&a, &7)?, Some("seven".into()));
    assert_eq!(map.get(&ab, &7)?, Some("ab7".into()));
    assert!(map.contains(&a, &49)? && !map.contains(&a, &50)?);
    assert_eq!(map.remove(&a, &49)?, Some("a49".into()));
    assert_eq!(map.remove(&a, &49)?, None);
    let entries = sorted(map.entries(&a)?)?;
    assert_eq!(entries.len(), 49);
    assert_eq!(entries[7], (7, "seven".into()));
    assert!(entries.iter().all(|(k, _)| *k != 49));
    assert_eq!(map.clear(&ab)?, 50);
    assert_eq!(sorted(map.entries(&ab)?)?, vec![]);
    assert_eq!(map.get(&ab, &1)?, None);
    assert_eq!(sorted(map.entries(&a)?)?.len(), 49, "another key's clear");
    assert_eq!(map.len(), 49);
    map.put(&ab, 1, "again".into())?;
    assert_eq!(sorted(map.entries(&ab)?)?, vec![(1, "again".into())]);
    assert_eq!(sorted(map.entries(&"zz".to_string())?)?, vec![]);
    Ok(())
}

#[test]
fn map_state_in_memory() -> Result<(), Error> {
    let mut map = MemoryBackend::new().keyed_map_state("m")?;
    exercise(&mut map)?;
    Ok(())
}

#[test]
fn map_state_in_rocksdb_with_a_small_cache() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
    // A cache of 3 entries makes most entries go through RocksDB.
    let mut map = RocksBackend::new(store, "op", 3).keyed_map_state("m")?;
    exercise(&mut map)?;
    map.recount()?;
    assert_eq!(map.len(), 50);
    Ok(())
}

/// Fills `key`s' maps: key `k{i}` gets `i % 7` entries.
fn fill(map: &mut impl KeyedMapState<String, u32, u64>) -> Result<usize, StateError> {
    let mut total = 0;
    for i in 0..300u32 {
        for j in 0..i % 7 {
            map.put(&format!("k{i}"), j, u64::from(i * 100 + j))?;
            total += 1;
        }
    }
    Ok(total)
}

#[test]
fn a_memory_snapshot_restores_key_groups_into_memory_and_rocksdb() -> Result<(), Error> {
    let snapshots = Arc::new(MemorySnapshots::default());
    let mut map: MemoryKeyedMap<String, u32, u64> =
        MemoryBackend::checkpointed(snapshots.clone(), "op").keyed_map_state("m")?;
    let total = fill(&mut map)?;
    snapshots.begin();
    map.flush()?;
    let dir = tempfile::tempdir()?;
    let snapshot = dir.path().join("snapshot");
    write_snapshot(&snapshot, snapshots.take())?;

    // Half the key groups into memory (a restore at parallelism 2), all into RocksDB.
    let (restored, half, read) = crate::state::memory::tests::restore_half(&snapshot)?;
    let mut memory: MemoryKeyedMap<String, u32, u64> =
        MemoryBackend::checkpointed(restored, "op").keyed_map_state("m")?;
    let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
    assert_eq!(
        store.import_key_groups(&snapshot, 0..MAX_KEY_GROUPS)?,
        total as u64
    );
    let mut rocks: RocksKeyedMap<String, u32, u64> =
        RocksBackend::new(store, "op", 16).keyed_map_state("m")?;
    rocks.recount()?;
    assert_eq!(rocks.len(), total);
    assert!(read > 0 && (read as usize) < total, "{read} of {total}");
    assert_eq!(memory.len() as u64, read);
    for i in 0..300u32 {
        let key = format!("k{i}");
        let expected: Vec<(u32, u64)> = (0..i % 7).map(|j| (j, u64::from(i * 100 + j))).collect();
        let in_half = half.contains(&key_group_of(&key));
        let in_memory = sorted(memory.entries(&key)?)?;
        assert_eq!(in_memory, if in_half { expected.clone() } else { vec![] });
        assert_eq!(sorted(rocks.entries(&key)?)?, expected, "{key} in RocksDB");
    }
    Ok(())
}

/// A put into a map of a million entries writes one small entry, not the map: the bytes
/// RocksDB takes in per put stay those of one entry. (Run with `--nocapture` for figures;
/// BENCHMARKS.md has them.)
#[test]
fn a_put_into_a_map_of_a_million_entries_writes_one_entry() -> Result<(), Error> {
    const ENTRIES: u64 = 1_000_000;
    const PUTS: u64 = 100_000;
    let dir = tempfile::tempdir()?;
    // Statistics on: the bytes written are RocksDB's ticker.
    let cache = shared_block_cache().with_statistics();
    let store = RocksStore::open_fresh(&dir.path().join("db"), &cache)?;
    let mut map: RocksKeyedMap<String, u64, u64> =
        RocksBackend::new(store.clone(), "op", 10_000).keyed_map_state("m")?;
    let key = "one-key".to_string();
    let started = std::time::Instant::now();
    for i in 0..ENTRIES {
        map.put(&key, i, i)?;
    }
    map.flush()?;
    let fill = started.elapsed();
    let written = || store.bytes_written().ok_or("no statistics");
    let before = written()?;
    let started = std::time::Instant::now();
    for i in 0..PUTS {
        // Spread over the map, so most puts miss the cache.
        map.put(&key, (i * 7919) % ENTRIES, i)?;
    }
    map.flush()?;
    let elapsed = started.elapsed();
    let per_put = (written()? - before) / PUTS;
    println!(
        "map state, {ENTRIES} entries under one key in RocksDB: fill {:.0} ns/put, then \
         {PUTS} puts {:.0} ns/put, {per_put} bytes written per put",
        fill.as_nanos() as f64 / ENTRIES as f64,
        elapsed.as_nanos() as f64 / PUTS as f64,
    );
    // One entry is 2 + 15 + 8 bytes of key and 8 of value, plus RocksDB's per-entry
    // overhead; rewriting the map would be megabytes per put.
    assert!(per_put < 100, "{per_put} bytes per put");
    assert_eq!(map.len() as u64, ENTRIES);
    assert_eq!(map.get(&key, &7919)?, Some(1));
    Ok(())
}
