//! `GET /api/v1/state...` in a process of a job run as one task per Kafka partition: the
//! answers of [`StateRouter`] over HTTP.
//!
//! | where the key's partition is | answer |
//! |---|---|
//! | its task runs here | `200 {"key","value","watermark","checkpoint","partition"}`, 404 if the key has no entry |
//! | its task here is restoring its checkpoint | 503 `{"error","partition","owner":this process}`, `Retry-After: 1` |
//! | another process claims it | `421 Misdirected Request {"error","partition","owner":"http://HOST:PORT"}`, `Location:` the same request on the owner |
//! | no live claim (a rebalance, a dead owner) | `503 {"error","partition","owner":null or the stale owner}`, `Retry-After: 1` |
//! | read to its end (`until=end`) | 410 |
//!
//! A scan answers from the tasks running here, in key order, and says which partitions it
//! covered (`partitions`, each with its watermark and last checkpoint) and who serves the
//! others (`elsewhere`): a caller wanting the whole table asks each distinct owner once and
//! merges the entries by key (each key is in one partition), keeping its `limit` smallest.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use weir_connectors::kafka::Partitioner;
use weir_engine::query::{key_order, Scan};
use weir_engine::QueryError;

use super::routes::ApiError;
use super::state::{off_thread, query_error, with_freshness, QUERY_TIMEOUT};
use crate::partitioned::{Placement, StateRouter};

/// How long a caller is asked to wait before asking again while a partition has no owner.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Refuses a table the job does not have, whether or not a task runs here.
fn known_table(router: &StateRouter, table: &str) -> Result<(), ApiError> {
    match router.catalog() {
        Some(catalog) => catalog.table(table).map(|_| ()).map_err(query_error),
        None => Ok(()),
    }
}

/// `GET /api/v1/state/{table}/{key}` (see the module docs).
pub(super) async fn lookup(
    router: StateRouter,
    table: String,
    key: String,
    partitioner: Partitioner,
) -> Result<Response, ApiError> {
    known_table(&router, &table)?;
    // Reads the partition's claim: off the server's thread.
    let asked = key.clone();
    let own_api = router.own_api();
    let placement = off_thread(move || router.place(&asked, partitioner)).await?;
    let partition = match placement {
        Placement::Here { partition, state } => {
            let handle = state.table(&table).map_err(query_error)?;
            let asked = key.clone();
            let lookup = match off_thread(move || handle.get(&asked, QUERY_TIMEOUT)).await? {
                Ok(lookup) => lookup,
                // The task stopped between the routing and the answer: a rebalance.
                Err(QueryError::JobFinished { .. }) => {
                    return Ok(unowned(
                        partition,
                        None,
                        "its task here stopped just now (a rebalance)",
                    ))
                }
                // Its task here is restoring the partition's checkpoint.
                Err(e @ QueryError::NotRunning { .. }) => {
                    return Ok(retry_later(json!({
                        "error": format!("partition {partition}: {e}"),
                        "partition": partition,
                        "owner": own_api,
                    })))
                }
                Err(e) => return Err(query_error(e)),
            };
            return match lookup.entry {
                Some(entry) => {
                    let mut body = with_freshness(
                        json!({ "key": entry.key, "value": entry.value }),
                        lookup.freshness,
                    );
                    body["partition"] = json!(partition);
                    Ok(Json(body).into_response())
                }
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "table `{table}` has no entry for key `{key}` (partition {partition}, \
                         served here)"
                    ),
                )),
            };
        }
        Placement::Elsewhere { partition, owner } => {
            return Ok(misdirected(&table, &key, partitioner, partition, owner));
        }
        Placement::Unowned {
            partition,
            last_owner,
            why,
        } => return Ok(unowned(partition, last_owner, &why)),
        Placement::Finished { partition } => partition,
        Placement::CountUnknown => {
            return Ok(retry_later(json!({
                "error": "the input topic's partition count is not known yet (the process \
                          is joining its group); ask again",
                "partition": null,
                "owner": null,
            })))
        }
    };
    Err(ApiError::new(
        StatusCode::GONE,
        format!(
            "key `{key}` is in partition {partition}, which was read to its end (until=end): \
             its state is no longer served"
        ),
    ))
}

/// 421: the key's partition is another process's.
fn misdirected(
    table: &str,
    key: &str,
    partitioner: Partitioner,
    partition: i32,
    owner: Option<String>,
) -> Response {
    let Some(owner) = owner else {
        let body = json!({
            "error": format!(
                "key `{key}` is in partition {partition}, which another process of this run \
                 serves, but that process serves no HTTP API (--metrics-addr off)"
            ),
            "partition": partition,
            "owner": null,
        });
        return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
    };
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let mut location = format!("{owner}/api/v1/state/{}/{}", encode(table), encode(key));
    if partitioner != Partitioner::default() {
        location.push_str(&format!("?partitioner={partitioner}"));
    }
    let body = json!({
        "error": format!(
            "key `{key}` is in partition {partition} ({partitioner} partitioner), which \
             {owner} serves: ask it there"
        ),
        "partition": partition,
        "owner": owner,
    });
    let mut headers = HeaderMap::new();
    // A claim is text from a shared file: a value that is no header is left out.
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    (StatusCode::MISDIRECTED_REQUEST, headers, Json(body)).into_response()
}

/// 503 with Retry-After: the key's partition has no live owner now.
fn unowned(partition: i32, last_owner: Option<String>, why: &str) -> Response {
    retry_later(json!({
        "error": format!("partition {partition} has no owner to answer now: {why}; ask again"),
        "partition": partition,
        "owner": last_owner,
    }))
}

fn retry_later(body: Value) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())],
        Json(body),
    )
        .into_response()
}

/// `GET /api/v1/state/{table}?..` (see the module docs).
pub(super) async fn scan(
    router: StateRouter,
    table: String,
    scan: Scan,
) -> Result<Response, ApiError> {
    known_table(&router, &table)?;
    let name = table.clone();
    let answered = off_thread(move || {
        let mut covered = Vec::new();
        for (partition, state) in router.local() {
            let result = state
                .table(&name)
                .and_then(|handle| handle.scan(&scan, QUERY_TIMEOUT));
            match result {
                Ok(result) => covered.push((partition, result)),
                // A task stopped meanwhile (a rebalance): a 200 covers its partitions whole.
                Err(QueryError::JobFinished { .. }) => return Err(partition),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok((
            covered,
            router.elsewhere(),
            router.partition_count(),
            scan.limit,
        )))
    })
    .await?;
    let (covered, elsewhere, count, limit) = match answered {
        Ok(Ok(answered)) => answered,
        Ok(Err(e)) => return Err(query_error(e)),
        Err(partition) => {
            return Ok(unowned(
                partition,
                None,
                "its task here stopped just now (a rebalance)",
            ))
        }
    };
    let mut more = false;
    let mut entries = Vec::new();
    let mut partitions = Vec::new();
    let mut watermark = None;
    for (partition, result) in covered {
        more |= result.more;
        entries.extend(result.entries);
        let freshness = result.freshness;
        watermark = match (watermark, freshness.watermark) {
            (None, w) => w,
            (w, None) => w,
            (Some(a), Some(b)) => Some(a.min(b)),
        };
        partitions.push(json!({
            "partition": partition,
            "watermark": freshness.watermark,
            "checkpoint": freshness.checkpoint,
        }));
    }
    entries.sort_by(|a, b| key_order(&a.key, &b.key));
    more |= entries.len() > limit;
    entries.truncate(limit);
    let elsewhere: Vec<Value> = elsewhere
        .into_iter()
        .map(|(partition, owner)| json!({ "partition": partition, "owner": owner }))
        .collect();
    Ok(Json(json!({
        "table": table,
        "entries": entries,
        "more": more,
        "watermark": watermark,
        "partitions": partitions,
        "elsewhere": elsewhere,
        "partition_count": count,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: header::HeaderName) -> Option<&str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_key_of_another_process_s_partition_is_421_with_where_to_ask() {
        let response = misdirected(
            "balances",
            "a 17/x",
            Partitioner::Murmur2,
            2,
            Some("http://127.0.0.1:4242".into()),
        );
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(
            header(&response, header::LOCATION),
            Some("http://127.0.0.1:4242/api/v1/state/balances/a%2017%2Fx?partitioner=murmur2")
        );
        let plain = misdirected(
            "balances",
            "a17",
            Partitioner::Consistent,
            0,
            Some("http://h:1".into()),
        );
        assert_eq!(
            header(&plain, header::LOCATION),
            Some("http://h:1/api/v1/state/balances/a17")
        );
        let nowhere = misdirected("balances", "a17", Partitioner::Consistent, 0, None);
        assert_eq!(nowhere.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(header(&nowhere, header::LOCATION), None);
    }

    #[test]
    fn a_partition_without_an_owner_is_503_with_retry_after() {
        let response = unowned(1, Some("http://127.0.0.1:9".into()), "its owner died");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&response, header::RETRY_AFTER), Some("1"));
    }
}
