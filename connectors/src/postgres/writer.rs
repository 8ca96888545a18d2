//! The connection and what the sink knows of its table: applies a set of row changes in one
//! transaction, creating the table and adding columns as rows need them.

use postgres::{Client, NoTls, Transaction};

use super::changes::{Change, Row};
use super::{reason, sql, PostgresError, PostgresSpec};

/// Keys per `DELETE` statement.
const KEYS_PER_DELETE: usize = 1000;

/// A connection to the sink's database.
pub(super) struct Writer {
    client: Client,
    spec: PostgresSpec,
    /// The table's columns, in order; empty until the table is known to exist.
    columns: Vec<String>,
    /// How many columns the staging table has (0: none yet).
    staged_columns: usize,
}

impl Writer {
    /// Connects (within the spec's connect timeout).
    pub(super) fn connect(spec: &PostgresSpec) -> Result<Writer, PostgresError> {
        let client = spec
            .config
            .connect(NoTls)
            .map_err(|e| PostgresError::Connect {
                endpoint: spec.endpoint(),
                database: spec.database().to_string(),
                user: spec.config.get_user().unwrap_or_default().to_string(),
                reason: reason(&e),
            })?;
        Ok(Writer {
            client,
            spec: spec.clone(),
            columns: Vec::new(),
            staged_columns: 0,
        })
    }

    /// A statement error: what was being done on which table, and the server's reason.
    pub(super) fn error(&self, action: impl Into<String>, e: &postgres::Error) -> PostgresError {
        failed(&self.spec, action, e)
    }

    pub(super) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(super) fn spec(&self) -> &PostgresSpec {
        &self.spec
    }

    /// Applies `changes` in one transaction; `also` runs in it before the commit (the
    /// checkpoint bookkeeping).
    pub(super) fn apply(
        &mut self,
        changes: &[Change],
        also: impl FnOnce(&mut Transaction<'_>) -> Result<(), PostgresError>,
    ) -> Result<(), PostgresError> {
        let mut columns = std::mem::take(&mut self.columns);
        let spec = self.spec.clone();
        let mut tx = match self.client.transaction() {
            Ok(tx) => tx,
            Err(e) => return Err(failed(&spec, "begin a transaction", &e)),
        };
        let result = prepare_table(&mut tx, &spec, &mut columns, changes)
            .and_then(|()| delete(&mut tx, &spec, changes))
            .and_then(|()| upsert(&mut tx, &spec, &columns, changes, &mut self.staged_columns))
            .and_then(|()| also(&mut tx))
            .and_then(|()| {
                tx.commit().map_err(|e| {
                    failed(&spec, format!("commit rows of table `{}`", spec.table), &e)
                })
            });
        if result.is_err() {
            // Columns added in a transaction that did not commit do not exist.
            columns.clear();
            self.staged_columns = 0;
        }
        self.columns = columns;
        result
    }
}

/// A statement on `spec`'s database failed: what was being done, and the server's reason.
pub(super) fn failed(
    spec: &PostgresSpec,
    action: impl Into<String>,
    e: &postgres::Error,
) -> PostgresError {
    let mut reason = reason(e);
    if reason.contains("no unique or exclusion constraint") {
        reason.push_str(&format!(
            "; give `{}` a primary key or unique index on ({}), or let weir create the \
             table (name one that does not exist)",
            spec.table,
            spec.key.join(", ")
        ));
    }
    PostgresError::Statement {
        endpoint: format!("{}/{}", spec.endpoint(), spec.database()),
        action: action.into(),
        reason,
    }
}

/// Makes sure `table` exists (created from the first upserted row) and has a column for
/// every field of `changes`; `columns` is what is known of it.
fn prepare_table(
    tx: &mut Transaction<'_>,
    spec: &PostgresSpec,
    columns: &mut Vec<String>,
    changes: &[Change],
) -> Result<(), PostgresError> {
    let table = &spec.table;
    if columns.is_empty() {
        *columns = read_columns(tx, spec)?;
    }
    if columns.is_empty() {
        let Some(first) = changes.iter().find_map(|c| match c {
            Change::Upsert(row) => Some(row),
            Change::Delete(_) => None,
        }) else {
            return Ok(());
        };
        tx.batch_execute(&sql::create_table(table, &spec.key, first))
            .map_err(|e| failed(spec, format!("create table `{table}`"), &e))?;
        *columns = read_columns(tx, spec)?;
    }
    for change in changes {
        for (field, value) in change.row() {
            if columns.iter().any(|c| c == field) {
                continue;
            }
            let Some(ty) = sql::column_type(value) else {
                continue;
            };
            tx.batch_execute(&sql::add_column(table, field, ty))
                .map_err(|e| {
                    failed(spec, format!("add column `{field}` to table `{table}`"), &e)
                })?;
            columns.push(field.clone());
        }
    }
    Ok(())
}

/// The columns of `spec`'s table in order; none if it does not exist.
fn read_columns(
    tx: &mut Transaction<'_>,
    spec: &PostgresSpec,
) -> Result<Vec<String>, PostgresError> {
    let table = &spec.table;
    let action = || format!("read the columns of table `{table}`");
    tx.query(sql::COLUMNS, &[&sql::ident(table)])
        .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
        .map_err(|e| failed(spec, action(), &e))
}

/// The rows of `changes` that are upserts (`upserts`) or deletes.
fn rows_of(changes: &[Change], upserts: bool) -> Vec<&Row> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(row) if upserts => Some(row),
            Change::Delete(row) if !upserts => Some(row),
            _ => None,
        })
        .collect()
}

fn delete(
    tx: &mut Transaction<'_>,
    spec: &PostgresSpec,
    changes: &[Change],
) -> Result<(), PostgresError> {
    for chunk in rows_of(changes, false).chunks(KEYS_PER_DELETE) {
        tx.batch_execute(&sql::delete(&spec.table, &spec.key, chunk))
            .map_err(|e| failed(spec, format!("delete rows of table `{}`", spec.table), &e))?;
    }
    Ok(())
}

/// Upserts the rows of `changes`: `COPY` into a temporary staging table (created when
/// the table's columns change), then one `INSERT .. SELECT .. ON CONFLICT` from it. 1.5x
/// the rows a second of multi-row `INSERT .. ON CONFLICT` statements (BENCHMARKS.md).
fn upsert(
    tx: &mut Transaction<'_>,
    spec: &PostgresSpec,
    columns: &[String],
    changes: &[Change],
    staged_columns: &mut usize,
) -> Result<(), PostgresError> {
    use std::io::Write;
    let rows = rows_of(changes, true);
    if rows.is_empty() {
        return Ok(());
    }
    let table = &spec.table;
    let action = format!("stage rows for table `{table}`");
    if *staged_columns != columns.len() {
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS {0}; CREATE TEMP TABLE {0} (LIKE {1}) ON COMMIT DELETE ROWS",
            sql::STAGE,
            sql::ident(table)
        ))
        .map_err(|e| failed(spec, action.clone(), &e))?;
        *staged_columns = columns.len();
    }
    let mut writer = tx
        .copy_in(&sql::copy_in(columns))
        .map_err(|e| failed(spec, action.clone(), &e))?;
    writer
        .write_all(sql::copy_rows(columns, &rows).as_bytes())
        .map_err(|e| PostgresError::Statement {
            endpoint: format!("{}/{}", spec.endpoint(), spec.database()),
            action: action.clone(),
            reason: e.to_string(),
        })?;
    writer.finish().map_err(|e| failed(spec, action, &e))?;
    tx.batch_execute(&sql::upsert_staged(table, &spec.key, columns))
        .map_err(|e| failed(spec, format!("upsert staged rows into table `{table}`"), &e))?;
    Ok(())
}
