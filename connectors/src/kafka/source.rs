//! The Kafka source: reads JSON (or any [`Decoder`]) records of every partition of its
//! topics, or of the partitions the URI names (`partitions=`), and decodes them.
//!
//! The source assigns its partitions itself, as Flink's `KafkaSource` does: when it starts
//! it waits for a first answer from the brokers (asking every [`TOPIC_RETRY`] and returning
//! idle meanwhile; with `until=end` for `connect_timeout` at most, then failing the job),
//! asks them for its topics' partitions (waiting up to [`TOPIC_WAIT`] for a topic they do
//! not show yet, then failing the job) and assigns every one. It never joins the
//! consumer group, which only gives the committed offsets (`start=committed`) and receives
//! the checkpointed ones, for lag tools. The job's state (windows, the watermark) covers
//! all partitions, so it must read all of them: a group would hand a process restarted at
//! once a subset while dead members of the killed one still hold the rest, and the
//! watermark of the subset would run ahead of the others, whose events would then be late.
//! Processes that split a topic run one task per partition instead (`tasks=per-partition`,
//! `weir_jobs::partitioned`), whose tasks use this source with `partitions=P`.
//!
//! Partitions are found once, when the source starts (no periodic discovery, unlike Flink's
//! `partition.discovery.interval.ms`): one added to a topic while the job runs is read from
//! the job's next start on, from where `start=` says (the restored checkpoint has no
//! offset for it), with its watermark at the beginning of time as every new split's; the
//! stream's watermark does not go back, so its events behind the restored watermark are
//! late, as Flink's per-split watermarks have it.
//!
//! Positions are kept per partition as the next offset to read; a restored position is
//! applied when the source assigns the partition, before any fetch, so a restart neither
//! skips nor repeats records. With `until=end` each partition is paused when it reports its
//! end, and the source is exhausted once all of them have.
//!
//! Each batch holds records of one partition and names it as its split, so event time is
//! tracked per partition: the stream's watermark is the minimum over the partitions being
//! read (assigned and not at their end); with `--idle-timeout` a partition that delivers
//! nothing for that long stops holding it back.
//!
//! With `timestamp=kafka` each decoded event gets its record's Kafka timestamp through the
//! setter the job gave ([`KafkaSource::with_record_time`]): a plain function writing one
//! field, so the job's `.timestamps(..)` stage reads it like any payload time and nothing is
//! allocated per record. A record without a timestamp is a dead letter then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_engine::metrics::KafkaMetrics;
use weir_engine::{BoxError, ConnectorState, ConnectorStateType, Source, SourceStatus, Split};

use super::reach::{UnreachableBrokers, PROBE_WAIT};
use super::{topic_partitions, EventTime, KafkaError, KafkaSpec, Reporting, StartAt};
use crate::dead_letter::{refuse_old_dead_letters, DeadLetter, Raw};
use crate::format::Decoder;
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames};

/// How long a poll waits for the first record before saying the source is idle.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long broker requests made on the source's thread may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting source waits for the brokers to show each of its topics (one just
/// created, brokers starting) before it fails the job.
const TOPIC_WAIT: Duration = Duration::from_secs(10);
/// How long it waits between two metadata requests for a topic not shown yet, or for a
/// broker's first answer.
const TOPIC_RETRY: Duration = Duration::from_millis(500);

/// Next offset to read, per topic and partition.
type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Where a [`KafkaSource`] stands, as kept in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KafkaPosition {
    /// The next offset to read of every partition it was assigned.
    offsets: Offsets,
    /// Version 1 only: the length of the dead-letter file the source wrote itself (see
    /// [`refuse_old_dead_letters`]); never written since.
    #[serde(default, skip_serializing)]
    dead_letter_bytes: u64,
    /// With a future guard: the largest event time accepted so far, per split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest_event_time: Option<BTreeMap<u32, Option<i64>>>,
}

impl ConnectorStateType for KafkaPosition {
    const KIND: &'static str = "kafka source";
    /// 2: without `dead_letter_bytes` (dead letters leave by the source's side output).
    const VERSION: u32 = 2;
}

/// What the assignment (choosing start offsets) and the polling thread share; both run on
/// the source's thread, so the lock is never contended.
#[derive(Debug, Default)]
struct Partitions {
    next: Offsets,
    assigned: BTreeSet<(String, i32)>,
    at_end: BTreeSet<(String, i32)>,
}

/// The (topic, partition) pairs of a partition list.
fn partitions_of(tpl: &TopicPartitionList) -> impl Iterator<Item = (String, i32)> + '_ {
    tpl.elements()
        .into_iter()
        .map(|e| (e.topic().to_string(), e.partition()))
}

struct SourceContext {
    reporting: Reporting,
    start: StartAt,
    partitions: Mutex<Partitions>,
}

impl SourceContext {
    fn partitions(&self) -> MutexGuard<'_, Partitions> {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets where each newly assigned partition starts: its checkpointed (or already read)
    /// offset, else the `start` rule.
    fn choose_offsets(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut by_time = TopicPartitionList::new();
        {
            let mut parts = self.partitions();
            let listed: Vec<(String, i32)> = partitions_of(tpl).collect();
            for (topic, partition) in listed {
                let known = parts
                    .next
                    .get(&topic)
                    .and_then(|p| p.get(&partition))
                    .copied();
                let offset = match (known, self.start) {
                    (Some(next), _) => Offset::Offset(next),
                    (None, StartAt::Earliest) => Offset::Beginning,
                    (None, StartAt::Latest) => Offset::End,
                    (None, StartAt::Committed) => Offset::Stored,
                    (None, StartAt::Timestamp(ms)) => {
                        // Cannot fail: the partition is in `by_time` only once.
                        let _ = by_time.add_partition_offset(&topic, partition, Offset::Offset(ms));
                        continue;
                    }
                };
                let _ = tpl.set_partition_offset(&topic, partition, offset);
                parts.assigned.insert((topic, partition));
            }
        }
        if by_time.count() == 0 {
            return;
        }
        let found = match consumer.offsets_for_times(by_time.clone(), REQUEST_TIMEOUT) {
            Ok(found) => found,
            Err(e) => {
                self.reporting.error(
                    &e,
                    "cannot look up offsets by time; starting at the end instead",
                );
                // The times in `by_time` are no offsets: each partition starts at its end.
                let mut at_end = by_time;
                let _ = at_end.set_all_offsets(Offset::End);
                at_end
            }
        };
        let mut parts = self.partitions();
        for elem in found.elements() {
            let offset = match elem.offset() {
                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                // No record at or after the time yet: the partition starts at its end.
                _ => Offset::End,
            };
            let _ = tpl.set_partition_offset(elem.topic(), elem.partition(), offset);
            parts
                .assigned
                .insert((elem.topic().to_string(), elem.partition()));
        }
    }
}

report_through_reporting!(SourceContext);

// The source assigns its partitions itself, so no rebalance ever calls back.
impl ConsumerContext for SourceContext {}

/// Writes a record's Kafka timestamp (epoch ms) into its decoded event.
pub type SetEventTime<T> = fn(&mut T, i64);

/// A reader of every partition of one or more topics (or of the partitions the URI names),
/// decoding their records.
pub struct KafkaSource<D: Decoder> {
    spec: KafkaSpec,
    decoder: D,
    metrics: KafkaMetrics,
    /// Where `timestamp=kafka` puts a record's timestamp; set by the job.
    record_time: Option<SetEventTime<D::Item>>,
    /// The consumer with its partitions assigned, once a broker has answered.
    consumer: Option<BaseConsumer<SourceContext>>,
    /// The consumer created by the first poll (connectors do no I/O until the job runs)
    /// until a broker answers.
    waiting: Option<Waiting>,
    /// Offsets restored by [`Source::seek`], handed to the consumer when it is created.
    restored: Offsets,
    rejected: Vec<DeadLetter>,
    carried: Option<Carried<D::Item>>,
    /// The split of the last batch, and the partitions read now (assigned, not at their end).
    split: Option<u32>,
    active: Arc<[u32]>,
    /// `--max-future`: the check as configured, and one per partition (by split id) that
    /// delivered, each with its own reference, as each partition has its own watermark.
    future: Option<MaxFuture<D::Item>>,
    futures: BTreeMap<u32, MaxFuture<D::Item>>,
}

impl<D: Decoder> std::fmt::Debug for KafkaSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<D: Decoder> KafkaSource<D> {
    /// Reads `spec`'s topics with `decoder`; records it rejects are its dead letters
    /// ([`Source::take_dead_letters`]). Counts records, bytes, lag and broker errors in
    /// `metrics` (e.g. `job.metrics().kafka()`).
    pub fn new(spec: KafkaSpec, decoder: D, metrics: KafkaMetrics) -> Self {
        KafkaSource {
            spec,
            decoder,
            metrics,
            record_time: None,
            consumer: None,
            waiting: None,
            restored: Offsets::new(),
            rejected: Vec::new(),
            carried: None,
            split: None,
            active: Arc::from(Vec::new()),
            future: None,
            futures: BTreeMap::new(),
        }
    }

    /// Records whose event time (`time` of the decoded event, after `timestamp=kafka` set
    /// it) is more than `max_ahead` ahead of the largest accepted so far **from the same
    /// partition** are dead letters (see [`crate::max_future`]). `None` (the default): all accepted.
    pub fn max_future(mut self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        self.future = max_ahead.map(|max_ahead| MaxFuture::new(time, max_ahead));
        self
    }

    /// How to write a record's Kafka timestamp into a decoded event, for URIs with
    /// `timestamp=kafka` (without it, such a URI fails the job at start: nothing would use
    /// the timestamps).
    pub fn with_record_time(mut self, set: SetEventTime<D::Item>) -> Self {
        self.record_time = Some(set);
        self
    }

    /// The words for the origins this source gives its events (partition and offset,
    /// through [`Decoder::set_origin`]).
    pub fn origin_names(&self) -> OriginNames {
        OriginNames::Kafka {
            topics: self.spec.topics.clone(),
        }
    }

    /// The setter to apply to each record: `None` unless the URI says `timestamp=kafka`.
    fn stamp(&self) -> Result<Option<SetEventTime<D::Item>>, BoxError> {
        match (self.spec.event_time, self.record_time) {
            (EventTime::Payload, _) => Ok(None),
            (EventTime::Kafka, Some(set)) => Ok(Some(set)),
            (EventTime::Kafka, None) => Err(format!(
                "{}: timestamp=kafka: this job cannot take event time from Kafka record \
                 timestamps (its source was built without KafkaSource::with_record_time)",
                self.spec.describe()
            )
            .into()),
        }
    }

    fn error(&self, action: &'static str, source: RdKafkaError) -> KafkaError {
        KafkaError {
            endpoint: self.spec.describe(),
            action,
            source,
        }
    }

    /// Creates the consumer and, once a broker has answered, assigns the partitions: true
    /// once they are assigned. While no broker answers it asks again every
    /// [`TOPIC_RETRY`], saying so (throttled, see `Reporting`); a bounded source
    /// (`until=end`) gives up after `connect_timeout`, a following one waits for ever.
    fn connect(&mut self) -> Result<bool, BoxError> {
        if self.consumer.is_some() {
            return Ok(true);
        }
        let mut waiting = match self.waiting.take() {
            Some(waiting) => waiting,
            None => Waiting {
                consumer: self.create_consumer()?,
                since: Instant::now(),
                next_probe: Instant::now(),
            },
        };
        if !self.answered(&mut waiting)? {
            self.waiting = Some(waiting);
            return Ok(false);
        }
        self.assign(waiting.consumer)?;
        Ok(true)
    }

    fn create_consumer(&mut self) -> Result<BaseConsumer<SourceContext>, BoxError> {
        if self.spec.per_partition_tasks {
            return Err(format!(
                "{}: tasks=per-partition runs a job as one task per partition, which `weir \
                 run` does; a job run otherwise reads every partition (drop tasks=) or the \
                 partitions it names (partitions=0,1)",
                self.spec.describe()
            )
            .into());
        }
        let mut config = self.spec.client_config();
        config
            .set("group.id", &self.spec.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if self.spec.start == StartAt::Latest {
                    "latest"
                } else {
                    "earliest"
                },
            )
            .set("enable.partition.eof", self.spec.until_end.to_string())
            .set("statistics.interval.ms", "1000");
        let context = SourceContext {
            reporting: Reporting::new(&self.spec, self.metrics.clone()),
            start: self.spec.start,
            partitions: Mutex::new(Partitions {
                next: std::mem::take(&mut self.restored),
                ..Partitions::default()
            }),
        };
        Ok(config
            .create_with_context(context)
            .map_err(|e| self.error("create a consumer", e))?)
    }

    /// Whether a broker answers `waiting`'s consumer: one metadata request, if it is time
    /// for one (else a short sleep, as a poll that finds nothing). A bounded source whose
    /// brokers gave no answer within `connect_timeout` fails.
    fn answered(&self, waiting: &mut Waiting) -> Result<bool, BoxError> {
        let now = Instant::now();
        if now < waiting.next_probe {
            std::thread::sleep(POLL_WAIT.min(waiting.next_probe - now));
            return Ok(false);
        }
        let (timeout, waited) = (self.spec.connect_timeout, waiting.since.elapsed());
        let wait = if self.spec.until_end {
            PROBE_WAIT.min(timeout.saturating_sub(waited))
        } else {
            PROBE_WAIT
        };
        // Any answer will do, a topic the brokers do not show included (`every_partition`
        // waits for that).
        let topic = self.spec.topics[0].as_str();
        let Err(e) = waiting.consumer.fetch_metadata(Some(topic), wait) else {
            return Ok(true);
        };
        // What librdkafka queued meanwhile says why in its words (`connection refused`):
        // reported before the request's error, which says `broker transport failure`.
        for _ in 0..100 {
            match waiting.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => waiting
                    .consumer
                    .context()
                    .reporting
                    .error(&e, "cannot fetch"),
            }
        }
        let reporting = &waiting.consumer.context().reporting;
        reporting.error(&e, "cannot reach the brokers");
        if self.spec.until_end && waiting.since.elapsed() >= timeout {
            let waiter = "with until=end the source";
            return Err(UnreachableBrokers::new(&self.spec, reporting, waiter, &e).into());
        }
        waiting.next_probe = Instant::now() + TOPIC_RETRY;
        Ok(false)
    }

    /// Assigns `consumer` its partitions, each at its start offset.
    fn assign(&mut self, consumer: BaseConsumer<SourceContext>) -> Result<(), BoxError> {
        let (mut tpl, which) = match &self.spec.partitions {
            Some(partitions) => {
                let mut tpl = TopicPartitionList::new();
                for &partition in partitions {
                    tpl.add_partition(&self.spec.topics[0], partition);
                }
                (tpl, "the partitions the URI names")
            }
            None => (self.every_partition(&consumer)?, "every partition"),
        };
        consumer.context().choose_offsets(&consumer, &mut tpl);
        let listed: Vec<String> = partitions_of(&tpl)
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        eprintln!(
            "weir: kafka {}: assigned {} ({which}, by the source itself, not by group {})",
            self.spec.describe(),
            listed.join(" "),
            self.spec.group
        );
        consumer
            .assign(&tpl)
            .map_err(|e| self.error("assign the partitions", e))?;
        self.consumer = Some(consumer);
        Ok(())
    }

    /// Every partition of every topic of the URI, as the brokers show them. A topic they do
    /// not show yet (just created, brokers starting) is asked for again until
    /// [`TOPIC_WAIT`] has passed; then the job fails, saying why.
    fn every_partition(
        &self,
        consumer: &BaseConsumer<SourceContext>,
    ) -> Result<TopicPartitionList, BoxError> {
        let deadline = Instant::now() + TOPIC_WAIT;
        let mut tpl = TopicPartitionList::new();
        for topic in &self.spec.topics {
            let partitions = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match topic_partitions(consumer, topic, left.max(TOPIC_RETRY)) {
                    Ok(partitions) => break partitions,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!(
                            "{}: cannot find the partitions of topic `{topic}` within \
                             {TOPIC_WAIT:?} ({e}): create the topic, or check the brokers and \
                             the topic's name in the URI",
                            self.spec.describe()
                        )
                        .into())
                    }
                    Err(_) => std::thread::sleep(TOPIC_RETRY),
                }
            };
            for partition in partitions {
                tpl.add_partition(topic, partition);
            }
        }
        Ok(tpl)
    }
}

/// A consumer created, no broker has answered yet.
struct Waiting {
    consumer: BaseConsumer<SourceContext>,
    /// When the consumer was created.
    since: Instant,
    /// When to ask the brokers again.
    next_probe: Instant,
}

/// A record read but not yet handed out: it belongs to another partition than the batch
/// being filled, so it opens the next batch.
struct Carried<T> {
    topic: usize,
    partition: i32,
    offset: i64,
    decoded: Result<T, DeadLetter>,
}

/// The split id of a partition: the topic's index in the URI above bit 20, the partition
/// below.
fn split_id(topic: usize, partition: i32) -> u32 {
    ((topic as u32) << 20) | (partition as u32 & 0xF_FFFF)
}

/// One record as read, for [`decode`].
struct Fetched<'a> {
    topic: &'a str,
    /// The origin stream of its partition ([`Origin::kafka_stream`]).
    stream: u32,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    payload: &'a [u8],
}

/// Decodes one record's payload and, with `stamp`, gives it the record's timestamp, and
/// with `future` checks its event time; or says why it goes to the dead letters. The item
/// gets its partition and offset as its origin.
fn decode<D: Decoder>(
    decoder: &mut D,
    stamp: Option<SetEventTime<D::Item>>,
    future: Option<&mut MaxFuture<D::Item>>,
    record: Fetched<'_>,
) -> Result<D::Item, DeadLetter> {
    let letter = |error: String| DeadLetter {
        source: format!("kafka://{}/{}", record.topic, record.partition),
        line: u64::try_from(record.offset).unwrap_or_default(),
        error,
        raw: Raw::of(record.payload),
    };
    let text =
        std::str::from_utf8(record.payload).map_err(|e| letter(format!("not UTF-8: {e}")))?;
    let mut item = decoder.decode(text).map_err(letter)?;
    if let Some(set) = stamp {
        let ms = record.timestamp.ok_or_else(|| {
            letter("the record has no Kafka timestamp (the URI says timestamp=kafka)".into())
        })?;
        set(&mut item, ms);
    }
    let offset = u64::try_from(record.offset).unwrap_or_default();
    decoder.set_origin(&mut item, Origin::new(record.stream, offset));
    if let Some(future) = future {
        future.admit(&item).map_err(letter)?;
    }
    Ok(item)
}

impl<D: Decoder> KafkaSource<D> {
    /// Adds what `poll_batch` read to the shared position, pauses partitions that reached
    /// their end (bounded mode), and refreshes the active splits if they changed. Returns
    /// whether every assigned partition is at its end.
    fn settle(&mut self, read: Option<(usize, i32, i64)>, ended: &[i32]) -> Result<bool, BoxError> {
        let Some(consumer) = &self.consumer else {
            return Ok(false);
        };
        let topics = &self.spec.topics;
        let mut parts = consumer.context().partitions();
        if let Some((topic, partition, next)) = read {
            parts
                .next
                .entry(topics[topic].clone())
                .or_default()
                .insert(partition, next);
        }
        // `until=end` reads one topic, so a partition number names the partition.
        let mut pause = TopicPartitionList::new();
        for &partition in ended {
            if parts.at_end.insert((topics[0].clone(), partition)) {
                pause.add_partition(&topics[0], partition);
            }
        }
        let exhausted = self.spec.until_end
            && !parts.assigned.is_empty()
            && parts.assigned.is_subset(&parts.at_end);
        let active: Vec<u32> = parts
            .assigned
            .difference(&parts.at_end)
            .filter_map(|(t, p)| topics.iter().position(|x| x == t).map(|t| split_id(t, *p)))
            .collect();
        drop(parts);
        if *self.active != active[..] {
            self.active = active.into();
        }
        if pause.count() > 0 {
            consumer.pause(&pause).map_err(|e| KafkaError {
                endpoint: self.spec.describe(),
                action: "pause a partition at its end",
                source: e,
            })?;
        }
        Ok(exhausted)
    }
}

impl<D: Decoder> Source for KafkaSource<D> {
    type Item = D::Item;

    /// Fills the batch from one partition (see [`Source::split_of_batch`]).
    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        let stamp = self.stamp()?;
        if !self.connect()? {
            return Ok(SourceStatus::Idle);
        }
        // The partition of this batch and the next offset read in it.
        let mut read: Option<(usize, i32, i64)> = None;
        let mut bytes = 0u64;
        let mut ended = Vec::new();
        let mut wait = POLL_WAIT;
        let mut polled = 0;
        if let Some(c) = self.carried.take() {
            read = Some((c.topic, c.partition, c.offset + 1));
            polled += 1;
            match c.decoded {
                Ok(item) => out.push(item),
                Err(letter) => self.rejected.push(letter),
            }
        }
        while polled < max {
            let Some(consumer) = &self.consumer else {
                break;
            };
            let message = match consumer.poll(wait) {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                    ended.push(partition);
                    continue;
                }
                Some(Err(e)) => {
                    consumer.context().reporting.error(&e, "cannot fetch");
                    break;
                }
            };
            wait = Duration::ZERO;
            let (partition, offset) = (message.partition(), message.offset());
            // Only the URI's topics are assigned, so the search always finds one.
            let topic = self
                .spec
                .topics
                .iter()
                .position(|t| t == message.topic())
                .unwrap_or_default();
            let payload = message.payload().unwrap_or_default();
            let size = payload.len() as u64;
            let future = match &self.future {
                Some(configured) => Some(
                    self.futures
                        .entry(split_id(topic, partition))
                        .or_insert_with(|| configured.fresh()),
                ),
                None => None,
            };
            let decoded = decode(
                &mut self.decoder,
                stamp,
                future,
                Fetched {
                    topic: &self.spec.topics[topic],
                    stream: Origin::kafka_stream(topic, partition),
                    partition,
                    offset,
                    timestamp: message.timestamp().to_millis(),
                    payload,
                },
            );
            drop(message);
            match &mut read {
                Some((t, p, next)) if *t == topic && *p == partition => *next = offset + 1,
                Some(_) => {
                    self.carried = Some(Carried {
                        topic,
                        partition,
                        offset,
                        decoded,
                    });
                    break;
                }
                None => read = Some((topic, partition, offset + 1)),
            }
            polled += 1;
            bytes += size;
            match decoded {
                Ok(item) => out.push(item),
                Err(letter) => self.rejected.push(letter),
            }
        }
        if let Some((topic, _, _)) = read {
            let topic = &self.spec.topics[topic];
            self.metrics.records_in(topic).inc_by(polled as u64);
            self.metrics.bytes_in(topic).inc_by(bytes);
        }
        self.split = read.map(|(topic, partition, _)| split_id(topic, partition));
        let exhausted = self.settle(read, &ended)? && self.carried.is_none();
        Ok(if exhausted {
            SourceStatus::Exhausted
        } else if polled == 0 {
            SourceStatus::Idle
        } else {
            SourceStatus::More
        })
    }

    fn split_of_batch(&self) -> Option<Split> {
        self.split.map(|id| Split {
            id,
            active: self.active.clone(),
        })
    }

    fn describe(&self) -> String {
        format!("{} (group {})", self.spec.describe(), self.spec.group)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        out.append(&mut self.rejected);
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        // The consumer holds the restored offsets from its creation on.
        let consumer = self
            .consumer
            .as_ref()
            .or(self.waiting.as_ref().map(|w| &w.consumer));
        let offsets = match consumer {
            Some(consumer) => consumer.context().partitions().next.clone(),
            None => self.restored.clone(),
        };
        let highest_event_time = self.future.is_some().then(|| {
            self.futures
                .iter()
                .map(|(&split, future)| (split, future.highest()))
                .collect()
        });
        let position = KafkaPosition {
            offsets,
            dead_letter_bytes: 0,
            highest_event_time,
        };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let position: KafkaPosition = position.decode()?;
        refuse_old_dead_letters(KafkaPosition::KIND, position.dead_letter_bytes)?;
        self.restored = position.offsets;
        if let Some(configured) = &self.future {
            self.futures = position
                .highest_event_time
                .unwrap_or_default()
                .into_iter()
                .map(|(split, highest)| {
                    let mut future = configured.fresh();
                    future.resume(highest);
                    (split, future)
                })
                .collect();
        }
        Ok(())
    }

    fn checkpoint_completed(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        // Its own position, from `position`: one that does not decode is a bug, not
        // something to skip.
        let position: KafkaPosition = position.decode()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in &position.offsets {
            for (&partition, &next) in partitions {
                tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                    .map_err(|e| self.error("list offsets to commit", e))?;
            }
        }
        // A task of a job run per partition commits through its process's group member:
        // the broker refuses commits from outside a group that has members.
        let through_member =
            || self.spec.partitions.is_some() && super::group::commit_for_group(&self.spec, &tpl);
        if tpl.count() > 0 && !through_member() {
            // Only for lag tools: the checkpoint holds the offsets. A commit that fails is
            // reported (by librdkafka's log, see `Reporting::log`, or here if it could not
            // be sent), and the next checkpoint commits again.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                consumer.context().reporting.commit_failed(&e.to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Json;

    #[test]
    fn a_payload_that_is_not_utf8_is_a_dead_letter_keeping_its_bytes() {
        let payload: &[u8] = b"{\"n\":\"caf\xe9\"}";
        let record = Fetched {
            topic: "t",
            stream: Origin::kafka_stream(0, 2),
            partition: 2,
            offset: 17,
            timestamp: None,
            payload,
        };
        let letter = decode(
            &mut Json::<serde_json::Value>::default(),
            None,
            None,
            record,
        )
        .expect_err("not UTF-8");
        assert_eq!((letter.source.as_str(), letter.line), ("kafka://t/2", 17));
        assert!(matches!(letter.raw, Raw::Base64(_)), "{letter:?}");
        assert_eq!(letter.raw.bytes().ok().as_deref(), Some(payload));
    }
}
