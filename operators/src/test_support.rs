//! Sources and sinks for the operators' unit tests: a vector in, a shared vector out.

use std::sync::{Arc, Mutex};

use weir_engine::{
    BoxError, Data, JobMetrics, OperatorContext, Record, Sink, Source, SourceStatus,
};

/// Emits its items in one batch, then ends.
pub(crate) struct VecSource<T>(pub(crate) Vec<T>);

impl<T: Data> Source for VecSource<T> {
    type Item = T;
    fn poll_batch(&mut self, out: &mut Vec<T>, _: usize) -> Result<SourceStatus, BoxError> {
        out.append(&mut self.0);
        Ok(SourceStatus::Exhausted)
    }
    fn describe(&self) -> String {
        "vector".into()
    }
}

/// Collects what it receives.
pub(crate) struct Collect<T>(pub(crate) Arc<Mutex<Vec<T>>>);

impl<T> Collect<T> {
    /// A sink and the vector it fills.
    pub(crate) fn new() -> (Self, Arc<Mutex<Vec<T>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (Collect(seen.clone()), seen)
    }
}

impl<T: Data> Sink<T> for Collect<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let mut seen = self.0.lock().map_err(|_| "poisoned")?;
        seen.extend(records.iter().map(|r| r.value.clone()));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "collect".into()
    }
}

/// What a [`Collect`] sink received, sorted.
pub(crate) fn sorted<T: Ord + Clone>(seen: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    let mut items = seen.lock().expect("not poisoned").clone();
    items.sort();
    items
}

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
