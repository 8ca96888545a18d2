//! The operator driven directly (no job): ordering, the slot limit, dead letters and what
//! a snapshot keeps, with real futures on the shared runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weir_engine::state::MemoryBackend;
use weir_engine::time::MIN_WATERMARK;

use super::*;
use crate::test_support::{operator_context, SplitMix};

type Op<F> = AsyncOperator<MemoryBackend, u64, u64, u64, F>;

fn operator<F, Fut>(options: AsyncOptions, f: F) -> Op<F>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let factory = AsyncFactory {
        f: Arc::new(f),
        options,
        _types: PhantomData,
    };
    factory
        .create(&operator_context("enrich"), MemoryBackend::new())
        .expect("create")
}

fn records(
    inputs: impl IntoIterator<Item = u64>,
    watermark: Timestamp,
) -> Vec<Record<Keyed<u64, u64>>> {
    inputs
        .into_iter()
        .map(|v| Record {
            ts: v as i64,
            watermark,
            value: Keyed { key: v, value: v },
        })
        .collect()
}

/// Polls until `expected` results or dead letters arrived, for at most 10 s.
fn poll_until<F, Fut>(op: &mut Op<F>, out: &mut Output<Routed<u64, DeadLetter>>, expected: usize)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let started = Instant::now();
    while out.len() < expected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {expected}",
            out.len()
        );
        op.poll(out).expect("poll");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn values(out: &mut Output<Routed<u64, DeadLetter>>) -> Vec<u64> {
    out.take()
        .into_iter()
        .filter_map(|r| match r.value {
            Routed::Main(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// Sleeps a random few milliseconds, then doubles.
type Boxed = std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

fn slow_double(seed: u64) -> impl Fn(u64) -> Boxed + Send + Sync + 'static {
    let delays: Vec<u64> = {
        let mut rng = SplitMix::new(seed);
        (0..1_000).map(|_| rng.below(8)).collect()
    };
    move |v| {
        let delay = delays[v as usize % delays.len()];
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok(v * 2)
        })
    }
}

#[test]
fn ordered_results_come_in_input_order() {
    let mut op = operator(AsyncOptions::new(16), slow_double(1));
    let mut out = Output::default();
    op.process(records(0..200, MIN_WATERMARK), &mut out)
        .expect("process");
    poll_until(&mut op, &mut out, 200);
    assert_eq!(
        values(&mut out),
        (0..200).map(|v| v * 2).collect::<Vec<_>>()
    );
}

#[test]
fn unordered_results_are_all_there_and_come_as_they_finish() {
    let mut op = operator(AsyncOptions::new(64).unordered(), slow_double(2));
    let mut out = Output::default();
    op.process(records(0..200, MIN_WATERMARK), &mut out)
        .expect("process");
    poll_until(&mut op, &mut out, 200);
    let got = values(&mut out);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..200).map(|v| v * 2).collect::<Vec<_>>());
    assert_ne!(got, sorted, "unordered results came in input order");
}

#[test]
fn at_most_concurrency_requests_are_in_flight() {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    let mut op = operator(AsyncOptions::new(5), move |v| {
        let (n, m) = (n.clone(), m.clone());
        async move {
            m.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Ok::<u64, String>(v)
        }
    });
    let mut out = Output::default();
    // The batch is larger than the slots: the input waits for them.
    op.process(records(0..60, MIN_WATERMARK), &mut out)
        .expect("process");
    assert!(op.state_entries() <= 5);
    poll_until(&mut op, &mut out, 60);
    let most = most.load(Ordering::SeqCst);
    assert!((2..=5).contains(&most), "{most} requests in flight at once");
}

#[test]
fn a_request_that_keeps_failing_becomes_a_counted_dead_letter() {
    let options = AsyncOptions::new(4)
        .timeout(Duration::from_millis(20))
        .retries(1, Duration::from_millis(1));
    let mut op = operator(options, |v| async move {
        match v {
            3 => Err("service said 500".to_string()),
            5 => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(v)
            }
            _ => Ok(v),
        }
    });
    let mut out = Output::default();
    op.process(records(0..8, MIN_WATERMARK), &mut out)
        .expect("process");
    poll_until(&mut op, &mut out, 8);
    let records = out.take();
    let letters: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.value {
            Routed::Side(letter) => Some((
                r.ts,
                letter.error.clone(),
                letter.raw.as_text().map(str::to_string),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        letters,
        vec![
            (
                3,
                "service said 500 (attempt 2 of 2)".into(),
                Some("3".into())
            ),
            (
                5,
                "timed out after 20ms (attempt 2 of 2)".into(),
                Some("5".into())
            ),
        ]
    );
    assert_eq!(op.metrics.dead_letters.get(), 2);
    assert_eq!(records.len(), 8, "the other six went on");
}

#[test]
fn the_end_of_input_waits_for_every_request_and_then_passes_the_watermark() {
    let mut op = operator(AsyncOptions::new(8), slow_double(3));
    let mut out = Output::default();
    op.process(records(0..20, 0), &mut out).expect("process");
    op.on_watermark(END_WATERMARK, &mut out).expect("end");
    assert_eq!(out.watermark(), END_WATERMARK);
    assert_eq!(values(&mut out), (0..20).map(|v| v * 2).collect::<Vec<_>>());
}

#[test]
fn a_snapshot_keeps_the_inputs_in_flight_and_drops_those_that_went() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let open = gate.clone();
    let mut op = operator(AsyncOptions::new(10), move |v| {
        let gate = open.clone();
        async move {
            if v >= 3 {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            }
            Ok::<u64, String>(v)
        }
    });
    let mut out = Output::default();
    op.process(records(0..6, MIN_WATERMARK), &mut out)
        .expect("process");
    poll_until(&mut op, &mut out, 3);
    op.snapshot().expect("snapshot");
    let mut kept = Vec::new();
    op.table
        .scan(|key, entry| kept.push((key.key, entry.input)))
        .expect("scan");
    kept.sort_unstable();
    assert_eq!(kept, vec![(3, 3), (4, 4), (5, 5)]);
    gate.add_permits(3);
    poll_until(&mut op, &mut out, 6);
    op.snapshot().expect("snapshot");
    assert_eq!(op.table.len(), 0);
}
