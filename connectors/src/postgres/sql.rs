//! The SQL text the sink sends: identifiers quoted; upserted rows as `COPY` text into a
//! staging table, then upserted from it; deleted keys as escaped string literals. Values go
//! as text that the server converts to each column's type, so a table's columns may have
//! any type a value's text converts to.
//!
//! Deleted keys are literals, not bind parameters: a statement of thousands of keys would
//! need more than the protocol's 65,535 parameters, and the simple query protocol sends a
//! whole batch in one round trip.

use serde_json::Value;

use super::changes::Row;

/// `name` as an identifier, each part of `schema.table` in double quotes.
pub(super) fn ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The column type of a field whose first value is `value`; `None` for null (not known yet).
pub(super) fn column_type(value: &Value) -> Option<&'static str> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(_) => "BOOLEAN",
        Value::Number(n) if n.is_i64() || n.is_u64() => "BIGINT",
        Value::Number(_) => "DOUBLE PRECISION",
        Value::String(_) => "TEXT",
        Value::Array(_) | Value::Object(_) => "JSONB",
    })
}

/// A value's text as the server reads it into a column: strings as they are, numbers and
/// booleans as written in JSON, arrays and objects as JSON; `None` for null.
fn text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.as_str().into()),
        other => Some(other.to_string().into()),
    }
}

/// Appends `value` as a literal: `NULL` or an escape string (`E'..'`, right whatever
/// `standard_conforming_strings` is).
fn push_literal(sql: &mut String, value: Option<&Value>) {
    match value.and_then(text) {
        None => sql.push_str("NULL"),
        Some(text) => {
            sql.push_str("E'");
            for c in text.chars() {
                match c {
                    '\'' => sql.push_str("''"),
                    '\\' => sql.push_str("\\\\"),
                    c => sql.push(c),
                }
            }
            sql.push('\'');
        }
    }
}

/// `CREATE TABLE IF NOT EXISTS`: the key fields first, then the row's other fields, each
/// typed by its value (a null one as `TEXT`), the key as primary key.
pub(super) fn create_table(table: &str, key: &[String], row: &Row) -> String {
    let mut columns: Vec<&str> = key.iter().map(String::as_str).collect();
    columns.extend(
        row.keys()
            .map(String::as_str)
            .filter(|f| !key.iter().any(|k| k == f)),
    );
    let defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let ty = row.get(*c).and_then(column_type).unwrap_or("TEXT");
            let not_null = if key.iter().any(|k| k == c) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {ty}{not_null}", ident(c))
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        ident(table),
        defs.join(", "),
        column_list(key)
    )
}

/// `ALTER TABLE .. ADD COLUMN IF NOT EXISTS` for a new field.
pub(super) fn add_column(table: &str, column: &str, ty: &str) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}",
        ident(table),
        ident(column)
    )
}

/// `"a", "b"`.
fn column_list<S: AsRef<str>>(columns: &[S]) -> String {
    columns
        .iter()
        .map(|c| ident(c.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ON CONFLICT (key) DO UPDATE SET` every other column (`DO NOTHING` if all are the key).
fn on_conflict(key: &[String], columns: &[String]) -> String {
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
        .collect();
    match set.is_empty() {
        true => format!(" ON CONFLICT ({}) DO NOTHING", column_list(key)),
        false => format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            column_list(key),
            set.join(", ")
        ),
    }
}

/// One `DELETE` of the rows whose key is that of one of `rows`.
pub(super) fn delete(table: &str, key: &[String], rows: &[&Row]) -> String {
    let mut sql = format!(
        "DELETE FROM {} WHERE ({}) IN (",
        ident(table),
        column_list(key)
    );
    for (i, row) in rows.iter().enumerate() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for (j, field) in key.iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            push_literal(&mut sql, row.get(field));
        }
        sql.push(')');
    }
    sql.push(')');
    sql
}

/// The staging table [`copy_rows`] fills: a temporary copy of `table`'s columns.
pub(super) const STAGE: &str = "pg_temp.weir_stage";

/// `COPY` of `columns` into the staging table, in text format.
pub(super) fn copy_in(columns: &[String]) -> String {
    format!("COPY {STAGE} ({}) FROM STDIN", column_list(columns))
}

/// The staged rows upserted into `table`.
pub(super) fn upsert_staged(table: &str, key: &[String], columns: &[String]) -> String {
    let columns_list = column_list(columns);
    format!(
        "INSERT INTO {} ({columns_list}) SELECT {columns_list} FROM {STAGE}{}",
        ident(table),
        on_conflict(key, columns)
    )
}

/// `rows` in `COPY`'s text format: tab-separated, `\N` for null, backslash escapes.
pub(super) fn copy_rows(columns: &[String], rows: &[&Row]) -> String {
    let mut out = String::new();
    for row in rows {
        for (j, column) in columns.iter().enumerate() {
            if j > 0 {
                out.push('\t');
            }
            match row.get(column).and_then(text) {
                None => out.push_str("\\N"),
                Some(text) => {
                    for c in text.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\t' => out.push_str("\\t"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The columns of `table` in order (none if it does not exist).
pub(super) const COLUMNS: &str = "SELECT attname::text FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Row {
        value.as_object().cloned().unwrap()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_table_gets_a_column_per_field_typed_by_its_value() {
        let first =
            row(json!({"key":"a","window_start":0,"avg":1.5,"ok":true,"tags":["x"],"n":null}));
        let key = strings(&["key", "window_start"]);
        assert_eq!(
            create_table("public.win", &key, &first),
            "CREATE TABLE IF NOT EXISTS \"public\".\"win\" (\"key\" TEXT NOT NULL, \
             \"window_start\" BIGINT NOT NULL, \"avg\" DOUBLE PRECISION, \"n\" TEXT, \
             \"ok\" BOOLEAN, \"tags\" JSONB, PRIMARY KEY (\"key\", \"window_start\"))"
        );
        assert_eq!(column_type(&json!(u64::MAX)), Some("BIGINT"));
        assert_eq!(column_type(&json!({"a":1})), Some("JSONB"));
        assert_eq!(column_type(&Value::Null), None);
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn staged_rows_update_every_other_column() {
        assert_eq!(
            upsert_staged("t", &strings(&["k"]), &strings(&["k", "n"])),
            "INSERT INTO \"t\" (\"k\", \"n\") SELECT \"k\", \"n\" FROM pg_temp.weir_stage ON CONFLICT \
             (\"k\") DO UPDATE SET \"n\" = EXCLUDED.\"n\""
        );
        assert_eq!(
            upsert_staged("t", &strings(&["k"]), &strings(&["k"])),
            "INSERT INTO \"t\" (\"k\") SELECT \"k\" FROM pg_temp.weir_stage ON CONFLICT (\"k\") \
             DO NOTHING"
        );
        assert_eq!(
            copy_in(&strings(&["k", "n"])),
            "COPY pg_temp.weir_stage (\"k\", \"n\") FROM STDIN"
        );
    }

    #[test]
    fn deletes_match_whole_keys_quoted() {
        let rows = [
            row(json!({"k":"it's","w":0})),
            row(json!({"k":"b\\","w":{"a":1}})),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(
            delete("t", &strings(&["k", "w"]), &refs),
            "DELETE FROM \"t\" WHERE (\"k\", \"w\") IN ((E'it''s', E'0'), \
             (E'b\\\\', E'{\"a\":1}'))"
        );
    }

    #[test]
    fn copy_text_escapes_separators_and_marks_nulls() {
        let rows = [row(json!({"k":"a\tb\nc\\","n":2}))];
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(
            copy_rows(&strings(&["k", "n", "x"]), &refs),
            "a\\tb\\nc\\\\\t2\t\\N\n"
        );
    }
}
