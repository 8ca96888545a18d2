//! Short byte strings (keys, JSON names and the text between JSON values) loaded, compared
//! and told apart a word at a time, without a library call: `memcmp` and byte loops cost more
//! than the few bytes they compare, and a loop's exit at varying lengths is mispredicted.
//!
//! Invariant: two byte strings of the same length up to 16 have equal [`short_words`] exactly
//! when their bytes are equal (every byte lands in a word); beyond 16 the words say nothing.

/// Eight bytes from `bytes[at..]` as a little-endian word (the first byte lowest), if there
/// are eight.
#[inline]
pub fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let mut word = [0; 8];
    word.copy_from_slice(bytes.get(at..at + 8)?);
    Some(u64::from_le_bytes(word))
}

/// Up to 16 bytes as two words: for 8 or more the first and the last eight (overlapping when
/// shorter than 16), for 4 to 7 the first and the last four, below 4 the first, middle and
/// last byte. With the length, the words tell all such byte strings apart.
#[inline]
pub fn short_words(bytes: &[u8]) -> (u64, u64) {
    let len = bytes.len();
    debug_assert!(len <= 16, "short_words of {len} bytes");
    let half = |at: usize| {
        let mut half = [0; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_le_bytes(half))
    };
    match len {
        0 => (0, 0),
        1..4 => (
            u64::from(bytes[0]) << 16 | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]),
            0,
        ),
        4..8 => (half(0), half(len - 4)),
        // (8 bytes or more: both loads are in range.)
        _ => (
            word_at(bytes, 0).unwrap_or_default(),
            word_at(bytes, len - 8).unwrap_or_default(),
        ),
    }
}

/// Byte equality without a library call for the short strings keys and JSON names mostly are:
/// up to 16 bytes as two loads from each end.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && if a.len() <= 16 {
            short_words(a) == short_words(b)
        } else {
            a == b
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte strings of 0 to 20 bytes, each with every variant that has one byte changed, two
    /// bytes changed, or two neighbours swapped (bytes above 0x7f included).
    fn short_strings_and_near_misses() -> Vec<Vec<u8>> {
        (0..=20)
            .flat_map(|len| {
                let base: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
                let mut all = vec![base.clone()];
                for at in 0..len {
                    for (to, second) in [(b'Z', None), (0x80, None), (0xff, Some(0x80))] {
                        let mut other = base.clone();
                        other[at] = to;
                        all.push(other.clone());
                        if let (Some(second), Some(next)) = (second, (at + 1..len).last()) {
                            other[next] = second;
                            all.push(other);
                        }
                    }
                    if at + 1 < len {
                        let mut swapped = base.clone();
                        swapped.swap(at, at + 1);
                        all.push(swapped);
                    }
                }
                all
            })
            .collect()
    }

    #[test]
    fn short_byte_strings_are_equal_exactly_when_their_bytes_are() {
        let words = short_strings_and_near_misses();
        for a in &words {
            for b in &words {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
                if a.len() == b.len() && a.len() <= 16 {
                    assert_eq!(short_words(a) == short_words(b), a == b, "{a:?} {b:?}");
                }
            }
        }
        // Every string of up to 3 bytes over four byte values, against every other.
        let alphabet = [0u8, b'a', b'b', 0xff];
        let tiny: Vec<Vec<u8>> = (0..=3u32)
            .flat_map(|len| {
                (0..4usize.pow(len)).map(move |mut n| {
                    (0..len)
                        .map(|_| {
                            let byte = alphabet[n % 4];
                            n /= 4;
                            byte
                        })
                        .collect()
                })
            })
            .collect();
        for a in &tiny {
            for b in tiny.iter().filter(|b| b.len() == a.len()) {
                assert_eq!(short_words(a) == short_words(b), a == b, "{a:?} {b:?}");
            }
        }
    }
}
