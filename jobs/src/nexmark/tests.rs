//! Unit tests of the generator: its number formatting, its sharing of one stream between
//! instances, and its pacing.

use std::time::Duration;

use weir_engine::{Source, SourceStatus};

use super::generator::{push_decimal, EPOCH};
use super::{NexmarkEvent, NexmarkGenerator, SharedEpochs};

#[test]
fn decimals_are_written_like_display() {
    for n in [0, 7, 10, 99, 100, 123_456_789, u64::MAX] {
        let mut s = String::from("x");
        push_decimal(&mut s, n);
        assert_eq!(s, format!("x{n}"));
    }
}

fn json(events: impl Iterator<Item = NexmarkEvent>) -> Vec<String> {
    events
        .map(|e| serde_json::to_string(&e).unwrap_or_default())
        .collect()
}

/// Polls `instances` sharing one stream of `events` in turn, `max` (varying) at a
/// time, sleeping as long as a paced one asks; what each instance made, in order.
fn made_by_sharing(events: u64, instances: usize, paced: u64) -> Vec<Vec<NexmarkEvent>> {
    let epochs = SharedEpochs::default();
    let mut sources: Vec<NexmarkGenerator> = (0..instances)
        .map(|_| NexmarkGenerator::new(events).sharing(&epochs).paced(paced))
        .collect();
    let mut made = vec![Vec::new(); instances];
    let mut done = vec![false; instances];
    // Bounded: a few thousand polls at most, each waiting as long as the source asks.
    for round in 0..20_000 {
        if done.iter().all(|d| *d) {
            break;
        }
        let i = (round * 7 / 3) % instances;
        match sources[i].poll_batch(&mut made[i], 1 + round % 300) {
            Ok(SourceStatus::Pending(wait)) => std::thread::sleep(wait),
            Ok(SourceStatus::Exhausted) => done[i] = true,
            Ok(_) => {}
            Err(e) => panic!("the generator failed: {e}"),
        }
    }
    assert!(done.iter().all(|d| *d), "the instances did not finish");
    made
}

#[test]
fn instances_sharing_epochs_together_make_the_whole_stream_each_in_order() {
    for (events, instances, paced) in [(5_001, 2, 0), (5_001, 3, 0), (777, 2, 1_000_000)] {
        let made = made_by_sharing(events, instances, paced);
        for part in &made {
            assert!(
                part.windows(2)
                    .all(|w| w[0].date_time() <= w[1].date_time()),
                "an instance made its events out of stream order"
            );
        }
        let mut merged = json(made.into_iter().flatten());
        let mut whole = json(NexmarkGenerator::new(events));
        merged.sort();
        whole.sort();
        assert_eq!(merged.len(), events as usize);
        assert_eq!(merged, whole, "{instances} instances, paced {paced}");
    }
}

#[test]
fn a_paced_instance_makes_at_most_an_epoch_more_than_is_due() {
    let per_second = 1_000;
    let mut source = NexmarkGenerator::new(1_000).paced(per_second);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    // The clock starts at the first poll: nothing is due yet.
    let first = source.poll_batch(&mut out, 1_000).ok();
    assert!(matches!(first, Some(SourceStatus::Pending(_))), "{first:?}");
    assert!(out.is_empty());
    std::thread::sleep(Duration::from_millis(60));
    let _ = source.poll_batch(&mut out, 1_000);
    let due = started.elapsed().as_secs_f64() * per_second as f64;
    assert!(!out.is_empty(), "nothing made {due} events after the start");
    assert!(
        out.len() as f64 <= due + EPOCH as f64,
        "{} events made when {due} were due",
        out.len()
    );
}
