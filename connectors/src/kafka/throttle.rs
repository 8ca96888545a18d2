//! How often a Kafka client says the same trouble on stderr.
//!
//! librdkafka reports a broker it cannot reach at every reconnection attempt, and again as
//! "all brokers are down", and the source's poll returns it too: ~40 lines a second against
//! a port nobody listens on. [`Throttle`] lets each kind of trouble through once, then at
//! most once per step of a backoff of its own, 1 s doubling up to 60 s, each line saying how
//! many reports it stands for. A kind quiet for a whole [`MAX_STEP`] (the trouble went away)
//! starts over: said at once, then 1 s, 2 s, ... Counting is not throttled: every report
//! still goes into `weir_kafka_broker_errors_total`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait before a kind of trouble is said a second time.
const FIRST_STEP: Duration = Duration::from_secs(1);
/// The longest wait between two lines about one kind of trouble that goes on.
pub(super) const MAX_STEP: Duration = Duration::from_secs(60);

/// When one kind of trouble was last said and seen.
#[derive(Debug, Clone, Copy)]
struct Said {
    last_said: Instant,
    last_seen: Instant,
    /// The wait after `last_said` before it is said again.
    step: Duration,
    /// Reports since it was last said.
    held: u64,
}

/// Which reports of recurring trouble are said (see the module docs). Kinds are few (one
/// per kind of error), so they are never dropped.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    kinds: Mutex<HashMap<String, Said>>,
}

impl Throttle {
    /// Whether a report of `kind` seen now is said: `Some(n)` with the number of reports
    /// held back since it was last said, or `None` to stay silent.
    pub(super) fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Said {
            last_said: now,
            last_seen: now,
            step: FIRST_STEP,
            held: 0,
        };
        let Some(said) = kinds.get_mut(kind) else {
            kinds.insert(kind.to_string(), fresh);
            return Some(0);
        };
        if now.saturating_duration_since(said.last_seen) >= MAX_STEP {
            *said = fresh;
            return Some(0);
        }
        said.last_seen = now;
        if now.saturating_duration_since(said.last_said) >= said.step {
            let held = std::mem::take(&mut said.held);
            said.last_said = now;
            said.step = (said.step * 2).min(MAX_STEP);
            Some(held)
        } else {
            said.held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports of `kind` every `every` for `for_how_long`: the times (from the start) of
    /// those said, with the number each stands for.
    fn said(
        throttle: &Throttle,
        kind: &str,
        every: Duration,
        for_how_long: Duration,
    ) -> Vec<(u64, u64)> {
        let start = Instant::now();
        let mut said = Vec::new();
        let mut t = Duration::ZERO;
        while t < for_how_long {
            if let Some(held) = throttle.admit_at(kind, start + t) {
                said.push((t.as_millis() as u64, held));
            }
            t += every;
        }
        said
    }

    #[test]
    fn forty_reports_a_second_are_said_once_per_step_of_a_backoff() {
        let throttle = Throttle::default();
        let lines = said(
            &throttle,
            "down",
            Duration::from_millis(25),
            Duration::from_secs(600),
        );
        let times: Vec<u64> = lines.iter().map(|(t, _)| t / 1000).collect();
        // 0, then steps of 1, 2, 4, 8, 16, 32 s, then every 60 s.
        assert_eq!(&times[..8], [0, 1, 3, 7, 15, 31, 63, 123]);
        assert_eq!(lines.len(), 15, "{lines:?}");
        // Each line after the first stands for the reports held back since the last.
        assert_eq!(lines[1].1, 39);
        let reports = lines.iter().map(|(_, held)| held + 1).sum::<u64>();
        assert!(
            reports <= 600 * 40 && reports > 600 * 40 - 60 * 40,
            "{reports}"
        );
    }

    #[test]
    fn kinds_are_throttled_apart_and_start_over_after_a_quiet_step() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(throttle.admit_at("a", at(0)), Some(0));
        assert_eq!(throttle.admit_at("b", at(0)), Some(0));
        assert_eq!(throttle.admit_at("a", at(0)), None);
        assert_eq!(throttle.admit_at("a", at(1)), Some(1));
        assert_eq!(throttle.admit_at("a", at(2)), None);
        // Quiet for a whole MAX_STEP: said at once, and the backoff starts over.
        let back = 2 + MAX_STEP.as_secs();
        assert_eq!(throttle.admit_at("a", at(back)), Some(0));
        assert_eq!(throttle.admit_at("a", at(back + 1)), Some(0));
    }
}
