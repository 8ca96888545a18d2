//! The checkpoint in flight ([`InFlight`]): which participants acknowledged it, and
//! whether it can end (all acknowledged, one failed, or the timeout passed). The
//! coordinator decides with it; it holds no clock and no thread of its own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::state::ParticipantState;
use super::CheckpointId;

/// The checkpoint in flight: the acknowledgements it collected so far.
pub(super) struct InFlight {
    pub(super) id: CheckpointId,
    pub(super) is_final: bool,
    pub(super) started: Instant,
    pub(super) acks: Vec<Option<ParticipantState>>,
    pub(super) failed: Option<String>,
    /// Who asked for this checkpoint to be kept as a savepoint.
    pub(super) savepoint_for: Vec<Sender<Result<PathBuf, String>>>,
}

impl InFlight {
    /// Takes participant `participant`'s acknowledgement of checkpoint `id` (that of an
    /// earlier checkpoint is ignored). The first failure is kept, under the participant's
    /// name (`who`).
    pub(super) fn ack(
        &mut self,
        participant: usize,
        id: CheckpointId,
        result: Result<ParticipantState, String>,
        who: impl FnOnce() -> String,
    ) {
        if id != self.id {
            return;
        }
        match result {
            Ok(state) => self.acks[participant] = Some(state),
            Err(reason) => {
                self.failed
                    .get_or_insert_with(|| format!("{}: {reason}", who()));
            }
        }
    }

    /// Whether the checkpoint can end at `now`: every participant acknowledged it, or it
    /// failed (a participant's failure, or not acknowledged within `timeout`).
    pub(super) fn decided(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.failed.is_none() && now.saturating_duration_since(self.started) > timeout {
            self.failed = Some(format!("not acknowledged by all tasks within {timeout:?}"));
        }
        self.failed.is_some() || self.acks.iter().all(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(id: CheckpointId, participants: usize, started: Instant) -> InFlight {
        InFlight {
            id,
            is_final: false,
            started,
            acks: vec![None; participants],
            failed: None,
            savepoint_for: Vec::new(),
        }
    }

    fn sink_state() -> Result<ParticipantState, String> {
        Ok(ParticipantState::Sink { pre_commit: None })
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[test]
    fn a_checkpoint_completes_only_once_every_participant_acknowledged_it() {
        let start = Instant::now();
        let mut f = in_flight(3, 2, start);
        f.ack(1, 3, sink_state(), || "sink#0".into());
        assert!(
            !f.decided(start, TIMEOUT),
            "participant 0 has not acknowledged"
        );
        f.ack(0, 3, sink_state(), || "input#0".into());
        assert!(f.decided(start, TIMEOUT));
        assert!(f.failed.is_none());
    }

    #[test]
    fn an_acknowledgement_of_an_earlier_checkpoint_does_not_count() {
        let start = Instant::now();
        let mut f = in_flight(5, 1, start);
        f.ack(0, 4, sink_state(), || "sink#0".into());
        f.ack(0, 4, Err("disk full".into()), || "sink#0".into());
        assert!(!f.decided(start, TIMEOUT));
        assert!(
            f.failed.is_none(),
            "a late failure of checkpoint 4 fails nothing now"
        );
    }

    #[test]
    fn a_failure_ends_the_checkpoint_naming_the_first_participant_that_failed() {
        let start = Instant::now();
        let mut f = in_flight(2, 3, start);
        f.ack(2, 2, Err("disk full".into()), || "out#0".into());
        f.ack(0, 2, Err("cannot read".into()), || "in#0".into());
        assert!(f.decided(start, TIMEOUT));
        assert_eq!(f.failed.as_deref(), Some("out#0: disk full"));
    }

    #[test]
    fn a_checkpoint_not_acknowledged_in_time_fails() {
        let start = Instant::now();
        let mut f = in_flight(1, 1, start);
        assert!(!f.decided(start + TIMEOUT, TIMEOUT));
        assert!(f.decided(start + TIMEOUT + Duration::from_millis(1), TIMEOUT));
        let failed = f.failed.unwrap_or_default();
        assert!(
            failed.contains("not acknowledged by all tasks within 60s"),
            "{failed}"
        );
    }
}
