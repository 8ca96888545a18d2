//! Interning of string keys, so hot paths share one allocation per distinct key.
//!
//! A decoder that sees the same few thousand keys millions of times interns them: each event
//! then holds an `Arc<str>` (cloning is a reference-count increment) instead of a fresh
//! `String`, and `key_by` clones no bytes. The table is bounded: past `capacity` distinct
//! keys, new keys are allocated as usual and not remembered, so memory stays bounded for
//! high-cardinality keys.

use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::bytes::{same_bytes, short_words};

/// An interned string used as a key: equality compares the pointers first, so the copies an
/// [`Interner`] hands out compare without reading their bytes. (`Arc<str>`'s own `==`
/// always compares bytes: std's pointer shortcut is for sized types only.) Hashes, orders
/// and serializes exactly as the string, so state and checkpoints do not change.
#[derive(Debug, Clone, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SharedStr(pub Arc<str>);

impl std::hash::Hash for SharedStr {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the text: equal text, equal hash, whatever the allocation.
        self.0.hash(state);
    }
}

impl PartialEq for SharedStr {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for SharedStr {}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl crate::keys::StableHash for SharedStr {
    fn stable_hash(&self) -> u64 {
        self.0.stable_hash()
    }
}

/// A bounded set of shared strings.
#[derive(Debug, Clone)]
pub struct Interner {
    /// By a hash of their bytes, so a lookup compares one candidate, inline (a `memcmp`
    /// call per lookup was 5 % of the JSONL window job). A string whose hash is taken by
    /// another is not remembered, like one past `capacity`.
    strings: FxHashMap<u64, Arc<str>>,
    capacity: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner::with_capacity(100_000)
    }
}

impl Interner {
    /// An interner remembering at most `capacity` distinct strings.
    pub fn with_capacity(capacity: usize) -> Self {
        Interner {
            strings: FxHashMap::default(),
            capacity,
        }
    }

    /// The shared copy of `s`.
    #[inline]
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        let hash = short_hash(s.as_bytes());
        if let Some(shared) = self.strings.get(&hash) {
            if same_bytes(shared.as_bytes(), s.as_bytes()) {
                return shared.clone();
            }
            return Arc::from(s);
        }
        let shared: Arc<str> = Arc::from(s);
        if self.strings.len() < self.capacity {
            self.strings.insert(hash, shared.clone());
        }
        shared
    }

    /// Number of strings remembered.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// The interner's hash of a key: for up to 16 bytes, two folded multiplies of its two words
/// (the short-input path of wyhash and foldhash) instead of Fx's loop over the bytes; longer
/// keys take Fx. Only compared within one process, never stored. (One multiply of the two
/// words, `a * b`, collided on keys like `k123`: different pairs of factors, one product.)
#[inline]
fn short_hash(bytes: &[u8]) -> u64 {
    const SEED: [u64; 3] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
    ];
    if bytes.len() > 16 {
        return FxBuildHasher.hash_one(bytes);
    }
    let (a, b) = short_words(bytes);
    let first = folded_multiply(a ^ SEED[0], SEED[1] ^ bytes.len() as u64);
    folded_multiply(first ^ b, SEED[2])
}

/// The 128-bit product of two words, its halves xor-ed together.
#[inline]
fn folded_multiply(x: u64, y: u64) -> u64 {
    let product = u128::from(x) * u128::from(y);
    (product as u64) ^ (product >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_short_keys_are_remembered_apart_and_equal_ones_shared() {
        // Distinct keys have distinct hashes (a key whose hash is taken is not remembered).
        let mut keys = Interner::default();
        let mut distinct = std::collections::HashSet::new();
        for n in 0..20_000u64 {
            let key = format!("{:x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (n % 64));
            distinct.insert(key.clone());
            keys.intern(&key);
            keys.intern(&format!("k{n}"));
            distinct.insert(format!("k{n}"));
        }
        assert_eq!(
            keys.len(),
            distinct.len(),
            "short keys whose hashes collide"
        );
        let mut keys = Interner::default();
        let (k1, k2) = (keys.intern("k12"), keys.intern("k21"));
        assert_ne!(k1, k2);
        assert!(Arc::ptr_eq(&k1, &keys.intern("k12")));
        assert!(!Arc::ptr_eq(&k2, &keys.intern("k12")));
    }

    #[test]
    fn shared_strings_equal_hash_and_serialize_as_their_text() {
        use crate::keys::StableHash;
        let (a, b) = (SharedStr(Arc::from("k1")), SharedStr(Arc::from("k1")));
        assert_eq!(a, b, "equal text, other allocation");
        assert_eq!(a, a.clone());
        assert_ne!(a, SharedStr(Arc::from("k2")));
        assert_eq!(a.stable_hash(), "k1".stable_hash());
        let hash = |v: &dyn Fn(&mut rustc_hash::FxHasher)| {
            let mut h = rustc_hash::FxHasher::default();
            v(&mut h);
            std::hash::Hasher::finish(&h)
        };
        use std::hash::Hash;
        assert_eq!(
            hash(&|h| a.hash(h)),
            hash(&|h| Arc::<str>::from("k1").hash(h))
        );
        assert_eq!(serde_json::to_string(&a).ok().as_deref(), Some(r#""k1""#));
    }

    #[test]
    fn interned_strings_share_storage_up_to_capacity() {
        let mut i = Interner::with_capacity(2);
        let a1 = i.intern("a");
        let a2 = i.intern("a");
        assert!(Arc::ptr_eq(&a1, &a2));
        i.intern("b");
        let c1 = i.intern("c");
        let c2 = i.intern("c");
        assert_eq!(c1, c2);
        assert!(
            !Arc::ptr_eq(&c1, &c2),
            "past capacity, strings are not remembered"
        );
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn equal_strings_of_any_length_are_shared_and_different_ones_kept_apart() {
        let mut i = Interner::default();
        let long = "x".repeat(100);
        for s in ["", "a", "ab", "ba", long.as_str(), &long[1..]] {
            let first = i.intern(s);
            assert_eq!(&*first, s);
            assert!(Arc::ptr_eq(&first, &i.intern(s)), "{s:?}");
        }
        assert_eq!(i.len(), 6);
    }
}
