//! Queryable state of a job run as one task per Kafka partition over two processes, through
//! the real `weir` binary, real HTTP and a real Kafka-compatible broker (see
//! `tests/common/broker.rs`):
//!
//! - The partitioner weir uses to find a key's partition is the one librdkafka used: keys
//!   produced with librdkafka's `consistent_random` (its default, which weir's own producers
//!   use) and `murmur2_random` (the Java client's function) land, on a real topic of 7
//!   partitions, where `weir_connectors::kafka::Partitioner` says.
//! - `account-balances` over a 4-partition topic keyed by account, two processes: every
//!   account asked on either process is answered 200 with the reference balance by the
//!   process that runs its partition's task, and 421 naming the other process's address by
//!   the other; following that address gives the 200. A scan on each covers its own
//!   partitions and names the other's owner. After the owner of some partitions is killed
//!   with SIGKILL, the survivor first still names it (its claim is fresh; the address now
//!   refuses connections), answers 421 or 503 with Retry-After while the group notices,
//!   and then answers 200 with the reference balance from the dead one's checkpoints.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::Value;
use tempfile::TempDir;

use common::accounts::balances;
use common::broker::{last_assignment, Broker, GROUP_TIMING};
use common::follow_run::{api_addr, client, Process, LIMIT};
use weir_connectors::kafka::Partitioner;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 4;
const EVENTS: u64 = 20_000;
const ACCOUNTS: u64 = 200;

/// Where librdkafka delivered each keyed record: (key, partition).
#[derive(Default)]
struct Placed(Mutex<Vec<(String, i32)>>);

impl ClientContext for Placed {}

impl ProducerContext for Placed {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let message = match result {
            Ok(message) => message,
            Err((e, _)) => panic!("a record was not delivered: {e}"),
        };
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        self.0.lock().unwrap().push((key, message.partition()));
    }
}

#[test]
fn librdkafka_places_each_key_where_the_partitioner_says() {
    let dir = TempDir::new().unwrap();
    let broker = Broker::start(dir.path());
    let partitions = 7;
    broker.create_topic("placed", partitions);
    let mut keys: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
    keys.extend([
        "x".repeat(1000),
        "ключ-42".into(),
        "{\"n\":1}".into(),
        "7".into(),
    ]);
    for (librdkafka, ours) in [
        ("consistent_random", Partitioner::Consistent),
        ("murmur2_random", Partitioner::Murmur2),
    ] {
        let producer: BaseProducer<Placed> = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("partitioner", librdkafka)
            .create_with_context(Placed::default())
            .unwrap();
        for key in &keys {
            producer
                .send(BaseRecord::to("placed").key(key).payload("{}"))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let placed = std::mem::take(&mut *producer.context().0.lock().unwrap());
        assert_eq!(
            placed.len(),
            keys.len(),
            "{librdkafka}: every record delivered"
        );
        for (key, partition) in &placed {
            assert_eq!(
                ours.partition(key.as_bytes(), partitions),
                Some(*partition),
                "{librdkafka} put `{key}` in partition {partition}"
            );
        }
        let used: BTreeSet<i32> = placed.iter().map(|(_, p)| *p).collect();
        assert_eq!(used.len(), partitions as usize, "{librdkafka}: {used:?}");
    }
}

/// An HTTP answer: status, JSON body, and the headers a routed answer sets.
struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
    retry_after: Option<String>,
}

/// `GET url`; `None` if the server cannot be reached.
fn ask(url: &str) -> Option<Answer> {
    let mut response = client().get(url).call().ok()?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, retry_after) = (header("location"), header("retry-after"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_json()
        .unwrap_or_else(|e| panic!("the answer ({status}) to {url} is not JSON: {e}"));
    Some(Answer {
        status,
        body,
        location,
        retry_after,
    })
}

/// One `weir run account-balances` process of the run per partition.
struct Member {
    process: Process,
    /// `http://127.0.0.1:PORT`.
    api: String,
}

impl Member {
    fn start(dir: &TempDir, broker: &Broker, name: &str) -> Member {
        let input = broker.uri(
            "accounts",
            &format!("group=balances&start=earliest&tasks=per-partition&{GROUP_TIMING}"),
        );
        let path = |p: &str| dir.path().join(p).into_os_string();
        let mut args: Vec<OsString> = ["run", "account-balances", "--input", &input]
            .map(OsString::from)
            .into();
        args.extend(["--output".into(), path("out")]);
        args.extend(["--state-dir".into(), path("state")]);
        for a in [
            "--checkpoint-interval",
            "200ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--quiet",
        ] {
            args.push(a.into());
        }
        let mut process = Process::start(WEIR, &args, dir.path().join(format!("{name}.stderr")));
        let api = format!("http://{}", api_addr(&mut process));
        Member { process, api }
    }

    fn assigned(&self) -> Vec<i32> {
        last_assignment(&self.process.stderr()).unwrap_or_default()
    }

    fn lookup(&self, account: &str) -> Answer {
        let url = format!("{}/api/v1/state/balances/{account}", self.api);
        ask(&url).unwrap_or_else(|| panic!("{} does not answer", self.api))
    }

    /// The balances a scan of this process answers, and the whole answer.
    fn scan(&self) -> (BTreeMap<String, i64>, Value) {
        let url = format!("{}/api/v1/state/balances?limit=10000", self.api);
        let answer = ask(&url).unwrap_or_else(|| panic!("{} does not answer", self.api));
        let entries = match answer.status {
            200 => answer.body["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let balances = entries
            .iter()
            .map(|e| {
                let key = e["key"].as_str().unwrap().to_string();
                (key, e["value"]["balance"].as_i64().unwrap())
            })
            .collect();
        (balances, answer.body)
    }
}

/// Polls `ready` every 100 ms until it gives a value; fails after `LIMIT` with what it
/// last saw and both processes' stderr.
fn wait_for<T>(members: &[&Member], mut ready: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        let seen = match ready() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if started.elapsed() > LIMIT {
            let logs: Vec<String> = members.iter().map(|m| m.process.stderr()).collect();
            panic!(
                "not there within {LIMIT:?}: {seen}\n{}",
                logs.join("\n---\n")
            );
        }
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_process_answers_its_keys_and_sends_callers_to_the_owner_of_the_others() {
    let dir = TempDir::new().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("accounts", PARTITIONS);
    let file = dir.path().join("accounts.jsonl");
    let gen = |output: &str, extra: &[&str]| {
        let args = [
            "gen",
            "accounts",
            "--events",
            &EVENTS.to_string(),
            "--keys",
            &ACCOUNTS.to_string(),
            "--output",
            output,
        ];
        common::run_ok(WEIR, args.iter().chain(extra)).unwrap();
    };
    // The same events (the generator is deterministic) in a file, for the reference, and
    // in the topic, keyed by account so each account lives in one partition.
    gen(file.to_str().unwrap(), &[]);
    gen(&broker.uri("accounts", ""), &["--key-field", "account"]);
    let want = balances(&file);
    assert_eq!(want.len() as u64, ACCOUNTS);

    let a = Member::start(&dir, &broker, "a");
    let b = Member::start(&dir, &broker, "b");
    let members = [&a, &b];
    // Both own partitions, all four between them.
    wait_for(&members, || {
        let (pa, pb) = (a.assigned(), b.assigned());
        let all: BTreeSet<i32> = pa.iter().chain(&pb).copied().collect();
        let split = !pa.is_empty() && !pb.is_empty() && all.len() == 4 && pa.len() + pb.len() == 4;
        split
            .then_some(())
            .ok_or(format!("assigned: a {pa:?}, b {pb:?}"))
    });
    let (pa, pb) = (a.assigned(), b.assigned());
    // Every event applied: the two scans together hold every account once, with its
    // reference balance.
    wait_for(&members, || {
        let (sa, sb) = (a.scan().0, b.scan().0);
        let overlap = sa.keys().filter(|k| sb.contains_key(*k)).count();
        let mut both = sa.clone();
        both.extend(sb.clone());
        (overlap == 0 && both == want).then_some(()).ok_or(format!(
            "scans: a {} accounts, b {}, both {overlap}; {} differ from the reference",
            sa.len(),
            sb.len(),
            want.iter().filter(|(k, v)| both.get(*k) != Some(v)).count()
        ))
    });
    // Each scan says what it covered and who serves the rest.
    for (member, own, other) in [(&a, &pa, &b), (&b, &pb, &a)] {
        let (_, body) = member.scan();
        let covered: BTreeSet<i64> = body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["partition"].as_i64().unwrap())
            .collect();
        let own: BTreeSet<i64> = own.iter().map(|&p| i64::from(p)).collect();
        assert_eq!(covered, own, "{body}");
        for elsewhere in body["elsewhere"].as_array().unwrap() {
            assert_eq!(elsewhere["owner"], other.api.as_str(), "{body}");
        }
        assert_eq!(body["elsewhere"].as_array().unwrap().len(), 4 - own.len());
        assert_eq!(body["partition_count"], PARTITIONS);
    }

    // Every account on both processes: 200 from the owner, 421 naming it from the other.
    let mut answered = BTreeMap::new();
    for (account, balance) in &want {
        let partition = Partitioner::Consistent
            .partition(account.as_bytes(), PARTITIONS)
            .unwrap();
        for (member, own, other) in [(&a, &pa, &b), (&b, &pb, &a)] {
            let answer = member.lookup(account);
            *answered
                .entry((member.api.clone(), answer.status))
                .or_insert(0) += 1;
            let body = &answer.body;
            assert_eq!(body["partition"], partition, "{account}: {body}");
            if own.contains(&partition) {
                assert_eq!(answer.status, 200, "{account}: {body}");
                assert_eq!(body["value"]["balance"], *balance, "{account}");
                continue;
            }
            assert_eq!(answer.status, 421, "{account}: {body}");
            assert_eq!(body["owner"], other.api.as_str(), "{account}: {body}");
            let location = answer.location.expect("a Location header");
            assert_eq!(
                location,
                format!("{}/api/v1/state/balances/{account}", other.api)
            );
            let followed = ask(&location).expect("the owner answers");
            assert_eq!(followed.status, 200, "{location}: {}", followed.body);
            assert_eq!(followed.body["value"]["balance"], *balance, "{account}");
        }
    }
    for member in &members {
        for status in [200, 421] {
            assert!(
                answered
                    .get(&(member.api.clone(), status))
                    .is_some_and(|&n| n > 0),
                "{} never answered {status}: {answered:?}",
                member.api
            );
        }
    }
    let bad = ask(&format!(
        "{}/api/v1/state/balances/a1?partitioner=fnv1a",
        a.api
    ))
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    // The owner of b's partitions dies without a word: its claims stay behind.
    let (account, balance) = want
        .iter()
        .find(|(k, _)| {
            let p = Partitioner::Consistent.partition(k.as_bytes(), PARTITIONS);
            p.is_some_and(|p| pb.contains(&p))
        })
        .unwrap();
    let mut b = b;
    b.process.child.kill().unwrap();
    b.process.child.wait().unwrap();
    let killed = Instant::now();
    let first = a.lookup(account);
    assert_eq!(first.status, 421, "right after the kill: {}", first.body);
    assert_eq!(first.body["owner"], b.api.as_str());
    assert!(
        ask(&first.location.unwrap()).is_none(),
        "the dead owner's address still answers"
    );
    // Then a takes b's partitions over from their checkpoints (after the group's session
    // timeout); meanwhile it says where to go or to come back, never a wrong value.
    let mut seen = BTreeSet::new();
    let taken_over = wait_for(&[&a], || {
        let answer = a.lookup(account);
        seen.insert(answer.status);
        match answer.status {
            // Restored from b's last checkpoint, then reading on from its offsets.
            200 if answer.body["value"]["balance"] != *balance => {
                Err(format!("catching up: {}", answer.body))
            }
            200 => Ok(answer.body),
            421 => {
                assert_eq!(answer.body["owner"], b.api.as_str(), "{}", answer.body);
                Err(format!("421: {}", answer.body))
            }
            503 => {
                assert_eq!(answer.retry_after.as_deref(), Some("1"), "{}", answer.body);
                Err(format!("503: {}", answer.body))
            }
            status => panic!("{status} while taking over: {}", answer.body),
        }
    });
    assert_eq!(taken_over["value"]["balance"], *balance, "{taken_over}");
    eprintln!(
        "a answered {account} again {:?} after b was killed; statuses meanwhile: {seen:?}",
        killed.elapsed()
    );
    assert_eq!(a.assigned().len(), 4, "seen meanwhile: {seen:?}");
}
