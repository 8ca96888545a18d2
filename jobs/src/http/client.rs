//! The CLI's side of the HTTP API: `weir savepoint` and `weir stop` ask a running job's
//! server, started with `--metrics-addr ADDR`, and wait for the answer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// How long the CLI waits for a savepoint (or a stop with one).
const SAVEPOINT_WAIT: Duration = Duration::from_secs(660);

/// A client of one running job's API.
#[derive(Debug)]
pub(crate) struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// The job serving at `addr` (`HOST:PORT`), with its API token if it has one.
    pub(crate) fn new(addr: &str, token: Option<String>) -> ApiClient {
        let agent = ureq::Agent::config_builder()
            // Error answers carry a JSON reason worth showing.
            .http_status_as_error(false)
            // A stop with a savepoint answers once the job drained and kept it.
            .timeout_global(Some(SAVEPOINT_WAIT))
            .build()
            .into();
        ApiClient {
            base: format!("http://{addr}"),
            token,
            agent,
        }
    }

    /// Takes a savepoint and waits for it; its directory.
    pub(crate) fn savepoint(&self) -> anyhow::Result<PathBuf> {
        let answer = self.post("/api/v1/savepoints")?;
        let id = answer["id"]
            .as_u64()
            .context("the job's answer has no savepoint id")?;
        self.wait_for_savepoint(id)
    }

    /// Stops the job gracefully; with `savepoint`, waits for the savepoint its final
    /// checkpoint is kept as, and gives its directory.
    pub(crate) fn stop(&self, savepoint: bool) -> anyhow::Result<Option<PathBuf>> {
        if !savepoint {
            self.post("/api/v1/stop")?;
            return Ok(None);
        }
        let answer = self.post("/api/v1/stop?savepoint=true")?;
        self.savepoint_path(&answer).map(Some)
    }

    /// The directory of a finished savepoint's status, or why there is none.
    fn savepoint_path(&self, status: &Value) -> anyhow::Result<PathBuf> {
        match status["status"].as_str() {
            Some("completed") => {
                let path = status["path"].as_str().context("no savepoint path")?;
                Ok(PathBuf::from(path))
            }
            _ => bail!(
                "the job at {} took no savepoint: {}",
                self.base,
                status["reason"].as_str().unwrap_or("no reason given")
            ),
        }
    }

    fn wait_for_savepoint(&self, id: u64) -> anyhow::Result<PathBuf> {
        let started = Instant::now();
        loop {
            let status = self.get(&format!("/api/v1/savepoints/{id}"))?;
            match status["status"].as_str() {
                Some("in_progress") if started.elapsed() > SAVEPOINT_WAIT => bail!(
                    "savepoint {id} of the job at {} is not done after {SAVEPOINT_WAIT:?}",
                    self.base
                ),
                Some("in_progress") => std::thread::sleep(Duration::from_millis(100)),
                _ => return self.savepoint_path(&status),
            }
        }
    }

    fn post(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.answer(path, request.send_empty())
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.agent.get(format!("{}{path}", self.base));
        self.answer(path, request.call())
    }

    fn answer(
        &self,
        path: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = sent.with_context(|| {
            format!(
                "no job answers at {}: pass the running job's --metrics-addr",
                self.base
            )
        })?;
        let status = response.status();
        let body: Value = response.body_mut().read_json().with_context(|| {
            format!(
                "{}{path} answered {status} without JSON: is a weir job serving there?",
                self.base
            )
        })?;
        if !status.is_success() {
            bail!(
                "the job at {} refused {path}: {}",
                self.base,
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(body)
    }
}
