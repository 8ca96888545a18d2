//! Event time and watermarks.
//!
//! Timestamps are `i64` milliseconds since the Unix epoch; negative values are legal.
//! The bounded-out-of-orderness strategy follows Flink:
//! `watermark = max timestamp seen - delay - 1`, advanced after every event in input order.
//!
//! # Events far in the future
//!
//! One event stamped in year 9999 moves the watermark to 9999 and makes every later event
//! late. A source given a [`FutureGuard`] (`--max-future D`, default off; Flink has no such
//! check) refuses an event whose time is more than `D` ahead of the **largest event time it
//! accepted so far** from the same stream (Kafka: partition), i.e. more than
//! `D + delay + 1 ms` ahead of that stream's watermark. The refused event goes to the dead
//! letters with its position and never reaches `.timestamps(..)`, so it moves no watermark.
//! The reference is the accepted events, not the watermark, because it exists from the
//! first event on: the first event is always accepted (nothing is known before it; a bad
//! first event is not caught), and a stream whose time jumps forward by more than `D` for
//! good (a gap in the data) has every later event refused, so `D` must exceed any real gap.
//! Sources keep the reference in their checkpoint position, so a restarted job refuses
//! exactly the events the uninterrupted one refuses.

use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// The watermark of a stream before its first event.
pub const MIN_WATERMARK: Timestamp = i64::MIN;
/// The watermark that ends a bounded stream: every window fires.
pub const END_WATERMARK: Timestamp = i64::MAX;

/// How a stream derives watermarks from its event timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    delay_ms: i64,
}

impl Watermarks {
    /// Bounded out-of-orderness: events may arrive up to `delay` behind the largest
    /// timestamp seen so far without being late.
    pub fn bounded(delay: Duration) -> Self {
        Watermarks {
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Timestamps are in order: the watermark trails the largest timestamp by 1 ms.
    pub fn ascending() -> Self {
        Watermarks { delay_ms: 0 }
    }

    /// The configured out-of-orderness in milliseconds.
    pub fn delay_ms(&self) -> i64 {
        self.delay_ms
    }

    /// The watermark after an event with the given max timestamp.
    #[inline]
    pub fn watermark_for(&self, max_ts: Timestamp) -> Timestamp {
        max_ts.saturating_sub(self.delay_ms).saturating_sub(1)
    }
}

/// Refuses event times more than a bound ahead of the largest one accepted so far (see
/// the module docs, `# Events far in the future`). One comparison per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FutureGuard {
    max_ahead_ms: i64,
    /// The largest event time accepted, `None` before the first.
    highest: Option<Timestamp>,
    /// `highest + max_ahead_ms`: larger event times are refused (`i64::MAX` before the
    /// first event, so that it is always accepted).
    limit: Timestamp,
}

/// An event time [`FutureGuard`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "event time {} ({ts}) is more than {} ahead of the latest event time accepted so far, \
     {} ({highest}): --max-future",
    format_timestamp(*.ts),
    format_duration_ms(*.max_ahead_ms),
    format_timestamp(*.highest)
)]
pub struct TooFarAhead {
    /// The refused event time.
    pub ts: Timestamp,
    /// The largest event time accepted before it.
    pub highest: Timestamp,
    /// The bound, in milliseconds.
    pub max_ahead_ms: i64,
}

impl FutureGuard {
    /// Refuses event times more than `max_ahead` ahead of the largest accepted so far.
    pub fn new(max_ahead: Duration) -> Self {
        FutureGuard {
            max_ahead_ms: duration_ms(max_ahead),
            highest: None,
            limit: Timestamp::MAX,
        }
    }

    /// Accepts `ts` (and takes it as the reference if it is the largest so far) or refuses
    /// it.
    #[inline]
    pub fn admit(&mut self, ts: Timestamp) -> Result<(), TooFarAhead> {
        if ts > self.limit {
            return Err(TooFarAhead {
                ts,
                highest: self.highest.unwrap_or(Timestamp::MIN),
                max_ahead_ms: self.max_ahead_ms,
            });
        }
        if self.highest.is_none_or(|h| ts > h) {
            self.highest = Some(ts);
            self.limit = ts.saturating_add(self.max_ahead_ms);
        }
        Ok(())
    }

    /// The largest event time accepted so far: what a checkpoint keeps.
    pub fn highest(&self) -> Option<Timestamp> {
        self.highest
    }

    /// Continues from a checkpoint's [`FutureGuard::highest`].
    pub fn resume(&mut self, highest: Option<Timestamp>) {
        self.highest = highest;
        self.limit = highest.map_or(Timestamp::MAX, |h| h.saturating_add(self.max_ahead_ms));
    }
}

/// Error from [`parse_duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration `{input}`: expected a whole number with a unit, like 250ms, 10s, 5m or 1h"
)]
pub struct DurationError {
    input: String,
}

/// Parses `250ms`, `10s`, `5m`, `1h` or `2d`. A bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

/// A duration as whole milliseconds, saturating at `i64::MAX`.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Formats milliseconds in the largest unit of [`parse_duration`] that divides them
/// (`1h`, `90s`, `250ms`), so that it reads as it was given.
pub fn format_duration_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    match UNITS.iter().find(|(unit, _)| ms != 0 && ms % unit == 0) {
        Some((unit, name)) => format!("{}{name}", ms / unit),
        None => format!("{ms}ms"),
    }
}

/// Formats epoch milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` for humans (progress lines).
pub fn format_timestamp(ms: Timestamp) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil-from-days (Howard Hinnant's algorithm), valid for the whole i64 day range we meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn watermark_is_max_minus_delay_minus_one() {
        let w = Watermarks::bounded(Duration::from_secs(2));
        assert_eq!(w.watermark_for(10_000), 7_999);
        assert_eq!(Watermarks::ascending().watermark_for(5), 4);
        assert_eq!(w.watermark_for(i64::MIN), i64::MIN);
    }

    #[test]
    fn the_first_event_is_accepted_and_then_nothing_far_ahead_of_the_largest() {
        let mut guard = FutureGuard::new(Duration::from_secs(3600));
        // Whatever the first event time, there is nothing to compare it with.
        assert_eq!(guard.admit(1_000_000), Ok(()));
        assert_eq!(guard.admit(1_000_000 + 3_600_000), Ok(()));
        assert_eq!(guard.admit(500), Ok(()), "events behind are never refused");
        let year_9999 = 253_402_300_799_000;
        let refused = guard.admit(year_9999);
        assert_eq!(
            refused,
            Err(TooFarAhead {
                ts: year_9999,
                highest: 4_600_000,
                max_ahead_ms: 3_600_000
            })
        );
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.starts_with("event time 9999-12-31T23:59:59.000Z"),
            "{message}"
        );
        assert!(message.contains("more than 1h ahead of"), "{message}");
        assert!(message.contains("1970-01-01T01:16:40.000Z"), "{message}");
        assert_eq!(
            guard.highest(),
            Some(4_600_000),
            "a refused event moves nothing"
        );
        assert!(guard.admit(4_600_000 + 3_600_001).is_err());
        let mut resumed = FutureGuard::new(Duration::from_secs(3600));
        resumed.resume(guard.highest());
        assert_eq!(resumed, guard);
        let mut early = FutureGuard::new(Duration::ZERO);
        assert_eq!(early.admit(i64::MIN + 1), Ok(()));
        assert_eq!(
            early.admit(i64::MAX),
            Err(TooFarAhead {
                ts: i64::MAX,
                highest: i64::MIN + 1,
                max_ahead_ms: 0
            })
        );
    }

    #[test]
    fn durations_read_as_given() {
        assert_eq!(format_duration_ms(3_600_000), "1h");
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(250), "250ms");
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(2 * 86_400_000), "2d");
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
    }
}
