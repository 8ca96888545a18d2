//! What a window operator emits: results, late events and rejected events.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_engine::{Handled, Output, Timestamp};

use super::Window;
use crate::aggregate::AggregateError;

/// An aggregate failed in a window (an integer sum overflowed): which key, which window,
/// and the event time and input position of the event being added (none when panes were
/// merged as the window fired). The job fails with it, unless the job routes such events
/// to a sink ([`super::WindowedStream::rejects`]); windows that fired before still reach the sinks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{cause} (key {key}, window [{start}, {end}){}{})",
    event_ts.map_or_else(|| " as it fired".to_string(), |ts| format!(", event time {ts}")),
    origin.as_ref().map_or_else(String::new, |at| format!(", {at}"))
)]
pub struct WindowAggregateError {
    /// The key, as JSON.
    pub key: String,
    /// The window's first millisecond.
    pub start: Timestamp,
    /// The first millisecond after the window.
    pub end: Timestamp,
    /// The event time of the event whose addition failed.
    pub event_ts: Option<Timestamp>,
    /// Where that event was read (e.g. `input events.jsonl line 12`), when the job says
    /// ([`super::WindowedStream::origin`]).
    pub origin: Option<String>,
    /// What failed (kept in the message, not as a separate cause, so it is said once).
    pub cause: AggregateError,
}

impl WindowAggregateError {
    pub(crate) fn new<K: Serialize>(
        cause: AggregateError,
        key: &K,
        window: Window,
        event_ts: Option<Timestamp>,
    ) -> Self {
        WindowAggregateError {
            key: serde_json::to_string(key).unwrap_or_else(|e| format!("<unprintable: {e}>")),
            start: window.start,
            end: window.end,
            event_ts,
            origin: None,
            cause,
        }
    }
}

/// An event an aggregate could not take, with the reason: what [`super::WindowedStream::rejects`]
/// sends to its sink instead of failing the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected<T> {
    /// The event, as the window received it.
    pub event: T,
    /// Why, with the key, window, event time and input position.
    pub error: WindowAggregateError,
}

/// Words for where an event was read (`None` if unknown): see [`super::WindowedStream::origin`].
pub type OriginOf<T> = Arc<dyn Fn(&T) -> Option<String> + Send + Sync>;

/// What a window operator does with an event its aggregate fails on: fail the job, or
/// emit it as [`WindowEvent::Rejected`] for the rejects sink; either way the error names
/// where the event was read. Only reached on failure, so it costs nothing per event.
pub(crate) struct Rejections<T> {
    pub(super) routed: bool,
    pub(super) origin: Option<OriginOf<T>>,
}

impl<T> Rejections<T> {
    /// Fails with `error` about `event`, or routes the two on when the job asked for it.
    pub(crate) fn fail_or_route<K, R>(
        &self,
        mut error: WindowAggregateError,
        ts: Timestamp,
        event: T,
        out: &mut WindowOutput<K, R, T>,
    ) -> Result<(), WindowAggregateError> {
        error.origin = self.origin.as_ref().and_then(|origin| origin(&event));
        if !self.routed {
            return Err(error);
        }
        out.emit(
            ts,
            WindowEvent::Rejected(Box::new(Rejected { event, error })),
        );
        Ok(())
    }
}

/// The result of one window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: R,
    /// True if this result replaces an earlier one for the same key and window: all but
    /// the first result of a window (after an early firing, or a late event within the
    /// allowed lateness).
    pub is_update: bool,
    /// Whether the window fired early (a [`super::Trigger`]), on time (the watermark
    /// reached its end) or late (a late event within the allowed lateness updated it).
    #[serde(default)]
    pub timing: Timing,
}

/// When a window's result was emitted, relative to the watermark: Beam's `PaneInfo` timing
/// (Flink has no such field). A consumer that keeps one row per key and window replaces it
/// whenever `is_update` is set; one that wants each window once takes the on-time result,
/// which holds every event that was not late.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Before the watermark reached the window's end, fired by a [`super::Trigger`]: the
    /// window's result so far.
    Early,
    /// When the watermark reached the window's end.
    #[default]
    OnTime,
    /// Afterwards, within the allowed lateness: a late event updated the window.
    Late,
}

/// What a window operator emits: fired windows and, when the job routes them, late events
/// (Flink's side output for late data). [`super::WindowedStream::aggregate`] splits the two into
/// the result stream and the late-data sink, so late events travel through the dataflow
/// like results: a late-data file sink takes part in checkpoints and is exactly-once.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowEvent<K, R, T> {
    /// The result of a fired window.
    Result(WindowResult<K, R>),
    /// An event too late for every window it belongs to.
    Late(T),
    /// An event the aggregate could not take (see [`super::WindowedStream::rejects`]). Boxed:
    /// rare, and its error would more than double the size of every result.
    Rejected(Box<Rejected<T>>),
}

impl<K, R, T> WindowEvent<K, R, T> {
    pub(super) fn into_result(self) -> Option<WindowResult<K, R>> {
        match self {
            WindowEvent::Result(result) => Some(result),
            _ => None,
        }
    }

    pub(super) fn into_late(self) -> Option<T> {
        match self {
            WindowEvent::Late(event) => Some(event),
            _ => None,
        }
    }

    pub(super) fn into_rejected(self) -> Option<Rejected<T>> {
        match self {
            WindowEvent::Rejected(rejected) => Some(*rejected),
            _ => None,
        }
    }
}

/// Where the window operators emit.
pub(crate) type WindowOutput<K, R, T> = Output<WindowEvent<K, R, T>>;

/// The late events of one window operator instance (counted by the engine's harness):
/// emitted as [`WindowEvent::Late`] when the job has a late-data output, else dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LateData {
    pub(crate) routed: bool,
}

impl LateData {
    /// Hands on a late event at `ts` if the job routes late data; tells the harness it was
    /// late either way.
    #[inline]
    pub(crate) fn route<K, R, T>(
        self,
        ts: Timestamp,
        event: T,
        out: &mut WindowOutput<K, R, T>,
    ) -> Handled {
        if self.routed {
            out.emit(ts, WindowEvent::Late(event));
        }
        Handled::Late
    }
}
