//! Runs of `weir run window-agg` on a generated input, read with `--follow` so a run is
//! still going (and checkpointing) when a test acts on it: the fixture, a process handle
//! that waits for checkpoints, and the rows of an uninterrupted reference run.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::checkpointed::{latest_checkpoint, sorted_lines};

/// Events of the input: a run reads them in well under a second.
pub(crate) const EVENTS: u64 = 200_000;
/// Longest a test waits for a process to reach a state.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A generated input and the rows of an uninterrupted run on it (without checkpoints).
pub(crate) struct Fixture {
    /// The `weir` binary.
    pub(crate) bin: &'static str,
    dir: TempDir,
    pub(crate) input: PathBuf,
}

impl Fixture {
    /// Generates the input with `bin`'s `weir gen events`.
    pub(crate) fn new(bin: &'static str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        let events = EVENTS.to_string();
        super::run_ok(
            bin,
            [
                "gen",
                "events",
                "--events",
                &events,
                "--keys",
                "1000",
                "--disorder-ms",
                "1000",
                "--output",
            ]
            .map(OsString::from)
            .into_iter()
            .chain([input.clone().into()]),
        )
        .unwrap();
        Fixture { bin, dir, input }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `weir run window-agg` on the input into `out`, with `extra` options.
    pub(crate) fn args(&self, out: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["run", "window-agg", "--input"].map(OsString::from).into();
        args.push(self.input.clone().into());
        args.push("--output".into());
        args.push(out.into());
        for a in [
            "--watermark-delay",
            "2s",
            "--state-cache-entries",
            "64",
            "--metrics-addr",
            "off",
            "--quiet",
        ]
        .iter()
        .chain(extra)
        {
            args.push(a.into());
        }
        args
    }

    /// [`Fixture::args`] with checkpoints every 100 ms in `state`.
    pub(crate) fn checkpointed(&self, out: &Path, state: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut args = self.args(out, extra);
        args.extend(["--state-dir".into(), state.into()]);
        args.extend(["--checkpoint-interval".into(), "100ms".into()]);
        args
    }

    /// The sorted rows of an uninterrupted run without checkpoints.
    pub(crate) fn reference(&self, extra: &[&str]) -> Vec<String> {
        let out = self.path("reference.jsonl");
        super::run_ok(self.bin, self.args(&out, extra)).unwrap();
        sorted_lines(&fs::read_to_string(out).unwrap())
    }
}

/// A process whose stderr goes to a file; killed and reaped when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    stderr: PathBuf,
}

impl Process {
    pub(crate) fn start(bin: &str, args: &[OsString], stderr: PathBuf) -> Process {
        Process::start_with_env(bin, args, stderr, &[])
    }

    /// [`Process::start`] with environment variables set.
    pub(crate) fn start_with_env(
        bin: &str,
        args: &[OsString],
        stderr: PathBuf,
        env: &[(&str, &OsStr)],
    ) -> Process {
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Process { child, stderr }
    }

    pub(crate) fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the job in `state` has a complete checkpoint newer than `after`
    /// (failing if the process ends or `LIMIT` passes); returns its number.
    pub(crate) fn wait_for_checkpoint_after(&mut self, checkpoints: &Path, after: u64) -> u64 {
        let started = Instant::now();
        loop {
            let latest = latest_checkpoint(checkpoints);
            if latest > after {
                return latest;
            }
            assert!(
                self.is_running() && started.elapsed() < LIMIT,
                "no checkpoint after {after} (running: {}); stderr:\n{}",
                self.is_running(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to its end; returns whether it succeeded and its stderr.
pub(crate) fn run(bin: &str, args: &[OsString]) -> (bool, String) {
    let run = super::run(bin, args).unwrap();
    (run.status.success(), run.stderr)
}

pub(crate) fn checkpoints_of(state: &Path) -> PathBuf {
    state.join("window-agg").join("checkpoints")
}

/// The address a job started with `--metrics-addr 127.0.0.1:0` printed for its API.
pub(crate) fn api_addr(job: &mut Process) -> String {
    let started = Instant::now();
    loop {
        let stderr = job.stderr();
        let addr = stderr.lines().find_map(|l| {
            l.strip_prefix("weir: metrics at http://")?
                .strip_suffix("/metrics")
                .map(str::to_string)
        });
        if let Some(addr) = addr {
            return addr;
        }
        assert!(
            job.is_running() && started.elapsed() < LIMIT,
            "no API address; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP client that returns error answers instead of failing on them.
pub(crate) fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The state backends and parallelisms a test of queryable state runs at.
pub(crate) const BACKENDS_AT_P1_AND_P2: [(&str, &str); 4] = [
    ("memory", "1"),
    ("rocksdb", "1"),
    ("memory", "2"),
    ("rocksdb", "2"),
];

/// The status and JSON body of `GET path`, with the bearer `token` if given.
pub(crate) fn get_json(addr: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = client().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().expect("the server answers");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_json()
        .unwrap_or_else(|e| panic!("the answer ({status}) to {path} is not JSON: {e}"));
    (status, body)
}
