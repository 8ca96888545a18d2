//! The account events of `weir gen accounts` and the balances they make (the reference
//! the `account-balances` job's queryable table is compared with).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

/// Balances computed from the events in `path` (deposits minus withdrawals per account),
/// skipping lines that are not account events as the job does.
pub(crate) fn balances(path: &Path) -> BTreeMap<String, i64> {
    let mut balances = BTreeMap::new();
    for line in fs::read_to_string(path).expect("input").lines() {
        let event: Value = serde_json::from_str(line).expect("JSON");
        let (Some(account), Some(amount)) = (event["account"].as_str(), event["amount"].as_i64())
        else {
            continue;
        };
        let sign = match event["type"].as_str() {
            Some("deposit") => 1,
            Some("withdraw") => -1,
            _ => continue,
        };
        *balances.entry(account.to_string()).or_insert(0) += sign * amount;
    }
    balances
}
