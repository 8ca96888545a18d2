//! The bundled `saga-monitor` job: per order, `OrderPlaced -> InventoryReserved ->
//! PaymentProcessed` within a deadline (CEP, relaxed contiguity). A completed saga emits
//! `{"type":"saga_completed","order_id","placed_ts","latency_ms"}` (placed to paid); one that
//! stalls emits `{"type":"saga_timed_out","order_id","placed_ts","missing","deadline"}`
//! naming the step that did not come in time: the trigger for compensation.
//!
//! `--param deadline=30s` (default 30 s); events `{"order_id","type","ts"}` (`weir gen
//! sagas`); malformed lines go to the dead letters.

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_engine::{parse_duration, Job, Watermarks};
use weir_operators::prelude::*;

use crate::dead_letters::write_dead_letters;
use crate::generate::SAGA_STEPS;
use crate::input::InputSpec;
use crate::options::JobOptions;
use crate::output::OutputSink;

/// One line of `weir jobs`.
pub const ABOUT: &str =
    "per order, OrderPlaced -> InventoryReserved -> PaymentProcessed within --param deadline=30s";

/// A step of an order's saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// The order.
    pub order_id: String,
    /// `OrderPlaced`, `InventoryReserved` or `PaymentProcessed` (any other type is read
    /// and takes no part in a saga).
    #[serde(rename = "type")]
    pub step: SagaStep,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// The type of a saga event. An enum rather than a string: decoding it allocates nothing and
/// the pattern's conditions compare one byte (about 5 % of the job's instructions).
///
/// It is (de)serialized as its name, like the `String` it replaced, so checkpoints of CEP
/// state written before (events waiting in partial matches) still load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStep {
    /// The order was placed (the saga starts).
    OrderPlaced,
    /// Its inventory was reserved.
    InventoryReserved,
    /// It was paid (the saga completes).
    PaymentProcessed,
    /// Any other event type (read, and part of no saga).
    Other,
}

impl SagaStep {
    /// The step's name in events: one of [`SAGA_STEPS`], or `Other`.
    pub fn name(self) -> &'static str {
        match self {
            SagaStep::OrderPlaced => SAGA_STEPS[0],
            SagaStep::InventoryReserved => SAGA_STEPS[1],
            SagaStep::PaymentProcessed => SAGA_STEPS[2],
            SagaStep::Other => "Other",
        }
    }

    fn from_name(name: &str) -> Self {
        [
            SagaStep::OrderPlaced,
            SagaStep::InventoryReserved,
            SagaStep::PaymentProcessed,
        ]
        .into_iter()
        .find(|step| step.name() == name)
        .unwrap_or(SagaStep::Other)
    }
}

impl Serialize for SagaStep {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SagaStep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = SagaStep;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a saga step name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<SagaStep, E> {
                Ok(SagaStep::from_name(name))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SagaOutcome {
    /// All steps within the deadline.
    SagaCompleted {
        /// The order.
        order_id: String,
        /// When it was placed.
        placed_ts: i64,
        /// Placed to paid, in milliseconds.
        latency_ms: i64,
    },
    /// A step did not come before the deadline.
    SagaTimedOut {
        /// The order.
        order_id: String,
        /// When it was placed.
        placed_ts: i64,
        /// The step that did not come in time.
        missing: String,
        /// Placed + deadline (exclusive).
        deadline: i64,
    },
}

/// What `--param deadline=` takes, for `weir run saga-monitor --help`.
pub const DEADLINE_PARAM: &str =
    "DURATION: how long after OrderPlaced the other steps may come (default 30s)";

/// Builds `saga-monitor` from options.
pub fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    let deadline = match opts.param("deadline") {
        Some(text) => parse_duration(text).context("--param deadline=..")?,
        None => Duration::from_secs(30),
    };
    let job = Job::new("saga-monitor");
    let [placed, reserved, paid] = SAGA_STEPS;
    let pattern = Pattern::begin(placed)
        .where_(|e: &SagaEvent| e.step == SagaStep::OrderPlaced)
        .followed_by(reserved)
        .where_(|e: &SagaEvent| e.step == SagaStep::InventoryReserved)
        .followed_by(paid)
        .where_(|e: &SagaEvent| e.step == SagaStep::PaymentProcessed)
        .within(deadline);
    let source = InputSpec::from_options(opts, "saga-monitor")?
        .open_serde::<SagaEvent>(opts, &job)?
        .max_future(|e: &SagaEvent| e.ts, opts.max_future);
    let events = job.source("events", source).uid("events");
    let (completed, timed_out) = events
        .clone()
        .timestamps(
            |e: &SagaEvent| e.ts,
            Watermarks::bounded(opts.watermark_delay_or(Duration::from_secs(2))),
        )
        .uid("event-time")
        .key_by(|e: &SagaEvent| e.order_id.clone())
        .pattern_with_timeouts(pattern);
    let completed = completed.uid("saga-steps");
    // Completed sagas and timeouts (CEP's timeout output) go to the same file.
    completed
        .flat_map(completed_saga)
        .union(timed_out.flat_map(timed_out_saga))
        .sink("output", OutputSink::from_spec(opts.output()))
        .uid("output");
    write_dead_letters(&events, opts.dead_letter_path("saga-monitor"));
    Ok(job)
}

/// The result line of a match.
fn completed_saga(m: Match<SagaEvent>) -> Option<SagaOutcome> {
    let (first, last) = (m.events.first()?, m.events.last()?);
    Some(SagaOutcome::SagaCompleted {
        order_id: first.2.order_id.clone(),
        placed_ts: first.1,
        latency_ms: last.1 - first.1,
    })
}

/// The result line of a timeout.
fn timed_out_saga(t: TimedOut<SagaEvent>) -> Option<SagaOutcome> {
    let first = t.events.first()?;
    Some(SagaOutcome::SagaTimedOut {
        order_id: first.2.order_id.clone(),
        placed_ts: first.1,
        missing: t.missing,
        deadline: t.deadline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_step_name_decodes_to_its_step_and_others_to_other() {
        let decode = |name: &str| {
            let line = format!(r#"{{"order_id":"o1","type":"{name}","ts":1}}"#);
            serde_json::from_str::<SagaEvent>(&line).map(|e| e.step)
        };
        let steps: Vec<_> = SAGA_STEPS.iter().map(|name| decode(name).ok()).collect();
        assert_eq!(
            steps,
            [
                Some(SagaStep::OrderPlaced),
                Some(SagaStep::InventoryReserved),
                Some(SagaStep::PaymentProcessed)
            ]
        );
        assert_eq!(decode("OrderShipped").ok(), Some(SagaStep::Other));
        assert!(decode("").is_ok());
        let number = r#"{"order_id":"o1","type":3,"ts":1}"#;
        assert!(serde_json::from_str::<SagaEvent>(number).is_err());
    }

    /// CEP state holds saga events; a checkpoint written when the step was a `String` must
    /// still decode (the state codec is bincode).
    #[test]
    fn a_step_encodes_in_state_as_the_string_it_replaced() {
        for name in SAGA_STEPS {
            let old = bincode::serialize(&name.to_string()).ok();
            assert_eq!(old, bincode::serialize(&SagaStep::from_name(name)).ok());
            let decoded = old.and_then(|bytes| bincode::deserialize::<SagaStep>(&bytes).ok());
            assert_eq!(decoded.map(SagaStep::name), Some(name));
        }
    }
}
