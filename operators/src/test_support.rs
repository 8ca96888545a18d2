//! Sources and sinks for the operators' unit tests (a vector in, a shared vector out, from
//! [`crate::doc_support`]), operator contexts and seeded random data.

use weir_engine::{JobMetrics, OperatorContext};

pub(crate) use crate::doc_support::{sorted, Collect, VecSource};

/// The context of the only instance (P = 1, every key group) of an operator `name`, for
/// tests that drive an operator directly; its metrics (late events) are live.
pub(crate) fn operator_context(name: &str) -> OperatorContext {
    OperatorContext {
        name: name.into(),
        instance: 0,
        parallelism: 1,
        key_groups: 0..128,
        metrics: JobMetrics::new("test").operator(name, 0),
        clock: weir_engine::ProcessingClock::system(),
    }
}

/// A seeded SplitMix64 generator, for random test data that is the same on every run.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias does not matter here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}
