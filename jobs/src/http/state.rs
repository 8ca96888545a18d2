//! `GET /api/v1/state...`: the job's queryable state tables over HTTP (see
//! [`weir_engine::query`]).
//!
//! A query waits for the keyed worker that owns the key to answer between two batches, so
//! it runs on the blocking pool, never on the server's thread, and gives up after
//! [`QUERY_TIMEOUT`] with 503 (a stalled or very busy job). These endpoints read the job's
//! data: they need the bearer token when one is set.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use weir_engine::query::{Freshness, Scan};
use weir_engine::{QueryError, TableHandle};

use super::routes::{authorize, ApiError, Shared};
use super::served::Serving;

/// How long a request waits for the job's answer.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /api/v1/state`: the queryable tables and the operators that keep them.
pub(super) async fn tables(
    State(serving): Shared,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    let tables: Vec<_> = serving
        .job
        .state()
        .map(|s| s.tables())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, operator)| json!({ "name": name, "operator": operator }))
        .collect();
    Ok(Json(json!({ "tables": tables })).into_response())
}

/// `GET /api/v1/state/{table}/{key}`: one key's value, 404 if the key has none.
pub(super) async fn lookup(
    State(serving): Shared,
    headers: HeaderMap,
    Path((table, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    let handle = table_handle(&serving, &table)?;
    let asked = key.clone();
    let lookup = blocking(move || handle.get(&asked, QUERY_TIMEOUT)).await?;
    match lookup.entry {
        Some(entry) => Ok(Json(with_freshness(
            json!({ "key": entry.key, "value": entry.value }),
            lookup.freshness,
        ))
        .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("table `{table}` has no entry for key `{key}`"),
        )),
    }
}

/// `GET /api/v1/state/{table}?from=&to=&prefix=&filter=&limit=`: entries in key order.
pub(super) async fn scan(
    State(serving): Shared,
    headers: HeaderMap,
    Path(table): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    let handle = table_handle(&serving, &table)?;
    let scan = Scan::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(query_error)?;
    let result = blocking(move || handle.scan(&scan, QUERY_TIMEOUT)).await?;
    Ok(Json(with_freshness(
        json!({ "table": table, "entries": result.entries, "more": result.more }),
        result.freshness,
    ))
    .into_response())
}

fn table_handle(serving: &Arc<Serving>, table: &str) -> Result<TableHandle, ApiError> {
    let Some(state) = serving.job.state() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this run serves no queryable state (a Kafka-partitioned run does not)",
        ));
    };
    state.table(table).map_err(query_error)
}

/// Runs a query on the blocking pool: it waits for the job.
async fn blocking<T: Send + 'static>(
    query: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(query)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(query_error)
}

fn with_freshness(mut body: serde_json::Value, freshness: Freshness) -> serde_json::Value {
    body["watermark"] = json!(freshness.watermark);
    body["checkpoint"] = json!(freshness.checkpoint);
    body
}

/// The status of each query error.
fn query_error(e: QueryError) -> ApiError {
    let status = match &e {
        QueryError::UnknownTable { .. } => StatusCode::NOT_FOUND,
        QueryError::BadKey { .. } | QueryError::BadQuery(_) => StatusCode::BAD_REQUEST,
        QueryError::JobFinished { .. } => StatusCode::GONE,
        QueryError::NotRunning { .. } | QueryError::Busy { .. } | QueryError::Timeout { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        QueryError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}
