//! The routes of the HTTP API (see the module docs of [`super`] for the table) and their
//! errors: every failure answers with a status and `{"error": "..."}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use weir_engine::JobControl;

use super::dead_letters::{self, MAX_LIMIT};
use super::served::{lock, JobState, SavepointStatus, Serving};
use super::state;
use super::views::JobView;

/// How long a savepoint may take before it is reported failed.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(600);

/// Dead letters returned when no `limit` is given.
const DEFAULT_DEAD_LETTERS: usize = 20;

/// The dashboard page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

pub(super) type Shared = State<Arc<Serving>>;

/// Every route of the API.
pub(crate) fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/v1/job", get(job))
        .route("/api/v1/history", get(history))
        .route("/api/v1/checkpoints", get(checkpoints))
        .route("/api/v1/savepoints", post(start_savepoint))
        .route("/api/v1/savepoints/{id}", get(savepoint))
        .route("/api/v1/stop", post(stop))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/state", get(state::tables))
        .route("/api/v1/state/{table}", get(state::scan))
        .route("/api/v1/state/{table}/{key}", get(state::lookup))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: the API is under /api/v1 (job, history, checkpoints, \
                 savepoints, stop, dead-letters, state), metrics at /metrics, the dashboard at /",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method: reads are GET, savepoints and stop \
                 are POST",
            )
        })
        .with_state(serving)
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Refuses a request without the bearer token, when one is set.
pub(super) fn authorize(serving: &Serving, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &serving.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if given == token => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer TOKEN` with the job's --api-token",
        )),
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics(State(serving): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        serving.job.render_metrics(),
    )
}

async fn job(State(serving): Shared) -> Json<JobView> {
    Json(JobView::of(&serving))
}

async fn history(State(serving): Shared) -> impl IntoResponse {
    Json(json!({ "points": lock(&serving.timeline).points() }))
}

async fn checkpoints(State(serving): Shared) -> impl IntoResponse {
    let snapshot = serving
        .job
        .control()
        .map(|c| c.checkpoints())
        .unwrap_or_default();
    Json(snapshot)
}

/// Refuses to change a job that has ended.
fn running(serving: &Serving) -> Result<(), ApiError> {
    match serving.state().0 {
        JobState::Finished | JobState::Failed => Err(ApiError::new(
            StatusCode::CONFLICT,
            "the job has ended: savepoints and stops are for a running job",
        )),
        JobState::Running | JobState::Stopping => Ok(()),
    }
}

async fn start_savepoint(State(serving): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    running(&serving)?;
    if serving.job.control().is_none() {
        return Err(no_savepoints());
    }
    let id = new_savepoint(&serving);
    let running = serving.clone();
    tokio::task::spawn_blocking(move || {
        let status = match running
            .job
            .control()
            .map(|c| c.savepoint(SAVEPOINT_TIMEOUT))
        {
            Some(Ok(path)) => SavepointStatus::Completed { path },
            Some(Err(reason)) => SavepointStatus::Failed { reason },
            None => SavepointStatus::Failed {
                reason: no_savepoints().message,
            },
        };
        lock(&running.savepoints).insert(id, status);
    });
    Ok(accepted_savepoint(id))
}

async fn savepoint(State(serving): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no savepoint {id}: ids are those POST /api/v1/savepoints answered with"),
        )
    };
    let id: u64 = id.parse().map_err(|_| bad())?;
    let status = lock(&serving.savepoints)
        .get(&id)
        .cloned()
        .ok_or_else(bad)?;
    Ok(Json(savepoint_body(status, "id", id)).into_response())
}

async fn stop(
    State(serving): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    running(&serving)?;
    let with_savepoint = match query.get("savepoint").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("savepoint={other}: give true or false"),
            ))
        }
    };
    if !with_savepoint {
        serving.job.stop();
        return Ok((StatusCode::ACCEPTED, Json(json!({ "state": "stopping" }))).into_response());
    }
    if serving.job.control().is_none() {
        return Err(no_savepoints());
    }
    // A job still being built is waited for: off the server's thread.
    let asking = serving.clone();
    let answer = tokio::task::spawn_blocking(move || {
        asking.job.control().map_or_else(
            || Err(no_savepoints().message),
            JobControl::stop_with_savepoint,
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|reason| ApiError::new(StatusCode::CONFLICT, reason))?;
    // The answer comes once the final checkpoint is kept, and the job ends right after:
    // the process waits for this answer before it exits.
    let _owed = serving.owe_answer();
    let id = new_savepoint(&serving);
    let waited = tokio::task::spawn_blocking(move || answer.recv_timeout(SAVEPOINT_TIMEOUT)).await;
    let status = match waited {
        Ok(Ok(Ok(path))) => SavepointStatus::Completed { path },
        Ok(Ok(Err(reason))) => SavepointStatus::Failed { reason },
        Ok(Err(_)) | Err(_) => SavepointStatus::Failed {
            reason: "the job ended without a final checkpoint (it failed or was cancelled)".into(),
        },
    };
    lock(&serving.savepoints).insert(id, status.clone());
    Ok(Json(savepoint_body(status, "savepoint", id)).into_response())
}

async fn dead_letters(
    State(serving): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&serving, &headers)?;
    let limit = match query.get("limit") {
        None => DEFAULT_DEAD_LETTERS,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit={n}: give a number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let Some(path) = serving.dead_letters.clone() else {
        return Ok(Json(json!({ "path": null, "dead_letters": [] })).into_response());
    };
    let read = path.clone();
    let letters = tokio::task::spawn_blocking(move || dead_letters::tail(&read, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
    Ok(Json(json!({ "path": path, "dead_letters": letters })).into_response())
}

fn no_savepoints() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "this run takes no savepoints: run a job in one process with --checkpoint-interval and \
         --state-dir (a Kafka-partitioned run checkpoints each partition on its own)",
    )
}

/// A savepoint's status as JSON, with its id under `key`.
fn savepoint_body(status: SavepointStatus, key: &str, id: u64) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    body[key] = json!(id);
    body
}

/// Savepoints whose status is kept; older ones are forgotten.
const KEPT_SAVEPOINTS: usize = 100;

/// Registers a new savepoint in progress; its id.
fn new_savepoint(serving: &Serving) -> u64 {
    let mut savepoints = lock(&serving.savepoints);
    let id = savepoints.keys().next_back().map_or(1, |last| last + 1);
    savepoints.insert(id, SavepointStatus::InProgress);
    while savepoints.len() > KEPT_SAVEPOINTS {
        savepoints.pop_first();
    }
    id
}

fn accepted_savepoint(id: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/savepoints/{id}"))],
        Json(json!({ "id": id, "status": "in_progress" })),
    )
        .into_response()
}
