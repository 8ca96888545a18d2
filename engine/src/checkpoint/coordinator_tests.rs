//! Tests of what a task waiting for a checkpoint learns from the coordinator.

use super::*;

#[test]
fn a_waiting_sink_learns_its_checkpoint_completed_or_can_no_longer_complete() {
    let cancelled = AtomicBool::new(false);
    let status = Status {
        completed: 4,
        aborted: None,
    };
    assert_eq!(Checkpointing::outcome(&status, 4, &cancelled), Some(Ok(())));
    assert_eq!(Checkpointing::outcome(&status, 5, &cancelled), None);
    let aborted = Status {
        completed: 4,
        aborted: Some("the final checkpoint 5 failed".into()),
    };
    // What completed stays completed; what did not, fails with the reason.
    assert_eq!(
        Checkpointing::outcome(&aborted, 3, &cancelled),
        Some(Ok(()))
    );
    assert_eq!(
        Checkpointing::outcome(&aborted, 5, &cancelled),
        Some(Err("the final checkpoint 5 failed".into()))
    );
    cancelled.store(true, Ordering::Relaxed);
    assert_eq!(
        Checkpointing::outcome(&status, 5, &cancelled),
        Some(Err("the job was cancelled".into()))
    );
}
