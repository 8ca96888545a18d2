//! Runs of small jobs through the runtime: watermarks across channels, idleness, unions,
//! sinks' batching and the end of input.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_support::{Collect, CountingFactory};
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

/// Emits its numbers and rejects each of `rejects` as a dead letter, one poll each.
struct Rejecting {
    numbers: Vec<i64>,
    rejects: Vec<&'static str>,
    rejected: Vec<crate::DeadLetter>,
    polls: u64,
}

impl Source for Rejecting {
    type Item = i64;
    fn poll_batch(&mut self, out: &mut Vec<i64>, _max: usize) -> Result<SourceStatus, BoxError> {
        self.polls += 1;
        if let Some(raw) = self.rejects.pop() {
            self.rejected.push(crate::DeadLetter::new(
                "scripted".into(),
                self.polls,
                "not a number".into(),
                raw.as_bytes(),
            ));
        }
        out.append(&mut self.numbers);
        Ok(match self.rejects.is_empty() {
            true => SourceStatus::Exhausted,
            false => SourceStatus::More,
        })
    }
    fn describe(&self) -> String {
        "rejecting".into()
    }
    fn take_dead_letters(&mut self, out: &mut Vec<crate::DeadLetter>) {
        out.append(&mut self.rejected);
    }
}

/// Keeps the dead letters it receives.
struct CollectLetters(Arc<Mutex<Vec<crate::DeadLetter>>>);

impl crate::Sink<crate::DeadLetter> for CollectLetters {
    fn write(&mut self, records: &[crate::Record<crate::DeadLetter>]) -> Result<(), BoxError> {
        let mut seen = self.0.lock().map_err(|_| "poisoned")?;
        seen.extend(records.iter().map(|r| r.value.clone()));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "collect letters".into()
    }
}

#[test]
fn a_sources_dead_letters_leave_by_its_port_and_are_counted_even_when_unread(
) -> Result<(), EngineError> {
    let source = || Rejecting {
        numbers: vec![1, 2, 3],
        rejects: vec!["c", "b", "a"],
        rejected: Vec::new(),
        polls: 0,
    };
    let (numbers, letters) = (Arc::new(Mutex::new(Vec::new())), Arc::default());
    let job = Job::new("letters");
    let input = job.source("input", source());
    input
        .dead_letters()
        .sink("dead", CollectLetters(Arc::clone(&letters)));
    input.sink("out", Collect(Arc::clone(&numbers)));
    let plan = job.describe(1);
    assert!(plan.contains("input.dead_letters"), "{plan}");
    job.run(&RunOptions::default())?;
    let raws: Vec<_> = letters
        .lock()
        .map(|l| l.iter().map(|l| (l.line, l.raw.clone())).collect())
        .unwrap_or_default();
    assert_eq!(
        raws,
        vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
    assert_eq!(numbers.lock().map(|n| n.len()).unwrap_or_default(), 3);
    assert_eq!(job.metrics().dead_letters("input").get(), 3);

    // Nothing reads them: still counted.
    let job = Job::new("unread");
    job.source("input", source()).sink("out", Collect(numbers));
    job.run(&RunOptions::default())?;
    assert_eq!(job.metrics().dead_letters("input").get(), 3);

    // Only a source has dead letters.
    let job = Job::new("not-a-source");
    let stream = job.source("input", source()).map(|n| n + 1);
    stream.dead_letters().sink("dead", CollectLetters(letters));
    stream.sink("out", Collect(Arc::default()));
    let err = job.run(&RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("only a source has dead letters"), "{err}");
    Ok(())
}

/// Counts 0..100 by `n % 7` at `parallelism` in an operator whose factory declares
/// `declared`; returns the job (for its plan and metrics) and how the run ended.
fn count_by_seven(declared: &[&str], parallelism: usize) -> (Job, Result<RunSummary>) {
    let job = Job::new("tables");
    job.source(
        "numbers",
        Scripted::new((0..100).collect(), vec![], Duration::ZERO, Duration::ZERO),
    )
    .key_by(|n: &i64| n % 7)
    .process(
        "count",
        String::new(),
        CountingFactory {
            declared: declared.iter().map(|t| t.to_string()).collect(),
        },
    )
    .sink("out", Collect(Arc::default()));
    let result = job.run(&RunOptions {
        parallelism,
        ..RunOptions::default()
    });
    (job, result)
}

#[test]
fn state_tables_are_named_in_the_plan_and_counted_per_instance() -> Result<(), EngineError> {
    let (job, result) = count_by_seven(&["counts"], 2);
    result?;
    let plan = job.describe(2);
    assert!(plan.contains("count Keyed x2"), "{plan}");
    assert!(plan.contains(" : key i64; state: counts\n"), "{plan}");
    assert!(job.to_dot(2).contains("\\nstate: counts\""));
    // Seven keys between the two instances, each holding some.
    let held: Vec<i64> = (0..2)
        .map(|i| job.metrics().state_table("count", i, "counts").get())
        .collect();
    assert_eq!(held.iter().sum::<i64>(), 7, "{held:?}");
    assert!(held.iter().all(|&n| n > 0), "{held:?}");
    Ok(())
}

#[test]
fn an_operator_whose_tables_differ_from_its_factorys_fails_as_it_starts() {
    let (_, result) = count_by_seven(&["count"], 1);
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains(r#"opened the state tables ["counts"], but its factory declares ["count"]"#),
        "{err}"
    );
    let (_, result) = count_by_seven(&[], 1);
    assert!(result.is_err(), "undeclared tables are refused too");
}
