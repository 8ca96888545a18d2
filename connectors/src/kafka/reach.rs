//! Waiting for a first answer from the brokers, bounded by the URI's `connect_timeout`:
//! what every Kafka client of a job does before it relies on the brokers, so that a broker
//! nobody runs fails the job after that long with one message naming the brokers and what
//! to do, instead of a retry log that never ends (a following source waits for ever: the
//! broker may come later).
//!
//! Who waits: the source with `until=end` (between polls, so the job stays responsive);
//! the group member of a job run per partition with `until=end`, before it serves the
//! group; the sink, before it produces (at its first write, or when a job with checkpoints
//! begins transactions).

use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError as RdKafkaError;

use super::{KafkaSpec, Reporting};

/// The longest one metadata request of a wait may take.
pub(super) const PROBE_WAIT: Duration = Duration::from_secs(1);
/// The pause between two requests that got no answer.
pub(super) const PROBE_RETRY: Duration = Duration::from_millis(500);

/// No broker answered a client within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error(
    "kafka {endpoint}: cannot reach {brokers} within {timeout:?} ({cause}): check that the \
     broker runs and that the URI gives its host and port, or give it longer with \
     connect_timeout= ({waiter} waits that long for a first answer)"
)]
pub struct UnreachableBrokers {
    /// The endpoint, `kafka://BROKERS/TOPICS`.
    pub endpoint: String,
    /// `broker HOST:PORT` or `brokers HOST:PORT,..`.
    pub brokers: String,
    /// How long the client waited.
    pub timeout: Duration,
    /// Why the brokers could not be reached, as librdkafka said last.
    pub cause: String,
    /// Who waited: `with until=end the source`, `the output`, ...
    pub waiter: &'static str,
}

impl UnreachableBrokers {
    /// The failure of `spec`'s client reporting through `reporting`, last told `error`.
    pub(super) fn new(
        spec: &KafkaSpec,
        reporting: &Reporting,
        waiter: &'static str,
        error: &RdKafkaError,
    ) -> Self {
        UnreachableBrokers {
            endpoint: spec.describe(),
            brokers: reporting.brokers_named(),
            timeout: spec.connect_timeout,
            cause: reporting
                .unreachable_because()
                .unwrap_or_else(|| error.to_string()),
            waiter,
        }
    }
}

/// How a wait for the brokers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reached {
    /// A broker answered.
    Yes,
    /// `stopped` said so first (the job is being stopped).
    Stopped,
}

/// Asks the brokers for the metadata of `spec`'s first topic until one answers (any
/// answer, the topic missing included), for `spec.connect_timeout` at most. `drain` serves
/// what the client queued meanwhile (its errors say why, in librdkafka's words) before
/// each failed request is reported; `stopped` is asked between requests.
pub(super) fn wait_for_brokers<C: ClientContext>(
    client: &Client<C>,
    reporting: &Reporting,
    spec: &KafkaSpec,
    waiter: &'static str,
    drain: impl Fn(),
    stopped: impl Fn() -> bool,
) -> Result<Reached, UnreachableBrokers> {
    let since = Instant::now();
    loop {
        let left = spec.connect_timeout.saturating_sub(since.elapsed());
        let wait = PROBE_WAIT.min(left).max(Duration::from_millis(1));
        let Err(e) = client.fetch_metadata(Some(&spec.topics[0]), wait) else {
            return Ok(Reached::Yes);
        };
        drain();
        reporting.error(&e, "cannot reach the brokers");
        if since.elapsed() >= spec.connect_timeout {
            return Err(UnreachableBrokers::new(spec, reporting, waiter, &e));
        }
        if stopped() {
            return Ok(Reached::Stopped);
        }
        std::thread::sleep(PROBE_RETRY.min(spec.connect_timeout.saturating_sub(since.elapsed())));
    }
}
