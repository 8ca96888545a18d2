//! The Kafka-compatible test broker (Tansu, installed by `scripts/setup`; see
//! `scripts/kafka-broker`), started on a free 127.0.0.1 port with its log in memory: the
//! Kafka tests, the Prometheus test (a Kafka-sourced job for the consumer-lag panel) and
//! the routed queryable state of a run per partition; and reading such a run's stderr.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Group settings that make the broker's group join take seconds, not tens of seconds.
pub(crate) const GROUP_TIMING: &str = "session.timeout.ms=6000&heartbeat.interval.ms=1000";

/// The partitions a `weir` process of a run per partition was last assigned, from its
/// stderr.
pub(crate) fn last_assignment(stderr: &str) -> Option<Vec<i32>> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("the group assigned"))?;
    let list = line.rsplit_once('[')?.1.split_once(']')?.0;
    Some(list.split(", ").filter_map(|p| p.parse().ok()).collect())
}

/// A broker process on a free loopback port; killed when dropped.
pub(crate) struct Broker {
    pub(crate) child: Child,
    pub(crate) binary: PathBuf,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
}

impl Broker {
    /// Starts the broker, its log in `dir/broker.log`, and waits until it listens.
    pub(crate) fn start(dir: &Path) -> Broker {
        let binary = std::env::var_os("WEIR_KAFKA_BROKER")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir-kafka/bin/tansu"))
            })
            .filter(|b| b.exists())
            .expect("the Kafka test broker is not installed: run ./scripts/setup (or scripts/kafka-broker install)");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the broker did not listen on {addr} within 20 s"
            );
            sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            binary,
            addr,
        }
    }

    /// Creates `name` with `partitions` partitions.
    pub(crate) fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(&self.binary)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://{}", self.addr),
            ])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot create topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kafka://ADDR/topic?query`.
    pub(crate) fn uri(&self, topic: &str, query: &str) -> String {
        format!("kafka://{}/{topic}?{query}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
