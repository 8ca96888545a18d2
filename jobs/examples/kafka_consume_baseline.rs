//! The baseline for weir's Kafka benchmark: a bare librdkafka consume loop (same crate,
//! same client settings as weir's source) that reads every record of a topic up to the
//! ends of its partitions and does nothing with it.
//!
//! ```sh
//! cargo run --release --example kafka_consume_baseline -- 127.0.0.1:9092 events
//! ```
//!
//! Prints `BASELINE records=.. seconds=.. records_per_sec=.. records_per_sec_per_core=..`,
//! per core meaning per second of this process's CPU time, as `weir bench` reports.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use weir_jobs::bench::process_cpu_seconds;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(broker), Some(topic)) = (args.next(), args.next()) else {
        bail!("usage: kafka_consume_baseline BROKER:PORT TOPIC");
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", "weir-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("cannot create a consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .with_context(|| format!("cannot fetch the metadata of {topic} from {broker}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic {topic} has no partitions on {broker}: create it and fill it first");
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let (mut records, mut bytes, mut ended) = (0u64, 0u64, 0);
    while ended < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => eprintln!("baseline: {e}"),
            None => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("gave up after 600 s with {records} records read");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (process_cpu_seconds() - cpu_before).max(1e-9);
    println!(
        "BASELINE records={records} bytes={bytes} seconds={seconds:.3} records_per_sec={:.0} records_per_sec_per_core={:.0} cpu_seconds={cpu:.3}",
        records as f64 / seconds,
        records as f64 / cpu
    );
    Ok(())
}
