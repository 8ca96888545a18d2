//! The byte layout of a state entry, shared by RocksDB tables and memory snapshots.
//!
//! A key is its key group (2 bytes, big endian) followed by its bincode encoding, so one key
//! group's entries are one contiguous key range; a value is its bincode encoding. Because
//! both backends write this layout into checkpoints, a checkpoint taken with one backend
//! can be restored into the other.

use super::{StateError, StateKey, StateValue};
use crate::keys::key_group_of;

/// Bytes reserved for an encoded key: the key group and a short string or a few integers.
const KEY_CAPACITY: usize = 32;

/// Key group (big endian) then the bincode of the key.
pub(crate) fn encode_key<K: StateKey>(table: &str, key: &K) -> Result<Vec<u8>, StateError> {
    // Room for the usual key up front: growing from the 2-byte prefix reallocated per get.
    let mut bytes = Vec::with_capacity(KEY_CAPACITY);
    bytes.extend_from_slice(&key_group_of(key).to_be_bytes());
    bincode::serialize_into(&mut bytes, key)
        .map_err(|e| codec_error(table, "cannot encode key", e))?;
    Ok(bytes)
}

/// The key of an encoded key (its key group prefix skipped).
pub(crate) fn decode_key<K: StateKey>(table: &str, bytes: &[u8]) -> Result<K, StateError> {
    let key = bytes
        .get(2..)
        .ok_or_else(|| codec_error(table, "cannot decode key", "too short"))?;
    bincode::deserialize(key).map_err(|e| codec_error(table, "cannot decode key", e))
}

pub(crate) fn encode_value<V: StateValue>(table: &str, value: &V) -> Result<Vec<u8>, StateError> {
    bincode::serialize(value).map_err(|e| codec_error(table, "cannot encode value", e))
}

pub(crate) fn decode_value<V: StateValue>(table: &str, bytes: &[u8]) -> Result<V, StateError> {
    bincode::deserialize(bytes).map_err(|e| codec_error(table, "cannot decode value", e))
}

fn codec_error(table: &str, what: &str, e: impl std::fmt::Display) -> StateError {
    StateError {
        table: table.to_string(),
        message: format!("{what}: {e}"),
    }
}
