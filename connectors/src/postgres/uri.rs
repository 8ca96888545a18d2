//! Parsing `postgres://USER@HOST:PORT/DB?table=T&key=K[,K..]` into a [`PostgresSpec`].
//!
//! weir's parameters (`table`, `key`, `sink`, `batch`, `max_pending`, `connect_timeout`)
//! are taken out of the query, percent-decoded; the rest of the URI goes to the client's
//! own parser (`postgres::Config`), which knows the connection parameters.

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use super::{PostgresError, DEFAULT_CONNECT_TIMEOUT};

/// What `postgres://` URIs look like, for error messages.
const USAGE: &str = "use postgres://USER@HOST:PORT/DB?table=TABLE&key=FIELD[,FIELD..]";

/// Where and how a PostgreSQL sink writes.
#[derive(Clone)]
pub struct PostgresSpec {
    /// The client's connection settings (host, port, user, database, timeout, ..).
    pub(super) config: postgres::Config,
    /// The table rows go to.
    pub table: String,
    /// The fields that identify a row (the conflict target), in order.
    pub key: Vec<String>,
    /// The sink's name in `weir_commits`.
    pub sink: String,
    /// Rows per write without checkpoints.
    pub batch: usize,
    /// Distinct keys one checkpoint interval may change before the job fails.
    pub max_pending: usize,
}

impl fmt::Debug for PostgresSpec {
    // Not derived: the client's settings hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PostgresSpec {
    /// `None` if `uri` is not a `postgres://` (or `postgresql://`) URI; else the spec or
    /// what is wrong with it.
    pub fn parse(uri: &str) -> Option<Result<PostgresSpec, PostgresError>> {
        let scheme = scheme(uri)?;
        Some(named(uri, parse_uri(uri, scheme)))
    }

    /// `HOST:PORT` of the first host (what connecting names when it fails).
    pub fn endpoint(&self) -> String {
        endpoint(&self.config)
    }

    /// The database.
    pub fn database(&self) -> &str {
        database(&self.config)
    }

    /// `postgres://USER@HOST:PORT/DB table T key K` (no password), for `weir describe`
    /// and messages.
    pub fn describe(&self) -> String {
        format!(
            "postgres://{}@{}/{} table {} key {}",
            self.config.get_user().unwrap_or(""),
            self.endpoint(),
            self.database(),
            self.table,
            self.key.join(",")
        )
    }
}

/// The scheme of `uri` if it is a PostgreSQL URI.
pub(super) fn scheme(uri: &str) -> Option<&'static str> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find(|s| uri.starts_with(s))
}

/// `parsed`, or its problem as an error naming `uri` (without its password).
pub(super) fn named<T>(uri: &str, parsed: Result<T, String>) -> Result<T, PostgresError> {
    parsed.map_err(|problem| PostgresError::Uri {
        uri: without_password(uri),
        problem,
    })
}

/// `HOST:PORT` of the first host of `config`.
pub(super) fn endpoint(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// The database `config` connects to (the user's name when none is given, as the server
/// does).
pub(super) fn database(config: &postgres::Config) -> &str {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
}

fn parse_uri(uri: &str, scheme: &str) -> Result<PostgresSpec, String> {
    let mut table = None;
    let mut key = None;
    let mut sink = None;
    let mut batch = 5000;
    let mut max_pending = 1_000_000;
    let config = parse_connection(uri, scheme, USAGE, |name, value| {
        match name {
            "table" => table = Some(value),
            "key" => key = Some(value),
            "sink" => sink = Some(value),
            "batch" => batch = positive(name, &value)?,
            "max_pending" => max_pending = positive(name, &value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let table = table
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("names no table: add ?table=NAME ({USAGE})"))?;
    let key: Vec<String> = key
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if key.is_empty() {
        return Err(format!(
            "names no key: add &key=FIELD, the result field(s) that identify a row of \
             `{table}`, comma-separated when several ({USAGE})"
        ));
    }
    if let Some(twice) = key.iter().enumerate().find(|(i, k)| key[..*i].contains(k)) {
        return Err(format!("key= names `{}` twice", twice.1));
    }
    Ok(PostgresSpec {
        config,
        sink: sink.unwrap_or_else(|| table.clone()),
        table,
        key,
        batch,
        max_pending,
    })
}

/// The client's settings from `uri`: each query parameter is offered to `take` first
/// (percent-decoded), which says whether it is weir's own; `connect_timeout` is weir's for
/// every URI; the rest go to the client's parser. `usage` is what the URI should look like.
pub(super) fn parse_connection(
    uri: &str,
    scheme: &str,
    usage: &str,
    mut take: impl FnMut(&str, String) -> Result<bool, String>,
) -> Result<postgres::Config, String> {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    if base.len() == scheme.len() {
        return Err(format!("names no server: {usage}"));
    }
    let mut timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut client_params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not NAME=VALUE"))?;
        let value = decode(v, name)?;
        if name == "connect_timeout" {
            timeout = weir_engine::parse_duration(&value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("connect_timeout={value}: give a duration, e.g. 10s or 500ms")
                })?;
        } else if !take(name, value)? {
            client_params.push(pair);
        }
    }
    let client_uri = match client_params.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", client_params.join("&")),
    };
    let mut config =
        postgres::Config::from_str(&client_uri).map_err(|e| format!("{e} ({usage})"))?;
    if config.get_hosts().is_empty() {
        return Err(format!("names no host: {usage}"));
    }
    if config.get_user().is_none() {
        return Err(format!("names no user: {usage}"));
    }
    config.connect_timeout(timeout);
    Ok(config)
}

pub(super) fn decode(value: &str, name: &str) -> Result<String, String> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| format!("{name}= does not decode to UTF-8"))
}

pub(super) fn positive(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| format!("{name}={value}: give a positive number"))
}

/// `uri` with the password after `USER:` replaced by `***`, for messages.
fn without_password(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]),
            None => uri.to_string(),
        },
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long connecting to `spec`'s server may take.
    fn connect_timeout(spec: &PostgresSpec) -> Duration {
        spec.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    fn parse(uri: &str) -> Result<PostgresSpec, String> {
        match PostgresSpec::parse(uri) {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err("not a postgres URI".into()),
        }
    }

    #[test]
    fn parses_table_composite_key_and_client_parameters() {
        let spec = parse(
            "postgres://weir@127.0.0.1:5433/reads?table=win%20agg&key=key,window_start\
             &application_name=w&connect_timeout=2s&batch=100",
        )
        .unwrap();
        assert_eq!(spec.table, "win agg");
        assert_eq!(spec.key, ["key", "window_start"]);
        assert_eq!(spec.sink, "win agg");
        assert_eq!(spec.batch, 100);
        assert_eq!(spec.endpoint(), "127.0.0.1:5433");
        assert_eq!(spec.database(), "reads");
        assert_eq!(connect_timeout(&spec), Duration::from_secs(2));
        assert_eq!(spec.config.get_application_name(), Some("w"));
        assert_eq!(
            spec.describe(),
            "postgres://weir@127.0.0.1:5433/reads table win agg key key,window_start"
        );
        let other = parse("postgresql://u@h:1/d?table=t&key=k&sink=mirror").unwrap();
        assert_eq!(
            (other.sink.as_str(), connect_timeout(&other)),
            ("mirror", DEFAULT_CONNECT_TIMEOUT)
        );
    }

    #[test]
    fn says_what_is_missing_or_wrong() {
        assert_eq!(parse("kafka://b:1/t").unwrap_err(), "not a postgres URI");
        let cases = [
            ("postgres://u@h:1/d?key=k", "names no table"),
            ("postgres://u@h:1/d?table=t", "names no key"),
            ("postgres://u@h:1/d?table=t&key=a,a", "`a` twice"),
            ("postgres://u@h:1/d?table=t&key=k&batch=0", "batch=0"),
            (
                "postgres://u@h:1/d?table=t&key=k&connect_timeout=x",
                "connect_timeout=x",
            ),
            ("postgres://h:1/d?table=t&key=k", "names no user"),
            ("postgres://u@h:1/d?table=t&key=k&bogus=1", "bogus"),
            ("postgres://?table=t&key=k", "names no server"),
        ];
        for (uri, wanted) in cases {
            let error = parse(uri).unwrap_err();
            assert!(error.contains(wanted), "{uri}: {error}");
        }
    }

    #[test]
    fn messages_do_not_show_the_password() {
        let error = parse("postgres://u:secret@h:1/d?table=t").unwrap_err();
        assert!(
            error.contains("u:***@h:1/d") && !error.contains("secret"),
            "{error}"
        );
        let spec = parse("postgres://u:secret@h:1/d?table=t&key=k").unwrap();
        assert!(!format!("{spec:?}").contains("secret"));
    }
}
