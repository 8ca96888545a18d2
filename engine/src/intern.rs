//! Interning of string keys, so hot paths share one allocation per distinct key.
//!
//! A decoder that sees the same few thousand keys millions of times interns them: each event
//! then holds an `Arc<str>` (cloning is a reference-count increment) instead of a fresh
//! `String`, and `key_by` clones no bytes. The table is bounded: past `capacity` distinct
//! keys, new keys are allocated as usual and not remembered, so memory stays bounded for
//! high-cardinality keys.

use std::sync::Arc;

use rustc_hash::FxHashSet;

/// A bounded set of shared strings.
#[derive(Debug, Clone)]
pub struct Interner {
    strings: FxHashSet<Arc<str>>,
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
            strings: FxHashSet::default(),
            capacity,
        }
    }

    /// The shared copy of `s`.
    #[inline]
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        if self.strings.len() < self.capacity {
            self.strings.insert(shared.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
