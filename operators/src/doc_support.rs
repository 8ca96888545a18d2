//! A vector in, a shared vector out: the source and sink of the operators' doc examples and
//! unit tests (not part of the API; hidden from the docs).

use std::sync::{Arc, Mutex};

use weir_engine::{BoxError, Data, Record, Sink, Source, SourceStatus};

/// Emits its items in one batch, then ends.
#[derive(Debug)]
pub struct VecSource<T>(pub Vec<T>);

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
#[derive(Debug)]
pub struct Collect<T>(pub Arc<Mutex<Vec<T>>>);

impl<T> Collect<T> {
    /// A sink and the vector it fills.
    pub fn new() -> (Self, Arc<Mutex<Vec<T>>>) {
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
pub fn sorted<T: Ord + Clone>(seen: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    let mut items = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    items.sort();
    items
}
