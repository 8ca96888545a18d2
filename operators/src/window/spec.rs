//! What a window is: its bounds, the window kinds and how an event's window is found.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::time::duration_ms;
use weir_engine::Timestamp;

/// A window `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

/// Tumbling windows: fixed size, back to back, aligned to the epoch plus an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    pub(super) size: i64,
    pub(super) offset: i64,
}

impl Tumbling {
    /// Windows of `size` (greater than zero: [`WindowSpec::check`]).
    pub fn of(size: Duration) -> Self {
        Tumbling {
            size: duration_ms(size),
            offset: 0,
        }
    }

    /// Shifts window bounds by `offset` (e.g. for time zones).
    pub fn with_offset(self, offset: Duration) -> Self {
        Tumbling {
            offset: duration_ms(offset).checked_rem(self.size).unwrap_or(0),
            ..self
        }
    }

    /// The window size in milliseconds.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The offset of window bounds in milliseconds.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// Sliding (hopping) windows of `size` starting every `slide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    pub(super) size: i64,
    pub(super) slide: i64,
    pub(super) offset: i64,
}

impl Sliding {
    /// Windows of `size` starting every `slide` (both greater than zero, the slide not
    /// greater than the size: [`WindowSpec::check`]).
    pub fn of(size: Duration, slide: Duration) -> Self {
        Sliding {
            size: duration_ms(size),
            slide: duration_ms(slide),
            offset: 0,
        }
    }
}

/// Session windows: a key's events closer than `gap` belong to one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub(super) gap: i64,
}

impl Session {
    /// Sessions that close after `gap` (greater than zero) without events.
    pub fn with_gap(gap: Duration) -> Self {
        Session {
            gap: duration_ms(gap),
        }
    }
}

/// Any of the window kinds, chosen at run time (e.g. from a command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// See [`Tumbling`].
    Tumbling(Tumbling),
    /// See [`Sliding`].
    Sliding(Sliding),
    /// See [`Session`].
    Session(Session),
}

impl From<Tumbling> for WindowSpec {
    fn from(w: Tumbling) -> Self {
        WindowSpec::Tumbling(w)
    }
}
impl From<Sliding> for WindowSpec {
    fn from(w: Sliding) -> Self {
        WindowSpec::Sliding(w)
    }
}
impl From<Session> for WindowSpec {
    fn from(w: Session) -> Self {
        WindowSpec::Session(w)
    }
}

impl WindowSpec {
    /// Why this window cannot be used, if it cannot: the one check for windows built in
    /// Rust (the job is refused when it runs) and on the command line (`--window`).
    pub fn check(&self) -> Result<(), String> {
        let sizes = match self {
            WindowSpec::Tumbling(t) => vec![t.size],
            WindowSpec::Sliding(s) => vec![s.size, s.slide],
            WindowSpec::Session(s) => vec![s.gap],
        };
        if sizes.iter().any(|&ms| ms <= 0) {
            return Err(format!(
                "{self}: sizes, slides and gaps must be at least 1 ms"
            ));
        }
        if let WindowSpec::Sliding(s) = self {
            if s.slide > s.size {
                return Err(format!(
                    "{self}: the slide may not exceed the size (events would fall between \
                     windows)"
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowSpec::Tumbling(t) => write!(f, "tumble {}ms", t.size),
            WindowSpec::Sliding(s) => write!(f, "hop {}ms every {}ms", s.size, s.slide),
            WindowSpec::Session(s) => write!(f, "session gap {}ms", s.gap),
        }
    }
}

/// Start of the aligned window of `size` (shifted by `offset`) containing `ts`
/// (Flink's `getWindowStartWithOffset`, correct for negative timestamps). A start below
/// `i64::MIN` saturates there, so windows at the edge of time stay representable.
#[inline]
pub fn window_start(ts: Timestamp, size: i64, offset: i64) -> Timestamp {
    match ts.checked_sub(offset) {
        Some(shifted) => ts.saturating_sub(shifted.rem_euclid(size)),
        None => {
            let start =
                i128::from(ts) - (i128::from(ts) - i128::from(offset)).rem_euclid(i128::from(size));
            i64::try_from(start).unwrap_or(i64::MIN)
        }
    }
}

/// [`window_start`] for one size and offset, remembering the last window it found: events
/// come mostly in time order, so most of them need no 64-bit division (two per event were a
/// measurable part of the JSONL window job).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alignment {
    size: i64,
    offset: i64,
    /// The last window found, `[start, end)`; empty before the first.
    start: Timestamp,
    end: Timestamp,
}

impl Alignment {
    pub(crate) fn new(size: i64, offset: i64) -> Self {
        Alignment {
            size,
            offset,
            start: 0,
            end: 0,
        }
    }

    /// `window_start(ts, size, offset)`.
    #[inline]
    pub(crate) fn start_of(&mut self, ts: Timestamp) -> Timestamp {
        // An aligned start `s <= ts < s + size` is the start of `ts`'s window.
        if self.start <= ts && ts < self.end {
            return self.start;
        }
        self.start = window_start(ts, self.size, self.offset);
        // A start at `i64::MIN` may be saturated, not aligned: it is not remembered.
        self.end = match self.start {
            i64::MIN => i64::MIN,
            start => start.saturating_add(self.size),
        };
        self.start
    }
}
