//! How a run fails: a failing source, sink or operator ends every task and [`super::run`]
//! reports the first real cause; a panic is reported, not hung on.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::test_support::PassOnFactory;
use super::*;
use crate::error::{BoxError, Result};
use crate::job::Job;
use crate::record::Record;
use crate::sink::Sink;
use crate::source::{Source, SourceStatus};
use crate::time::Watermarks;

/// Emits `good` events, then fails, or (if `fail` is false) idles until `idle_for`.
struct Faulty {
    good: Vec<i64>,
    fail: bool,
    idle_for: Duration,
    started: Option<Instant>,
}

impl Source for Faulty {
    type Item = i64;
    fn poll_batch(&mut self, out: &mut Vec<i64>, _: usize) -> Result<SourceStatus, BoxError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        if !self.good.is_empty() {
            out.append(&mut self.good);
            return Ok(SourceStatus::More);
        }
        if self.fail {
            return Err("disk on fire".into());
        }
        if started.elapsed() > self.idle_for {
            return Ok(SourceStatus::Exhausted);
        }
        std::thread::sleep(Duration::from_millis(5));
        Ok(SourceStatus::Idle)
    }
    fn describe(&self) -> String {
        "faulty".into()
    }
}

struct Discard;

impl Sink<i64> for Discard {
    fn write(&mut self, _: &[Record<i64>]) -> Result<(), BoxError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "discard".into()
    }
}

/// Runs a source -> keyed (2 workers) -> sink job on another thread; the error it ends
/// with, or a panic if it does not end within 20 s (the bug this pins was a hang).
fn run_to_error(source: Faulty) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let job = Job::new("failing");
        job.source("faulty", source)
            .timestamps(|v| *v, Watermarks::ascending())
            .key_by(|v: &i64| *v % 7)
            .process("keyed", String::new(), PassOnFactory { fail_on: Some(13) })
            .sink("out", Discard);
        let options = RunOptions {
            parallelism: 2,
            ..RunOptions::default()
        };
        let _ = tx.send(job.run(&options).map(|_| ()).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("the job should have failed"),
        Err(_) => panic!("the job hung after a task failed"),
    }
}

#[test]
fn a_failing_source_stops_the_job_with_its_error() {
    let error = run_to_error(Faulty {
        good: (0..10).collect(),
        fail: true,
        idle_for: Duration::ZERO,
        started: None,
    });
    assert!(error.contains("source `faulty` failed"), "{error}");
}

#[test]
fn a_failing_operator_stops_an_idle_source() {
    // The source stays open (idle) for 60 s after its events; the operator fails on 13.
    let started = Instant::now();
    let error = run_to_error(Faulty {
        good: (0..20).collect(),
        fail: false,
        idle_for: Duration::from_secs(60),
        started: None,
    });
    assert!(error.contains("operator `keyed` failed"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
