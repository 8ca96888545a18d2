//! Helpers for in-process checkpoint tests through the public job API: a source that
//! crashes half-way, and readers of a part-file output directory and a checkpoint root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_engine::{
    BoxError, CheckpointConfig, ConnectorState, DeadLetter, Resume, RunOptions, Source,
    SourceStatus, StateConfig,
};

/// Wraps a replayable source: fails once it has returned `fail_after` events (a crash in
/// the middle of the input), and is a little slow so that checkpoints happen on the way.
pub(crate) struct Flaky<S> {
    inner: S,
    returned: Arc<AtomicU64>,
    fail_after: Option<u64>,
    checkpoints: Option<PathBuf>,
    /// The newest complete checkpoint when `fail_after` was reached, and when.
    latest_at_threshold: Option<(u64, Instant)>,
}

/// How long [`Flaky`] holds its input back at the crash point waiting for a checkpoint.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

impl<S> Flaky<S> {
    pub(crate) fn new(inner: S, fail_after: Option<u64>) -> Self {
        Flaky {
            inner,
            returned: Arc::new(AtomicU64::new(0)),
            fail_after,
            checkpoints: None,
            latest_at_threshold: None,
        }
    }

    /// Crashes only once a checkpoint under `root` that began after `fail_after` events
    /// is complete (so the crash always leaves a checkpoint past the start of the input to
    /// resume from, however fast the input is read or slow the checkpoints are): from
    /// the threshold on, it holds its input back until then.
    pub(crate) fn after_a_checkpoint_in(mut self, root: PathBuf) -> Self {
        self.checkpoints = Some(root);
        self
    }
}

impl<S: Source> Source for Flaky<S> {
    type Item = S::Item;

    fn poll_batch(&mut self, out: &mut Vec<S::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        std::thread::sleep(Duration::from_micros(300));
        let total = self.returned.load(Ordering::SeqCst);
        if self.fail_after.is_some_and(|n| total >= n) {
            let Some(root) = &self.checkpoints else {
                return Err("simulated crash".into());
            };
            // A checkpoint begun after the threshold: at most one is in flight, so the
            // second to complete after it (numbers are consecutive) began after it.
            let latest = latest_checkpoint(root);
            let (first, since) = *self
                .latest_at_threshold
                .get_or_insert((latest, Instant::now()));
            if latest >= first + 2 {
                return Err("simulated crash".into());
            }
            if since.elapsed() > CHECKPOINT_WAIT {
                return Err(format!(
                    "no checkpoint completed in {CHECKPOINT_WAIT:?} at the crash point"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(2));
            return Ok(SourceStatus::Idle);
        }
        let before = out.len();
        let status = self.inner.poll_batch(out, max.min(256))?;
        self.returned
            .fetch_add((out.len() - before) as u64, Ordering::SeqCst);
        Ok(status)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        self.inner.take_dead_letters(out)
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        self.inner.position()
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.inner.seek(position)
    }
}

/// The lines of `text`, sorted.
pub(crate) fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Asserts that `rows` are the `reference` rows (both sorted), saying otherwise how many
/// are missing and how many extra or repeated, and then `context` (a run's stderr, say).
pub(crate) fn assert_same_rows(rows: &[String], reference: &[String], context: &str) {
    let (missing, extra) = difference(rows, reference);
    assert!(
        rows == reference,
        "{} rows, {} in the reference: {missing} missing, {extra} extra or repeated; {context}",
        rows.len(),
        reference.len()
    );
}

/// How `rows` differ from `reference` (both sorted), in counts: rows missing, rows extra.
fn difference(rows: &[String], reference: &[String]) -> (usize, usize) {
    let (mut missing, mut extra) = (0, 0);
    let (mut i, mut j) = (0, 0);
    while i < rows.len() || j < reference.len() {
        match (rows.get(i), reference.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if a < b => (extra, i) = (extra + 1, i + 1),
            (Some(_), None) => (extra, i) = (extra + 1, i + 1),
            _ => (missing, j) = (missing + 1, j + 1),
        }
    }
    (missing, extra)
}

/// The committed rows of a part-file directory (what a reader sees), sorted.
pub(crate) fn committed_rows(dir: &Path) -> Vec<String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            text.push_str(&std::fs::read_to_string(dir.join(name)).unwrap());
        }
    }
    sorted_lines(&text)
}

/// What a run resumed from a killed run's checkpoint must give: it read fewer than `total`
/// events (it resumed instead of starting over), left no uncommitted part in `out`, and
/// `out` holds exactly the `expected` rows (`context` names the run).
pub(crate) fn assert_resumed_exactly_once(
    events_read: u64,
    total: usize,
    out: &Path,
    expected: &[String],
    context: &str,
) {
    assert!(
        events_read < total as u64,
        "the restart read all {total} events: it started over instead of resuming"
    );
    assert_eq!(in_progress_files(out), Vec::<String>::new());
    assert_same_rows(&committed_rows(out), expected, context);
}

/// Files a finished job must not leave behind: uncommitted parts.
pub(crate) fn in_progress_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".inprogress"))
        .collect()
}

/// How many complete checkpoints (with a manifest) `root` holds.
pub(crate) fn complete_checkpoints(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().join("_manifest").is_file())
                })
                .count()
        })
        .unwrap_or(0)
}

/// The number of the newest complete checkpoint (`chk-NNNNNN` with a manifest) under
/// `root`, 0 if none.
pub(crate) fn latest_checkpoint(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name.strip_prefix("chk-")?.parse().ok()?;
                    e.path().join("_manifest").is_file().then_some(n)
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The complete checkpoint directories (`chk-NNNNNN` with a manifest) under `root`,
/// oldest first; none while a starting job has not yet created `root`.
pub(crate) fn complete_checkpoint_dirs(root: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", root.display()),
    };
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("chk-"))
                && p.join("_manifest").is_file()
        })
        .collect();
    dirs.sort();
    dirs
}

/// How an in-process test runs job `job`: at `parallelism`, its state under `state_dir` in
/// memory or on RocksDB (with `cache_entries` decoded entries cached), and, given an
/// interval, checkpointed under `state_dir/job/checkpoints` (two kept), resuming from the
/// newest.
pub(crate) fn run_options(
    state_dir: &Path,
    job: &str,
    parallelism: usize,
    rocksdb: Option<usize>,
    checkpoints: Option<Duration>,
) -> RunOptions {
    RunOptions {
        parallelism,
        state: match rocksdb {
            Some(cache_entries) => StateConfig::RocksDb {
                dir: state_dir.to_path_buf(),
                cache_entries,
                statistics: false,
            },
            None => StateConfig::Memory,
        },
        checkpoints: checkpoints.map(|interval| CheckpointConfig {
            dir: state_dir.join(job).join("checkpoints"),
            interval,
            retained: 2,
            resume: Resume::Latest,
        }),
        ..RunOptions::default()
    }
}

/// Gives the events of a replayable source at most 20 per poll, 2 ms apart, so that a run
/// of a few thousand events lasts long enough to checkpoint several times and be killed.
pub(crate) struct Throttled<S>(pub(crate) S);

impl<S: Source> Source for Throttled<S> {
    type Item = S::Item;

    fn poll_batch(&mut self, out: &mut Vec<S::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        std::thread::sleep(Duration::from_millis(2));
        self.0.poll_batch(out, max.min(20))
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        self.0.position()
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.0.seek(position)
    }

    fn checkpoint_completed(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.0.checkpoint_completed(position)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        self.0.take_dead_letters(out)
    }
}
