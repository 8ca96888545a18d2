//! Helpers for end-to-end tests that drive a weir binary: a deterministic PRNG for test
//! data, running the binary, and reading the summary line `weir run` prints when a job ends.
//!
//! A test file includes this with `mod common;`. The binary's path is a parameter (e.g.
//! `env!("CARGO_BIN_EXE_weir")`), so crates with their own binary can use it too.

// Each test file uses only some of these helpers.
#![allow(dead_code)]
// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

pub(crate) mod accounts;
pub(crate) mod broker;
pub(crate) mod checkpointed;
pub(crate) mod follow_run;
pub(crate) mod kafka_log;
pub(crate) mod keyed_events;
#[cfg(unix)]
pub(crate) mod kill;
#[cfg(unix)]
pub(crate) mod postgres;
pub(crate) mod webdriver;

use std::error::Error;
use std::ffi::OsStr;
use std::fmt;
use std::process::{Command, ExitStatus};

/// A test failure whose `Debug` form (what a failing `#[test] fn() -> Result` prints) is
/// its message as is, so messages spanning several lines stay readable.
pub(crate) struct Failure(pub(crate) String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Failure {}

/// A boxed [`Failure`] with this message.
pub(crate) fn failure(message: impl Into<String>) -> Box<dyn Error> {
    Box::new(Failure(message.into()))
}

/// splitmix64: a tiny, fast, deterministic PRNG, plenty for generating test data.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias does not matter for test data).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// A finished run of the binary.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `bin` with `args` to completion, capturing its output.
pub(crate) fn run<I, S>(bin: &str, args: I) -> Result<Run, Box<dyn Error>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(bin).args(args).output()?;
    Ok(Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Like [`run`], but a non-zero exit is an error carrying the binary's stderr.
pub(crate) fn run_ok<I, S>(bin: &str, args: I) -> Result<Run, Box<dyn Error>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let run = run(bin, args)?;
    if !run.status.success() {
        return Err(failure(format!(
            "{bin} failed ({}); stderr:\n{}",
            run.status, run.stderr
        )));
    }
    Ok(run)
}

/// The counts of the line `weir run` prints at the end of a job:
/// `weir: JOB done: N events read in ..., R results written, L late events, D dead letters, ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) events_read: u64,
    pub(crate) results_written: u64,
    pub(crate) late_events: u64,
    pub(crate) dead_letters: u64,
}

impl Summary {
    /// Finds and parses the summary line in a run's stderr.
    pub(crate) fn from_stderr(stderr: &str) -> Result<Summary, Box<dyn Error>> {
        let line = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("weir: ") && l.contains(" done: "))
            .ok_or_else(|| failure(format!("no `weir: ... done:` line in stderr:\n{stderr}")))?;
        let count = |label: &str| -> Result<u64, Box<dyn Error>> {
            let at = line
                .find(label)
                .ok_or_else(|| failure(format!("no `{label}` in the summary line `{line}`")))?;
            line[..at]
                .split_whitespace()
                .next_back()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| failure(format!("no number before `{label}` in `{line}`")))
        };
        Ok(Summary {
            events_read: count(" events read")?,
            results_written: count(" results written")?,
            late_events: count(" late events")?,
            dead_letters: count(" dead letters")?,
        })
    }
}

/// Peak resident memory of process `pid` so far, in MiB (`VmHWM`), if it still runs.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

// ------------------------------------------------------------------ metrics over HTTP

/// Kills the child when the test ends, whatever happens.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 GET; the whole response, headers included.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String, Box<dyn Error>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Sums samples of `name` whose labels contain every `key="value"` in `labels`.
pub(crate) fn sample_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A running binary whose stderr lines are collected as they come.
pub(crate) struct Running {
    pub(crate) child: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts `bin` with `args`, stderr piped.
    pub(crate) fn spawn(bin: &str, args: &[&OsStr]) -> Result<Running, Box<dyn Error>> {
        use std::io::{BufRead, BufReader};
        let child = Command::new(bin)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut child = KillOnDrop(child);
        let stderr = child.0.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits at most `timeout` for a stderr line that `wanted` accepts, and returns it.
    pub(crate) fn wait_for_line(
        &mut self,
        timeout: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String, Box<dyn Error>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                failure(format!(
                    "no awaited line within {timeout:?}; stderr so far:\n{}",
                    self.stderr()
                ))
            })?;
            self.seen.push(line.clone());
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// The stderr lines seen so far.
    pub(crate) fn stderr(&self) -> String {
        self.seen.join("\n")
    }

    /// The metrics endpoint's address, once `weir: metrics at http://ADDR/metrics` was seen.
    pub(crate) fn metrics_addr(&self) -> Option<String> {
        self.seen.iter().find_map(|l| {
            l.strip_prefix("weir: metrics at http://")?
                .strip_suffix("/metrics")
                .map(str::to_string)
        })
    }

    /// `GET /metrics`: the body.
    pub(crate) fn scrape(&self) -> Result<String, Box<dyn Error>> {
        let addr = self
            .metrics_addr()
            .ok_or("weir did not print its metrics address")?;
        let response = http_get(&addr, "/metrics")?;
        if !response.starts_with("HTTP/1.1 200 OK") {
            return Err(failure(format!("/metrics answered: {response}")));
        }
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .ok_or_else(|| "no body".into())
    }
}

/// Runs `bin` with `args` plus a metrics endpoint on a free port kept alive after the run;
/// once the summary line appears, scrapes `/metrics`. Returns the body, the address, the
/// summary line, and the process (killed when dropped).
pub(crate) fn run_and_scrape_metrics(
    bin: &str,
    args: &[&OsStr],
) -> Result<(String, String, String, KillOnDrop), Box<dyn Error>> {
    let metrics: [&OsStr; 4] = [
        "--metrics-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--linger".as_ref(),
        "60s".as_ref(),
    ];
    let all: Vec<&OsStr> = args.iter().copied().chain(metrics).collect();
    let mut running = Running::spawn(bin, &all)?;
    let done = running.wait_for_line(std::time::Duration::from_secs(60), |l| {
        l.contains(" done: ")
    })?;
    let body = running.scrape()?;
    let addr = running.metrics_addr().unwrap_or_default();
    Ok((body, addr, done, running.child))
}
