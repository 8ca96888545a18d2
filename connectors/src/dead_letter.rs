//! Dead letters as connectors make them: the [`DeadLetter`] and [`Raw`] types (the
//! engine's, re-exported), how much of an over-long line one keeps, and how a source reads a
//! position written by a release whose sources kept the dead-letter file themselves.
//!
//! A source keeps the dead letters of a poll and hands them to the runtime
//! ([`weir_engine::Source::take_dead_letters`]); they leave the source node by its
//! dead-letter output ([`weir_engine::Stream::dead_letters`]) and a job writes them with an
//! ordinary sink, [`crate::AppendFileSink`] for one JSON line each in one file, exactly once
//! with checkpoints. No source writes a file or keeps a dead-letter count in its position.
//!
//! An over-long line keeps its first [`KEPT_OF_LONG_LINE`] bytes, cut back to a whole
//! character when they are text (a cut through a multi-byte character does not make them
//! binary).

use weir_engine::StateMismatch;
pub use weir_engine::{DeadLetter, Raw};

/// How much of an over-long line (past a source's line limit) its dead letter keeps: the
/// line itself may be of any size, and is never held whole.
pub const KEPT_OF_LONG_LINE: usize = 1024;

/// Checks the `dead_letter_bytes` of a position of version 1, written by a release whose
/// sources wrote the dead-letter file and cut it back to that length on a restore. The
/// dead-letter sink now owns the file and its state, and a checkpoint of that release has
/// none for it: with no dead letters written yet nothing is lost and the position is read
/// (the field is ignored); with some, the sink could not keep them, so the restore is
/// refused.
pub(crate) fn refuse_old_dead_letters(kind: &'static str, bytes: u64) -> Result<(), StateMismatch> {
    if bytes == 0 {
        return Ok(());
    }
    Err(StateMismatch::Older {
        kind,
        reason: format!(
            "its source wrote {bytes} bytes of dead letters itself, which this weir's \
             dead-letter sink cannot take over: finish the run with the weir that wrote the \
             checkpoint, or start over with --replay-from beginning"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_position_is_read_without_dead_letters_and_refused_with_some() {
        assert_eq!(refuse_old_dead_letters("file source", 0), Ok(()));
        let refused = refuse_old_dead_letters("file source", 120)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("120 bytes of dead letters") && refused.contains("--replay-from"),
            "{refused}"
        );
    }
}
