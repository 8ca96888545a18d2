//! Items kept in event-time order, for operators that buffer until the watermark reaches
//! them (CEP, the temporal join). Equal times keep their arrival order.

use weir_engine::Timestamp;

/// `(time, item)` pairs sorted by time; equal times in arrival order.
pub(crate) type TimeOrdered<T> = Vec<(Timestamp, T)>;

/// Inserts `item` at `ts`, after every item with the same or an earlier time.
pub(crate) fn insert_by_time<T>(items: &mut TimeOrdered<T>, ts: Timestamp, item: T) {
    let at = upto(items, ts);
    items.insert(at, (ts, item));
}

/// How many items have a time at or before `ts` (they come first).
pub(crate) fn upto<T>(items: &TimeOrdered<T>, ts: Timestamp) -> usize {
    items.partition_point(|(t, _)| *t <= ts)
}

/// Removes and returns, in order, the items with a time at or before `watermark`.
pub(crate) fn take_due<T>(
    items: &mut TimeOrdered<T>,
    watermark: Timestamp,
) -> std::vec::Drain<'_, (Timestamp, T)> {
    let due = upto(items, watermark);
    items.drain(..due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_times_keep_arrival_order_and_due_items_come_out_in_order() {
        let mut items = Vec::new();
        for (ts, name) in [(5, "c"), (1, "a"), (5, "d"), (3, "b"), (9, "e")] {
            insert_by_time(&mut items, ts, name);
        }
        let due: Vec<_> = take_due(&mut items, 5).map(|(_, n)| n).collect();
        assert_eq!(due, vec!["a", "b", "c", "d"]);
        assert_eq!(items, vec![(9, "e")]);
    }
}
