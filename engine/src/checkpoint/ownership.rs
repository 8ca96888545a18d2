//! One writer per state directory: an exclusive lock for the life of the run, and an epoch
//! that fences a writer whose lock did not hold.
//!
//! Two runs on one state directory corrupt each other: the second replaces the first's
//! RocksDB files under it and both write checkpoints with the same ids. So a run takes
//! [`StateDirLock`] on its job directory (`DIR/<job>`) before it touches anything there:
//! an exclusive `flock` on `DIR/<job>/weir.lock`, which the operating system releases when
//! the process ends in any way, `kill -9` included. A second run is refused at once, naming
//! the holder's pid (or waits for it, up to a bound: a Kafka partition task taking over
//! from a task in this process that is still winding down).
//!
//! # Fencing
//! A lock is only as good as the filesystem's locking (network filesystems may not honour
//! it, and a paused process expelled from a Kafka group still believes it owns its
//! partitions). Every run that takes the lock therefore also claims the next **epoch**,
//! written atomically to `DIR/<job>/epoch`, and the checkpoint coordinator checks, before
//! it completes a checkpoint (writes its manifest, after which sinks commit), that the
//! epoch file still holds its own number. A run that finds a newer epoch was replaced:
//! it completes nothing more and fails, so it cannot commit output or checkpoints over
//! the state of the run that replaced it.
//!
//! # Invariants
//! - The lock is taken before the epoch is claimed: a run that is refused the lock never
//!   fences the run holding it.
//! - The epoch file only grows, and is replaced by rename, never written in place.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file in a job's state directory.
const LOCK_FILE: &str = "weir.lock";
/// The epoch file in a job's state directory.
const EPOCH_FILE: &str = "epoch";
/// How often a waiting run tries the lock again.
const RETRY: Duration = Duration::from_millis(100);

/// Why a run may not use a state directory.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another run holds the directory's lock.
    #[error(
        "state directory {dir} is in use by another weir run ({holder}){waited}: stop that run \
         first, or give this one its own --state-dir",
        dir = dir.display(),
        waited = waited.map_or(String::new(), |w| format!(", still after {w:?}"))
    )]
    InUse {
        /// The job's state directory.
        dir: PathBuf,
        /// Who holds it, as its lock file says (`pid 1234`).
        holder: String,
        /// How long this run waited for it, if it waited.
        waited: Option<Duration>,
    },
    /// The lock or epoch file could not be read or written.
    #[error("state directory {path}: {source} (check --state-dir)", path = path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OwnershipError + '_ {
    move |source| OwnershipError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lock of the job state directory `dir`, taken without claiming an epoch, if a run
/// has used it (its lock file exists) and none holds it now: held while a directory of a
/// run that ended is removed, so that no run starts in it meanwhile. `None` otherwise, or
/// if the lock file cannot be opened.
pub fn lock_if_unused(dir: &Path) -> Option<File> {
    let file = File::open(dir.join(LOCK_FILE)).ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// The exclusive lock on a job's state directory and the epoch this run claimed; released
/// when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateDirLock {
    dir: PathBuf,
    /// Held open: the lock lives as long as this file description.
    _file: File,
    epoch: u64,
}

impl StateDirLock {
    /// Locks `dir` (created if missing) and claims the next epoch. Another run holding it
    /// is waited for up to `wait` (zero: refused at once); `give_up` ends the wait early.
    pub fn acquire(
        dir: &Path,
        wait: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Self, OwnershipError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        let started = Instant::now();
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = holder_of(&mut file);
                    if started.elapsed() >= wait || give_up() {
                        return Err(OwnershipError::InUse {
                            dir: dir.to_path_buf(),
                            holder,
                            waited: (!wait.is_zero()).then(|| started.elapsed()),
                        });
                    }
                    if !said {
                        eprintln!(
                            "weir: waiting up to {wait:?} for state directory {} ({holder} holds it)",
                            dir.display()
                        );
                        said = true;
                    }
                    std::thread::sleep(RETRY);
                }
                Err(TryLockError::Error(e)) => return Err(io_error(&path)(e)),
            }
        }
        let epoch = read_epoch(dir)? + 1;
        write_epoch(dir, epoch)?;
        let holder = format!("pid {} epoch {epoch}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(io_error(&path))?;
        Ok(StateDirLock {
            dir: dir.to_path_buf(),
            _file: file,
            epoch,
        })
    }

    /// The epoch this run claimed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the checkpoint coordinator checks before completing a checkpoint.
    pub fn fence(&self) -> Fence {
        Fence {
            dir: self.dir.clone(),
            epoch: self.epoch,
        }
    }
}

/// A run's claim on a state directory, checked before anything is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    dir: PathBuf,
    epoch: u64,
}

impl Fence {
    /// Fails if a later run claimed the directory since (this run is fenced).
    pub fn check(&self) -> Result<(), String> {
        match read_epoch(&self.dir) {
            Ok(now) if now == self.epoch => Ok(()),
            Ok(now) => Err(format!(
                "another run took over {} (epoch {now}, this run has {}): this run is fenced \
                 and commits nothing more",
                self.dir.display(),
                self.epoch
            )),
            Err(e) => Err(format!("cannot check this run still owns its state: {e}")),
        }
    }
}

/// What the lock file says about its holder.
fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        ["pid", pid, ..] => format!("pid {pid}"),
        _ => "a process that is starting".to_string(),
    }
}

/// The epoch in `dir` (0 if none was claimed yet).
fn read_epoch(dir: &Path) -> Result<u64, OwnershipError> {
    let path = dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| OwnershipError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("`{}` is not an epoch number", text.trim()),
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Replaces `dir`'s epoch by `epoch` atomically (write, sync, rename).
fn write_epoch(dir: &Path, epoch: u64) -> Result<(), OwnershipError> {
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    let path = dir.join(EPOCH_FILE);
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{epoch}\n").as_bytes())?;
            f.sync_all()
        })
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    #[test]
    fn a_second_lock_on_a_held_directory_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap();
        let err = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap_err();
        let says = err.to_string();
        assert!(
            says.contains(&format!("pid {}", std::process::id())),
            "{says}"
        );
        assert!(says.contains("in use by another weir run"), "{says}");
        drop(first);
        let again = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap();
        assert_eq!(
            again.epoch(),
            2,
            "each run that got the lock claimed an epoch"
        );
    }

    #[test]
    fn only_a_used_directory_no_run_holds_is_locked_as_unused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(lock_if_unused(dir.path()).is_none(), "never used");
        let run = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap();
        assert!(lock_if_unused(dir.path()).is_none(), "held by a run");
        drop(run);
        let unused = lock_if_unused(dir.path()).expect("used, and the run ended");
        let err = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(unused);
        assert_eq!(read_epoch(dir.path()).unwrap(), 1, "claims no epoch");
    }

    #[test]
    fn a_wait_ends_when_the_holder_lets_go_or_when_told_to_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap();
        let err = StateDirLock::acquire(dir.path(), Duration::from_secs(60), &|| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("still after"), "{err}");
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            StateDirLock::acquire(&path, Duration::from_secs(60), &never).map(|l| l.epoch())
        });
        drop(first);
        assert_eq!(waiter.join().unwrap().unwrap(), 2);
    }

    #[test]
    fn a_run_whose_epoch_was_taken_over_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let old = StateDirLock::acquire(dir.path(), Duration::ZERO, &never).unwrap();
        let fence = old.fence();
        assert_eq!(fence.check(), Ok(()));
        // A second writer whose lock did not exclude the first (a filesystem without
        // locks): it claims the next epoch as `acquire` does after locking.
        write_epoch(dir.path(), old.epoch() + 1).unwrap();
        let err = fence.check().unwrap_err();
        assert!(err.contains("fenced"), "{err}");
        assert!(err.contains("epoch 2, this run has 1"), "{err}");
    }
}
