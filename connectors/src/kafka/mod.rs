//! Kafka: a source reading every partition of its topics (or the ones the URI names) and a
//! producer sink, on librdkafka (the `rdkafka` crate, built from source).
//!
//! Both are chosen by URI, `kafka://BROKER[,BROKER..]/TOPIC[,TOPIC..]?PARAMS` (parsed in
//! `uri`): each broker is `HOST:PORT` with a port from 1 to 65535 (`[::1]:9092` for IPv6);
//! topic names and parameters are percent-decoded (`group=my%20group`).
//!
//! | parameter | meaning |
//! |---|---|
//! | `group=G` | consumer group (default `weir`): the source commits its checkpointed offsets to it, for lag tools, and reads its committed offsets with `start=committed`; with `tasks=per-partition`, the group that splits the partitions among processes |
//! | `start=earliest\|latest\|committed\|MS` | where partitions without a checkpointed offset start: their first record, their end, the group's committed offset (else the first record), or the first record at or after event time `MS` (epoch ms); default `committed` |
//! | `until=end` | bounded: stop once every partition read (every partition of the topic unless `partitions=` names some) has reached its end (one topic only) |
//! | `connect_timeout=D` | how long a source with `until=end`, the group member of a bounded run per partition, and a sink wait for a first answer from the brokers before they fail the job (default 30s; `D` as `500ms`, `10s`, `2m`; see `reach`) |
//! | `partitions=0,2` | source: read only these partitions (of one topic); without it the source reads every partition of every topic in the URI |
//! | `tasks=per-partition` | source: run the job as one task per partition the group assigns this process, each with its own state, checkpoints and output (see `weir_jobs::partitioned`; one topic only) |
//! | `timestamp=kafka\|payload` | where a record's event time comes from: its Kafka timestamp (CreateTime, or LogAppendTime if the topic is configured so), or the payload (the job's own timestamp field); default `payload` |
//! | `delivery=exactly-once\|at-least-once` | sink in a job with checkpoints: results committed in Kafka transactions once their checkpoint completes (default), or produced at once and repeated after a restart |
//! | `transactional.id=ID` | sink, exactly-once: the producer's transactional id (default `weir.GROUP.TOPIC`); one per sink of one job |
//! | `NAME=VALUE` with a `.` in `NAME` | handed to librdkafka as is, e.g. `session.timeout.ms=6000` |
//!
//! # Invariants
//! - Only `tasks=per-partition` lets the group coordinator choose partitions (its state is
//!   per partition, so a partition moves with its state). Any other source assigns its
//!   partitions itself, as Flink's `KafkaSource` does: its state (windows, the watermark)
//!   covers all of them, so a subset handed out by the group (say while dead members of a
//!   killed run still hold the rest) would make it finish early and its watermark run
//!   ahead of the partitions it does not read.
//! - The source's position is the next offset of every partition it has read; it lives in
//!   weir's checkpoints, which are the source of truth. After a checkpoint completes the
//!   same offsets are committed to the group (asynchronously), so lag tools see them; a
//!   refused commit is reported and never fails the job. A restart assigns each partition
//!   at its checkpointed offset, whatever the group says.
//! - In a job with checkpoints the sink is exactly-once: results are produced in one Kafka
//!   transaction per completed checkpoint (see `transactions`), so `read_committed`
//!   consumers see each result once, a checkpoint interval late. Without checkpoints, or
//!   with `delivery=at-least-once`, it produces at once with the idempotent producer and
//!   waits for every record to be acknowledged at each barrier and at the end (after a
//!   restart, rows derived since the restored checkpoint are produced again).
//! - The brokers going away never fails a job by itself: librdkafka reconnects with
//!   backoff; weir says so on stderr and counts it in `weir_kafka_broker_errors_total`,
//!   including a broker that is connected but silent (request timeouts, which librdkafka
//!   reports only as log lines; `socket.timeout.ms` is 10 s unless the URI says otherwise). A
//!   record the brokers did not acknowledge within librdkafka's `message.timeout.ms`
//!   (default 5 minutes) fails the job, which can then restart from its checkpoint.
//!   (Finding the topics' partitions when a source starts is the exception: a topic the
//!   brokers do not show within 10 s fails the job, saying what was wrong.)
//! - Brokers that cannot be reached are said as such, with librdkafka's reason
//!   (`cannot reach broker 127.0.0.1:1 (connection refused); retrying with backoff: check
//!   ...`), and every recurring trouble is said at most once per step of a backoff of 1 s
//!   doubling to 60 s, each line counting the reports it stands for (`throttle`); librdkafka
//!   reports an unreachable broker ~40 times a second. Counting is not throttled.
//! - A source starts reading only once a broker has answered. A following source waits for
//!   that for ever (saying so, throttled); a bounded one (`until=end`) fails the job after
//!   `connect_timeout` (default 30 s), naming the brokers and the timeout: a backfill
//!   against a wrong address ends instead of waiting. Once a broker has answered, brokers
//!   going away do not fail it (see above). The group member of a bounded run per
//!   partition and every sink wait for a first answer the same way (`reach`).

/// Implements librdkafka's client callbacks for a context with a `reporting` field: errors,
/// request time-outs and statistics go to [`Reporting`].
macro_rules! report_through_reporting {
    ($context:ty) => {
        impl rdkafka::ClientContext for $context {
            fn stats(&self, statistics: rdkafka::statistics::Statistics) {
                self.reporting.stats(&statistics);
            }

            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                self.reporting.error(&error, reason);
            }

            fn log(&self, _: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
                self.reporting.log(facility, message);
            }
        }
    };
}

mod group;
pub mod partitioner;
mod reach;
mod sink;
mod source;
mod throttle;
mod transactions;
mod uri;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, TopicPartitionList};
use weir_engine::metrics::KafkaMetrics;

use throttle::Throttle;

pub use group::{GroupChange, GroupMember};
pub use partitioner::{Partitioner, UnknownPartitioner};
pub use reach::UnreachableBrokers;
pub use sink::{KafkaLineWriter, KafkaSink, KeyOf};
pub use source::{KafkaSource, SetEventTime};
pub use uri::{encode_param_value, KafkaUriError, DEFAULT_CONNECT_TIMEOUT};

/// Where partitions without a checkpointed offset start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first record still in the partition.
    Earliest,
    /// The end of the partition: only records produced from now on.
    Latest,
    /// The group's committed offset, or the first record if there is none.
    Committed,
    /// The first record whose Kafka timestamp is at or after this time (epoch ms).
    Timestamp(i64),
}

/// Where the source takes each record's event time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTime {
    /// The decoded payload: the job's `.timestamps(..)` reads its own field.
    Payload,
    /// The record's Kafka timestamp, written into the decoded event by the setter the job
    /// gives [`KafkaSource::with_record_time`].
    Kafka,
}

/// How the sink delivers results in a job with checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Kafka transactions committed with checkpoints.
    ExactlyOnce,
    /// Produced at once, acknowledged at each barrier; repeated after a restart.
    AtLeastOnce,
}

/// A Kafka endpoint parsed from `kafka://BROKERS/TOPICS?PARAMS` (see [`KafkaSpec::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics read (a sink writes to the first).
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group: String,
    /// Where partitions without a checkpointed offset start.
    pub start: StartAt,
    /// Stop once every partition read is at its end.
    pub until_end: bool,
    /// How long a bounded source (`until_end`) waits for a broker to answer when it starts
    /// (`connect_timeout=`, default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Where event time comes from.
    pub event_time: EventTime,
    /// How a sink delivers results in a job with checkpoints.
    pub delivery: Delivery,
    /// The partitions to read (`partitions=`); `None`: every partition of every topic
    /// (with `tasks=per-partition`, the ones the group assigns the process).
    pub partitions: Option<Vec<i32>>,
    /// Run the job as one task per assigned partition (`tasks=per-partition`).
    pub per_partition_tasks: bool,
    /// librdkafka properties given in the URI.
    pub properties: Vec<(String, String)>,
}

impl KafkaSpec {
    /// The client configuration shared by consumers and producers.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "weir")
            // A broker that stops answering (hung, frozen, cut off) is noticed, reported and
            // reconnected to after 10 s instead of librdkafka's 60 s; the URI may override it.
            .set("socket.timeout.ms", "10000")
            // Warnings carry the request timeouts (see `Reporting::log`); the rdkafka crate
            // would set Error, as weir installs no `log` logger.
            .set_log_level(RDKafkaLogLevel::Warning);
        // The transactional id is the exactly-once sink's alone (`transactional_id`).
        for (k, v) in self
            .properties
            .iter()
            .filter(|(k, _)| k != "transactional.id")
        {
            config.set(k, v);
        }
        config
    }

    /// The exactly-once sink's transactional id: the URI's `transactional.id`, else
    /// `weir.GROUP.TOPIC`.
    pub fn transactional_id(&self) -> String {
        self.properties
            .iter()
            .find(|(k, _)| k == "transactional.id")
            .map_or_else(
                || format!("weir.{}.{}", self.group, self.topics[0]),
                |(_, v)| v.clone(),
            )
    }

    /// `kafka://BROKERS/TOPICS`, for descriptions and dead letters.
    pub fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topics.join(","))
    }
}

/// What a rebalance asks of a consumer.
enum Rebalance<'a> {
    /// Take these partitions (their start offsets may still be set).
    Assign(&'a mut TopicPartitionList),
    /// Give these partitions up.
    Revoke(&'a TopicPartitionList),
}

/// The partition numbers of `topic`, from one metadata request of `consumer` waiting up to
/// `timeout`. A topic the brokers do not show (it does not exist, or not yet) is the
/// error `MetadataFetch(UnknownTopicOrPartition)` or the one the brokers gave for it.
fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let shown = metadata.topics().iter().find(|t| t.name() == topic);
    match shown {
        Some(t) if t.error().is_some() => Err(RdKafkaError::MetadataFetch(
            t.error()
                .map_or(RDKafkaErrorCode::UnknownTopicOrPartition, Into::into),
        )),
        Some(t) if !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        _ => Err(RdKafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )),
    }
}

/// What source and sink clients report the same way: broker errors on stderr and in
/// metrics, consumer lag from librdkafka's statistics, refused offset commits on stderr.
/// Recurring trouble is said on stderr once per step of a backoff (see `throttle`) and
/// counted every time.
struct Reporting {
    endpoint: String,
    /// The URI's brokers, `HOST:PORT[,HOST:PORT..]`.
    brokers: String,
    metrics: KafkaMetrics,
    /// A commit of checkpointed offsets failed and was reported.
    commits_refused: AtomicBool,
    throttle: Throttle,
    /// Why the brokers could not be reached, as last reported.
    unreachable: Mutex<Option<String>>,
}

/// The throttle's kind for brokers that cannot be reached, whichever error said so.
const UNREACHABLE: &str = "unreachable";

impl Reporting {
    fn new(spec: &KafkaSpec, metrics: KafkaMetrics) -> Self {
        Reporting {
            endpoint: spec.describe(),
            brokers: spec.brokers.clone(),
            metrics,
            commits_refused: AtomicBool::new(false),
            throttle: Throttle::default(),
            unreachable: Mutex::new(None),
        }
    }

    /// `broker HOST:PORT` or `brokers HOST:PORT,HOST:PORT`.
    fn brokers_named(&self) -> String {
        let plural = if self.brokers.contains(',') { "s" } else { "" };
        format!("broker{plural} {}", self.brokers)
    }

    /// Why the brokers could not be reached, as last reported (`None` if never).
    fn unreachable_because(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reports a commit of checkpointed offsets to the group that failed (`detail` says
    /// how). The commit is for lag tools only (checkpoints hold the position), so it never
    /// fails the job, and it is said once per client: a group that refuses one commit
    /// refuses the next, one per checkpoint.
    fn commit_failed(&self, detail: &str) {
        if self.commits_refused.swap(true, Ordering::Relaxed) {
            return;
        }
        eprintln!(
            "weir: kafka {}: the consumer group refused the checkpointed offsets ({detail}); \
             the job goes on (its checkpoints hold its position, the group's offsets are for \
             lag tools) and commits again after each checkpoint, not saying so again. A group \
             refuses commits from a reader that is not its member while it has members: \
             processes of another job with the same group=, or members of a killed process \
             not expired yet (session.timeout.ms)",
            self.endpoint
        );
    }

    /// An error of librdkafka's error callback (`reason` is its text) or of a request weir
    /// made (`reason` says which). Brokers that cannot be reached are said as such, with
    /// what to check; any other error as it is.
    fn error(&self, error: &RdKafkaError, reason: &str) {
        // The end of a partition is news for the bounded mode, not a problem.
        if let RdKafkaError::Global(RDKafkaErrorCode::PartitionEOF) = error {
            return;
        }
        self.metrics.broker_errors.inc();
        if let Some(cause) = unreachable_detail(error, reason) {
            self.cannot_reach(cause);
            return;
        }
        if let Some(held) = self.throttle.admit(&error.to_string()) {
            eprintln!(
                "weir: kafka {}: {reason} ({error}); retrying with backoff{}",
                self.endpoint,
                held_back(held)
            );
        }
    }

    /// Reports that no broker could be reached; `cause` says why, in librdkafka's words
    /// where it said them (`connection refused`) rather than an error code's (`broker
    /// transport failure`), which are said only until it has.
    fn cannot_reach(&self, cause: Cause) {
        let cause = self.remember(cause);
        if let Some(held) = self.throttle.admit(UNREACHABLE) {
            eprintln!(
                "weir: kafka {}: cannot reach {} ({cause}); retrying with backoff{}: check that \
                 the broker runs and listens on that host and port",
                self.endpoint,
                self.brokers_named(),
                held_back(held)
            );
        }
    }

    /// Keeps `cause` as why the brokers cannot be reached unless it is an error code's
    /// text and librdkafka's words are known; returns the cause kept.
    fn remember(&self, cause: Cause) -> String {
        let mut known = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match (cause, known.as_ref()) {
            (Cause::Said(why), _) | (Cause::Code(why), None) => *known = Some(why),
            (Cause::Code(_), Some(_)) => {}
        }
        known.clone().unwrap_or_default()
    }

    /// librdkafka's log lines. It reports a broker that stops answering (requests timed
    /// out after `socket.timeout.ms`) only here, as a warning, then reconnects: that is a
    /// broker error for weir too; and a refused commit. Why a connection failed
    /// (`Connection refused`) it logs before its error callback or a request says so less
    /// clearly (`Broker transport failure`), if at all: that is kept for saying why the
    /// brokers cannot be reached. The rest has no logger to go to (weir has none).
    fn log(&self, facility: &str, message: &str) {
        // librdkafka delivers no result of an asynchronous commit to the rdkafka crate's
        // consumers (it has no offset_commit_cb); a failed one it logs, as COMMITFAIL.
        if facility == "COMMITFAIL" {
            self.commit_failed(message);
        } else if facility == "FAIL" {
            self.remember(Cause::Said(tidy(message)));
        } else if facility == "REQTMOUT" {
            self.metrics.broker_errors.inc();
            if let Some(held) = self.throttle.admit(facility) {
                eprintln!(
                    "weir: kafka {}: the broker does not answer ({message}); retrying with \
                     backoff{}",
                    self.endpoint,
                    held_back(held)
                );
            }
        }
    }

    /// Serves one rebalance callback of a consumer: counts it, hands an assignment or a
    /// revocation to `apply` (which applies it to the consumer), gives the partitions up
    /// when the rebalance failed (the group tries again), and reports what could not be
    /// applied.
    fn rebalance<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
        apply: impl FnOnce(Rebalance<'_>) -> KafkaResult<()>,
    ) {
        self.metrics.rebalances.inc();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => apply(Rebalance::Assign(tpl)),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => apply(Rebalance::Revoke(tpl)),
            other => {
                eprintln!(
                    "weir: kafka {}: rebalance failed: {other:?}; the group retries",
                    self.endpoint
                );
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            self.error(&e, "cannot apply the group's assignment");
        }
    }

    fn stats(&self, statistics: &Statistics) {
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue; negative offsets
                // mean unknown. The lag is counted from what weir has read (librdkafka's own
                // `consumer_lag` counts from the committed offset, which trails by a
                // checkpoint).
                if partition >= 0 && p.hi_offset >= 0 && p.app_offset >= 0 {
                    let lag = (p.hi_offset - p.app_offset).max(0);
                    self.metrics.set_consumer_lag(topic, partition, lag);
                }
            }
        }
    }
}

/// How a throttled line says the reports it stands for.
fn held_back(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(" ({n} more reports of it since the last line)"),
    }
}

/// Why no broker can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// In the words librdkafka gave its error callback, tidied: `connection refused`.
    Said(String),
    /// An error code's text, for errors of weir's own requests: `broker transport failure`.
    Code(String),
}

/// Why no broker can be reached, if that is what `error` says.
fn unreachable_detail(error: &RdKafkaError, reason: &str) -> Option<Cause> {
    use RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure, OperationTimedOut, Resolve};
    let (code, from_callback) = match error {
        RdKafkaError::Global(code) => (*code, true),
        RdKafkaError::MessageConsumption(code) | RdKafkaError::MetadataFetch(code) => {
            (*code, false)
        }
        _ => return None,
    };
    match code {
        // A connection attempt's outcome (`Connect to .. failed: Connection refused`,
        // `Failed to resolve ..`) names the cause; `1/1 brokers are down` or
        // `Broker transport failure` do not.
        BrokerTransportFailure | AllBrokersDown | Resolve
            if from_callback && reason.to_lowercase().contains("failed") =>
        {
            Some(Cause::Said(tidy(reason)))
        }
        BrokerTransportFailure | AllBrokersDown | Resolve if from_callback => {
            Some(Cause::Code(tidy(reason)))
        }
        BrokerTransportFailure | AllBrokersDown | Resolve => {
            // `BrokerTransportFailure (Local: Broker transport failure)`: the text in brackets.
            let text = code.to_string();
            let described = text
                .split_once(" (")
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .unwrap_or(&text);
            Some(Cause::Code(tidy(described)))
        }
        OperationTimedOut if !from_callback => Some(Cause::Code("no answer".into())),
        _ => None,
    }
}

/// librdkafka's `127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection
/// refused (after 0ms in state CONNECT)` as `connection refused`; its `Local: All broker
/// connections are down` as `all broker connections are down`; its log line
/// `[thrd:h:9092/bootstrap]: h:9092/bootstrap: Failed to resolve 'h:9092': Name or service
/// not known (after 1ms in state CONNECT)` as `failed to resolve 'h:9092': Name or service
/// not known`.
fn tidy(reason: &str) -> String {
    let cause = reason
        .rsplit_once("failed: ")
        .map_or(reason, |(_, cause)| cause);
    let mut cause = cause.split(" (after ").next().unwrap_or(cause);
    // Leading `NAME: `s (`[thrd:127.0.0.1:1/bootstrap]: `, `Local: `) name no cause.
    while let Some((name, rest)) = cause.split_once(": ") {
        if name.contains([' ', '\'']) {
            break;
        }
        cause = rest;
    }
    let mut chars = cause.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// A Kafka client could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error(
    "kafka {endpoint}: cannot {action}: {source} (is the broker running and the topic created?)"
)]
pub struct KafkaError {
    /// The endpoint, `kafka://BROKERS/TOPICS`.
    pub endpoint: String,
    /// What was being done.
    pub action: &'static str,
    /// librdkafka's error.
    #[source]
    pub source: rdkafka::error::KafkaError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_brokers_are_told_by_their_cause() {
        let refused = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection \
                       refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)";
        let global = RdKafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(
            unreachable_detail(&global, refused),
            Some(Cause::Said("connection refused".into()))
        );
        let resolve = RdKafkaError::Global(RDKafkaErrorCode::Resolve);
        let unknown = "nohost:9092/bootstrap: Failed to resolve 'nohost:9092': Name or service \
                       not known (after 3ms in state CONNECT)";
        assert_eq!(
            unreachable_detail(&resolve, unknown),
            Some(Cause::Said(
                "failed to resolve 'nohost:9092': Name or service not known".into()
            ))
        );
        let down = RdKafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(
            unreachable_detail(&down, "1/1 brokers are down"),
            Some(Cause::Code("1/1 brokers are down".into()))
        );
        // weir's own requests: the reason is weir's, the code says the cause.
        let fetch = RdKafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(
            unreachable_detail(&fetch, "cannot reach the brokers"),
            Some(Cause::Code("broker transport failure".into()))
        );
        let other = RdKafkaError::Global(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(unreachable_detail(&other, "denied"), None);
    }

    #[test]
    fn the_cause_in_librdkafka_s_words_is_kept_over_an_error_code() {
        let spec = KafkaSpec::parse("kafka://127.0.0.1:1/t")
            .and_then(Result::ok)
            .expect("valid");
        let reporting = Reporting::new(&spec, weir_engine::JobMetrics::new("t").kafka());
        reporting.cannot_reach(Cause::Code("broker transport failure".into()));
        assert_eq!(
            reporting.unreachable_because().as_deref(),
            Some("broker transport failure")
        );
        reporting.cannot_reach(Cause::Said("connection refused".into()));
        reporting.cannot_reach(Cause::Code("all broker connections are down".into()));
        assert_eq!(
            reporting.unreachable_because().as_deref(),
            Some("connection refused")
        );
        assert_eq!(reporting.brokers_named(), "broker 127.0.0.1:1");
        reporting.log(
            "FAIL",
            "[thrd:h:9092/bootstrap]: h:9092/bootstrap: Failed to resolve 'h:9092': Name or \
             service not known (after 1ms in state CONNECT)",
        );
        assert_eq!(
            reporting.unreachable_because().as_deref(),
            Some("failed to resolve 'h:9092': Name or service not known")
        );
    }
}
