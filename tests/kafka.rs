//! End-to-end tests of the Kafka connectors through the real `weir` binary, against a real
//! Kafka-compatible broker (Tansu, installed by `scripts/setup`; see `scripts/kafka-broker`)
//! started on a free 127.0.0.1 port by each test.
//!
//! - A topic of 4 partitions filled by `weir gen` and read by `window-agg` (`until=end`)
//!   gives the same rows as the same events read from a file, at P = 1 and P = 2: the
//!   per-partition watermarks keep one partition's progress from making another's events
//!   late. A garbage record goes to the dead letters with its topic, partition and offset.
//! - `--output kafka://` writes every row once, as JSON, keyed by the row's key;
//!   `weir gen --key-field key` keys its records, so each key lives in one partition.
//! - The source assigns itself every partition and never joins the group (no rebalances);
//!   a group with members refuses its offset commits, which is said once and changes no
//!   row. A topic that does not exist fails the job at start, saying so.
//! - With `tasks=per-partition` (one task per partition, state in a shared directory), two
//!   processes in one group give the one-process rows; one of them killed with SIGKILL, the
//!   other takes its partitions over from their checkpoints: every row once; a process
//!   joining mid-run stops the first's running tasks and resumes their partitions from
//!   their checkpoints: every row once.
//! - With `timestamp=kafka` the windows follow the records' Kafka timestamps, not the
//!   payload's (wrong or missing) `ts`.
//! - A checkpointed job killed with SIGKILL resumes from the offsets in its checkpoint: the
//!   committed rows equal the reference (exactly-once with the file sink), and the group's
//!   committed offsets end at the partitions' ends (for lag tools).
//! - The exactly-once Kafka sink, driven through its API: rows appear only once their
//!   checkpoint is committed; a restart from a completed but uncommitted checkpoint commits
//!   its rows, a second restart from it repeats nothing, a restore from an older checkpoint
//!   and a fresh start reset the marker.
//! - `window-agg` Kafka -> Kafka with checkpoints, killed between two checkpoints and
//!   restarted: every row in the topic once; killed twice right after a checkpoint
//!   (around a commit) and restarted at once each time, inside the group's session
//!   timeout: every row once (issue 25, item 3).
//! - With `tasks=per-partition`, a process killed and replaced at once (inside the session
//!   timeout): every row once.
//!
//! - Edges (no broker needed): a bounded job whose broker cannot be reached fails after
//!   `connect_timeout`, naming the broker, in a few stderr lines; a following one waits with
//!   bounded output; a broker port that is not a number in 1..=65535 is a usage error
//!   (exit code 2) naming the broker (issue 27).
//!
//! Output topics are read with `kafka_log`, which applies the transaction markers itself:
//! the test broker shows aborted records to librdkafka's `read_committed` consumers (a
//! test says both).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tempfile::TempDir;

use common::broker::{last_assignment, Broker, GROUP_TIMING};
use common::checkpointed::{assert_same_rows, complete_checkpoint_dirs};
use common::kafka_log;
use common::Summary;
use weir_connectors::{KafkaSink, KafkaSpec};
use weir_engine::{JobMetrics, Record, Sink};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 4;

impl Broker {
    /// Every committed record of `topic` (all partitions, from the start to the current end,
    /// read_committed) as (partition, key, value).
    fn read_all(&self, topic: &str) -> Vec<(i32, Option<String>, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", format!("reader-{topic}"))
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (mut records, mut ended) = (Vec::new(), 0);
        let started = Instant::now();
        while ended < PARTITIONS {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "reading {topic} took over 60 s"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => records.push((
                    m.partition(),
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        records
    }

    /// Produces `payload` without a key to `partition` of `topic`.
    fn produce(&self, topic: &str, partition: i32, payload: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The group's committed offset of each partition of `topic`.
    fn committed(&self, group: &str, topic: &str) -> Vec<Offset> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed.elements().iter().map(|e| e.offset()).collect()
    }
}

impl Broker {
    /// Sends `signal` (`STOP`, `CONT`) to the broker process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} the broker failed");
    }
}

/// `weir gen events` to `output` (a path or URI).
fn gen_events(output: &str, events: u64) {
    gen_events_with(output, events, &[]);
}

/// `weir gen events` to `output` with `extra` arguments (the same events).
fn gen_events_with(output: &str, events: u64, extra: &[&str]) {
    common::run_ok(
        WEIR,
        [
            "gen",
            "events",
            "--output",
            output,
            "--events",
            &events.to_string(),
        ]
        .iter()
        .chain(&["--keys", "500", "--disorder-ms", "2000"])
        .chain(extra),
    )
    .unwrap();
}

/// `weir run window-agg` arguments shared by all runs.
fn window_agg(input: &str, output: &Path, parallelism: usize) -> Vec<String> {
    [
        "run",
        "window-agg",
        "--input",
        input,
        "--output",
        output.to_str().unwrap(),
        "--window",
        "tumble:10s",
        "--watermark-delay",
        "2s",
        "--parallelism",
        &parallelism.to_string(),
        "--metrics-addr",
        "off",
    ]
    .map(String::from)
    .to_vec()
}

/// Adds checkpoints every `interval` into `state` to window-agg arguments.
fn checkpoint_into(args: &mut Vec<String>, state: &Path, interval: &str) {
    let state = state.to_str().unwrap();
    args.extend(["--state-dir", state, "--checkpoint-interval", interval].map(String::from));
}

/// Runs `weir args` and kills it (SIGKILL) `delay` after the `checkpoints`-th checkpoint
/// completed once the partitions were assigned; its stderr goes to `dir/log`.
fn kill_after_checkpoints(
    dir: &Path,
    log: &str,
    args: &[String],
    checkpoints: usize,
    delay: Duration,
) {
    let stderr_path = dir.join(log);
    let mut child = spawn_logged(args, &stderr_path);
    wait_while_running(&mut child, || {
        let stderr = fs::read_to_string(&stderr_path).unwrap();
        let after_assignment = stderr.split_once("assigned").map_or("", |(_, rest)| rest);
        (after_assignment.matches("complete in").count() >= checkpoints)
            .then_some(())
            .ok_or(stderr)
    });
    sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = fs::read_to_string(&stderr_path).unwrap();
    assert!(
        !killed.contains("done:"),
        "the job finished before the kill:\n{killed}"
    );
}

/// The lines of `files`, sorted (rows compare as multisets).
fn sorted_lines(files: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    let mut lines: Vec<String> = files
        .into_iter()
        .flat_map(|f| {
            fs::read_to_string(&f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort_unstable();
    lines
}

/// The rows of a file run of `events` generated events: the reference.
fn reference_rows(dir: &TempDir, events: u64) -> Vec<String> {
    let input = dir.path().join("events.jsonl");
    gen_events(input.to_str().unwrap(), events);
    let output = dir.path().join("reference.jsonl");
    common::run_ok(WEIR, window_agg(input.to_str().unwrap(), &output, 1)).unwrap();
    let rows = sorted_lines([output]);
    assert!(
        rows.len() > 1000,
        "the reference has only {} rows",
        rows.len()
    );
    rows
}

/// A broker with topic `in` holding `events` generated events and an empty topic `out`,
/// and the rows of the file run over the same events.
fn in_and_out_topics(dir: &TempDir, events: u64) -> (Broker, Vec<String>) {
    let broker = Broker::start(dir.path());
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("out", PARTITIONS);
    gen_events(&broker.uri("in", ""), events);
    let reference = reference_rows(dir, events);
    (broker, reference)
}

/// The values of every committed record of `topic`, sorted, with the transaction markers
/// applied by the test itself (see `kafka_log`: the broker shows aborted records).
fn sorted_values(broker: &Broker, topic: &str) -> Vec<String> {
    kafka_log::sorted_values(&broker.addr, topic, PARTITIONS)
}

#[test]
fn window_agg_reads_a_partitioned_topic_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("events", PARTITIONS);
    gen_events(&broker.uri("events", ""), 200_000);
    broker.produce("events", 2, "{not json");
    let reference = reference_rows(&dir, 200_000);

    for parallelism in [1, 2] {
        let output = dir.path().join(format!("kafka-p{parallelism}.jsonl"));
        let input = broker.uri(
            "events",
            &format!("group=read-p{parallelism}&start=earliest&until=end&{GROUP_TIMING}"),
        );
        let run = common::run_ok(WEIR, window_agg(&input, &output, parallelism)).unwrap();
        let summary = Summary::from_stderr(&run.stderr).unwrap();
        assert_eq!(
            (
                summary.events_read,
                summary.late_events,
                summary.dead_letters
            ),
            (200_000, 0, 1),
            "P={parallelism}: events, late events, dead letters; stderr:\n{}",
            run.stderr
        );
        assert!(
            sorted_lines([output.clone()]) == reference,
            "P={parallelism}: the rows from Kafka differ from the rows from the file"
        );
        let dead = fs::read_to_string(format!("{}.dead.jsonl", output.display())).unwrap();
        let letter: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
        assert_eq!(letter["source"], "kafka://events/2", "{dead}");
        assert_eq!(letter["raw"], "{not json", "{dead}");
        assert!(
            letter["line"].as_u64().is_some(),
            "the offset is missing: {dead}"
        );
    }
}

#[test]
fn kafka_metrics_are_scraped_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("events", PARTITIONS);
    // Enough events to read for a few seconds: librdkafka reports the lag once a second.
    gen_events(&broker.uri("events", ""), 400_000);
    broker.produce("events", 1, "garbage");
    let input = broker.uri(
        "events",
        &format!("group=metrics&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, &dir.path().join("out.jsonl"), 1);
    args.truncate(args.len() - 2); // without `--metrics-addr off`
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let (body, _, done, _running) = common::run_and_scrape_metrics(WEIR, &args).unwrap();
    let topic = r#"topic="events""#;
    assert_eq!(
        common::sample_sum(&body, "weir_kafka_records_in_total", &[topic]),
        400_001.0,
        "{done}\n{body}"
    );
    assert!(common::sample_sum(&body, "weir_kafka_read_bytes_total", &[topic]) > 400_000.0);
    // The source assigns itself every partition: the group never rebalances it.
    assert_eq!(
        common::sample_sum(&body, "weir_kafka_rebalances_total", &[]),
        0.0,
        "{body}"
    );
    assert_eq!(
        common::sample_sum(&body, "weir_dead_letter_records_total", &[]),
        1.0
    );
    assert!(
        body.contains("weir_kafka_consumer_lag{"),
        "no consumer lag from librdkafka's statistics:\n{body}"
    );
    assert_eq!(
        common::sample_sum(&body, "weir_kafka_broker_errors_total", &[]),
        0.0
    );
}

#[test]
fn weir_gen_keys_records_by_a_field_so_each_key_lives_in_one_partition() {
    let dir = TempDir::new().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("keyed", PARTITIONS);
    common::run_ok(
        WEIR,
        [
            "gen",
            "events",
            "--events",
            "3000",
            "--keys",
            "50",
            "--key-field",
            "key",
            "--output",
        ]
        .iter()
        .chain(&[broker.uri("keyed", "").as_str()]),
    )
    .unwrap();
    let records = broker.read_all("keyed");
    assert_eq!(records.len(), 3000);
    let mut partitions_of: std::collections::BTreeMap<String, std::collections::BTreeSet<i32>> =
        Default::default();
    for (partition, key, value) in &records {
        let event: serde_json::Value = serde_json::from_str(value).unwrap();
        let key = key.clone().expect("every record has a key");
        assert_eq!(
            event["key"],
            key.as_str(),
            "record key and the line's field differ"
        );
        partitions_of.entry(key).or_default().insert(*partition);
    }
    assert_eq!(partitions_of.len(), 50);
    assert!(
        partitions_of.values().all(|p| p.len() == 1),
        "a key in several partitions: {partitions_of:?}"
    );
    let used: std::collections::BTreeSet<i32> = partitions_of.values().flatten().copied().collect();
    assert!(used.len() > 1, "50 keys all in one partition: {used:?}");
    // A file output has no record keys to set: said, not ignored.
    let out = Command::new(WEIR)
        .args([
            "gen",
            "events",
            "--events",
            "1",
            "--key-field",
            "key",
            "--output",
        ])
        .arg(dir.path().join("ev.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a kafka:// URI"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn window_agg_writes_keyed_rows_to_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("results", PARTITIONS);
    let reference = reference_rows(&dir, 100_000);
    let input = dir.path().join("events.jsonl");
    let mut args = window_agg(input.to_str().unwrap(), Path::new("-"), 2);
    args[5] = broker.uri("results", "");
    common::run_ok(WEIR, &args).unwrap();

    let records = broker.read_all("results");
    let mut rows: Vec<String> = records.iter().map(|(_, _, v)| v.clone()).collect();
    rows.sort_unstable();
    assert!(
        rows == reference,
        "the topic's rows differ from the file run's"
    );
    let mut partition_of_key = std::collections::HashMap::new();
    for (partition, key, value) in &records {
        let row: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(key.as_deref(), row["key"].as_str(), "record key of {value}");
        let first = partition_of_key.entry(key.clone()).or_insert(*partition);
        assert_eq!(first, partition, "key {key:?} is in two partitions");
    }
}

#[test]
fn a_killed_checkpointed_job_resumes_from_its_offsets_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("orders", PARTITIONS);
    let events = 600_000;
    gen_events(&broker.uri("orders", ""), events);
    let reference = reference_rows(&dir, events);

    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let input = broker.uri(
        "orders",
        &format!("group=resume&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, &out, 2);
    checkpoint_into(&mut args, &state, "200ms");

    // Killed once two checkpoints completed after the partitions were assigned (so the
    // checkpoint holds offsets in the middle of the partitions).
    kill_after_checkpoints(dir.path(), "killed.stderr", &args, 2, Duration::ZERO);

    let run = common::run_ok(WEIR, &args).unwrap();
    assert!(
        run.stderr.contains("resum") || run.stderr.contains("restor"),
        "the restart did not resume from a checkpoint:\n{}",
        run.stderr
    );
    let summary = Summary::from_stderr(&run.stderr).unwrap();
    assert!(
        summary.events_read < events,
        "the restart read all {events} events again: it did not resume from the offsets"
    );
    assert!(
        sorted_lines(part_files(&out)) == reference,
        "the committed rows differ from the reference"
    );

    // The offsets of the final checkpoint were committed to the group too.
    let committed = broker.committed("resume", "orders");
    let total: i64 = committed
        .iter()
        .map(|o| match o {
            Offset::Offset(n) => *n,
            other => panic!("partition without a committed offset: {other:?}"),
        })
        .sum();
    assert_eq!(total, events as i64, "committed offsets {committed:?}");
}

#[test]
fn timestamp_kafka_takes_event_time_from_the_record_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("stamped", PARTITIONS);
    let events = 100_000;
    let reference = reference_rows(&dir, events);

    // Each event's time goes into the record's timestamp; its payload says another time
    // (every other one says none at all), so only the record timestamps give the reference.
    let lines = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for (i, line) in lines.lines().enumerate() {
        let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = event["ts"].as_i64().unwrap();
        if i % 2 == 0 {
            event["ts"] = (ts / 3 + 5_000_000).into();
        } else {
            event.as_object_mut().unwrap().remove("ts");
        }
        let payload = event.to_string();
        let mut record = BaseRecord::<(), str>::to("stamped")
            .partition(i as i32 % PARTITIONS)
            .payload(&payload)
            .timestamp(ts);
        while let Err((e, back)) = producer.send(record) {
            assert!(
                matches!(
                    e,
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ),
                "{e}"
            );
            record = back;
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let output = dir.path().join("stamped.jsonl");
    let input = broker.uri(
        "stamped",
        &format!("group=stamped&start=earliest&until=end&timestamp=kafka&{GROUP_TIMING}"),
    );
    let run = common::run_ok(WEIR, window_agg(&input, &output, 2)).unwrap();
    let summary = Summary::from_stderr(&run.stderr).unwrap();
    assert_eq!(
        (
            summary.events_read,
            summary.late_events,
            summary.dead_letters
        ),
        (events, 0, 0),
        "events, late events, dead letters; stderr:\n{}",
        run.stderr
    );
    assert!(
        sorted_lines([output]) == reference,
        "the windows do not follow the Kafka record timestamps"
    );
}

#[test]
fn a_frozen_broker_stalls_the_job_which_resumes_without_loss_or_duplicates() {
    // Tansu's memory storage empties on a restart, so "the broker stopped and came back" is
    // tested by freezing its process (SIGSTOP/SIGCONT): connections stay open and every
    // request goes unanswered, as with a hung or partitioned broker.
    const FROZEN: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().unwrap();
    let events = 400_000;
    let (broker, reference) = in_and_out_topics(&dir, events);

    let input = broker.uri(
        "in",
        &format!("group=frozen&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, Path::new("-"), 1);
    args[5] = broker.uri("out", "");
    args.truncate(args.len() - 2); // a metrics endpoint instead of `--metrics-addr off`
    args.extend(["--metrics-addr", "127.0.0.1:0", "--linger", "60s"].map(String::from));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let mut job = common::Running::spawn(WEIR, &args).unwrap();
    job.wait_for_line(Duration::from_secs(60), |l| l.contains("assigned"))
        .unwrap();
    sleep(Duration::from_millis(300));
    broker.signal("STOP");
    sleep(FROZEN);
    let still_running = job.child.0.try_wait().unwrap().is_none();
    broker.signal("CONT");
    assert!(
        still_running,
        "the job ended while the broker was frozen:\n{}",
        job.stderr()
    );
    let done = job
        .wait_for_line(Duration::from_secs(180), |l| l.contains(" done: "))
        .unwrap();
    let stderr = job.stderr();
    let summary = Summary::from_stderr(&done).unwrap();
    assert_eq!(
        (
            summary.events_read,
            summary.late_events,
            summary.dead_letters
        ),
        (events, 0, 0),
        "{stderr}"
    );
    assert!(
        stderr.contains("retrying with backoff"),
        "the job did not say it was waiting for the broker:\n{stderr}"
    );
    let metrics = job.scrape().unwrap();
    assert!(
        common::sample_sum(&metrics, "weir_kafka_broker_errors_total", &[]) >= 1.0,
        "the broker's absence was not counted:\n{metrics}"
    );
    let rows = sorted_values(&broker, "out");
    assert_eq!(
        rows.len(),
        reference.len(),
        "rows lost or repeated:\n{stderr}"
    );
    assert!(
        rows == reference,
        "the topic's rows differ from the file run's"
    );
}

/// A result as the exactly-once sink test writes it.
#[derive(serde::Serialize)]
struct Numbered {
    key: String,
    n: u64,
}

#[test]
fn the_exactly_once_sink_commits_with_checkpoints_and_finishes_a_dead_runs_commit_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("txn", PARTITIONS);
    let spec = KafkaSpec::parse(&broker.uri("txn", "")).unwrap().unwrap();
    let metrics = JobMetrics::new("exactly-once");
    let sink = || {
        let mut sink = KafkaSink::new(spec.clone(), Some(|r: &Numbered| r.key.as_str()));
        sink.open(&metrics).unwrap();
        sink
    };
    let rows = |range: std::ops::Range<u64>| -> Vec<Record<Numbered>> {
        range
            .map(|n| Record {
                ts: 0,
                watermark: 0,
                value: Numbered {
                    key: format!("k{}", n % 7),
                    n,
                },
            })
            .collect()
    };
    // Each committed row once, in order of n.
    let committed = || -> Vec<u64> {
        let mut ns: Vec<u64> = broker
            .read_all("txn")
            .iter()
            .map(|(_, _, v)| {
                serde_json::from_str::<serde_json::Value>(v).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        ns.sort_unstable();
        ns
    };

    // A run whose checkpoint 1 completes and is committed; checkpoint 2 completes, and the
    // process dies before the sink commits it.
    let mut first = sink();
    first.begin_transactions(None).unwrap();
    first.write(&rows(0..100)).unwrap();
    first.pre_commit(1).unwrap();
    assert_eq!(
        committed(),
        [0u64; 0],
        "rows visible before their checkpoint completed"
    );
    first.commit(1).unwrap();
    assert_eq!(committed(), (0..100).collect::<Vec<_>>());
    first.write(&rows(100..250)).unwrap();
    let at_2 = first.pre_commit(2).unwrap();
    drop(first);
    assert_eq!(committed().len(), 100, "uncommitted rows are visible");

    // The restart from checkpoint 2 commits what the dead run did not.
    let mut second = sink();
    second.begin_transactions(Some((2, at_2.as_ref()))).unwrap();
    assert_eq!(committed(), (0..250).collect::<Vec<_>>());
    drop(second);

    // Dying again right after that and restarting from checkpoint 2 again repeats nothing.
    let mut third = sink();
    third.begin_transactions(Some((2, at_2.as_ref()))).unwrap();
    third.write(&rows(250..300)).unwrap();
    third.pre_commit(3).unwrap();
    third.commit(3).unwrap();
    third.finish().unwrap();
    assert_eq!(committed(), (0..300).collect::<Vec<_>>());

    // A restore from the older checkpoint 2 (a savepoint, say) while the marker says 3 is
    // refused: checkpoint 3's rows are in the topic and would be derived and committed
    // again. Nothing is written.
    let mut older = sink();
    let refused = older
        .begin_transactions(Some((2, at_2.as_ref())))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("older checkpoint 2") && refused.contains("written a second time"),
        "{refused}"
    );
    drop(older);
    assert_eq!(committed(), (0..300).collect::<Vec<_>>());

    // A fresh start resets the marker (left at 3 above): its checkpoint 1, completed but
    // not committed when it died, is committed by its restart.
    let mut fresh = sink();
    fresh.begin_transactions(None).unwrap();
    fresh.write(&rows(300..330)).unwrap();
    let at_1 = fresh.pre_commit(1).unwrap();
    drop(fresh);
    let mut restarted = sink();
    restarted
        .begin_transactions(Some((1, at_1.as_ref())))
        .unwrap();
    restarted.finish().unwrap();
    assert_eq!(committed(), (0..330).collect::<Vec<_>>());
}

#[test]
fn a_killed_job_writing_kafka_resumes_with_every_row_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    let events = 600_000;
    let (broker, reference) = in_and_out_topics(&dir, events);
    let args = kafka_to_kafka(&broker, "txn", &dir.path().join("state"));

    // Half-way between two checkpoints: the sink has committed the last one with rows (the
    // marker says so) or holds the completed checkpoint's rows for its restart to commit,
    // and rows of the next are held back. (A kill in the middle of a commit is the next
    // test's.)
    kill_after_checkpoints(
        dir.path(),
        "killed.stderr",
        &args,
        2,
        Duration::from_millis(500),
    );
    let before = sorted_values(&broker, "out");
    assert!(
        before
            .iter()
            .all(|row| reference.binary_search(row).is_ok()),
        "the killed run committed rows that are not in the reference"
    );

    let run = common::run_ok(WEIR, &args).unwrap();
    assert!(
        run.stderr.contains("resum") || run.stderr.contains("restor"),
        "the restart did not resume from a checkpoint:\n{}",
        run.stderr
    );
    let rows = sorted_values(&broker, "out");
    assert!(
        before.len() < rows.len(),
        "the kill came after the last commit: {} rows before, {} after",
        before.len(),
        rows.len()
    );
    assert_eq!(rows.len(), reference.len(), "rows lost or repeated");
    assert!(
        rows == reference,
        "the topic's rows differ from the file run's"
    );
}

/// `weir run window-agg` from topic `in` (group `group`, `until=end`) to topic `out`,
/// exactly-once, with checkpoints every second into `state`.
fn kafka_to_kafka(broker: &Broker, group: &str, state: &Path) -> Vec<String> {
    let input = broker.uri(
        "in",
        &format!("group={group}&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, Path::new("-"), 2);
    args[5] = broker.uri("out", "");
    checkpoint_into(&mut args, state, "1s");
    args
}

/// Issue 25, item 3. Killed twice within a few seconds and restarted at once, the killed
/// runs' group members were still in the group (until their session timeout), so the
/// restart was given 2 of the 4 partitions: its watermark ran ahead on them, and with
/// `until=end` it ended having read half (15,213 of 30,438 rows). A job not run as
/// partition tasks now assigns itself every partition, whatever the group holds.
#[test]
fn a_job_killed_twice_and_restarted_at_once_reads_every_partition_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let events = 600_000;
    let (broker, reference) = in_and_out_topics(&dir, events);
    let args = kafka_to_kafka(&broker, "twice", &dir.path().join("state"));
    // Right after a checkpoint completed: around the sink's commit, which may be cut short;
    // the next run's producer then aborts its transaction (the reader applies the markers).
    kill_after_checkpoints(dir.path(), "first.stderr", &args, 2, Duration::ZERO);
    kill_a_joining_run(dir.path(), &args);
    let log = dir.path().join("third.stderr");
    let third = finish(spawn_logged(&args, &log), &log, Duration::from_secs(60));
    assert!(
        third.contains("resuming"),
        "the restart did not resume from a checkpoint:\n{third}"
    );
    let rows = sorted_values(&broker, "out");
    assert_same_rows(&rows, &reference, &format!("the last run:\n{third}"));
}

/// Runs `weir args` (stderr in `dir/second.stderr`) and kills it (SIGKILL) once it
/// completed a checkpoint since its partitions were assigned, or 4 s after it started if
/// that is sooner. A group member started right after a killed one is not assigned
/// anything for about that long (the broker holds a join for half the session timeout
/// while the dead member does not rejoin): killed then, the group holds two members that
/// never come back.
fn kill_a_joining_run(dir: &Path, args: &[String]) {
    let log = dir.join("second.stderr");
    let mut second = spawn_logged(args, &log);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let stderr = fs::read_to_string(&log).unwrap();
        let after_assignment = stderr.split_once("assigned").map_or("", |(_, rest)| rest);
        if after_assignment.contains("complete in") {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let log = fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains(" done: "),
        "the second run finished before the kill:\n{log}"
    );
}

/// Waits up to `limit` for `child` (its stderr in `log`) to end, which it must do with
/// success; returns its stderr.
fn finish(child: Child, log: &Path, limit: Duration) -> String {
    let (status, stderr) = exit_within(child, log, limit);
    assert!(status.success(), "{status}:\n{stderr}");
    stderr
}

/// Waits up to `limit` for `child` (its stderr in `log`) to end (killing it and failing
/// the test if it does not); returns how it ended and its stderr.
fn exit_within(mut child: Child, log: &Path, limit: Duration) -> (ExitStatus, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, fs::read_to_string(log).unwrap());
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "still running after {limit:?}:\n{}",
                fs::read_to_string(log).unwrap()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// `weir run window-agg` over keyed topic `topic` as one task per partition, writing into
/// `out/partition-P/` with state and checkpoints (every 200 ms) in the shared `state`.
fn partition_tasks(broker: &Broker, topic: &str, out: &Path, state: &Path) -> Vec<String> {
    let input = broker.uri(
        topic,
        &format!("group={topic}&start=earliest&until=end&tasks=per-partition&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, out, 1);
    checkpoint_into(&mut args, state, "200ms");
    args
}

/// Every committed row of a per-partition run: `out/partition-*/part-*`, sorted.
fn partition_task_rows(out: &Path) -> Vec<String> {
    let tasks = fs::read_dir(out).unwrap().map(|e| e.unwrap().path());
    // Beside the task directories: their dead-letter files.
    sorted_lines(tasks.filter(|t| t.is_dir()).flat_map(|t| part_files(&t)))
}

/// The committed part files of a checkpointed file output directory.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let paths = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    paths
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("part-")
        })
        .collect()
}

/// Polls `ready` every 20 ms until it gives a value; fails if `child` ends first (too few
/// events to catch it mid-way) or after 60 s, showing what `ready` last saw.
fn wait_while_running<T>(child: &mut Child, mut ready: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        let seen = match ready() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be caught mid-way; raise the event count:\n{seen}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not there in 60 s:\n{seen}"
        );
        sleep(Duration::from_millis(20));
    }
}

/// Starts `weir args` with its stderr in `log`.
fn spawn_logged(args: &[String], log: &Path) -> Child {
    Command::new(WEIR)
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A broker with keyed topic `topic` (each key in one partition) of `events` events, and
/// the rows of the file run over the same events.
fn keyed_topic(dir: &TempDir, topic: &str, events: u64) -> (Broker, Vec<String>) {
    let broker = Broker::start(dir.path());
    broker.create_topic(topic, PARTITIONS);
    gen_events_with(&broker.uri(topic, ""), events, &["--key-field", "key"]);
    (broker, reference_rows(dir, events))
}

/// True if a process's stderr says it resumed partition `p`'s task from a checkpoint.
fn resumed_from_checkpoint(stderr: &str, p: i32) -> bool {
    let dir = format!("partition-{p}/");
    stderr
        .lines()
        .any(|l| l.contains("resuming") && l.contains(&dir))
}

#[test]
fn two_processes_with_partition_tasks_give_the_one_process_rows() {
    let dir = TempDir::new().unwrap();
    let (broker, reference) = keyed_topic(&dir, "split", 200_000);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let args = partition_tasks(&broker, "split", &out, &state);
    let mut second = spawn_logged(&args, &dir.path().join("second.stderr"));
    // The first serves its metrics (kept up after it ends) instead of `off`.
    let served: Vec<&std::ffi::OsStr> = args
        .iter()
        .filter(|a| *a != "--metrics-addr" && *a != "off")
        .map(|a| a.as_ref())
        .collect();
    let (metrics, _, first_done, first) = common::run_and_scrape_metrics(WEIR, &served).unwrap();
    assert!(second.wait().unwrap().success());
    drop(first);
    let second_log = fs::read_to_string(dir.path().join("second.stderr")).unwrap();
    let second_done = second_log
        .lines()
        .find(|l| l.contains(" done: "))
        .unwrap_or_default();
    // Both took part: each finished the tasks of some partitions.
    for done in [first_done.as_str(), second_done] {
        assert!(
            done.contains("finished in this process") && !done.contains("partitions []"),
            "a process ran no partition task: {done}\n{second_log}"
        );
    }
    assert!(
        partition_task_rows(&out) == reference,
        "the two processes' rows differ from the one-process run:\n{first_done}\n{second_log}"
    );
    // One endpoint for all its tasks, each sample labelled with its task.
    let read_by_tasks = common::sample_sum(
        &metrics,
        "weir_kafka_records_in_total",
        &["task=\"partition-"],
    );
    assert!(read_by_tasks > 0.0, "{metrics}");
    assert!(
        common::sample_sum(&metrics, "weir_kafka_rebalances_total", &[]) >= 1.0,
        "{metrics}"
    );
    for p in 0..PARTITIONS {
        assert!(state
            .join(format!("partition-{p}/window-agg/FINISHED"))
            .exists());
    }
    // Started again, a finished job reads nothing and changes nothing.
    let again = common::run_ok(WEIR, &args).unwrap();
    assert!(
        again.stderr.contains("finished in this process"),
        "{}",
        again.stderr
    );
    assert!(partition_task_rows(&out) == reference);
}

#[test]
fn a_killed_process_s_partitions_are_taken_over_from_their_checkpoints_exactly_once() {
    let dir = TempDir::new().unwrap();
    let events = 600_000;
    let (broker, reference) = keyed_topic(&dir, "takeover", events);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let args = partition_tasks(&broker, "takeover", &out, &state);
    let spawn = |log: &str| spawn_logged(&args, &dir.path().join(log));
    let (mut victim, mut survivor) = (spawn("victim.stderr"), spawn("survivor.stderr"));
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    // Killed once the group split the partitions and each of the victim's tasks completed
    // a checkpoint since (so it dies with partitions half read and checkpointed).
    let victims = wait_while_running(&mut victim, || {
        let (log, other) = (read("victim.stderr"), read("survivor.stderr"));
        let split = last_assignment(&log).filter(|p| !p.is_empty() && p.len() < 4);
        let since = log.rsplit_once("the group assigned").map_or("", |(_, r)| r);
        let checkpointed = |p: &i32| since.contains(&format!("partition {p}: checkpoint"));
        let unfinished = |p: &i32| !since.contains(&format!("partition {p} finished"));
        let other_has_some = last_assignment(&other).is_some_and(|p| !p.is_empty());
        split
            .filter(|mine| {
                mine.iter().all(checkpointed) && mine.iter().any(unfinished) && other_has_some
            })
            .ok_or(format!("{log}\n(the other process:)\n{other}"))
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    let victim_log = read("victim.stderr");
    assert!(
        !victim_log.contains("finished in this process"),
        "the victim finished before the kill"
    );
    // A partition whose task finished before the kill has nothing to take over (its rows are
    // still checked below); the others must be resumed from their checkpoints.
    let victims: Vec<i32> = victims
        .into_iter()
        .filter(|p| !victim_log.contains(&format!("partition {p} finished")))
        .collect();
    assert!(
        !victims.is_empty(),
        "every partition of the victim finished before the kill"
    );
    assert!(survivor.wait().unwrap().success());
    let log = read("survivor.stderr");
    for p in &victims {
        assert!(
            resumed_from_checkpoint(&log, *p),
            "the survivor did not resume partition {p} from its checkpoint:\n{log}"
        );
    }
    assert!(
        partition_task_rows(&out) == reference,
        "rows lost or repeated after the takeover (victim had {victims:?}):\n{log}"
    );
}

#[test]
fn a_process_joining_mid_run_takes_over_running_partitions_with_their_state() {
    let dir = TempDir::new().unwrap();
    let (broker, reference) = keyed_topic(&dir, "joining", 1_500_000);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let args = partition_tasks(&broker, "joining", &out, &state);
    let spawn = |log: &str| spawn_logged(&args, &dir.path().join(log));
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    // The first reads all four partitions; once each task checkpointed, a second joins.
    let mut first = spawn("first.stderr");
    wait_while_running(&mut first, || {
        let log = read("first.stderr");
        let all = last_assignment(&log).is_some_and(|p| p.len() == 4);
        let checkpointed =
            (0..PARTITIONS).all(|p| log.contains(&format!("partition {p}: checkpoint")));
        (all && checkpointed).then_some(()).ok_or(log)
    });
    let mut second = spawn("second.stderr");
    for child in [&mut first, &mut second] {
        assert!(child.wait().unwrap().success());
    }
    let (first_log, second_log) = (read("first.stderr"), read("second.stderr"));
    // The first's running tasks were stopped by the rebalance (none had finished), and the
    // second resumed its partitions from the first's checkpoints.
    assert!(first_log.contains("stopped here"), "{first_log}");
    let moved = last_assignment(&second_log).unwrap_or_default();
    assert!(
        !moved.is_empty(),
        "the second process got no partition:\n{second_log}"
    );
    for p in &moved {
        assert!(
            resumed_from_checkpoint(&second_log, *p)
                || first_log.contains(&format!("partition {p} finished")),
            "partition {p} moved without its state:\n{second_log}"
        );
    }
    assert!(
        partition_task_rows(&out) == reference,
        "rows lost or repeated after partitions moved (to the second: {moved:?}):\n{first_log}\n{second_log}"
    );
}

/// Replaces one file of the checkpoint in `dir` (an `.sst` if there is one) by a copy with
/// a byte flipped; the copy leaves the files it shares with other checkpoints intact.
fn corrupt_checkpoint(dir: &Path) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if !path.ends_with("_manifest") && fs::metadata(&path).unwrap().len() > 0 {
                files.push(path);
            }
        }
    }
    files.sort_by_key(|f| !f.to_string_lossy().ends_with(".sst"));
    let file = files.first().expect("a checkpoint with files");
    let mut bytes = fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    fs::remove_file(file).unwrap();
    fs::write(file, bytes).unwrap();
}

/// The number of the checkpoint in `dir` (`chk-000011` is 11).
fn checkpoint_id(dir: &Path) -> u64 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("chk-"))
        .and_then(|n| n.parse().ok())
        .expect("a checkpoint directory")
}

#[test]
fn resuming_kafka_output_from_a_checkpoint_older_than_its_commits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, reference) = in_and_out_topics(&dir, 600_000);
    let state = dir.path().join("state");
    let input = broker.uri(
        "in",
        &format!("group=older&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, Path::new("-"), 1);
    args[5] = broker.uri("out", "transactional.id=older");
    checkpoint_into(&mut args, &state, "300ms");
    // Killed once the marker (the newest checkpoint whose rows are in the topic) is past
    // a checkpoint still retained: that one is then older than the topic's contents.
    let checkpoints_root = state.join("window-agg/checkpoints");
    let marker = || match broker.committed("weir-commits.older", "out").first() {
        Some(Offset::Offset(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let older_than_marker = |marker: u64| {
        complete_checkpoint_dirs(&checkpoints_root)
            .into_iter()
            .rfind(|dir| checkpoint_id(dir) < marker)
    };
    let mut child = spawn_logged(&args, &dir.path().join("killed.stderr"));
    wait_while_running(&mut child, || {
        older_than_marker(marker())
            .map(|_| ())
            .ok_or("no retained checkpoint older than the marker yet".to_string())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = sorted_values(&broker, "out");
    let marker = marker();
    let older = older_than_marker(marker).expect("a retained checkpoint older than the marker");
    let checkpoints = complete_checkpoint_dirs(&checkpoints_root);

    // A savepoint (here: that checkpoint) from before the last commit.
    let mut from_older = args.clone();
    from_older.extend([
        "--from-savepoint".to_string(),
        older.to_str().unwrap().to_string(),
    ]);
    let run = common::run(WEIR, &from_older).unwrap();
    assert!(
        !run.status.success() && run.stderr.contains("would be written a second time"),
        "resuming from checkpoint {} under marker {marker} must be refused:\n{}",
        checkpoint_id(&older),
        run.stderr
    );
    assert_eq!(
        complete_checkpoint_dirs(&checkpoints_root),
        checkpoints,
        "a refused restart must keep the newer checkpoints"
    );

    // The checkpoints after it corrupt: the restart would fall back to it.
    for newer in checkpoints
        .iter()
        .filter(|d| checkpoint_id(d) > checkpoint_id(&older))
    {
        corrupt_checkpoint(newer);
    }
    let run = common::run(WEIR, &args).unwrap();
    assert!(
        !run.status.success() && run.stderr.contains("would be written a second time"),
        "falling back past committed output must be refused:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("unusable"), "{}", run.stderr);
    let after = sorted_values(&broker, "out");
    assert_eq!(after, committed, "a refused run wrote to the topic");
    assert!(
        after.iter().all(|row| reference.binary_search(row).is_ok()),
        "the topic holds rows that are not in the reference"
    );
    assert!(
        after.windows(2).all(|w| w[0] != w[1]),
        "the topic holds a row twice"
    );
}

/// With `tasks=per-partition` the group assigns the partitions: processes killed with
/// SIGKILL stay members until their session timeout, and a process started at once gets
/// their partitions only then. It waits for them (each partition has its own state and
/// `FINISHED` marker), so the rows are exact, only later. Killed twice, as in issue 25's
/// item 3.
#[test]
fn partition_tasks_restarted_inside_the_session_timeout_give_every_row_once() {
    let dir = TempDir::new().unwrap();
    let (broker, reference) = keyed_topic(&dir, "restart", 600_000);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let args = partition_tasks(&broker, "restart", &out, &state);
    let first_log = dir.path().join("first.stderr");
    let mut first = spawn_logged(&args, &first_log);
    // Killed once it holds all four partitions and each task completed a checkpoint.
    wait_while_running(&mut first, || {
        let log = fs::read_to_string(&first_log).unwrap();
        let since = log.rsplit_once("the group assigned").map_or("", |(_, r)| r);
        let all = last_assignment(&log).is_some_and(|p| p.len() == 4);
        let checkpointed =
            (0..PARTITIONS).all(|p| since.contains(&format!("partition {p}: checkpoint")));
        (all && checkpointed).then_some(()).ok_or(log)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = fs::read_to_string(&first_log).unwrap();
    kill_a_joining_run(dir.path(), &args);
    let log = dir.path().join("third.stderr");
    let third = finish(spawn_logged(&args, &log), &log, Duration::from_secs(50));
    for p in 0..PARTITIONS {
        assert!(
            killed.contains(&format!("partition {p} finished"))
                || resumed_from_checkpoint(&third, p),
            "partition {p} did not resume from its checkpoint:\n{third}"
        );
    }
    let rows = partition_task_rows(&out);
    assert_same_rows(
        &rows,
        &reference,
        &format!("{killed}\n(the last run:)\n{third}"),
    );
}

/// The source commits its checkpointed offsets to the group without joining it; a group
/// with members (here a consumer of the test's own) refuses such commits. That is said
/// once, and the job goes on to exact results. A topic that does not exist fails the job
/// at start, saying so.
#[test]
fn refused_offset_commits_are_reported_once_and_a_missing_topic_fails_the_job() {
    let dir = TempDir::new().unwrap();
    let events = 200_000;
    let (broker, reference) = keyed_topic(&dir, "busy", events);
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "busy")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .unwrap();
    member.subscribe(&["busy"]).unwrap();
    let started = Instant::now();
    while member.assignment().unwrap().count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the test's consumer did not join group `busy` in 30 s"
        );
        if let Some(Err(e)) = member.poll(Duration::from_millis(100)) {
            panic!("the test's group member: {e}");
        }
    }
    member.pause(&member.assignment().unwrap()).unwrap();

    let out = dir.path().join("out");
    let input = broker.uri(
        "busy",
        &format!("group=busy&start=earliest&until=end&{GROUP_TIMING}"),
    );
    let mut args = window_agg(&input, &out, 1);
    checkpoint_into(&mut args, &dir.path().join("state"), "100ms");
    let log = dir.path().join("busy.stderr");
    let stderr = finish(spawn_logged(&args, &log), &log, Duration::from_secs(40));
    let refusals = stderr.matches("refused the checkpointed offsets").count();
    let checkpoints = stderr.matches("complete in").count();
    assert!(
        refusals == 1 && checkpoints > 1,
        "{refusals} refusals said in {checkpoints} checkpoints:\n{stderr}"
    );
    assert!(
        sorted_lines(part_files(&out)) == reference,
        "the rows differ from the file run's"
    );
    drop(member);

    let missing = broker.uri("no-such-topic", "until=end");
    let args = window_agg(&missing, &dir.path().join("none.jsonl"), 1);
    let log = dir.path().join("missing.stderr");
    let (status, stderr) = exit_within(spawn_logged(&args, &log), &log, Duration::from_secs(30));
    assert!(
        !status.success() && stderr.contains("cannot find the partitions of topic `no-such-topic`"),
        "{status}:\n{stderr}"
    );
}

/// The reader the tests check output topics with applies the transaction markers: an
/// aborted transaction's records are left out, a committed one's and plain records kept,
/// where librdkafka's `read_committed` consumer shows all of them on the test broker.
#[test]
fn the_log_reader_leaves_out_aborted_transactions_which_librdkafka_shows() {
    let dir = TempDir::new().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("marked", PARTITIONS);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("transactional.id", "marked")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).unwrap();
    let send = |value: &str, partition: i32| {
        producer
            .send(
                BaseRecord::<str, str>::to("marked")
                    .partition(partition)
                    .key(value)
                    .payload(value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    };
    producer.begin_transaction().unwrap();
    for (value, partition) in [("aborted-0", 0), ("aborted-1", 1), ("aborted-2", 0)] {
        send(value, partition);
    }
    producer.flush(timeout).unwrap();
    producer.abort_transaction(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send("committed-0", 0);
    send("committed-1", 1);
    producer.commit_transaction(timeout).unwrap();
    broker.produce("marked", 2, "plain");

    let mut rows: Vec<String> = kafka_log::read_committed(&broker.addr, "marked", PARTITIONS)
        .into_iter()
        .map(|(_, key, value)| format!("{}={value}", key.unwrap_or_default()))
        .collect();
    rows.sort_unstable();
    assert_eq!(
        rows,
        [
            "=plain",
            "committed-0=committed-0",
            "committed-1=committed-1"
        ]
    );
    // The broker's quirk the reader exists for (if this fails, librdkafka will do).
    assert_eq!(broker.read_all("marked").len(), 6);
}

/// Nothing listens on port 1 of the loopback: a broker that cannot be reached.
const UNREACHABLE: &str = "127.0.0.1:1";

/// A bounded job (`until=end`) whose broker cannot be reached fails once `connect_timeout`
/// has passed, naming the broker and the timeout, and says so in a few lines: the base
/// printed ~40 lines a second for ever when the URI named its partitions, and without
/// them failed after 10 s saying the topic could not be found (issue 27).
#[test]
fn an_unreachable_broker_fails_a_bounded_job_after_its_connect_timeout_in_a_few_lines() {
    let dir = TempDir::new().unwrap();
    for (i, query) in ["until=end", "until=end&partitions=0"].iter().enumerate() {
        let input = format!("kafka://{UNREACHABLE}/t?{query}&connect_timeout=2s");
        let args = window_agg(&input, &dir.path().join(format!("out-{i}.jsonl")), 1);
        let log = dir.path().join(format!("unreachable-{i}.stderr"));
        let started = Instant::now();
        let (status, stderr) =
            exit_within(spawn_logged(&args, &log), &log, Duration::from_secs(30));
        let took = started.elapsed();
        assert!(
            !status.success()
                && stderr.contains(&format!("cannot reach broker {UNREACHABLE}"))
                && stderr.contains("within 2s"),
            "{input}: {status}:\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(30),
            "{input}: took {took:?}:\n{stderr}"
        );
        let lines = stderr.lines().count();
        assert!(lines < 20, "{input}: {lines} lines:\n{stderr}");
    }
}

/// An aggregate that fails on a Kafka record names the record as its dead letter would:
/// topic, partition and offset.
#[test]
fn an_overflow_names_the_kafka_record_that_caused_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("big", 1);
    broker.produce(
        "big",
        0,
        "{\"ts\":1,\"key\":\"k\",\"value\":9223372036854775807}",
    );
    broker.produce("big", 0, "{\"ts\":2,\"key\":\"k\",\"value\":1}");
    let input = broker.uri("big", "group=overflow&start=earliest&until=end");
    let args = window_agg(&input, &dir.path().join("out.jsonl"), 1);
    let log = dir.path().join("overflow.stderr");
    let (status, stderr) = exit_within(spawn_logged(&args, &log), &log, Duration::from_secs(60));
    assert!(
        status.code() == Some(1)
            && stderr.contains("overflowed")
            && stderr.contains("event time 2, kafka topic big partition 0 offset 1)"),
        "{status}:\n{stderr}"
    );
}

/// The same bound for the other Kafka clients of a job: the group member of a bounded run
/// per partition (the base failed after 30 s saying only that the topic showed no
/// partitions) and the sink (the base queued the results and waited ~5 minutes,
/// librdkafka's message.timeout.ms, printing that it was still waiting).
#[test]
fn an_unreachable_broker_fails_the_group_member_and_the_sink_after_their_connect_timeout() {
    let dir = TempDir::new().unwrap();
    let events = dir.path().join("events.jsonl");
    fs::write(&events, "{\"ts\":1,\"key\":\"a\",\"value\":2}\n").unwrap();
    let member_input =
        format!("kafka://{UNREACHABLE}/t?group=g&tasks=per-partition&until=end&connect_timeout=2s");
    let mut member = window_agg(&member_input, &dir.path().join("parts"), 1);
    checkpoint_into(&mut member, &dir.path().join("state"), "1s");
    let mut sink = window_agg(events.to_str().unwrap(), Path::new("-"), 1);
    sink[5] = format!("kafka://{UNREACHABLE}/out?connect_timeout=2s");
    for (what, args, says) in [
        ("group member", member, "the group member waits"),
        ("sink", sink, "sink `output` failed"),
    ] {
        let log = dir.path().join(format!("{what}.stderr"));
        let started = Instant::now();
        let (status, stderr) =
            exit_within(spawn_logged(&args, &log), &log, Duration::from_secs(30));
        let took = started.elapsed();
        assert!(
            status.code() == Some(1)
                && stderr.contains(&format!("cannot reach broker {UNREACHABLE} within 2s"))
                && stderr.contains(says)
                && stderr.contains("connect_timeout="),
            "{what}: {status}:\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(15),
            "{what}: took {took:?}:\n{stderr}"
        );
        let lines = stderr.lines().count();
        assert!(lines < 20, "{what}: {lines} lines:\n{stderr}");
    }
}

/// A following job (no `until=end`) whose broker cannot be reached waits for it, saying so
/// a few times, not once per reconnection attempt (the base printed ~15 lines a second and
/// failed after 10 s, saying the topic could not be found).
#[test]
fn an_unreachable_broker_keeps_a_following_job_waiting_with_bounded_output() {
    let dir = TempDir::new().unwrap();
    let input = format!("kafka://{UNREACHABLE}/t");
    let args = window_agg(&input, &dir.path().join("out.jsonl"), 1);
    let log = dir.path().join("follow.stderr");
    let mut child = spawn_logged(&args, &log);
    sleep(Duration::from_secs(12));
    let ended = child.try_wait().unwrap();
    if ended.is_none() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(ended.is_none(), "the job ended: {ended:?}:\n{stderr}");
    let kafka_lines = stderr.lines().filter(|l| l.contains("kafka")).count();
    assert!(
        stderr.contains(&format!("cannot reach broker {UNREACHABLE}")) && kafka_lines < 10,
        "{kafka_lines} lines about Kafka in 12 s:\n{stderr}"
    );
}

/// A broker whose port is not a number in 1..=65535 is a usage error (exit code 2) naming
/// the broker, in `--input` and `--output` alike: the base took `:abc` as port 0 and
/// `:99999` as 34463 and ran the job against them.
#[test]
fn a_broker_port_that_is_not_a_port_is_a_usage_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let events = dir.path().join("in.jsonl");
    fs::write(&events, "{\"ts\":1,\"key\":\"a\",\"value\":2}\n").unwrap();
    let events = events.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let out = out.to_str().unwrap();
    for (input, output, broker) in [
        ("kafka://127.0.0.1:abc/t", out, "127.0.0.1:abc"),
        ("kafka://127.0.0.1:99999/t", out, "127.0.0.1:99999"),
        ("kafka://127.0.0.1:0/t", out, "127.0.0.1:0"),
        ("kafka://127.0.0.1:9092,h:x/t", out, "h:x"),
        (events, "kafka://127.0.0.1:99999/o", "127.0.0.1:99999"),
    ] {
        let args = window_agg(input, Path::new(output), 1);
        let log = dir.path().join("bad-uri.stderr");
        let (status, stderr) =
            exit_within(spawn_logged(&args, &log), &log, Duration::from_secs(30));
        assert!(
            status.code() == Some(2)
                && stderr.contains(&format!("broker `{broker}`"))
                && stderr.contains("port"),
            "{input} -> {output}: {status}:\n{stderr}"
        );
    }
}
