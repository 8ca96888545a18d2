//! weir's metrics against the real Prometheus tools (Debian's `prometheus` package, which
//! `scripts/setup` installs):
//!
//! - `promtool check metrics` has nothing to say about a scrape of `weir run window-agg`
//!   with checkpoints, a file sink and two workers, so every family such a job has
//!   (checkpoint, latency histogram, RocksDB, channel, process) is in it; nor about the
//!   scrapes of the running jobs of the next test, one of them reading Kafka.
//! - A Prometheus server scraping two running jobs on loopback, one following a file that
//!   grows while the test runs and one reading a Kafka topic, answers every PromQL
//!   expression of the Grafana dashboard (`deploy/grafana/weir.json`) with at least one
//!   finite value: a misspelt metric or label, or a division that matches nothing, fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::broker::Broker;
use common::{failure, KillOnDrop, Running};

type TestResult = Result<(), Box<dyn Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/weir.json");
/// Longest the test waits for a process to start or for Prometheus to have every answer.
const LIMIT: Duration = Duration::from_secs(90);
/// The dashboard's variables, as the test sets them: the jobs' name, and a rate window
/// holding several of the 1 s scrapes.
const VARIABLES: [(&str, &str); 2] = [("$job", "window-agg"), ("$__rate_interval", "10s")];

#[test]
fn a_scrape_of_a_checkpointing_job_passes_promtool() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    common::run_ok(
        WEIR,
        [
            "gen".as_ref(),
            "events".as_ref(),
            "--events".as_ref(),
            "50000".as_ref(),
            "--output".as_ref(),
            input.as_os_str(),
        ],
    )?;
    let (output, state) = (dir.path().join("out"), dir.path().join("state"));
    let args: [&OsStr; 13] = [
        "run".as_ref(),
        "window-agg".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--checkpoint-interval".as_ref(),
        "50ms".as_ref(),
        "--parallelism".as_ref(),
        "2".as_ref(),
        "--quiet".as_ref(),
    ];
    let (body, _, _, _running) = common::run_and_scrape_metrics(WEIR, &args)?;
    for family in [
        "weir_end_to_end_latency_seconds_bucket",
        "weir_checkpoint_duration_seconds",
        "weir_checkpoints_completed_total",
        "weir_channel_fill",
        "weir_state_bytes",
        "weir_watermark_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(family)),
            "{family} missing:\n{body}"
        );
    }
    promtool_check(&body)
}

#[test]
fn prometheus_answers_every_expression_of_the_grafana_dashboard() -> TestResult {
    let expressions = dashboard_expressions()?;
    assert!(expressions.len() >= 10, "{expressions:?}");
    let dir = tempfile::tempdir()?;

    // A job following a file that grows: results, checkpoints, dead letters all along.
    let input = dir.path().join("events.jsonl");
    File::create(&input)?;
    let writer = Appender::start(input.clone());
    let (output, state) = (dir.path().join("out"), dir.path().join("state"));
    let file_job = start_job(&[
        "--input".as_ref(),
        input.as_os_str(),
        "--follow".as_ref(),
        "--window".as_ref(),
        "tumble:1s".as_ref(),
        "--watermark-delay".as_ref(),
        "0".as_ref(),
        "--parallelism".as_ref(),
        "2".as_ref(),
        "--output".as_ref(),
        output.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--checkpoint-interval".as_ref(),
        "500ms".as_ref(),
    ])?;

    // A job reading a Kafka topic (it keeps following it): the consumer-lag panel.
    let broker = Broker::start(dir.path());
    broker.create_topic("events", 2);
    common::run_ok(
        WEIR,
        [
            "gen",
            "events",
            "--events",
            "20000",
            "--output",
            &broker.uri("events", ""),
        ],
    )?;
    let source = broker.uri("events", "group=prometheus-test&start=earliest");
    let kafka_job = start_job(&[
        "--input".as_ref(),
        source.as_ref(),
        "--output".as_ref(),
        "null:".as_ref(),
    ])?;

    let targets = [&file_job, &kafka_job]
        .map(|job| job.metrics_addr().ok_or("no metrics address"))
        .into_iter()
        .collect::<Result<Vec<String>, _>>()?;
    let prometheus = Prometheus::start(dir.path(), &targets)?;
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut without_data = Vec::new();
        for (panel, expression) in &expressions {
            if !prometheus.query(expression)?.iter().any(|v| v.is_finite()) {
                without_data.push(format!("{panel}: {expression}"));
            }
        }
        if without_data.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(failure(format!(
                "after {LIMIT:?}, Prometheus has no finite value for:\n{}\nfile job:\n{}\n\
                 Kafka job:\n{}",
                without_data.join("\n"),
                file_job.stderr(),
                kafka_job.stderr()
            )));
        }
        sleep(Duration::from_secs(1));
    }
    // The running jobs' scrapes, Kafka metrics included, are clean too.
    for job in [&file_job, &kafka_job] {
        promtool_check(&job.scrape()?)?;
    }
    writer.stop()
}

/// Starts `weir run window-agg` with `args` and a metrics endpoint on a free port, and
/// waits until it says where that is.
fn start_job(args: &[&OsStr]) -> Result<Running, Box<dyn Error>> {
    let mut all: Vec<&OsStr> = vec!["run".as_ref(), "window-agg".as_ref()];
    all.extend_from_slice(args);
    all.extend(["--metrics-addr", "127.0.0.1:0"].map(OsStr::new));
    let mut job = Running::spawn(WEIR, &all)?;
    job.wait_for_line(LIMIT, |l| l.starts_with("weir: metrics at http://"))?;
    Ok(job)
}

/// Every (panel title, PromQL expression) of the dashboard, its variables set as in
/// [`VARIABLES`]. An expression with a variable the test does not know is an error.
fn dashboard_expressions() -> Result<Vec<(String, String)>, Box<dyn Error>> {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD)?)?;
    let mut found = Vec::new();
    collect_expressions(&dashboard, &mut found);
    found
        .into_iter()
        .map(|(panel, mut expression)| {
            for (variable, value) in VARIABLES {
                expression = expression.replace(variable, value);
            }
            if expression.contains('$') {
                return Err(failure(format!(
                    "{panel}: an unknown variable in {expression}"
                )));
            }
            Ok((panel, expression))
        })
        .collect()
}

/// The expressions of the panels in `node`, rows' panels included.
fn collect_expressions(node: &serde_json::Value, found: &mut Vec<(String, String)>) {
    for panel in node["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expression) = target["expr"].as_str() {
                found.push((title.to_string(), expression.to_string()));
            }
        }
        collect_expressions(panel, found);
    }
}

/// Runs `promtool check metrics` over `exposition`: it must succeed and say nothing.
fn promtool_check(exposition: &str) -> TestResult {
    let mut child = Command::new(tool("promtool")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let text = exposition.to_string();
    // Written from a thread, so a large exposition cannot block on full output pipes.
    let feeding = thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output()?;
    feeding.join().map_err(|_| "the writer panicked")??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        return Err(failure(format!(
            "promtool check metrics ({}):\n{said}\nover:\n{exposition}",
            out.status
        )));
    }
    Ok(())
}

/// The path of `name` on `PATH`, or an error saying how to install it.
fn tool(name: &str) -> Result<PathBuf, Box<dyn Error>> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| failure(format!("{name} is not installed: run ./scripts/setup")))
}

/// A free port on 127.0.0.1 (free when asked; the server binds it right after).
fn free_port() -> Result<u16, Box<dyn Error>> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A Prometheus server on a free loopback port, scraping `targets` each second, its data
/// in a temporary directory; killed when dropped.
struct Prometheus {
    addr: String,
    _child: KillOnDrop,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> Result<Prometheus, Box<dyn Error>> {
        let config = dir.join("prometheus.yml");
        // `honor_labels`: the series' own `job` label (the weir job's name) is kept.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: weir\n    honor_labels: true\n    \
                 static_configs:\n      - targets: [{}]\n",
                targets
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = dir.join("prometheus.log");
        let mut child = KillOnDrop(
            Command::new(tool("prometheus")?)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log)?)
                .spawn()?,
        );
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(&addr, "/-/ready") {
                break;
            }
            let ended = child.0.try_wait()?;
            if ended.is_some() || started.elapsed() > LIMIT {
                return Err(failure(format!(
                    "Prometheus is not ready on {addr} ({ended:?}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            sleep(Duration::from_millis(100));
        }
        Ok(Prometheus {
            addr,
            _child: child,
        })
    }

    /// The sample values of the instant query `expression` now; an error if Prometheus
    /// refuses it (e.g. a syntax error).
    fn query(&self, expression: &str) -> Result<Vec<f64>, Box<dyn Error>> {
        let path = format!("/api/v1/query?query={}", url_encoded(expression));
        let (status, body) = http_get(&self.addr, &path)?;
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            failure(format!(
                "{expression}: HTTP {status}, not JSON ({e}): {body}"
            ))
        })?;
        if answer["status"] != "success" {
            return Err(failure(format!("{expression}: {answer}")));
        }
        let result = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(result
            .iter()
            .filter_map(|sample| sample["value"][1].as_str()?.parse().ok())
            .collect())
    }
}

/// One HTTP/1.0 GET (so the answer is never chunked): the status code and the body.
fn http_get(addr: &str, path: &str) -> Result<(u16, String), Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| failure(format!("no status in {head}")))?;
    Ok((status, body.to_string()))
}

/// `text` percent-encoded for a URL's query (everything but unreserved characters).
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Appends events stamped with the wall clock to a file every 20 ms, and now and then a
/// line that is not JSON (a dead letter), until stopped; at most [`Appender::MAX_TIME`].
struct Appender {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<()>>,
}

impl Appender {
    const MAX_TIME: Duration = Duration::from_secs(300);

    fn start(path: PathBuf) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(path)?;
            let started = Instant::now();
            let mut written = 0u64;
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < Self::MAX_TIME {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let mut lines = String::new();
                for i in 0..20 {
                    written += 1;
                    if written.is_multiple_of(500) {
                        lines.push_str("{not json\n");
                    }
                    lines.push_str(&format!(
                        "{{\"ts\":{now},\"key\":\"k{}\",\"value\":{i}}}\n",
                        written % 50
                    ));
                }
                file.write_all(lines.as_bytes())?;
                sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        Appender { stop, thread }
    }

    fn stop(self) -> TestResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| "the appender panicked")??;
        Ok(())
    }
}
