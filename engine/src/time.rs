//! Event time and watermarks.
//!
//! Timestamps are `i64` milliseconds since the Unix epoch; negative values are legal.
//! The bounded-out-of-orderness strategy follows Flink:
//! `watermark = max timestamp seen - delay - 1`, advanced after every event in input order.

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
    fn formats_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
    }
}
