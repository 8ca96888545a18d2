//! Event-time windows over keyed streams.
//!
//! - [`Tumbling`] and [`Sliding`] windows are *aligned*: their bounds depend only on time,
//!   so they are computed from panes (see [`aligned`]).
//! - [`Session`] windows are *merging*: each event opens `[ts, ts + gap)` and touching
//!   windows of a key merge (see [`session`]).
//!
//! Semantics (Flink's, made deterministic; see the README's "Event-time semantics"):
//! a window `[start, end)` fires once, when the watermark reaches `end - 1`; its result has
//! event time `end - 1`. An event is late when every window it belongs to has
//! `end - 1 + allowed_lateness <= watermark`, where the watermark is the one current when the
//! event arrives. Late events are counted in `weir_late_events_total` and, if asked, written
//! to a late-data sink. With allowed lateness > 0, an event for an already due window updates
//! it and the window fires again at once, with `is_update` set.
//!
//! Window functions (Flink's): [`WindowedStream::aggregate`] (incremental),
//! [`WindowedStream::reduce`], [`WindowedStream::process`] (all of a window's elements,
//! buffered in window state) and [`WindowedStream::aggregate_with`] (an aggregate's result
//! with the window). All run on the same operator, as aggregators (see `functions`).
//!
//! Early firings: [`WindowedStream::trigger`] with [`Trigger::every`] (Flink's
//! `ContinuousEventTimeTrigger`) or [`Trigger::count`] (`CountTrigger`) fires a tumbling or
//! sliding window's result so far before its end, accumulating; the on-time firing still
//! follows. Each result says when it fired ([`Timing`]: early, on time, late) and
//! `is_update` is set on all but a window's first result (see `trigger`).
//!
//! Where things are: [`spec`] the window kinds and bounds; [`stream`] the API on keyed
//! streams; `functions` reduce, process and aggregate-with; `trigger` early firings;
//! [`operator`] the operator on the engine's event-time harness, which dispatches
//! to [`aligned`] or [`session`]; [`local`] the pre-aggregation before the exchange;
//! [`result`] what the operator emits; `latest` each key's latest result, which a
//! queryable window ([`WindowedStream::queryable`]) answers queries from.

pub mod aligned;
mod functions;
mod latest;
pub mod local;
mod operator;
mod result;
pub mod session;
mod spec;
mod stream;
#[cfg(test)]
mod tests;
mod trigger;
#[cfg(test)]
mod trigger_tests;

pub use functions::{Collect, Reduce, WindowContext};
pub use latest::LatestWindow;
pub use operator::WindowOperator;
pub use result::{OriginOf, Rejected, Timing, WindowAggregateError, WindowEvent, WindowResult};
pub use spec::{window_start, Session, Sliding, Tumbling, Window, WindowSpec};
pub use stream::{WindowExt, WindowedStream};
pub use trigger::Trigger;

pub(crate) use operator::{prune, prune_prefix, WindowFactory};
pub(crate) use result::{LateData, Rejections, WindowOutput};
pub(crate) use spec::Alignment;
