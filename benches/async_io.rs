//! Throughput of `map_async` against a real HTTP service on 127.0.0.1 that answers after
//! 1 ms (`tests/common/enrich_server.rs`, no failures), 100 requests in flight per instance,
//! ordered and unordered, at P = 1 and P = 2: a bounded run of `EVENTS` events each, three
//! times, printing events/s of wall time and per core of CPU time (process user + system,
//! the service's thread included: it shares the machine).
//!
//! `cargo bench -p weir-jobs --bench async_io` (figures in BENCHMARKS.md).

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../tests/common/enrich_server.rs"]
mod enrich_server;

use std::time::{Duration, Instant};

use enrich_server::{EnrichClient, EnrichServer, Faults};
use weir_engine::{BoxError, Record, RunOptions, Sink, Source, SourceStatus};
use weir_jobs::prelude::*;

const EVENTS: u64 = 100_000;

/// `0..end`, a batch per poll.
struct Ids {
    next: u64,
    end: u64,
}

impl Source for Ids {
    type Item = u64;
    fn poll_batch(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus, BoxError> {
        let until = self.end.min(self.next + max as u64);
        out.extend(self.next..until);
        self.next = until;
        Ok(match self.next == self.end {
            true => SourceStatus::Exhausted,
            false => SourceStatus::More,
        })
    }
    fn describe(&self) -> String {
        "ids".into()
    }
}

/// Counts what it gets.
struct Count(u64);

impl<T: Send + 'static> Sink<T> for Count {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        self.0 += records.len() as u64;
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "count".into()
    }
}

/// CPU time of the process so far (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5), counted after the command's closing parenthesis.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn run(client: &EnrichClient, parallelism: usize, ordered: bool) -> (f64, f64) {
    let job = Job::new("enrich-bench");
    let client = client.clone();
    let mut options = AsyncOptions::new(100);
    if !ordered {
        options = options.unordered();
    }
    let (results, failed) = job
        .parallel_source("ids", move |instance, instances| Ids {
            next: EVENTS * instance as u64 / instances as u64,
            end: EVENTS * (instance as u64 + 1) / instances as u64,
        })
        .timestamps(|id| *id as i64, Watermarks::ascending())
        .map_async_with("enrich", options, move |id: u64| {
            let client = client.clone();
            async move { client.customer(id).await }
        });
    results.sink("count", Count(0));
    // None fail (no faults injected): the run asserts every result came.
    failed.sink("failed", Count(0));
    let (started, cpu) = (Instant::now(), cpu_time());
    let options = RunOptions {
        parallelism,
        ..RunOptions::default()
    };
    let summary = job.run(&options).unwrap();
    let (wall, cpu) = (started.elapsed(), cpu_time() - cpu);
    assert_eq!(summary.results_written, EVENTS);
    (
        EVENTS as f64 / wall.as_secs_f64(),
        EVENTS as f64 / cpu.as_secs_f64(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = EnrichServer::start(Faults {
        latency: Duration::from_millis(1),
        failures: false,
        too_slow: Duration::ZERO,
    });
    let client = EnrichClient::new(server.addr);
    // Warm-up: connections, the runtime's threads.
    run(&client, 1, true);
    for parallelism in [1, 2] {
        for ordered in [true, false] {
            let runs: Vec<(f64, f64)> =
                (0..3).map(|_| run(&client, parallelism, ordered)).collect();
            let walls: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.0)).collect();
            let cores: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.1)).collect();
            println!(
                "map_async P={parallelism} {}: {EVENTS} events, events/s wall {}, per CPU-second {}",
                if ordered { "ordered" } else { "unordered" },
                walls.join(" / "),
                cores.join(" / ")
            );
        }
    }
}
