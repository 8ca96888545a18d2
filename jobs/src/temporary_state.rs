//! Temporary state directories: where a run without `--state-dir` keeps its RocksDB
//! state (`<temp>/weir-state-<pid>-<n>`), removed when the run ends, and those of runs
//! killed before they could remove them, removed by the next run.

use std::path::{Path, PathBuf};

use weir_engine::checkpoint::ownership::lock_if_unused;

/// The name of a temporary state directory starts with this, then `<pid>-<run>`.
const TEMPORARY_STATE: &str = "weir-state-";

/// The locks of every job directory in the state directory `dir`, taken; `None` if a job
/// directory has no lock file or its lock is held (see [`lock_if_unused`]), or `dir` has
/// no job directory.
fn unused_job_locks(dir: &Path) -> Option<Vec<std::fs::File>> {
    let mut locks = Vec::new();
    for job in std::fs::read_dir(dir).ok()? {
        locks.push(lock_if_unused(&job.ok()?.path())?);
    }
    (!locks.is_empty()).then_some(locks)
}

/// A fresh temporary state directory for this process. The first one also removes those
/// of ended runs (see [`remove_abandoned_temporary_state`]).
pub(crate) fn fresh_dir() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = std::env::temp_dir();
    if run == 0 {
        remove_abandoned_temporary_state(&temp);
    }
    temp.join(format!("{TEMPORARY_STATE}{}-{run}", std::process::id()))
}

/// Removes the temporary state directories under `temp` whose run has ended: a run
/// removes its own when it ends, but one killed with -9 cannot, and its RocksDB state
/// (gigabytes with large state) would stay behind. A run has ended when `/proc/<pid>` is
/// gone (without a `/proc` nothing is removed) and no process holds the lock of any job
/// directory in it (a run in another pid namespace sharing the directory holds its lock);
/// a directory without a lock file is left alone, and one whose pid a live process has
/// since taken stays until that process ends.
fn remove_abandoned_temporary_state(temp: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEMPORARY_STATE))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let Some(pid) = pid else {
            continue;
        };
        if pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        // Held while the directory is removed.
        let Some(_locks) = unused_job_locks(&path) else {
            continue;
        };
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    // One line, however many: a machine where many runs were killed has many.
    if let Some(first) = removed.first() {
        let more = match removed.len() {
            1 => String::new(),
            n => format!(" and {} more like it", n - 1),
        };
        eprintln!(
            "weir: removed {}{more} (temporary state of a run that ended without removing it)",
            first.display()
        );
    }
}
