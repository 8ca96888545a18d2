//! Stable key hashing and key groups.
//!
//! A key's key group is `stable_hash(key) % 128`. Key groups are the unit of state
//! ownership: worker `i` of `P` owns the groups `g` with `g * P / 128 == i` (Flink's
//! formula), so state can be snapshotted and redistributed per key group when P changes.
//!
//! # The stability contract
//! [`StableHash`](trait@StableHash) must give the same value in every process, on every
//! platform, at every parallelism and in every version of weir: it decides which worker a
//! key goes to and in which key group its state is checkpointed, so a checkpoint taken by
//! one run is read correctly by the next only if the hash did not move. It is therefore not `std::hash`
//! (randomly seeded, and free to change between Rust versions), and every value below is
//! pinned by a unit test; changing one is a breaking change to existing checkpoints.
//!
//! What a key hashes to:
//! - bytes (`str`, `String`, `[u8]`, `Vec<u8>`): FNV-1a over the bytes, then the murmur3
//!   64-bit finalizer [`mix64`] ([`hash_bytes`]). A string and its UTF-8 bytes hash alike.
//! - integers (all widths, `bool`, `char` as its code point): [`mix64`] of the value
//!   sign-extended to 64 bits, so `7_u8` and `7_i64` hash alike; 128-bit values outside
//!   the 64-bit range combine their two halves.
//! - fields, in order ([`hash_fields`]): none is `0`; one is that field's hash; several
//!   fold with [`combine`]`(acc, next) = mix64(acc ^ next.rotate_left(29))`, starting
//!   from the first field's hash. Tuples of up to 12 elements, and types with
//!   `#[derive(StableHash)]`, hash their fields this way, so **a newtype hashes like its
//!   inner value** (`AccountId(String)` routes, and keeps state in the same key group, as
//!   the `String`), and a struct like the tuple of its fields. Field names do not count;
//!   their order does.
//! - enum values ([`hash_variant`]): the variant's index in declaration order (from 0,
//!   not its discriminant), hashed as a `u64`, followed by the variant's fields, folded
//!   as above. Reordering variants changes the hashes. `Option<T>` hashes like an enum
//!   whose first variant is `None`.
//! - sequences (`[T]`, `Vec<T>`, `[T; N]`): their length hashed as a `u64`, followed by
//!   the elements, folded as above (except bytes, which hash as bytes).
//! - `Box`, `Arc`, `Rc`, `Cow` and references hash like what they point to.
//!
//! The derive (`#[derive(StableHash)]`, from `weir_jobs::prelude`,
//! `weir_operators::prelude` or this crate's root) accepts structs (named, tuple, unit)
//! and enums. A key also needs `Clone + Eq + Hash + Serialize + DeserializeOwned` (see
//! [`crate::StateKey`]): state tables store keys serialized, and queryable state reads them
//! from text.
//!
//! A type without it is refused where it is used as a key, with an error that says so:
//!
//! ```compile_fail,E0277
//! # use weir_engine::keys::key_group_of;
//! struct NotAKey(String); // no `#[derive(StableHash)]`
//! key_group_of(&NotAKey("a".into()));
//! ```

/// Number of key groups (Flink's "max parallelism"). Parallelism may not exceed it.
pub const MAX_KEY_GROUPS: u16 = 128;

/// A key group index in `0..MAX_KEY_GROUPS`.
pub type KeyGroup = u16;

/// Derives [`StableHash`](trait@StableHash) for a struct or an enum (see the module docs
/// for the values).
pub use weir_derive::StableHash;

/// A hash that never changes between processes, platforms or versions (see the module docs
/// for the contract and the values). Implement it with `#[derive(StableHash)]`; by hand,
/// only with [`hash_bytes`], [`mix64`], [`hash_fields`] and [`hash_variant`] over values
/// that are themselves stable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key: it does not implement `StableHash`",
    label = "not usable as a key",
    note = "add `#[derive(StableHash)]` to the key type (from `weir_jobs::prelude`, \
            `weir_operators::prelude` or `weir_engine`); a key also needs \
            `Clone + Eq + Hash + Serialize + Deserialize`"
)]
pub trait StableHash {
    /// The key's stable 64-bit hash.
    fn stable_hash(&self) -> u64;

    /// The hash of a slice of such values: its length as a `u64`, then the elements, as
    /// [`hash_fields`] folds them. `u8` overrides it to hash the bytes, as a string's.
    #[doc(hidden)]
    fn stable_hash_slice(items: &[Self]) -> u64
    where
        Self: Sized,
    {
        items.iter().fold(mix64(items.len() as u64), |acc, item| {
            combine(acc, item.stable_hash())
        })
    }
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

/// Adds the hash `next` of a further field to the hash `acc` of the fields before it. The
/// rotation keeps `(a, b)` and `(b, a)` apart; the finalizer spreads the result again, so
/// the fold depends on every field's position.
#[inline]
pub fn combine(acc: u64, next: u64) -> u64 {
    mix64(acc ^ next.rotate_left(29))
}

/// The hash of a struct or tuple from its fields' hashes, in declaration order: `0` for
/// none, the field's own hash for one (a newtype hashes like its inner value), else the
/// first folded with [`combine`] over the rest.
#[inline]
pub fn hash_fields(fields: &[u64]) -> u64 {
    match fields.split_first() {
        None => 0,
        Some((&first, rest)) => rest.iter().fold(first, |acc, &h| combine(acc, h)),
    }
}

/// The hash of an enum value: its variant's `index` (declaration order, from 0) hashed as
/// a `u64`, then the variant's field hashes folded with [`combine`].
#[inline]
pub fn hash_variant(index: u64, fields: &[u64]) -> u64 {
    fields.iter().fold(mix64(index), |acc, &h| combine(acc, h))
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
stable_hash_int!(i8, i16, i32, i64, isize, u16, u32, u64, usize);

impl StableHash for u8 {
    #[inline]
    fn stable_hash(&self) -> u64 {
        mix64(u64::from(*self))
    }

    fn stable_hash_slice(items: &[u8]) -> u64 {
        hash_bytes(items)
    }
}
impl StableHash for bool {
    #[inline]
    fn stable_hash(&self) -> u64 {
        mix64(u64::from(*self))
    }
}
impl StableHash for char {
    #[inline]
    fn stable_hash(&self) -> u64 {
        mix64(u64::from(u32::from(*self)))
    }
}
impl StableHash for i128 {
    fn stable_hash(&self) -> u64 {
        if let Ok(v) = i64::try_from(*self) {
            v.stable_hash()
        } else if let Ok(v) = u64::try_from(*self) {
            v.stable_hash()
        } else {
            hash_wide(*self as u128)
        }
    }
}
impl StableHash for u128 {
    fn stable_hash(&self) -> u64 {
        match u64::try_from(*self) {
            Ok(v) => v.stable_hash(),
            Err(_) => hash_wide(*self),
        }
    }
}

/// A 128-bit value outside the 64-bit range: its halves, low first, as two fields.
fn hash_wide(bits: u128) -> u64 {
    combine(mix64(bits as u64), mix64((bits >> 64) as u64))
}

impl StableHash for () {
    fn stable_hash(&self) -> u64 {
        hash_fields(&[])
    }
}
macro_rules! stable_hash_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: StableHash),+> StableHash for ($($t,)+) {
            #[inline]
            fn stable_hash(&self) -> u64 {
                hash_fields(&[$(self.$i.stable_hash()),+])
            }
        }
    };
}
stable_hash_tuple!(A 0);
stable_hash_tuple!(A 0, B 1);
stable_hash_tuple!(A 0, B 1, C 2);
stable_hash_tuple!(A 0, B 1, C 2, D 3);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
stable_hash_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self) -> u64 {
        match self {
            None => hash_variant(0, &[]),
            Some(v) => hash_variant(1, &[v.stable_hash()]),
        }
    }
}
impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self) -> u64 {
        T::stable_hash_slice(self)
    }
}
impl<T: StableHash, const N: usize> StableHash for [T; N] {
    fn stable_hash(&self) -> u64 {
        T::stable_hash_slice(self)
    }
}
impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self) -> u64 {
        T::stable_hash_slice(self)
    }
}
macro_rules! stable_hash_pointer {
    ($($p:ty),*) => {$(
        impl<T: StableHash + ?Sized> StableHash for $p {
            #[inline]
            fn stable_hash(&self) -> u64 {
                (**self).stable_hash()
            }
        }
    )*};
}
stable_hash_pointer!(&T, Box<T>, std::sync::Arc<T>, std::rc::Rc<T>);
impl<T: StableHash + ToOwned + ?Sized> StableHash for std::borrow::Cow<'_, T> {
    fn stable_hash(&self) -> u64 {
        (**self).stable_hash()
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

    /// A newtype key, as users write them.
    #[derive(StableHash)]
    struct AccountId(String);

    #[derive(StableHash)]
    struct Named {
        name: String,
        n: i64,
        m: i64,
    }

    #[derive(StableHash)]
    struct Unit;

    #[derive(StableHash)]
    enum Kind {
        A,
        B(u32),
        C { x: String, y: i64 },
    }

    #[derive(StableHash)]
    struct Generic<T>(T, u8);

    #[test]
    fn pinned_values_do_not_change() {
        // Computed by an independent Python model of the module docs' rules. Routing and
        // the key groups of existing checkpoints depend on every one of these values.
        let s = |t: &str| t.to_string();
        assert_eq!("k1".stable_hash(), 0x4a2b_30eb_9896_2955);
        assert_eq!(7_i64.stable_hash(), 0x7407_29cb_e468_d1dd);
        assert_eq!((-1_i32).stable_hash(), 0x64b5_720b_4b82_5f21);
        assert_eq!((s("a"), 7_i64).stable_hash(), 0x86e8_67ab_126d_f4a5);
        assert_eq!((s("a"), 7_i64, 9_u16).stable_hash(), 0x3fcc_e35d_4e07_8e79);
        assert_eq!(Kind::A.stable_hash(), 0);
        assert_eq!(Kind::B(5).stable_hash(), 0xea09_18b0_7a3f_9f74);
        let c = Kind::C { x: s("x"), y: -3 };
        assert_eq!(c.stable_hash(), 0xd3a9_ef23_1aa3_364c);
        assert_eq!(None::<u8>.stable_hash(), 0);
        assert_eq!(Some(7_u8).stable_hash(), 0x0e98_40d0_fc18_bebe);
        assert_eq!(vec![1_u32, 2, 3].stable_hash(), 0x6a42_d75d_830c_3134);
        assert_eq!(((1_u128 << 64) + 5).stable_hash(), 0xb790_6ec2_f93e_df86);
        assert_eq!(key_group_of("k1"), 85);
        assert_eq!(key_group_of(&(s("a"), 7_i64, 9_u16)), 121);
    }

    #[test]
    fn derived_hashes_follow_the_fields() {
        // A newtype routes like its inner value; a struct like the tuple of its fields.
        let id = AccountId("acct-17".into());
        assert_eq!(id.stable_hash(), "acct-17".stable_hash());
        assert_eq!(key_group_of(&id), key_group_of("acct-17"));
        let named = Named {
            name: "a".into(),
            n: 7,
            m: 9,
        };
        assert_eq!(named.stable_hash(), ("a", 7_i64, 9_i64).stable_hash());
        assert_eq!(Unit.stable_hash(), ().stable_hash());
        assert_eq!(Generic(3_i64, 1).stable_hash(), (3_i64, 1_u8).stable_hash());
        // Option is the enum `None | Some(T)`, in that order.
        assert_eq!(Some(5_u32).stable_hash(), Kind::B(5).stable_hash());
        // Field order and variant index count.
        assert_ne!((1_i64, 2_i64).stable_hash(), (2_i64, 1_i64).stable_hash());
        assert_ne!(Kind::B(0).stable_hash(), 0_u32.stable_hash());
    }

    #[test]
    fn std_types_hash_like_their_contents() {
        let text = "payments";
        assert_eq!(text.as_bytes().to_vec().stable_hash(), text.stable_hash());
        assert_eq!(Box::<str>::from(text).stable_hash(), text.stable_hash());
        assert_eq!(std::rc::Rc::new(9_i32).stable_hash(), 9_i64.stable_hash());
        assert_eq!(
            std::borrow::Cow::from(text).stable_hash(),
            text.stable_hash()
        );
        assert_eq!([1_i32, 2, 3].stable_hash(), vec![1_i32, 2, 3].stable_hash());
        assert_eq!(true.stable_hash(), 1_u8.stable_hash());
        assert_eq!('A'.stable_hash(), 65_u32.stable_hash());
        assert_eq!((-5_i128).stable_hash(), (-5_i64).stable_hash());
        assert_eq!(u128::from(u64::MAX).stable_hash(), u64::MAX.stable_hash());
        assert_eq!((7_i64,).stable_hash(), 7_i64.stable_hash());
        // A sequence is not its only element, and its length counts.
        assert_ne!(vec![7_i64].stable_hash(), 7_i64.stable_hash());
        assert_ne!(vec![0_i64].stable_hash(), Vec::<i64>::new().stable_hash());
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
