//! Results as row changes, kept per key until they are written: a later change of a key
//! replaces the earlier one, so a batch changes each row once (as `ON CONFLICT DO UPDATE`
//! requires) and a checkpoint interval costs memory per key changed, not per result.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::PostgresError;

/// The fields of one result.
pub(super) type Row = Map<String, Value>;

/// What a result does to the row of its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Change {
    /// Insert the row, or replace the row of its key.
    Upsert(Row),
    /// Delete the row of the key (the row holds at least the key fields).
    Delete(Row),
}

impl Change {
    /// The change a result makes: a changelog row (`op` of `+I`, `+U`, `-U`, `-D`) by its
    /// kind, any other row an upsert. `op` is dropped from a changelog row.
    pub(super) fn of(value: Value, table: &str) -> Result<Change, PostgresError> {
        let Value::Object(mut row) = value else {
            return Err(PostgresError::Row {
                table: table.to_string(),
                row: shown(&value),
                problem: "is not a JSON object; the sink writes results that serialize to an \
                          object of fields, one column each"
                    .into(),
            });
        };
        let kind = match row.get("op") {
            Some(Value::String(op)) if matches!(op.as_str(), "+I" | "+U" | "-U" | "-D") => {
                Some(op.starts_with('-'))
            }
            _ => None,
        };
        Ok(match kind {
            None => Change::Upsert(row),
            Some(delete) => {
                row.remove("op");
                match delete {
                    true => Change::Delete(row),
                    false => Change::Upsert(row),
                }
            }
        })
    }

    /// The fields of the change's row.
    pub(super) fn row(&self) -> &Row {
        match self {
            Change::Upsert(row) | Change::Delete(row) => row,
        }
    }
}

/// Changes by key, the last one of each key.
#[derive(Debug, Default)]
pub(super) struct Changes {
    by_key: HashMap<String, Change>,
}

impl Changes {
    /// Adds `change`, replacing an earlier change of its key (the values of the `key`
    /// fields, which the row must have).
    pub(super) fn add(
        &mut self,
        change: Change,
        key: &[String],
        table: &str,
    ) -> Result<(), PostgresError> {
        let mut id = String::new();
        for field in key {
            match change.row().get(field) {
                Some(value) if !value.is_null() => {
                    id.push_str(&value.to_string());
                    id.push('\u{1f}');
                }
                _ => {
                    return Err(PostgresError::Row {
                        table: table.to_string(),
                        row: shown(&Value::Object(change.row().clone())),
                        problem: format!(
                            "has no value for the key field `{field}`: every result needs the \
                             fields named by key= ({})",
                            key.join(",")
                        ),
                    })
                }
            }
        }
        self.by_key.insert(id, change);
        Ok(())
    }

    /// Adds every change of `later`, which come after those held.
    pub(super) fn extend(
        &mut self,
        later: Vec<Change>,
        key: &[String],
        table: &str,
    ) -> Result<(), PostgresError> {
        later
            .into_iter()
            .try_for_each(|change| self.add(change, key, table))
    }

    /// Keys changed.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The changes, emptying the set.
    pub(super) fn take(&mut self) -> Vec<Change> {
        self.by_key.drain().map(|(_, change)| change).collect()
    }
}

/// `value` as JSON text for a message, cut after 200 bytes.
fn shown(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> Vec<String> {
        vec!["k".into(), "w".into()]
    }

    #[test]
    fn a_later_change_of_a_key_replaces_the_earlier_one() {
        let mut changes = Changes::default();
        for (k, w, n) in [("a", 0, 1), ("a", 10, 2), ("a", 0, 3)] {
            let change = Change::of(json!({"k": k, "w": w, "n": n}), "t").unwrap();
            changes.add(change, &key(), "t").unwrap();
        }
        let mut rows: Vec<Value> = changes
            .take()
            .into_iter()
            .map(|c| Value::Object(c.row().clone()))
            .collect();
        rows.sort_by_key(|r| r["w"].as_i64());
        assert_eq!(
            rows,
            [json!({"k":"a","w":0,"n":3}), json!({"k":"a","w":10,"n":2})]
        );
        assert!(changes.is_empty());
    }

    #[test]
    fn changelog_rows_are_upserts_and_deletes_without_op() {
        let retract = Change::of(json!({"op":"-U","rank":1,"key":"a"}), "t").unwrap();
        assert_eq!(
            retract,
            Change::Delete(json!({"rank":1,"key":"a"}).as_object().unwrap().clone())
        );
        let insert = Change::of(json!({"op":"+I","rank":1}), "t").unwrap();
        assert_eq!(
            insert,
            Change::Upsert(json!({"rank":1}).as_object().unwrap().clone())
        );
        // An `op` that is not a changelog kind is an ordinary field.
        let plain = Change::of(json!({"op":"buy","rank":1}), "t").unwrap();
        assert_eq!(plain.row().get("op"), Some(&json!("buy")));
    }

    #[test]
    fn rows_that_are_not_objects_or_lack_a_key_are_refused() {
        let error = Change::of(json!([1, 2]), "t").unwrap_err().to_string();
        assert!(
            error.contains("not a JSON object") && error.contains("[1,2]"),
            "{error}"
        );
        let mut changes = Changes::default();
        let change = Change::of(json!({"k":"a","w":null}), "t").unwrap();
        let error = changes.add(change, &key(), "t").unwrap_err().to_string();
        assert!(error.contains("key field `w`"), "{error}");
    }
}
