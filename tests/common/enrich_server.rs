//! A real HTTP enrichment service on 127.0.0.1 for the asynchronous I/O tests and benchmark
//! (axum on a tokio runtime of its own thread), with injected latency and failures, and
//! the client a job's `map_async` function calls it with (hyper-util's pooled client).
//!
//! `GET /customer/{id}` answers `customer_name(id)` after the latency; an id's first
//! attempt fails with a 500 if the id is a multiple of 7, and outlasts any timeout if it is
//! a multiple of 11; an id with `id % 250 == 125` never answers in time ("dead" ids).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How the service misbehaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Faults {
    /// Added to every answer.
    pub(crate) latency: Duration,
    /// Inject the failures described in the module docs (else every request succeeds).
    pub(crate) failures: bool,
    /// How long an answer that must miss its timeout takes.
    pub(crate) too_slow: Duration,
}

/// The running service.
pub(crate) struct EnrichServer {
    pub(crate) addr: SocketAddr,
    /// Attempts per id so far.
    pub(crate) attempts: Arc<Mutex<HashMap<u64, u32>>>,
}

/// What the service answers for `id`: the synchronous computation the tests compare with.
pub(crate) fn customer_name(id: u64) -> String {
    format!("customer-{}", id.wrapping_mul(2_654_435_761) % 1_000)
}

/// True if the service never answers `id` in time (with failures on).
pub(crate) fn is_dead(id: u64) -> bool {
    id % 250 == 125
}

#[derive(Clone)]
struct Shared {
    faults: Faults,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
}

async fn customer(State(s): State<Shared>, Path(id): Path<u64>) -> (StatusCode, String) {
    let attempt = {
        let mut attempts = s.attempts.lock().unwrap();
        let n = attempts.entry(id).or_default();
        *n += 1;
        *n - 1
    };
    tokio::time::sleep(s.faults.latency).await;
    if s.faults.failures {
        if is_dead(id) || (attempt == 0 && id % 11 == 0) {
            tokio::time::sleep(s.faults.too_slow).await;
        }
        if attempt == 0 && id % 7 == 0 {
            return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure".into());
        }
    }
    (StatusCode::OK, customer_name(id))
}

impl EnrichServer {
    /// Starts the service in a thread of its own (it lives as long as the process).
    pub(crate) fn start(faults: Faults) -> EnrichServer {
        let attempts = Arc::new(Mutex::new(HashMap::new()));
        let shared = Shared {
            faults,
            attempts: attempts.clone(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/customer/{id}", get(customer))
                    .with_state(shared);
                axum::serve(listener, app).await.unwrap();
            })
        });
        EnrichServer { addr, attempts }
    }

    /// The ids requested so far.
    pub(crate) fn requested(&self) -> Vec<u64> {
        self.attempts.lock().unwrap().keys().copied().collect()
    }
}

/// A client of the service at `addr` for a `map_async` function: cheap to clone (a shared
/// connection pool).
#[derive(Clone)]
pub(crate) struct EnrichClient {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl EnrichClient {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        EnrichClient {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The customer name of `id`, or why not.
    pub(crate) async fn customer(&self, id: u64) -> Result<String, String> {
        let uri = format!("http://{}/customer/{id}", self.addr)
            .parse::<hyper::Uri>()
            .map_err(|e| format!("{e}"))?;
        let response = self.client.get(uri).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        match status.is_success() {
            true => Ok(text),
            false => Err(format!("HTTP {status}: {text}")),
        }
    }
}
