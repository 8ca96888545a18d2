//! Which process serves each partition's queryable state, in a job run as one task per
//! Kafka partition over several processes: owner claims `DIR/partition-P/JOB/OWNER` in the
//! state directory the processes share.
//!
//! Kafka Streams ships each instance's `application.server` in the group's assignment
//! metadata (`queryMetadataForKey`). The classic protocol as rdkafka exposes it gives a
//! member no say in that metadata, but every process of a run per partition already shares
//! `--state-dir DIR`, where partition P's task keeps its checkpoints: so the process running
//! P's task writes a claim beside them, `{"api":"http://127.0.0.1:PORT","process":"PID@START"}`,
//! and a process asked for a key of P reads it.
//!
//! # Lifecycle of a claim
//! - **Claimed** when the partition's task starts here: written to a temporary file and
//!   renamed over `OWNER`, so a reader sees the old claim or the new one, never half of one.
//! - **Renewed** every [`RENEW_EVERY`] while the task runs (its modification time set to
//!   now), as long as it is still this process's claim.
//! - **Released** (removed, if still this process's) when the group revokes the partition
//!   (before the task is cancelled and the partition handed on) and when the task ends.
//!
//! # Invariants
//! - A claim names one process run (`PID@START`, START in ns since the epoch): a process
//!   never renews or removes another's claim, and a restarted process is not taken for the
//!   one it replaced.
//! - A claim not renewed for [`LEASE`] is stale: its process died (SIGKILL, a lost machine)
//!   or hangs. A reader then knows of no owner (the HTTP API answers 503 with Retry-After)
//!   instead of sending callers to it. Until the lease runs out callers are sent to the dead
//!   address, where their request fails and they ask again; the group gives the partition
//!   to another process after its session timeout, and that process overwrites the claim.
//! - Ages are the reader's clock minus the file's modification time, which the writer sets
//!   from its own clock: hosts sharing `DIR` need clocks within a few seconds of each other
//!   (NTP). An age below zero counts as fresh.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weir_connectors::kafka::Partitioner;

use super::task_dir;

/// How often a running task's claim is renewed.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(1);

/// A claim older than this is stale (see the module docs). Ten renewals: a process busy with
/// a rebalance (which waits for its tasks to stop) for a few seconds is not mistaken for a
/// dead one.
pub const LEASE: Duration = Duration::from_secs(10);

/// The claim's file name, in `DIR/partition-P/JOB/` beside the task's checkpoints.
const OWNER_FILE: &str = "OWNER";

/// What an owner claim says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaim {
    /// The owner's HTTP API, `http://HOST:PORT`; `None` if it serves none
    /// (`--metrics-addr off`).
    pub api: Option<String>,
    /// The process run that wrote it: `PID@START`.
    pub process: String,
}

/// A claim as read, with its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The claim.
    pub claim: OwnerClaim,
    /// How long ago it was written or renewed.
    pub age: Duration,
}

impl Claimed {
    /// True if its owner has not renewed it for longer than [`LEASE`].
    pub fn is_stale(&self) -> bool {
        self.age > LEASE
    }
}

/// Where a key lives in a job run per partition (see [`key_owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The key's partition.
    pub partition: i32,
    /// The claim on it, if any (check [`Claimed::is_stale`]).
    pub owner: Option<Claimed>,
}

/// Why a claim could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The file exists but could not be read.
    #[error("cannot read the owner claim {}: {source} (check --state-dir)", path.display())]
    Read {
        /// The claim's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a claim.
    #[error(
        "the owner claim {} is not one ({reason}): the partition's next owner rewrites it; \
         delete it if no process runs the job",
        path.display()
    )]
    Corrupt {
        /// The claim's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The claim could not be written or removed.
    #[error("cannot write the owner claim {}: {source} (check that --state-dir is writable)", path.display())]
    Write {
        /// The claim's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A topic has at least one partition.
    #[error("a topic of {0} partitions holds no key: give the topic's partition count")]
    NoPartitions(i32),
}

/// `DIR/partition-P/JOB/OWNER`: who serves partition `partition` of job `job`.
pub fn claim_path(state_dir: &Path, job: &str, partition: i32) -> PathBuf {
    task_dir(state_dir, partition).join(job).join(OWNER_FILE)
}

/// The claim on partition `partition` of job `job` run with `--state-dir state_dir`;
/// `None` if nobody claims it.
pub fn read_claim(
    state_dir: &Path,
    job: &str,
    partition: i32,
) -> Result<Option<Claimed>, OwnerError> {
    let path = claim_path(state_dir, job, partition);
    let read_error = |source| OwnerError::Read {
        path: path.clone(),
        source,
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    // Content and time of the same file (a new claim may be renamed over the path meanwhile).
    let modified = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(read_error)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    let claim: OwnerClaim = serde_json::from_str(&text).map_err(|e| OwnerError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    Ok(Some(Claimed { claim, age }))
}

/// Where `key` lives in job `job` run per partition with `--state-dir state_dir` over a
/// topic of `partitions` partitions whose producers placed keys with `partitioner`: its
/// partition, and the claim of the process serving it (Kafka Streams' `queryMetadataForKey`,
/// for a service of your own; `GET /api/v1/state/{table}/{key}` on any process of the run
/// answers the same way over HTTP).
pub fn key_owner(
    state_dir: &Path,
    job: &str,
    key: &[u8],
    partitions: i32,
    partitioner: Partitioner,
) -> Result<KeyOwner, OwnerError> {
    let partition = partitioner
        .partition(key, partitions)
        .ok_or(OwnerError::NoPartitions(partitions))?;
    Ok(KeyOwner {
        partition,
        owner: read_claim(state_dir, job, partition)?,
    })
}

/// This process's claims (see the module docs).
#[derive(Debug)]
pub(crate) struct Claims {
    state_dir: PathBuf,
    job: String,
    /// `PID@START` of this process run.
    process: String,
    /// This process's API, once its server is up (`None` inside: it serves none).
    api: OnceLock<Option<String>>,
}

impl Claims {
    pub(crate) fn new(state_dir: &Path, job: &str) -> Claims {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Claims {
            state_dir: state_dir.to_path_buf(),
            job: job.to_string(),
            process: format!("{}@{started}", std::process::id()),
            api: OnceLock::new(),
        }
    }

    /// Sets the API address claims name (once; before any task starts).
    pub(crate) fn set_api(&self, api: Option<String>) {
        let _ = self.api.set(api);
    }

    /// The API address this process's claims name.
    pub(crate) fn api(&self) -> Option<String> {
        self.api.get().cloned().flatten()
    }

    /// True if `claim` is this process run's.
    pub(crate) fn is_mine(&self, claim: &OwnerClaim) -> bool {
        claim.process == self.process
    }

    /// The claim on `partition`, if any.
    pub(crate) fn read(&self, partition: i32) -> Result<Option<Claimed>, OwnerError> {
        read_claim(&self.state_dir, &self.job, partition)
    }

    /// Claims `partition` for this process, replacing any claim on it.
    pub(crate) fn claim(&self, partition: i32) -> Result<(), OwnerError> {
        let path = claim_path(&self.state_dir, &self.job, partition);
        let claim = OwnerClaim {
            api: self.api(),
            process: self.process.clone(),
        };
        let write_error = |source| OwnerError::Write {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.state_dir);
        fs::create_dir_all(dir).map_err(write_error)?;
        // Beside the claim (a rename within one directory is atomic), named by this process
        // so that two processes never write the same temporary file.
        let temporary = dir.join(format!(".{OWNER_FILE}.{}.tmp", std::process::id()));
        let text = serde_json::to_vec(&claim).map_err(|e| write_error(io::Error::other(e)))?;
        File::create(&temporary)
            .and_then(|mut f| f.write_all(&text))
            .and_then(|()| fs::rename(&temporary, &path))
            .map_err(write_error)
    }

    /// Renews this process's claim on `partition` (whose task runs here); claims it again
    /// if the claim is gone; leaves another process's claim alone.
    pub(crate) fn renew(&self, partition: i32) -> Result<(), OwnerError> {
        match self.read(partition) {
            Ok(None) | Err(OwnerError::Corrupt { .. }) => self.claim(partition),
            Ok(Some(claimed)) if self.is_mine(&claimed.claim) => {
                let path = claim_path(&self.state_dir, &self.job, partition);
                File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()))
                    .map_err(|source| OwnerError::Write { path, source })
            }
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes this process's claim on `partition`, if it is still there.
    pub(crate) fn release(&self, partition: i32) -> Result<(), OwnerError> {
        match self.read(partition)? {
            Some(claimed) if self.is_mine(&claimed.claim) => {
                let path = claim_path(&self.state_dir, &self.job, partition);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(OwnerError::Write { path, source: e })
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(dir: &Path, api: &str) -> Claims {
        let claims = Claims::new(dir, "job");
        claims.set_api(Some(api.to_string()));
        claims
    }

    #[test]
    fn a_claim_is_written_read_renewed_and_released_by_its_process_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = claims(dir.path(), "http://127.0.0.1:1");
        assert_eq!(first.read(2).expect("readable"), None);
        first.claim(2).expect("claimed");
        let seen = first.read(2).expect("readable").expect("a claim");
        assert_eq!(seen.claim.api.as_deref(), Some("http://127.0.0.1:1"));
        assert!(first.is_mine(&seen.claim) && !seen.is_stale());
        assert!(dir.path().join("partition-2/job/OWNER").is_file());

        // A second process (another PID@START) takes the partition over: the first can
        // neither renew nor remove the new claim.
        let second = Claims {
            process: "other@1".into(),
            ..claims(dir.path(), "http://127.0.0.1:2")
        };
        second.claim(2).expect("claimed");
        first.renew(2).expect("renew leaves it");
        first.release(2).expect("release leaves it");
        let seen = first.read(2).expect("readable").expect("a claim");
        assert_eq!(seen.claim.api.as_deref(), Some("http://127.0.0.1:2"));
        assert!(!first.is_mine(&seen.claim) && second.is_mine(&seen.claim));
        second.release(2).expect("released");
        assert_eq!(first.read(2).expect("readable"), None);
        second.release(2).expect("releasing twice is fine");
    }

    #[test]
    fn an_unrenewed_claim_goes_stale_and_renewing_makes_it_fresh() {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = claims(dir.path(), "http://127.0.0.1:1");
        owner.claim(0).expect("claimed");
        let path = claim_path(dir.path(), "job", 0);
        let long_ago = SystemTime::now() - LEASE - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(long_ago))
            .expect("aged");
        let seen = owner.read(0).expect("readable").expect("a claim");
        assert!(seen.is_stale(), "{seen:?}");
        owner.renew(0).expect("renewed");
        assert!(!owner
            .read(0)
            .expect("readable")
            .expect("a claim")
            .is_stale());
        // Gone (deleted by hand): renewing claims it again.
        fs::remove_file(&path).expect("removed");
        owner.renew(0).expect("claimed again");
        assert!(owner.read(0).expect("readable").is_some());
    }

    #[test]
    fn a_corrupt_claim_says_where_it_is_and_the_owner_rewrites_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = claims(dir.path(), "http://127.0.0.1:1");
        let path = claim_path(dir.path(), "job", 1);
        fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        fs::write(&path, b"{half").expect("written");
        let e = owner.read(1).expect_err("corrupt");
        assert!(e.to_string().contains("partition-1/job/OWNER"), "{e}");
        owner.renew(1).expect("rewritten");
        assert!(owner.read(1).expect("readable").is_some());
    }

    #[test]
    fn a_key_s_owner_is_the_claim_on_its_partition() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = Partitioner::Consistent
            .partition(b"a17", 4)
            .expect("a partition");
        claims(dir.path(), "http://127.0.0.1:7")
            .claim(partition)
            .expect("claimed");
        let found =
            key_owner(dir.path(), "job", b"a17", 4, Partitioner::Consistent).expect("found");
        assert_eq!(found.partition, partition);
        assert_eq!(
            found.owner.map(|o| o.claim.api),
            Some(Some("http://127.0.0.1:7".to_string()))
        );
        let e = key_owner(dir.path(), "job", b"a17", 0, Partitioner::Consistent)
            .expect_err("no partitions");
        assert!(matches!(e, OwnerError::NoPartitions(0)), "{e}");
    }
}
