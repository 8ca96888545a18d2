//! Runs of small jobs through the runtime: watermarks across channels, idleness, unions,
//! sinks' batching and the end of input.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_support::Collect;
use super::*;
use crate::error::{BoxError, EngineError, Result};
use crate::job::Job;
use crate::source::{Source, SourceStatus};
use crate::time::{Watermarks, MIN_WATERMARK};

/// Emits `first` at once, `later` after `pause`, then ends after `end_after`.
struct Scripted {
    first: Vec<i64>,
    later: Vec<i64>,
    pause: Duration,
    end_after: Duration,
    started: Option<Instant>,
}

impl Scripted {
    fn new(first: Vec<i64>, later: Vec<i64>, pause: Duration, end_after: Duration) -> Self {
        Scripted {
            first,
            later,
            pause,
            end_after,
            started: None,
        }
    }
}

impl Source for Scripted {
    type Item = i64;
    fn poll_batch(&mut self, out: &mut Vec<i64>, _max: usize) -> Result<SourceStatus, BoxError> {
        let elapsed = self.started.get_or_insert_with(Instant::now).elapsed();
        if !self.first.is_empty() {
            out.append(&mut self.first);
            return Ok(SourceStatus::More);
        }
        if elapsed >= self.pause && !self.later.is_empty() {
            out.append(&mut self.later);
            return Ok(SourceStatus::More);
        }
        if elapsed >= self.end_after {
            return Ok(SourceStatus::Exhausted);
        }
        std::thread::sleep(Duration::from_millis(5));
        Ok(SourceStatus::Idle)
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
}

/// Runs `busy` ∪ `quiet` and returns the watermarks stamped on the busy source's late
/// events (value >= 100).
#[test]
fn two_result_sinks_of_one_name_are_refused() {
    let job = Job::new("twins");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let numbers = job.source(
        "numbers",
        Scripted::new(vec![1], vec![], Duration::ZERO, Duration::ZERO),
    );
    numbers.clone().sink("out", Collect(seen.clone()));
    numbers.sink("out", Collect(seen));
    let err = job.run(&RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("two sinks are named `out`"), "{err}");
}

fn union_watermarks(idle_timeout: Option<Duration>) -> Result<Vec<i64>, EngineError> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let job = Job::new("idle");
    let wm = Watermarks::ascending();
    let busy = job
        .source(
            "busy",
            Scripted::new(
                vec![1, 2],
                vec![100, 101],
                Duration::from_millis(600),
                Duration::from_millis(700),
            ),
        )
        .timestamps(|v| *v, wm);
    let quiet = job
        .source(
            "quiet",
            Scripted::new(vec![], vec![], Duration::ZERO, Duration::from_millis(1500)),
        )
        .timestamps(|v| *v, wm);
    busy.union(quiet).sink("out", Collect(seen.clone()));
    job.run(&RunOptions {
        idle_timeout,
        ..RunOptions::default()
    })?;
    let seen = seen.lock().map_err(|_| EngineError::Panicked {
        name: "collect".into(),
        message: "poisoned".into(),
    })?;
    Ok(seen
        .iter()
        .filter(|r| r.value >= 100)
        .map(|r| r.watermark)
        .collect())
}

#[test]
fn an_idle_input_holds_the_watermark_back_unless_marked_idle() -> Result<(), EngineError> {
    // Without idleness the quiet source (no events yet) keeps the union at MIN.
    assert_eq!(union_watermarks(None)?, vec![MIN_WATERMARK, MIN_WATERMARK]);
    // With a 100 ms idle timeout the quiet source is left out long before the busy one's
    // second batch (at 600 ms), whose records then carry the busy watermark.
    assert_eq!(
        union_watermarks(Some(Duration::from_millis(100)))?,
        vec![1, 99]
    );
    Ok(())
}
