//! The owner service's client: `GET {base}/owners/{account}` answers the owner's name, 404
//! that the account has none. One pooled HTTP/1 client (hyper-util's) shared by every
//! request of the process; it runs on the tokio runtime of `map_async`.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::{AccountId, Alert};

/// `--owners`: an `http://HOST:PORT` address (no TLS: a service next to the job).
pub(crate) fn base_url(text: &str) -> Result<String, String> {
    let uri: hyper::Uri = text
        .parse()
        .map_err(|e| format!("not a URL ({e}): give http://HOST:PORT"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err("give http://HOST:PORT (plain HTTP)".into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Looks owners up; cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub(crate) struct OwnerDirectory {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl OwnerDirectory {
    pub(crate) fn new(base: String) -> Self {
        OwnerDirectory {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `alert` with its account's owner; an error (retried by `map_async`) if the service
    /// did not answer, or answered anything but the name or 404.
    pub(crate) async fn with_owner(self, alert: Alert) -> Result<Alert, String> {
        let owner = self.owner(&alert.account).await?;
        Ok(Alert { owner, ..alert })
    }

    async fn owner(&self, account: &AccountId) -> Result<Option<String>, String> {
        let url = format!("{}/owners/{}", self.base, account.0);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("account {:?} makes no URL: {e}", account.0))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .to_bytes();
        match status {
            StatusCode::OK => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(format!(
                "GET {url}: HTTP {other}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}
