//! The job's figures over time, sampled once a second by the server: the rates of
//! `GET /api/v1/job` (over the last 1 s and 10 s) and the 10-minute charts of the dashboard
//! (`GET /api/v1/history`).
//!
//! Memory is bounded: full per-instance samples are kept for the last
//! [`RATE_WINDOW_SECONDS`] + 1 seconds only, and one small [`Point`] a second for
//! [`KEPT_SECONDS`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use weir_engine::metrics::InstanceSample;
use weir_engine::plan::PlanNodeKind;
use weir_engine::{JobPlan, LatencySummary};

use super::served::{lock, unix_ms, Serving};

/// How far back the charts go.
pub(crate) const KEPT_SECONDS: usize = 600;

/// The longer of the two rate windows.
pub(crate) const RATE_WINDOW_SECONDS: u64 = 10;

/// The job as a whole at one second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    /// Events the sources read per second, over the last second.
    pub(crate) events_per_second: f64,
    /// Records the sinks received per second, over the last second.
    pub(crate) results_per_second: f64,
    /// End-to-end latency quantiles since the job started.
    pub(crate) latency_p50_ms: Option<f64>,
    pub(crate) latency_p99_ms: Option<f64>,
    /// Wall clock minus the sinks' lowest watermark.
    pub(crate) watermark_lag_ms: Option<i64>,
}

/// Samples of the last seconds, and the points of the last ten minutes.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    samples: VecDeque<(u64, Vec<InstanceSample>)>,
    points: VecDeque<Point>,
}

impl Timeline {
    /// Adds the sample taken at `at_ms`.
    pub(crate) fn record(
        &mut self,
        at_ms: u64,
        instances: Vec<InstanceSample>,
        plan: Option<&JobPlan>,
        latency: Option<LatencySummary>,
    ) {
        let is = |kinds: &[PlanNodeKind]| {
            let names: Vec<&str> = plan
                .map(|p| p.nodes.iter())
                .into_iter()
                .flatten()
                .filter(|n| kinds.contains(&n.kind))
                .map(|n| n.name.as_str())
                .collect();
            move |s: &InstanceSample| names.contains(&s.operator.as_str())
        };
        let is_source = is(&[PlanNodeKind::Source, PlanNodeKind::ParallelSource]);
        let is_sink = is(&[PlanNodeKind::Sink]);
        let read: u64 = instances
            .iter()
            .filter(|s| is_source(s))
            .map(|s| s.events_out)
            .sum();
        let written: u64 = instances
            .iter()
            .filter(|s| is_sink(s))
            .map(|s| s.events_in)
            .sum();
        let (read_before, written_before, seconds) = match self.samples.back() {
            Some((before_ms, before)) => (
                before
                    .iter()
                    .filter(|s| is_source(s))
                    .map(|s| s.events_out)
                    .sum(),
                before
                    .iter()
                    .filter(|s| is_sink(s))
                    .map(|s| s.events_in)
                    .sum(),
                at_ms.saturating_sub(*before_ms) as f64 / 1e3,
            ),
            None => (read, written, 0.0),
        };
        let per_second = |now: u64, before: u64| match seconds > 0.0 {
            true => now.saturating_sub(before) as f64 / seconds,
            false => 0.0,
        };
        let lowest_sink_watermark = instances
            .iter()
            .filter(|s| is_sink(s))
            .map(|s| s.watermark_ms)
            .min()
            .flatten();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        self.points.push_back(Point {
            at_ms,
            events_per_second: per_second(read, read_before),
            results_per_second: per_second(written, written_before),
            latency_p50_ms: latency.map(|l| ms(l.p50)),
            latency_p99_ms: latency.map(|l| ms(l.p99)),
            watermark_lag_ms: lowest_sink_watermark
                .map(|w| i64::try_from(at_ms).unwrap_or(i64::MAX).saturating_sub(w)),
        });
        if self.points.len() > KEPT_SECONDS {
            self.points.pop_front();
        }
        self.samples.push_back((at_ms, instances));
        if self.samples.len() as u64 > RATE_WINDOW_SECONDS + 1 {
            self.samples.pop_front();
        }
    }

    /// The newest sample of every instance (none before the first second).
    pub(crate) fn latest(&self) -> &[InstanceSample] {
        self.samples.back().map_or(&[], |(_, s)| s.as_slice())
    }

    /// The points of the last ten minutes, oldest first.
    pub(crate) fn points(&self) -> Vec<Point> {
        self.points.iter().cloned().collect()
    }

    /// Per second over the last `seconds` (or as far back as there are samples) of
    /// `value` of instance `subtask` of `operator`; 0 with fewer than two samples.
    pub(crate) fn rate(
        &self,
        operator: &str,
        subtask: usize,
        seconds: u64,
        value: fn(&InstanceSample) -> u64,
    ) -> f64 {
        let Some((now_ms, now)) = self.samples.back() else {
            return 0.0;
        };
        let since = now_ms.saturating_sub(seconds * 1000);
        let Some((then_ms, then)) = self.samples.iter().find(|(at, _)| *at + 100 >= since) else {
            return 0.0;
        };
        let find = |samples: &[InstanceSample]| {
            samples
                .iter()
                .find(|s| s.operator == operator && s.subtask == subtask)
                .map(value)
                .unwrap_or(0)
        };
        let elapsed = now_ms.saturating_sub(*then_ms) as f64 / 1e3;
        match elapsed > 0.0 {
            true => find(now).saturating_sub(find(then)) as f64 / elapsed,
            false => 0.0,
        }
    }
}

/// Samples `serving`'s job once a second, for as long as the server runs.
pub(crate) async fn sample_every_second(serving: Arc<Serving>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let job = serving.clone();
        // Reading RocksDB's figures may take a moment: off the server's thread.
        let Ok((instances, latency)) =
            tokio::task::spawn_blocking(move || (job.job.instances(), job.job.latency())).await
        else {
            continue;
        };
        let at_ms = unix_ms(SystemTime::now());
        lock(&serving.timeline).record(at_ms, instances, serving.plan.as_ref(), latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(operator: &str, events_in: u64, events_out: u64) -> InstanceSample {
        InstanceSample {
            operator: operator.into(),
            events_in,
            events_out,
            watermark_ms: Some(9_000),
            ..InstanceSample::default()
        }
    }

    fn plan() -> JobPlan {
        let mut plan = JobPlan {
            job: "j".into(),
            parallelism: 1,
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        for (id, (name, kind)) in [("input", PlanNodeKind::Source), ("out", PlanNodeKind::Sink)]
            .into_iter()
            .enumerate()
        {
            plan.nodes.push(weir_engine::plan::PlanNode {
                id,
                name: name.into(),
                uid: name.into(),
                uid_derived: false,
                kind,
                parallelism: 1,
                detail: String::new(),
                key: None,
                internal: false,
                state_tables: Vec::new(),
                queryable: None,
            });
        }
        plan
    }

    #[test]
    fn rates_are_taken_over_the_window_asked_for() {
        let mut t = Timeline::default();
        let plan = plan();
        for second in 0..=12u64 {
            // The source reads 100 events a second, 1000 in the last one.
            let read = if second == 12 { 2_100 } else { second * 100 };
            let samples = vec![sample("input", 0, read), sample("out", read / 2, 0)];
            t.record(second * 1000, samples, Some(&plan), None);
        }
        assert_eq!(t.rate("input", 0, 1, |s| s.events_out), 1_000.0);
        assert_eq!(t.rate("input", 0, 10, |s| s.events_out), 190.0);
        assert_eq!(t.rate("nothing", 0, 10, |s| s.events_out), 0.0);
        let last = t.points().pop().expect("points were recorded");
        assert_eq!(last.events_per_second, 1_000.0);
        assert_eq!(last.results_per_second, 500.0);
        assert_eq!(last.watermark_lag_ms, Some(12_000 - 9_000));
    }

    #[test]
    fn memory_is_bounded_however_long_it_runs() {
        let mut t = Timeline::default();
        for second in 0..2_000u64 {
            t.record(second * 1000, vec![sample("input", 0, second)], None, None);
        }
        assert_eq!(t.points().len(), KEPT_SECONDS);
        assert_eq!(t.samples.len() as u64, RATE_WINDOW_SECONDS + 1);
    }
}
