//! Criterion benchmark of the tumbling-window job (10 s windows, count/sum/min/max/avg per
//! key, 1000 keys): events generated in-process, and the same events from a JSON-lines file
//! and from an Arrow IPC file.
//!
//! `cargo bench -p weir-jobs --bench tumbling`. Throughput is reported in events (elements)
//! per second of wall time; `weir bench` reports the per-core figure (see BENCHMARKS.md).

use criterion::{criterion_main, Criterion, Throughput};
use weir_jobs::arrow_events::write_events_arrow;
use weir_jobs::generate::{create_file, write_events, EventStreamSpec};
use weir_jobs::options::JobOptions;
use weir_jobs::window_agg;

const EVENTS: u64 = 1_000_000;

fn run_window_agg(args: &[&str]) {
    let opts = JobOptions::from_args(args).expect("benchmark options parse");
    let job = window_agg::build(&opts).expect("job builds");
    let run = opts.run_options("window-agg").expect("run options");
    let summary = job.run(&run).expect("job runs");
    opts.remove_temporary_state(&run);
    assert_eq!(summary.events_read, EVENTS);
}

fn tumbling(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = EventStreamSpec {
        events: EVENTS,
        ..EventStreamSpec::default()
    };
    let input = dir.path().join("events.jsonl");
    write_events(create_file(&input).expect("create input"), spec).expect("write input");
    let arrow = dir.path().join("events.arrow");
    write_events_arrow(&arrow, spec).expect("write the Arrow input");
    let [input, arrow] = [input, arrow].map(|p| p.to_str().expect("utf-8 temp path").to_string());

    let mut group = c.benchmark_group("tumbling-10s");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    let events = EVENTS.to_string();
    for (p, state) in [("1", "memory"), ("2", "memory"), ("1", "rocksdb")] {
        let common = [
            "--window",
            "tumble:10s",
            "--watermark-delay",
            "2s",
            "--output",
            "null:",
            "--parallelism",
            p,
            "--state",
            state,
        ];
        group.bench_function(format!("generated/{state}/p{p}"), |b| {
            b.iter(|| run_window_agg(&[&common[..], &["--events", &events]].concat()))
        });
        group.bench_function(format!("jsonl/{state}/p{p}"), |b| {
            b.iter(|| run_window_agg(&[&common[..], &["--input", &input]].concat()))
        });
        group.bench_function(format!("arrow/{state}/p{p}"), |b| {
            b.iter(|| run_window_agg(&[&common[..], &["--input", &arrow]].concat()))
        });
    }
    group.finish();
}

/// The benchmarks, in a module of their own: criterion's macro makes a public function
/// without docs.
mod group {
    criterion::criterion_group!(benches, super::tumbling);
}
criterion_main!(group::benches);
