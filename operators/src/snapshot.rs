//! What event-time operators keep in a checkpoint besides their state tables: the watermark
//! they had reached, so a restored operator neither fires again what it fired nor treats as
//! on time what was late.

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::Timestamp;

#[derive(Debug, Serialize, Deserialize)]
struct WatermarkSnapshot {
    watermark: Timestamp,
}

/// The snapshot of an operator instance at `watermark`.
pub(crate) fn save_watermark(watermark: Timestamp) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::to_value(WatermarkSnapshot { watermark })?)
}

/// The watermark to resume from, given the snapshots of the instances whose key groups an
/// instance took over. They saw the same watermarks at the barrier; should they differ, the
/// smallest is the safe choice (nothing fires that had not fired before).
pub(crate) fn restored_watermark(snapshots: &[serde_json::Value]) -> Result<Timestamp, BoxError> {
    let mut watermark = None;
    for s in snapshots {
        let s: WatermarkSnapshot = serde_json::from_value(s.clone())?;
        watermark = Some(watermark.map_or(s.watermark, |w: Timestamp| w.min(s.watermark)));
    }
    Ok(watermark.unwrap_or(Timestamp::MIN))
}
