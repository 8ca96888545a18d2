//! Kafka: a source reading every partition of its topics (or the ones the URI names) and a
//! producer sink, on librdkafka (the `rdkafka` crate, built from source).
//!
//! Both are chosen by URI, `kafka://BROKER[,BROKER..]/TOPIC[,TOPIC..]?PARAMS`:
//!
//! | parameter | meaning |
//! |---|---|
//! | `group=G` | consumer group (default `weir`): the source commits its checkpointed offsets to it, for lag tools, and reads its committed offsets with `start=committed`; with `tasks=per-partition`, the group that splits the partitions among processes |
//! | `start=earliest\|latest\|committed\|MS` | where partitions without a checkpointed offset start: their first record, their end, the group's committed offset (else the first record), or the first record at or after event time `MS` (epoch ms); default `committed` |
//! | `until=end` | bounded: stop once every partition read (every partition of the topic unless `partitions=` names some) has reached its end (one topic only) |
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
mod sink;
mod source;
mod transactions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, TopicPartitionList};
use weir_engine::metrics::KafkaMetrics;

pub use group::{GroupChange, GroupMember};
pub use sink::{KafkaLineWriter, KafkaSink, KeyOf};
pub use source::{KafkaSource, SetEventTime};

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

/// A Kafka endpoint parsed from `kafka://BROKERS/TOPICS?PARAMS`.
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
    /// Parses `kafka://BROKERS/TOPICS?PARAMS`; `None` if `uri` is not a Kafka URI.
    pub fn parse(uri: &str) -> Option<Result<KafkaSpec, String>> {
        let rest = uri.strip_prefix("kafka://")?;
        Some(Self::parse_rest(uri, rest))
    }

    fn parse_rest(uri: &str, rest: &str) -> Result<KafkaSpec, String> {
        let usage =
            "use kafka://BROKER:PORT/TOPIC[?group=G&start=earliest&until=end&timestamp=kafka]";
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topics) = path
            .split_once('/')
            .ok_or_else(|| format!("`{uri}` names no topic: {usage}"))?;
        let topics: Vec<String> = topics
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if brokers.is_empty() || topics.is_empty() {
            return Err(format!("`{uri}` needs a broker and a topic: {usage}"));
        }
        let mut spec = KafkaSpec {
            brokers: brokers.to_string(),
            topics,
            group: "weir".into(),
            start: StartAt::Committed,
            until_end: false,
            event_time: EventTime::Payload,
            delivery: Delivery::ExactlyOnce,
            partitions: None,
            per_partition_tasks: false,
            properties: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{uri}`: `{pair}` is not NAME=VALUE"))?;
            match k {
                "group" => spec.group = v.to_string(),
                "start" => {
                    spec.start = match v {
                        "earliest" => StartAt::Earliest,
                        "latest" => StartAt::Latest,
                        "committed" => StartAt::Committed,
                        ms => StartAt::Timestamp(ms.parse().map_err(|_| {
                            format!(
                                "`{uri}`: start={ms}: use earliest, latest, committed or an \
                                 event time in epoch milliseconds"
                            )
                        })?),
                    }
                }
                "until" if v == "end" => spec.until_end = true,
                "until" => return Err(format!("`{uri}`: until={v}: the only bound is until=end")),
                "timestamp" => {
                    spec.event_time = match v {
                        "kafka" => EventTime::Kafka,
                        "payload" => EventTime::Payload,
                        _ => {
                            return Err(format!(
                                "`{uri}`: timestamp={v}: use kafka (the record's timestamp) or \
                                 payload (the job's timestamp field)"
                            ))
                        }
                    }
                }
                "delivery" => {
                    spec.delivery = match v {
                        "exactly-once" => Delivery::ExactlyOnce,
                        "at-least-once" => Delivery::AtLeastOnce,
                        _ => {
                            return Err(format!(
                                "`{uri}`: delivery={v}: use exactly-once or at-least-once"
                            ))
                        }
                    }
                }
                "partitions" => {
                    let listed: Result<Vec<i32>, _> = v.split(',').map(str::parse).collect();
                    match listed {
                        Ok(list) if !list.is_empty() && list.iter().all(|&p| p >= 0) => {
                            spec.partitions = Some(list)
                        }
                        _ => {
                            return Err(format!(
                                "`{uri}`: partitions={v}: list partition numbers, e.g. \
                                 partitions=0,2"
                            ))
                        }
                    }
                }
                "tasks" if v == "per-partition" => spec.per_partition_tasks = true,
                "tasks" => {
                    return Err(format!(
                        "`{uri}`: tasks={v}: the only value is tasks=per-partition"
                    ))
                }
                _ if k.contains('.') => spec.properties.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(format!(
                        "`{uri}`: unknown parameter `{k}`: use group, start, until, \
                         timestamp, delivery, partitions, tasks, or a librdkafka property \
                         such as session.timeout.ms"
                    ))
                }
            }
        }
        // Partition ends, fixed partitions and partition tasks name partitions by number.
        for (given, what) in [
            (spec.until_end, "until=end"),
            (spec.partitions.is_some(), "partitions="),
            (spec.per_partition_tasks, "tasks=per-partition"),
        ] {
            if given && spec.topics.len() > 1 {
                return Err(format!(
                    "`{uri}`: {what} reads one topic only (partitions are named by number)"
                ));
            }
        }
        if spec.per_partition_tasks && spec.partitions.is_some() {
            return Err(format!(
                "`{uri}`: tasks=per-partition takes its partitions from the group: drop \
                 partitions="
            ));
        }
        Ok(spec)
    }

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
struct Reporting {
    endpoint: String,
    metrics: KafkaMetrics,
    /// A commit of checkpointed offsets failed and was reported.
    commits_refused: AtomicBool,
}

impl Reporting {
    fn new(endpoint: String, metrics: KafkaMetrics) -> Self {
        Reporting {
            endpoint,
            metrics,
            commits_refused: AtomicBool::new(false),
        }
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

    fn error(&self, error: &rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        // The end of a partition is news for the bounded mode, not a problem.
        if let KafkaError::Global(RDKafkaErrorCode::PartitionEOF) = error {
            return;
        }
        self.metrics.broker_errors.inc();
        eprintln!(
            "weir: kafka {}: {reason} ({error}); retrying with backoff",
            self.endpoint
        );
    }

    /// librdkafka's log lines. It reports a broker that stops answering (requests timed
    /// out after `socket.timeout.ms`) only here, as a warning, then reconnects: that is a
    /// broker error for weir too; and a refused commit. The rest has no logger to go to
    /// (weir has none).
    fn log(&self, facility: &str, message: &str) {
        // librdkafka delivers no result of an asynchronous commit to the rdkafka crate's
        // consumers (it has no offset_commit_cb); a failed one it logs, as COMMITFAIL.
        if facility == "COMMITFAIL" {
            self.commit_failed(message);
        } else if facility == "REQTMOUT" {
            self.metrics.broker_errors.inc();
            eprintln!(
                "weir: kafka {}: the broker does not answer ({message}); retrying with backoff",
                self.endpoint
            );
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
    fn parses_a_full_uri() {
        let spec = KafkaSpec::parse(
            "kafka://127.0.0.1:9092/orders?group=g1&start=earliest&until=end&timestamp=kafka&session.timeout.ms=6000",
        )
        .and_then(Result::ok);
        assert_eq!(
            spec,
            Some(KafkaSpec {
                brokers: "127.0.0.1:9092".into(),
                topics: vec!["orders".into()],
                group: "g1".into(),
                start: StartAt::Earliest,
                until_end: true,
                event_time: EventTime::Kafka,
                delivery: Delivery::ExactlyOnce,
                partitions: None,
                per_partition_tasks: false,
                properties: vec![("session.timeout.ms".into(), "6000".into())],
            })
        );
    }

    #[test]
    fn parses_fixed_partitions_and_partition_tasks() {
        let fixed = KafkaSpec::parse("kafka://b:1/t?partitions=0,3").and_then(Result::ok);
        assert_eq!(fixed.and_then(|s| s.partitions), Some(vec![0, 3]));
        let tasks = KafkaSpec::parse("kafka://b:1/t?tasks=per-partition").and_then(Result::ok);
        assert!(tasks.is_some_and(|s| s.per_partition_tasks && s.partitions.is_none()));
    }

    #[test]
    fn defaults_and_timestamps() {
        let spec = KafkaSpec::parse("kafka://b:1/a,b?start=1700000000000").and_then(Result::ok);
        let spec = spec.expect("valid");
        assert_eq!(spec.group, "weir");
        assert_eq!(spec.topics, ["a", "b"]);
        assert_eq!(spec.start, StartAt::Timestamp(1_700_000_000_000));
        assert!(!spec.until_end);
        assert_eq!(spec.event_time, EventTime::Payload);
    }

    #[test]
    fn rejects_what_it_cannot_do_with_a_reason() {
        assert!(KafkaSpec::parse("tcp://x:1").is_none());
        for (uri, says) in [
            ("kafka://b:1", "names no topic"),
            ("kafka://b:1/t?start=soon", "start=soon"),
            ("kafka://b:1/t?until=tomorrow", "until=tomorrow"),
            ("kafka://b:1/t?colour=red", "unknown parameter `colour`"),
            ("kafka://b:1/t?timestamp=wall", "timestamp=wall"),
            ("kafka://b:1/a,b?until=end", "one topic only"),
            ("kafka://b:1/a,b?tasks=per-partition", "one topic only"),
            ("kafka://b:1/t?partitions=x", "partitions=x"),
            ("kafka://b:1/t?partitions=-1", "partitions=-1"),
            ("kafka://b:1/t?tasks=many", "tasks=many"),
            (
                "kafka://b:1/t?tasks=per-partition&partitions=1",
                "drop partitions=",
            ),
            ("kafka://b:1/t?delivery=twice", "delivery=twice"),
        ] {
            let err = KafkaSpec::parse(uri).and_then(Result::err);
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{uri}: {err:?}"
            );
        }
    }
}
