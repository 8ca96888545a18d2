//! The input of the in-process operator and window tests: keyed events with ids, about one
//! per 10 ms, up to 400 ms out of order.

use serde::{Deserialize, Serialize};

use super::SplitMix64;

/// One event: its time, key and number in the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ev {
    pub(crate) ts: i64,
    pub(crate) key: String,
    pub(crate) id: u64,
}

/// `n` events over `keys` keys, about one per 10 ms, up to 400 ms out of order.
pub(crate) fn events(n: u64, keys: u64, seed: u64) -> Vec<Ev> {
    let mut rng = SplitMix64::new(seed);
    let mut clock = 1_000_000;
    (0..n)
        .map(|id| {
            clock += rng.between(0, 20);
            Ev {
                ts: clock - rng.between(0, 400),
                key: format!("k{}", rng.below(keys)),
                id,
            }
        })
        .collect()
}
