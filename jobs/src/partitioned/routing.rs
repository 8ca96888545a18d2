//! Queryable state in one process of a job run as one task per Kafka partition: where a key
//! is answered ([`StateRouter::place`]), and what this process can scan.
//!
//! ```text
//!  GET /api/v1/state/balances/a17 on any process
//!    key bytes ──partitioner (consistent: CRC-32, murmur2)──▶ partition P of N
//!    P's task runs here?            ──▶ ask it (200 / 404, with "partition": P)
//!    P read to its end (until=end)? ──▶ 410
//!    fresh claim of another process ──▶ 421 {"partition": P, "owner": "http://HOST:PORT"}
//!    no claim, a stale one, or ours ──▶ 503 + Retry-After (a rebalance is moving P)
//! ```
//!
//! The partition is computed as the producers of the input topic placed the key (see
//! [`weir_connectors::kafka::partitioner`]): the topic must be keyed by the table's key, as
//! the job's results already require (`weir gen --key-field`). The owner comes from the
//! claims in the shared state directory ([`super::owners`]). A scan covers the partitions
//! whose tasks run here, and names the owners of the others, so a caller can ask each
//! process once and merge the answers in key order.
//!
//! # Invariants
//! - A key is answered by the task of its partition only: a process that does not run that
//!   task never answers 200 or 404 for it (it cannot know the value), so a caller that
//!   follows 421s and retries 503s gets the owner's answer or none.
//! - A stale claim never sends a caller anywhere (see [`super::owners`] for what a claim's
//!   age means).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use weir_connectors::kafka::Partitioner;
use weir_engine::QueryableState;

use super::owners::{Claimed, Claims, OwnerError};
use super::{finished_marker, lock, Tasks};

/// Where a key's query is answered.
#[derive(Debug)]
pub(crate) enum Placement {
    /// Its partition's task runs in this process: ask its tables.
    Here {
        partition: i32,
        state: Arc<QueryableState>,
    },
    /// Another process runs its partition's task: its API (`None`: it serves none).
    Elsewhere {
        partition: i32,
        owner: Option<String>,
    },
    /// No live process claims its partition now (a rebalance, or its owner died): ask
    /// again shortly. `last_owner` is the stale claim's API, if there is one.
    Unowned {
        partition: i32,
        last_owner: Option<String>,
        why: String,
    },
    /// Its partition was read to its end (`until=end`): the state went with its task.
    Finished { partition: i32 },
    /// The topic's partition count is not known yet (the process is still joining).
    CountUnknown,
}

/// The decision for a key of `partition`: `here` if its task runs in this process,
/// `finished` if it was read to its end, and the claim on it (`is_mine` tells this
/// process's claims apart). The files behind `finished` and `claim` are read only when a
/// local task does not answer.
pub(crate) fn decide(
    partition: i32,
    here: Option<Arc<QueryableState>>,
    finished: impl FnOnce() -> bool,
    claim: impl FnOnce() -> Result<Option<Claimed>, OwnerError>,
    is_mine: impl Fn(&Claimed) -> bool,
) -> Placement {
    if let Some(state) = here {
        return Placement::Here { partition, state };
    }
    if finished() {
        return Placement::Finished { partition };
    }
    let unowned = |last_owner: Option<String>, why: String| Placement::Unowned {
        partition,
        last_owner,
        why,
    };
    match claim() {
        Ok(None) => unowned(
            None,
            "no process claims it now (the group is assigning it, or no process of the job \
             runs)"
                .into(),
        ),
        Ok(Some(claimed)) if is_mine(&claimed) => unowned(
            None,
            "this process is starting or stopping its task (a rebalance)".into(),
        ),
        Ok(Some(claimed)) if claimed.is_stale() => {
            unowned(
                claimed.claim.api.clone(),
                format!(
                "its last owner ({}) has not renewed its claim for {} s: it died or hangs, and \
                 the group hands its partitions on after the session timeout",
                claimed.claim.api.as_deref().unwrap_or("a process without an API"),
                claimed.age.as_secs()
            ),
            )
        }
        Ok(Some(claimed)) => Placement::Elsewhere {
            partition,
            owner: claimed.claim.api,
        },
        Err(e) => unowned(None, e.to_string()),
    }
}

/// What a process of a run per partition knows for answering state queries (cheap to
/// clone: handles only).
#[derive(Clone)]
pub(crate) struct StateRouter {
    pub(super) tasks: Arc<Mutex<Tasks>>,
    pub(super) claims: Arc<Claims>,
    /// The input topic's partition count; 0 until known.
    pub(super) partitions: Arc<AtomicI32>,
    /// The tables every task has (from the job built once without running it).
    pub(super) catalog: Option<Arc<QueryableState>>,
    pub(super) state_dir: PathBuf,
    pub(super) job: String,
    pub(super) until_end: bool,
}

impl std::fmt::Debug for StateRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRouter")
            .field("job", &self.job)
            .field("partitions", &self.partitions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StateRouter {
    /// The job's queryable tables (names and operators), whether or not a task runs here.
    pub(crate) fn catalog(&self) -> Option<&QueryableState> {
        self.catalog.as_deref()
    }

    /// This process's API, as its claims name it.
    pub(crate) fn own_api(&self) -> Option<String> {
        self.claims.api()
    }

    /// The topic's partition count, if known.
    pub(crate) fn partition_count(&self) -> Option<i32> {
        Some(self.partitions.load(Ordering::SeqCst)).filter(|&n| n > 0)
    }

    /// Where the key `key` (as text; its UTF-8 bytes are the record key) is answered, its
    /// records having been placed by `partitioner`.
    pub(crate) fn place(&self, key: &str, partitioner: Partitioner) -> Placement {
        let Some(partition) = self
            .partition_count()
            .and_then(|n| partitioner.partition(key.as_bytes(), n))
        else {
            return Placement::CountUnknown;
        };
        let here = lock(&self.tasks)
            .running
            .get(&partition)
            .map(|t| t.state.clone());
        decide(
            partition,
            here,
            || self.until_end && finished_marker(&self.state_dir, &self.job, partition).exists(),
            || self.claims.read(partition),
            |c| self.claims.is_mine(&c.claim),
        )
    }

    /// The tables of the tasks running here, by partition.
    pub(crate) fn local(&self) -> BTreeMap<i32, Arc<QueryableState>> {
        lock(&self.tasks)
            .running
            .iter()
            .map(|(p, t)| (*p, t.state.clone()))
            .collect()
    }

    /// Every other partition of the topic with the API of the process that serves it
    /// (`None`: no live owner now, or one without an API).
    pub(crate) fn elsewhere(&self) -> Vec<(i32, Option<String>)> {
        let local = self.local();
        let count = self.partition_count().unwrap_or(0);
        (0..count)
            .filter(|p| !local.contains_key(p))
            .map(|p| {
                let owner = match self.claims.read(p) {
                    Ok(Some(c)) if !c.is_stale() && !self.claims.is_mine(&c.claim) => c.claim.api,
                    _ => None,
                };
                (p, owner)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::owners::{OwnerClaim, LEASE};
    use super::*;

    fn claimed(api: &str, process: &str, age: Duration) -> Result<Option<Claimed>, OwnerError> {
        Ok(Some(Claimed {
            claim: OwnerClaim {
                api: Some(api.to_string()),
                process: process.to_string(),
            },
            age,
        }))
    }

    fn mine(c: &Claimed) -> bool {
        c.claim.process == "me"
    }

    #[test]
    fn a_local_task_answers_even_before_its_claim_is_seen() {
        let state = Arc::new(QueryableState::default());
        let placed = decide(
            3,
            Some(state),
            || false,
            || panic!("no claim is read"),
            mine,
        );
        assert!(
            matches!(placed, Placement::Here { partition: 3, .. }),
            "{placed:?}"
        );
    }

    #[test]
    fn a_fresh_claim_of_another_process_sends_the_caller_there() {
        let fresh = claimed("http://127.0.0.1:9", "other", Duration::from_secs(2));
        match decide(1, None, || false, || fresh, mine) {
            Placement::Elsewhere { partition, owner } => {
                assert_eq!(
                    (partition, owner.as_deref()),
                    (1, Some("http://127.0.0.1:9"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_claim_a_stale_one_or_this_process_s_own_is_no_owner_now() {
        let stale = claimed(
            "http://127.0.0.1:9",
            "other",
            LEASE + Duration::from_secs(1),
        );
        match decide(1, None, || false, || stale, mine) {
            Placement::Unowned {
                last_owner, why, ..
            } => {
                assert_eq!(last_owner.as_deref(), Some("http://127.0.0.1:9"));
                assert!(why.contains("has not renewed its claim for 11 s"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let own = claimed("http://127.0.0.1:8", "me", Duration::ZERO);
        assert!(matches!(
            decide(1, None, || false, || own, mine),
            Placement::Unowned {
                last_owner: None,
                ..
            }
        ));
        assert!(matches!(
            decide(1, None, || false, || Ok(None), mine),
            Placement::Unowned { partition: 1, .. }
        ));
        let unreadable = Err(OwnerError::Corrupt {
            path: "p".into(),
            reason: "r".into(),
        });
        assert!(matches!(
            decide(1, None, || false, || unreadable, mine),
            Placement::Unowned { .. }
        ));
    }

    #[test]
    fn a_finished_partition_is_gone_whoever_claimed_it() {
        let fresh = claimed("http://127.0.0.1:9", "other", Duration::ZERO);
        assert!(matches!(
            decide(0, None, || true, || fresh, mine),
            Placement::Finished { partition: 0 }
        ));
    }
}
