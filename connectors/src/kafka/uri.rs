//! Parsing `kafka://BROKER[,BROKER..]/TOPIC[,TOPIC..]?PARAMS` into a [`KafkaSpec`].
//!
//! # Why not `url::Url`
//! The authority of a Kafka URI is a list of brokers, `a:9092,b:9092`, which is not one
//! host and port: `url::Url` reads `a` as the host and fails on the port `9092,b:9092`. So
//! the authority is split here, by hand, and each broker checked; only the decoding is left
//! to a crate, `percent-encoding` (the rust-url project's own). It is not
//! `form_urlencoded`, which also turns `+` into a space: that is HTML forms' rule, not
//! URIs', and would change a value such as `sasl.password=a+b`.
//!
//! # Invariants
//! - Every broker has a host and a port that is a number in 1..=65535 (`kafka://b/t`, which
//!   librdkafka would take as port 9092, is refused too: a URI names its ports); an IPv6
//!   host is written in brackets, `[::1]:9092`. Brokers are not percent-decoded.
//! - Topic names and every parameter's name and value are percent-decoded after the URI is
//!   split at `/`, `,`, `?`, `&` and `=`, so `%2C`, `%26` and `%3D` stand for themselves:
//!   `group=my%20group` is the group `my group`. What does not decode to UTF-8 is refused.

use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{Delivery, EventTime, KafkaSpec, StartAt};

/// How long a bounded source (`until=end`) waits for a broker to answer when it starts,
/// unless the URI says `connect_timeout=`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `kafka://` URIs look like, for error messages.
const USAGE: &str = "use kafka://HOST:PORT[,HOST:PORT..]/TOPIC[?group=G&start=earliest&until=end\
                     &timestamp=kafka&connect_timeout=30s]";

/// A `kafka://` URI that weir cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{uri}`: {problem}")]
pub struct KafkaUriError {
    /// The URI as given.
    pub uri: String,
    /// What is wrong with it and what to write instead.
    pub problem: String,
}

/// Characters a parameter value keeps as they are when written into a URI: the rest is
/// percent-encoded.
const VALUE_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b',');

/// `value` percent-encoded for a parameter of a `kafka://` URI (which [`KafkaSpec::parse`]
/// decodes), e.g. a transactional id made of a group name with a space in it.
pub fn encode_param_value(value: &str) -> String {
    utf8_percent_encode(value, VALUE_KEEPS).to_string()
}

/// Checks the comma-separated broker list `brokers` (see the module's invariants); says
/// what is wrong with the first bad broker and what to write instead.
fn check_brokers(brokers: &str) -> Result<(), String> {
    let example = "HOST:PORT with a port from 1 to 65535, e.g. localhost:9092";
    for broker in brokers.split(',') {
        let broker = broker.trim();
        if broker.is_empty() {
            return Err(format!(
                "the broker list `{brokers}` has an empty entry: separate brokers with one comma, \
                 each {example}"
            ));
        }
        let (host, port) = match broker.strip_prefix('[') {
            // An IPv6 address: `[::1]:9092`.
            Some(bracketed) => match bracketed.split_once(']') {
                Some((host, rest)) => (Some(host), rest.strip_prefix(':')),
                None => (None, None),
            },
            None => match broker.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!(
                        "broker `{broker}`: write an IPv6 address in brackets, e.g. [::1]:9092"
                    ))
                }
                Some((host, port)) => (Some(host), Some(port)),
                None => (Some(broker), None),
            },
        };
        let host = host.filter(|h| !h.is_empty()).ok_or_else(|| {
            format!("broker `{broker}` names no host: write each broker as {example}")
        })?;
        let port = port.ok_or_else(|| {
            format!("broker `{broker}` has no port: write {host}:PORT, e.g. {host}:9092")
        })?;
        match port.parse::<u16>() {
            Ok(1..) => {}
            _ => {
                return Err(format!(
                    "broker `{broker}`: the port `{port}` is not a number from 1 to 65535; \
                     write {host}:PORT, e.g. {host}:9092"
                ))
            }
        }
    }
    Ok(())
}

/// `text` percent-decoded; `what` names it in the error.
fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            format!("{what} `{text}` does not percent-decode to UTF-8 text: encode bytes as %XX")
        })
}

impl KafkaSpec {
    /// Parses `kafka://BROKERS/TOPICS?PARAMS`; `None` if `uri` is not a Kafka URI.
    pub fn parse(uri: &str) -> Option<Result<KafkaSpec, KafkaUriError>> {
        let rest = uri.strip_prefix("kafka://")?;
        Some(parse_rest(rest).map_err(|problem| KafkaUriError {
            uri: uri.to_string(),
            problem,
        }))
    }
}

fn parse_rest(rest: &str) -> Result<KafkaSpec, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (brokers, topics) = path
        .split_once('/')
        .ok_or_else(|| format!("names no topic: {USAGE}"))?;
    if brokers.is_empty() {
        return Err(format!("names no broker: {USAGE}"));
    }
    check_brokers(brokers)?;
    let topics = topics
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| decode(t, "topic"))
        .collect::<Result<Vec<String>, String>>()?;
    if topics.is_empty() {
        return Err(format!("names no topic: {USAGE}"));
    }
    let mut spec = KafkaSpec {
        brokers: brokers.to_string(),
        topics,
        group: "weir".into(),
        start: StartAt::Committed,
        until_end: false,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        event_time: EventTime::Payload,
        delivery: Delivery::ExactlyOnce,
        partitions: None,
        per_partition_tasks: false,
        properties: Vec::new(),
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not NAME=VALUE"))?;
        let (k, v) = (decode(k, "the parameter name")?, decode(v, k)?);
        let (k, v) = (k.as_str(), v.as_str());
        match k {
            "group" => spec.group = v.to_string(),
            "start" => {
                spec.start = match v {
                    "earliest" => StartAt::Earliest,
                    "latest" => StartAt::Latest,
                    "committed" => StartAt::Committed,
                    ms => StartAt::Timestamp(ms.parse().map_err(|_| {
                        format!(
                            "start={ms}: use earliest, latest, committed or an event time in \
                             epoch milliseconds"
                        )
                    })?),
                }
            }
            "until" if v == "end" => spec.until_end = true,
            "until" => return Err(format!("until={v}: the only bound is until=end")),
            "connect_timeout" => {
                spec.connect_timeout = weir_engine::parse_duration(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        format!(
                            "connect_timeout={v}: give how long a bounded source waits for a \
                             broker to answer, e.g. connect_timeout=30s or 500ms"
                        )
                    })?
            }
            "timestamp" => {
                spec.event_time = match v {
                    "kafka" => EventTime::Kafka,
                    "payload" => EventTime::Payload,
                    _ => {
                        return Err(format!(
                            "timestamp={v}: use kafka (the record's timestamp) or payload (the \
                             job's timestamp field)"
                        ))
                    }
                }
            }
            "delivery" => {
                spec.delivery = match v {
                    "exactly-once" => Delivery::ExactlyOnce,
                    "at-least-once" => Delivery::AtLeastOnce,
                    _ => return Err(format!("delivery={v}: use exactly-once or at-least-once")),
                }
            }
            "partitions" => {
                let listed: Result<Vec<i32>, _> = v.split(',').map(str::parse).collect();
                match listed {
                    Ok(list) if !list.is_empty() && list.iter().all(|&p| p >= 0) => {
                        spec.partitions = Some(list)
                    }
                    _ => {
                        return Err(format!(
                            "partitions={v}: list partition numbers, e.g. partitions=0,2"
                        ))
                    }
                }
            }
            "tasks" if v == "per-partition" => spec.per_partition_tasks = true,
            "tasks" => return Err(format!("tasks={v}: the only value is tasks=per-partition")),
            _ if k.contains('.') => spec.properties.push((k.to_string(), v.to_string())),
            _ => {
                return Err(format!(
                    "unknown parameter `{k}`: use group, start, until, connect_timeout, \
                     timestamp, delivery, partitions, tasks, or a librdkafka property such as \
                     session.timeout.ms"
                ))
            }
        }
    }
    // Partition ends, fixed partitions and partition tasks name partitions by number.
    for (given, what) in [
        (spec.until_end, "until=end"),
        (spec.partitions.is_some(), "partitions="),
        (spec.per_partition_tasks, "tasks=per-partition"),
    ] {
        if given && spec.topics.len() > 1 {
            return Err(format!(
                "{what} reads one topic only (partitions are named by number)"
            ));
        }
    }
    if spec.per_partition_tasks && spec.partitions.is_some() {
        return Err(
            "tasks=per-partition takes its partitions from the group: drop partitions=".into(),
        );
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(uri: &str) -> Option<String> {
        KafkaSpec::parse(uri)
            .and_then(Result::err)
            .map(|e| e.to_string())
    }

    #[test]
    fn parses_a_full_uri() {
        let spec = KafkaSpec::parse(
            "kafka://127.0.0.1:9092/orders?group=g1&start=earliest&until=end&timestamp=kafka&session.timeout.ms=6000&connect_timeout=5s",
        )
        .and_then(Result::ok);
        assert_eq!(
            spec,
            Some(KafkaSpec {
                brokers: "127.0.0.1:9092".into(),
                topics: vec!["orders".into()],
                group: "g1".into(),
                start: StartAt::Earliest,
                until_end: true,
                connect_timeout: Duration::from_secs(5),
                event_time: EventTime::Kafka,
                delivery: Delivery::ExactlyOnce,
                partitions: None,
                per_partition_tasks: false,
                properties: vec![("session.timeout.ms".into(), "6000".into())],
            })
        );
    }

    #[test]
    fn parses_fixed_partitions_and_partition_tasks() {
        let fixed = KafkaSpec::parse("kafka://b:1/t?partitions=0,3").and_then(Result::ok);
        assert_eq!(fixed.and_then(|s| s.partitions), Some(vec![0, 3]));
        let tasks = KafkaSpec::parse("kafka://b:1/t?tasks=per-partition").and_then(Result::ok);
        assert!(tasks.is_some_and(|s| s.per_partition_tasks && s.partitions.is_none()));
    }

    #[test]
    fn defaults_and_timestamps() {
        let spec = KafkaSpec::parse("kafka://b:1/a,b?start=1700000000000").and_then(Result::ok);
        let spec = spec.expect("valid");
        assert_eq!(spec.group, "weir");
        assert_eq!(spec.topics, ["a", "b"]);
        assert_eq!(spec.start, StartAt::Timestamp(1_700_000_000_000));
        assert!(!spec.until_end);
        assert_eq!(spec.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(spec.event_time, EventTime::Payload);
    }

    #[test]
    fn takes_several_brokers_and_bracketed_ipv6() {
        for brokers in ["a:9092,b:9093", "[::1]:9092", "h1:1,[fe80::1]:65535"] {
            let spec = KafkaSpec::parse(&format!("kafka://{brokers}/t")).and_then(Result::ok);
            assert_eq!(spec.map(|s| s.brokers), Some(brokers.to_string()));
        }
    }

    #[test]
    fn a_port_that_is_not_a_port_is_refused_naming_the_broker() {
        for (uri, says) in [
            // The base took `abc` as port 0 and 99999 as 34463 (99999 mod 65536).
            (
                "kafka://127.0.0.1:abc/t",
                "broker `127.0.0.1:abc`: the port `abc`",
            ),
            (
                "kafka://127.0.0.1:99999/t",
                "broker `127.0.0.1:99999`: the port `99999`",
            ),
            (
                "kafka://127.0.0.1:0/t",
                "the port `0` is not a number from 1 to 65535",
            ),
            ("kafka://127.0.0.1:-1/t", "the port `-1`"),
            ("kafka://127.0.0.1:/t", "the port ``"),
            ("kafka://a:9092,b:x/t", "broker `b:x`"),
            (
                "kafka://localhost/t",
                "broker `localhost` has no port: write localhost:PORT",
            ),
            ("kafka://:9092/t", "broker `:9092` names no host"),
            ("kafka://a:1,,b:2/t", "has an empty entry"),
            ("kafka://::1:9092/t", "write an IPv6 address in brackets"),
            ("kafka://[::1]/t", "broker `[::1]` has no port"),
            ("kafka://[::1/t", "names no host"),
            ("kafka:///t", "names no broker"),
        ] {
            let err = problem(uri);
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{uri}: {err:?}"
            );
        }
    }

    #[test]
    fn topics_and_parameters_are_percent_decoded() {
        let spec = KafkaSpec::parse(
            "kafka://b:1/my%2Etopic?group=my%20group&transactional.id=a%26b%3Dc&sasl.password=a+b%25",
        )
        .and_then(Result::ok)
        .expect("valid");
        assert_eq!(spec.topics, ["my.topic"]);
        assert_eq!(spec.group, "my group");
        assert_eq!(spec.transactional_id(), "a&b=c");
        // `+` is a plus in a URI (only HTML forms make it a space).
        assert!(spec
            .properties
            .contains(&("sasl.password".into(), "a+b%".into())));
        let named = KafkaSpec::parse("kafka://b:1/t?%67roup=g").and_then(Result::ok);
        assert_eq!(named.map(|s| s.group), Some("g".into()));
        assert!(problem("kafka://b:1/t?group=%FF").is_some_and(|e| e.contains("UTF-8")));
    }

    #[test]
    fn an_encoded_value_decodes_to_itself() {
        for value in ["weir.my group.t.3", "a&b=c#d%e", "plain-id_1.x", "ü"] {
            let uri = format!("kafka://b:1/t?group={}", encode_param_value(value));
            let spec = KafkaSpec::parse(&uri).and_then(Result::ok);
            assert_eq!(spec.map(|s| s.group), Some(value.to_string()), "{uri}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_do_with_a_reason() {
        assert!(KafkaSpec::parse("tcp://x:1").is_none());
        for (uri, says) in [
            ("kafka://b:1", "names no topic"),
            ("kafka://b:1/", "names no topic"),
            ("kafka://b:1/t?start=soon", "start=soon"),
            ("kafka://b:1/t?until=tomorrow", "until=tomorrow"),
            ("kafka://b:1/t?colour=red", "unknown parameter `colour`"),
            ("kafka://b:1/t?timestamp=wall", "timestamp=wall"),
            ("kafka://b:1/t?connect_timeout=10", "connect_timeout=10"),
            ("kafka://b:1/t?connect_timeout=0", "connect_timeout=0"),
            ("kafka://b:1/a,b?until=end", "one topic only"),
            ("kafka://b:1/a,b?tasks=per-partition", "one topic only"),
            ("kafka://b:1/t?partitions=x", "partitions=x"),
            ("kafka://b:1/t?partitions=-1", "partitions=-1"),
            ("kafka://b:1/t?tasks=many", "tasks=many"),
            (
                "kafka://b:1/t?tasks=per-partition&partitions=1",
                "drop partitions=",
            ),
            ("kafka://b:1/t?delivery=twice", "delivery=twice"),
            ("kafka://b:1/t?group", "`group` is not NAME=VALUE"),
        ] {
            let err = problem(uri);
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{uri}: {err:?}"
            );
        }
    }
}
