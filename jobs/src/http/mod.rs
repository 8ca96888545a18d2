//! The HTTP API and dashboard of a running job: Prometheus metrics, the job's graph and
//! live figures, checkpoints, savepoints, stop, and the dead-letter tail.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the dashboard, one page embedded in the binary |
//! | `GET`, `HEAD /metrics` | Prometheus text exposition |
//! | `GET /api/v1/job` | name, state, options, graph, per node and instance figures |
//! | `GET /api/v1/history` | throughput, latency and watermark lag, once a second for 10 minutes |
//! | `GET /api/v1/checkpoints` | counts and the last 20 checkpoints |
//! | `POST /api/v1/savepoints` | starts a savepoint; answers 202 with its id at once |
//! | `GET /api/v1/savepoints/{id}` | that savepoint's status and directory |
//! | `POST /api/v1/stop` | the graceful stop of SIGTERM; answers 202 at once |
//! | `POST /api/v1/stop?savepoint=true` | the same, keeping the final checkpoint as a savepoint; answers with its directory once it is written |
//! | `GET /api/v1/dead-letters?limit=N` | the last N dead letters (default 20, at most 1000) |
//! | `GET /api/v1/state` | the job's queryable state tables |
//! | `GET /api/v1/state/{table}/{key}` | one key's value, with the watermark and last checkpoint it reflects; 404 if absent |
//! | `GET /api/v1/state/{table}?from=&to=&prefix=&filter=&limit=` | entries in key order (`from` inclusive, `to` exclusive; `filter` like `balance>10000`; `limit` 100 by default, at most 10,000) |
//!
//! In a job run as one task per Kafka partition over several processes, a lookup of a key
//! another process serves answers 421 with that process's address, and a scan covers this
//! process's partitions (see `routed.rs`).
//!
//! The server runs on a tokio runtime of its own thread; the dataflow threads never wait
//! for it, and it reads only the engine's counters and handles ([`ServedJob`]). So no
//! request can stall the job, and a slow request (a savepoint, a file read) runs on the
//! blocking pool while scrapes go on. Connections are capped ([`MAX_CONNECTIONS`]) and a
//! client gets [`HEADER_TIMEOUT`] to send its request head, so idle or one-byte-a-second
//! clients cannot exhaust the process's file descriptors or hold the server up.
//!
//! Endpoints that change the job or read its data (stop, savepoints, dead letters, state) need
//! `Authorization: Bearer TOKEN` when a token is set; `weir run` refuses to serve on an
//! address other than loopback without one.

mod client;
mod dead_letters;
mod routed;
mod routes;
mod served;
mod state;
mod timeline;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

pub(crate) use client::ApiClient;
pub(crate) use served::{OneJob, Outcome, ServedJob, Serving};

/// Connections served at once; more wait in the listen backlog.
pub(crate) const MAX_CONNECTIONS: usize = 4096;

/// How long a client may take to send a request's head.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The address could not be bound.
    #[error("cannot serve HTTP at {addr} (pick another --metrics-addr): {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's thread or runtime could not start.
    #[error("cannot start the HTTP server: {0}")]
    Start(#[source] std::io::Error),
}

impl HttpError {
    /// True if the address is taken by another process.
    pub(crate) fn is_addr_in_use(&self) -> bool {
        matches!(self, HttpError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// A running HTTP server. It serves until the process exits.
#[derive(Debug)]
pub(crate) struct HttpServer {
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free one) and serves `serving` from a thread of its own.
    pub(crate) fn start(addr: &str, serving: Arc<Serving>) -> Result<HttpServer, HttpError> {
        let bind_error = |source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("weir-http-blocking")
            .build()
            .map_err(HttpError::Start)?;
        std::thread::Builder::new()
            .name("weir-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, serving).await,
                        Err(e) => eprintln!("weir: the HTTP server stopped: {e}"),
                    }
                })
            })
            .map_err(HttpError::Start)?;
        Ok(HttpServer { addr: bound })
    }

    /// The address actually bound.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Accepts connections for ever, each served by hyper on a task of its own. (axum's own
/// `serve` offers neither a connection cap nor a header timeout.)
async fn serve(listener: tokio::net::TcpListener, serving: Arc<Serving>) {
    let router = routes::router(serving.clone());
    tokio::spawn(timeline::sample_every_second(serving));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a little rather than spin, and go on.
                eprintln!("weir: the HTTP server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A client gone mid-request is not an error of the job's.
            let _ = connection.await;
        });
    }
}
