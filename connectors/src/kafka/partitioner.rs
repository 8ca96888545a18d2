//! Which partition a producer put a keyed record in: the key-to-partition functions of
//! librdkafka's and the Java client's default partitioners, so that a key's partition (and
//! so the process of a `tasks=per-partition` run that holds its state) can be found without
//! reading the topic.
//!
//! | [`Partitioner`] | used by | partition of key bytes `k` among `n` |
//! |---|---|---|
//! | `Consistent` | librdkafka's default `consistent_random` (weir's Kafka sink, `weir gen --key-field`, confluent-kafka-python/go, node-rdkafka) | `crc32(k) % n` (CRC-32/ISO-HDLC, zlib's) |
//! | `Murmur2` | the Java client's default (Kafka Streams, Kafka Connect), librdkafka's `murmur2_random` | `(murmur2(k) & 0x7fffffff) % n` (Kafka's seed `0x9747b28c`) |
//!
//! # Invariants
//! - The answer is the partition the producer chose for the same key bytes and partition
//!   count, as long as the producer used that partitioner and the topic had `n` partitions
//!   when it produced (adding partitions moves keys, as Kafka itself warns).
//! - An empty key has no fixed partition under librdkafka's `consistent_random` (it is
//!   placed at random, as a missing key is); [`Partitioner::partition`] still answers
//!   `crc32("") % n = 0`, what plain `consistent` does.
//!
//! Tested against librdkafka itself in `tests/partitioned_state.rs` (records produced with
//! each partitioner to a real topic land where this module says), and against the Java
//! client's own test vectors below.

use std::fmt;
use std::str::FromStr;

/// A producer's key-to-partition function (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// librdkafka's default (`consistent_random`): CRC-32 of the key.
    #[default]
    Consistent,
    /// The Java client's default: murmur2 of the key.
    Murmur2,
}

impl Partitioner {
    /// The partition, in `0..partitions`, of a record keyed by `key` in a topic of
    /// `partitions` partitions; `None` if `partitions` is not positive.
    pub fn partition(self, key: &[u8], partitions: i32) -> Option<i32> {
        let count = u32::try_from(partitions).ok().filter(|&n| n > 0)?;
        let hash = match self {
            Partitioner::Consistent => crc32fast::hash(key),
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
        };
        // Below `partitions`, which is an i32.
        i32::try_from(hash % count).ok()
    }

    /// The name [`Partitioner::from_str`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::Consistent => "consistent",
            Partitioner::Murmur2 => "murmur2",
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A partitioner name that is not one of [`Partitioner`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown partitioner `{0}`: use `consistent` (librdkafka's default, weir's own producers) \
     or `murmur2` (the Java client's default)"
)]
pub struct UnknownPartitioner(pub String);

impl FromStr for Partitioner {
    type Err = UnknownPartitioner;

    /// `consistent` or `murmur2`; librdkafka's names of the same functions
    /// (`consistent_random`, `murmur2_random`) too.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "consistent" | "consistent_random" => Ok(Partitioner::Consistent),
            "murmur2" | "murmur2_random" => Ok(Partitioner::Murmur2),
            other => Err(UnknownPartitioner(other.to_string())),
        }
    }
}

/// MurmurHash2 (32-bit) as the Java client's `Utils.murmur2` computes it: little-endian
/// 4-byte blocks, seed `0x9747b28c`, the tail bytes mixed in the same order.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The Java code takes the length as an int; keys past 4 GiB do not exist in Kafka.
    let mut h = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client_s_test_vectors() {
        // Apache Kafka's `UtilsTest.testMurmur2` (values as Java ints).
        for (key, want) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn consistent_is_the_crc32_of_the_key_modulo_the_partitions() {
        // The CRC-32 check value: crc32("123456789") = 0xCBF43926 = 3421780262.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        let p = Partitioner::Consistent;
        assert_eq!(
            p.partition(b"123456789", 7),
            Some((3_421_780_262_u32 % 7) as i32)
        );
        assert_eq!(p.partition(b"", 4), Some(0));
        // Java's toPositive: the sign bit is dropped before the modulo.
        let negative = murmur2(b"21");
        assert!(negative & 0x8000_0000 != 0);
        assert_eq!(
            Partitioner::Murmur2.partition(b"21", 10),
            Some(((negative & 0x7fff_ffff) % 10) as i32)
        );
    }

    #[test]
    fn every_key_lands_in_range_and_no_partitions_is_no_answer() {
        for p in [Partitioner::Consistent, Partitioner::Murmur2] {
            for n in [1, 3, 4, 16, i32::MAX] {
                for key in ["a0", "a17", "", "ключ", "x".repeat(1000).as_str()] {
                    let got = p.partition(key.as_bytes(), n).expect("a partition");
                    assert!((0..n).contains(&got), "{p} {key} {n}: {got}");
                }
            }
            assert_eq!(p.partition(b"a1", 0), None);
            assert_eq!(p.partition(b"a1", -2), None);
        }
    }

    #[test]
    fn names_parse_with_librdkafka_s_aliases_and_a_wrong_one_says_the_choices() {
        for (name, want) in [
            ("consistent", Partitioner::Consistent),
            ("consistent_random", Partitioner::Consistent),
            ("murmur2", Partitioner::Murmur2),
            ("murmur2_random", Partitioner::Murmur2),
        ] {
            assert_eq!(name.parse::<Partitioner>(), Ok(want));
        }
        let e = "fnv1a".parse::<Partitioner>().expect_err("not supported");
        assert!(e.to_string().contains("`fnv1a`") && e.to_string().contains("murmur2"));
        assert_eq!(Partitioner::default().to_string(), "consistent");
    }
}
