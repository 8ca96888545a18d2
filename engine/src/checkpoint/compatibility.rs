//! Whether a restored checkpoint's state fits the job being started: state is matched to
//! operators by uid (as Flink's `uid`), never by position alone.
//!
//! # Rules
//! - Every uid that holds state in the checkpoint must belong to an operator of the job,
//!   of the same kind (`Keyed window` state never goes into a `Keyed top-n`). Otherwise
//!   the restore is refused, naming each uid, unless the run allows non-restored state
//!   (Flink's `--allowNonRestoredState`): then that state is dropped, said on stderr, and
//!   the operator, if any, starts empty.
//! - Operators of the job the checkpoint knows nothing of start empty (a new operator).
//! - Restoring state under derived uids (no `.uid(..)`) works while the job is unchanged,
//!   and is warned about: a change to the job changes them.

use std::collections::{BTreeMap, BTreeSet};

use super::manifest::{uid_of_participant, Manifest, OperatorRecord};
use super::CheckpointError;

/// Checks `restored` against the job's `operators` (by uid) and drops the state that
/// does not fit if `allow_non_restored` says so; fails otherwise.
pub(crate) fn match_restored_state(
    restored: &mut Manifest,
    operators: &BTreeMap<String, OperatorRecord>,
    allow_non_restored: bool,
) -> Result<(), CheckpointError> {
    let with_state: BTreeSet<String> = restored
        .participants
        .keys()
        .map(|key| uid_of_participant(key).to_string())
        .collect();
    let mut unfit = Vec::new();
    let mut derived = Vec::new();
    for uid in &with_state {
        let was = restored.operators.get(uid);
        let was_said = was.map_or_else(String::new, |w| format!(" ({}: {})", w.kind, w.detail));
        match operators.get(uid) {
            None => unfit.push((
                uid.clone(),
                format!("state of `{uid}`{was_said} has no operator in this job"),
            )),
            Some(now) if was.is_some_and(|w| !kinds_fit(&w.kind, &now.kind)) => unfit.push((
                uid.clone(),
                format!(
                    "`{uid}` was{was_said} and is now a {} ({})",
                    now.kind, now.detail
                ),
            )),
            Some(now) if now.derived => derived.push(now.name.clone()),
            Some(_) => {}
        }
    }
    if !unfit.is_empty() && !allow_non_restored {
        return Err(CheckpointError::Incompatible {
            id: restored.id,
            problems: unfit.into_iter().map(|(_, why)| why).collect(),
        });
    }
    for (uid, why) in unfit {
        eprintln!("weir: dropping restored state (--allow-non-restored-state): {why}");
        restored
            .participants
            .retain(|key, _| uid_of_participant(key) != uid);
    }
    if !derived.is_empty() {
        eprintln!(
            "weir: restoring {} by uids derived from their place in the job: set .uid(..) on \
             them, or a change to the job will leave their state behind",
            derived.join(", ")
        );
    }
    Ok(())
}

/// Whether state of an operator of kind `was` fits one of kind `now`: the same kind, or a
/// source read by one instance and one read by several (a file read by one reader before
/// and split over the workers now). A source's positions are checked by the instances
/// they are given to: a parallel source needs as many as it had, a split file shares them
/// out.
fn kinds_fit(was: &str, now: &str) -> bool {
    const SOURCES: [&str; 2] = ["Source", "ParallelSource"];
    was == now || (SOURCES.contains(&was) && SOURCES.contains(&now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ParticipantState;

    fn record(kind: &str, derived: bool) -> OperatorRecord {
        OperatorRecord {
            name: kind.to_string(),
            kind: kind.to_string(),
            detail: String::new(),
            derived,
        }
    }

    fn checkpoint(operators: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::new(
            7,
            "job",
            1,
            false,
            operators
                .iter()
                .map(|(uid, kind)| (uid.to_string(), record(kind, false)))
                .collect(),
            operators
                .iter()
                .map(|(uid, _)| {
                    (
                        format!("{uid}#0"),
                        ParticipantState::Sink { pre_commit: None },
                    )
                })
                .collect(),
            Vec::new(),
        );
        m.completed_unix_ms = 0;
        m
    }

    fn job(operators: &[(&str, &str, bool)]) -> BTreeMap<String, OperatorRecord> {
        operators
            .iter()
            .map(|(uid, kind, derived)| (uid.to_string(), record(kind, *derived)))
            .collect()
    }

    #[test]
    fn state_without_an_operator_is_refused_unless_allowed_then_dropped() {
        let now = job(&[
            ("input", "Source", false),
            ("window", "Keyed window", false),
        ]);
        let mut restored = checkpoint(&[
            ("input", "Source"),
            ("window", "Keyed window"),
            ("top", "Keyed top-n"),
        ]);
        let err = match_restored_state(&mut restored.clone(), &now, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state of `top` (Keyed top-n: ) has no operator"),
            "{err}"
        );
        assert!(err.contains("--allow-non-restored-state"), "{err}");
        match_restored_state(&mut restored, &now, true).unwrap();
        let kept: Vec<&str> = restored.participants.keys().map(String::as_str).collect();
        assert_eq!(kept, ["input#0", "window#0"]);
    }

    #[test]
    fn state_is_never_restored_into_another_kind_of_operator() {
        let now = job(&[("agg", "Keyed top-n", false)]);
        let mut restored = checkpoint(&[("agg", "Keyed window")]);
        let err = match_restored_state(&mut restored.clone(), &now, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`agg` was (Keyed window: ) and is now a Keyed top-n"),
            "{err}"
        );
        match_restored_state(&mut restored, &now, true).unwrap();
        assert!(restored.participants.is_empty());
    }

    #[test]
    fn a_source_read_by_one_instance_restores_into_one_read_by_several() {
        let now = job(&[("input", "ParallelSource", false)]);
        let mut restored = checkpoint(&[("input", "Source")]);
        match_restored_state(&mut restored, &now, false).unwrap();
        assert_eq!(restored.participants.len(), 1);
        let now = job(&[("input", "Keyed window", false)]);
        assert!(match_restored_state(&mut restored, &now, false).is_err());
    }

    #[test]
    fn new_operators_start_empty_and_matching_uids_restore() {
        let now = job(&[
            ("window", "Keyed window", true),
            ("dedup", "Keyed dedup", false),
        ]);
        let mut restored = checkpoint(&[("window", "Keyed window")]);
        match_restored_state(&mut restored, &now, false).unwrap();
        assert_eq!(restored.participants.len(), 1);
    }
}
