//! Test operators and sinks shared by the runtime's test modules.

use std::sync::{Arc, Mutex};

use crate::operator::{KeyedOperator, OperatorContext, OperatorFactory, Output};
use crate::record::{Keyed, Record};
use crate::sink::Sink;
use crate::state::{MapState, StateBackend, StateTable};
use crate::BoxError;

/// Passes every event on unchanged; fails on the value `fail_on`, if given.
pub(super) struct PassOn {
    fail_on: Option<i64>,
}

impl KeyedOperator for PassOn {
    type Key = i64;
    type In = i64;
    type Out = i64;
    fn process(
        &mut self,
        records: Vec<Record<Keyed<i64, i64>>>,
        out: &mut Output<i64>,
    ) -> Result<(), BoxError> {
        for r in records {
            if Some(r.value.value) == self.fail_on {
                return Err("unlucky event".into());
            }
            out.emit(r.ts, r.value.value);
        }
        Ok(())
    }
    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        Ok(serde_json::Value::Null)
    }
    fn restore(&mut self, _: &[serde_json::Value]) -> Result<(), BoxError> {
        Ok(())
    }
}

pub(super) struct PassOnFactory {
    pub(super) fail_on: Option<i64>,
}

impl OperatorFactory for PassOnFactory {
    type Key = i64;
    type In = i64;
    type Out = i64;
    type Operator<S: StateBackend> = PassOn;
    fn create<S: StateBackend>(&self, _: &OperatorContext, _: S) -> Result<PassOn, BoxError> {
        Ok(PassOn {
            fail_on: self.fail_on,
        })
    }
}

/// Counts events per key in its state table `counts`, emits nothing.
pub(super) struct Counting<S: StateBackend> {
    counts: S::Map<i64, u64>,
}

impl<S: StateBackend> KeyedOperator for Counting<S> {
    type Key = i64;
    type In = i64;
    type Out = i64;
    fn process(
        &mut self,
        records: Vec<Record<Keyed<i64, i64>>>,
        _: &mut Output<i64>,
    ) -> Result<(), BoxError> {
        for r in records {
            self.counts.update(&r.value.key, || 0, |n| *n += 1)?;
        }
        Ok(())
    }
    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.counts]
    }
    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.counts.flush()?;
        Ok(serde_json::Value::Null)
    }
    fn restore(&mut self, _: &[serde_json::Value]) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Makes [`Counting`] operators, declaring the tables `declared` (right: `["counts"]`).
pub(super) struct CountingFactory {
    pub(super) declared: Vec<String>,
}

impl OperatorFactory for CountingFactory {
    type Key = i64;
    type In = i64;
    type Out = i64;
    type Operator<S: StateBackend> = Counting<S>;
    fn create<S: StateBackend>(
        &self,
        _: &OperatorContext,
        mut state: S,
    ) -> Result<Counting<S>, BoxError> {
        Ok(Counting {
            counts: state.map_state("counts")?,
        })
    }
    fn tables(&self) -> Vec<String> {
        self.declared.clone()
    }
}

/// Keeps every record it receives.
pub(super) struct Collect(pub(super) Arc<Mutex<Vec<Record<i64>>>>);

impl Sink<i64> for Collect {
    fn write(&mut self, records: &[Record<i64>]) -> Result<(), BoxError> {
        self.0
            .lock()
            .map_err(|_| "poisoned")?
            .extend_from_slice(records);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "collect".into()
    }
}
