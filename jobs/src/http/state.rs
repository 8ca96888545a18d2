//! `GET /api/v1/state...`: the job's queryable state tables over HTTP (see
//! [`weir_engine::query`]); in a job run as one task per Kafka partition, routed by the
//! key's partition (`routed.rs`).
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
use weir_connectors::kafka::Partitioner;
use weir_engine::query::{Freshness, Scan};
use weir_engine::{QueryError, TableHandle};

use super::routed;
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
    let router = serving.job.partitions();
    let state = match &router {
        Some(router) => router.catalog(),
        None => serving.job.state(),
    };
    let tables: Vec<_> = state
        .map(|s| s.tables())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, operator)| json!({ "name": name, "operator": operator }))
        .collect();
    Ok(Json(json!({ "tables": tables })).into_response())
}

/// `GET /api/v1/state/{table}/{key}?partitioner=`: one key's value, 404 if the key has
/// none (`partitioner` matters only in a run per partition).
pub(super) async fn lookup(
    State(serving): Shared,
    headers: HeaderMap,
    Path((table, key)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    let partitioner = partitioner_param(&params)?;
    if let Some(router) = serving.job.partitions() {
        return routed::lookup(router, table, key, partitioner).await;
    }
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
    let scan = Scan::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(query_error)?;
    if let Some(router) = serving.job.partitions() {
        return routed::scan(router, table, scan).await;
    }
    let handle = table_handle(&serving, &table)?;
    let result = blocking(move || handle.scan(&scan, QUERY_TIMEOUT)).await?;
    Ok(Json(with_freshness(
        json!({ "table": table, "entries": result.entries, "more": result.more }),
        result.freshness,
    ))
    .into_response())
}

/// The `partitioner` of a lookup (default `consistent`); any other parameter is refused.
fn partitioner_param(params: &[(String, String)]) -> Result<Partitioner, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let mut partitioner = Partitioner::default();
    for (name, value) in params {
        match name.as_str() {
            "partitioner" => partitioner = value.parse().map_err(|e| bad(format!("{e}")))?,
            other => {
                return Err(bad(format!(
                    "unknown parameter `{other}`: a lookup takes only partitioner= (how the \
                     input topic's producers placed keys, for a run per Kafka partition)"
                )))
            }
        }
    }
    Ok(partitioner)
}

fn table_handle(serving: &Arc<Serving>, table: &str) -> Result<TableHandle, ApiError> {
    let Some(state) = serving.job.state() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this run serves no queryable state",
        ));
    };
    state.table(table).map_err(query_error)
}

/// Runs `work` on the blocking pool (it waits for the job, or reads files).
pub(super) async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Runs a query on the blocking pool: it waits for the job.
async fn blocking<T: Send + 'static>(
    query: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    off_thread(query).await?.map_err(query_error)
}

pub(super) fn with_freshness(
    mut body: serde_json::Value,
    freshness: Freshness,
) -> serde_json::Value {
    body["watermark"] = json!(freshness.watermark);
    body["checkpoint"] = json!(freshness.checkpoint);
    body
}

/// The status of each query error.
pub(super) fn query_error(e: QueryError) -> ApiError {
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
