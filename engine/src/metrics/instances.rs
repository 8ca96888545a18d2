//! The live values of each operator instance, read from the job's own metric handles for
//! the HTTP API (`GET /api/v1/job`) rather than parsed back out of the text exposition.

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use serde::Serialize;

use super::JobMetrics;

/// What one operator instance shows at one moment. Values an instance does not have
/// (state of a stateless operator, a queue in front of a chained one) are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceSample {
    /// The operator's name (the `operator` label).
    pub operator: String,
    /// Which of its parallel instances (the `subtask` label).
    pub subtask: usize,
    /// Records received.
    pub events_in: u64,
    /// Records emitted (a source: events read).
    pub events_out: u64,
    /// Events dropped from windows as late.
    pub late_events: u64,
    /// The instance's watermark, epoch milliseconds; `None` before the first one (and for
    /// one at or before the epoch, which cannot be told from none).
    pub watermark_ms: Option<i64>,
    /// State entries (e.g. open window panes).
    pub state_entries: Option<i64>,
    /// Bytes of RocksDB state files.
    pub state_bytes: Option<i64>,
    /// Batches queued in front of the instance.
    pub queue_fill: Option<i64>,
    /// Capacity of that queue, in batches.
    pub queue_capacity: Option<i64>,
    /// The state tables it created (RocksDB state only).
    pub state_tables: Vec<String>,
}

impl JobMetrics {
    /// Every operator instance's current values, ordered by operator name and instance.
    pub fn instance_samples(&self) -> Vec<InstanceSample> {
        // State bytes are read from RocksDB on demand.
        self.refresh();
        let mut by_instance: BTreeMap<(String, usize), InstanceSample> = BTreeMap::new();
        let mut read = |collector: &dyn Collector, put: fn(&mut InstanceSample, f64)| {
            for family in collector.collect() {
                let counter = family.get_field_type() == MetricType::COUNTER;
                for m in family.get_metric() {
                    let label = |name: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == name)
                            .map(|l| l.value().to_string())
                    };
                    let (Some(operator), Some(subtask)) = (
                        label("operator"),
                        label("subtask").and_then(|i| i.parse().ok()),
                    ) else {
                        continue;
                    };
                    let value = match counter {
                        true => m.get_counter().get_value(),
                        false => m.get_gauge().get_value(),
                    };
                    let sample = by_instance
                        .entry((operator.clone(), subtask))
                        .or_insert_with(|| InstanceSample {
                            operator,
                            subtask,
                            ..InstanceSample::default()
                        });
                    put(sample, value);
                }
            }
        };
        read(&self.events_in, |s, v| s.events_in = v as u64);
        read(&self.events_out, |s, v| s.events_out = v as u64);
        read(&self.late_events, |s, v| s.late_events = v as u64);
        read(&self.watermark_ms, |s, v| {
            // The gauge holds 0 before the first watermark (and the minimum timestamp until
            // every input sent one): no watermark at or before the epoch is shown.
            s.watermark_ms = (v > 0.0).then_some(v as i64);
        });
        read(&self.state_entries, |s, v| s.state_entries = Some(v as i64));
        read(&self.state_bytes, |s, v| s.state_bytes = Some(v as i64));
        read(&self.channel_fill, |s, v| s.queue_fill = Some(v as i64));
        read(&self.channel_capacity, |s, v| {
            s.queue_capacity = Some(v as i64)
        });
        let stores = self.stores.lock().map(|s| s.clone()).unwrap_or_default();
        for observed in stores {
            let key = (observed.operator.clone(), observed.instance);
            if let Some(sample) = by_instance.get_mut(&key) {
                sample.state_tables = observed.store.table_names();
            }
        }
        by_instance.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_gets_its_own_values() {
        let metrics = JobMetrics::new("t");
        let source = metrics.stateless_operator("input", 0);
        source.events_out.inc_by(10);
        let window = metrics.operator("window", 1);
        window.events_in.inc_by(7);
        window.state_entries.set(3);
        window.watermark.set(1_000);
        let (fill, capacity) = metrics.channel("window", 1);
        fill.set(2);
        capacity.set(8);
        let samples = metrics.instance_samples();
        assert_eq!(samples.len(), 2);
        let input = &samples[0];
        assert_eq!((input.operator.as_str(), input.events_out), ("input", 10));
        assert_eq!(
            input.state_entries, None,
            "a stateless operator has no state"
        );
        assert_eq!(input.watermark_ms, None, "no watermark yet");
        let w = &samples[1];
        assert_eq!(
            (w.operator.as_str(), w.subtask, w.events_in),
            ("window", 1, 7)
        );
        assert_eq!(
            (
                w.state_entries,
                w.watermark_ms,
                w.queue_fill,
                w.queue_capacity
            ),
            (Some(3), Some(1_000), Some(2), Some(8))
        );
    }
}
