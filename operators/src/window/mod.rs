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
//! Where things are: [`spec`] the window kinds and bounds; [`stream`] the API on keyed
//! streams; [`operator`] the operator on the engine's event-time harness, which dispatches
//! to [`aligned`] or [`session`]; [`local`] the pre-aggregation before the exchange;
//! [`result`] what the operator emits; `latest` each key's latest result, which a
//! queryable window ([`WindowedStream::queryable`]) answers queries from.

pub mod aligned;
mod latest;
pub mod local;
mod operator;
mod result;
pub mod session;
mod spec;
mod stream;
#[cfg(test)]
mod tests;

pub use latest::LatestWindow;
pub use operator::WindowOperator;
pub use result::{OriginOf, Rejected, WindowAggregateError, WindowEvent, WindowResult};
pub use spec::{window_start, Session, Sliding, Tumbling, Window, WindowSpec};
pub use stream::{WindowExt, WindowedStream};

pub(crate) use operator::{prune, prune_prefix, WindowFactory};
pub(crate) use result::{LateData, Rejections, WindowOutput};
pub(crate) use spec::Alignment;
