//! Queryable state through the `weir` binary and real HTTP: `account-balances` on a
//! generated input read with `--follow` (so the job stays up), its `balances` table asked
//! for points, ranges, prefixes and filters, with the memory and the RocksDB backend at
//! parallelism 1 and 2, against balances computed here from the same events; the token
//! rule; and a restart from a checkpoint that answers the same balances without reading
//! the input again.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use common::accounts::balances;
use common::follow_run::{api_addr, client, get_json, Process, BACKENDS_AT_P1_AND_P2, LIMIT};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Valid events of the input (one malformed line follows them).
const EVENTS: u64 = 40_000;
/// Accounts `a0` .. `a399`: fewer than a scan's largest limit, so one scan sees them all.
const ACCOUNTS: u64 = 400;

/// A generated input and the balances it makes.
struct Input {
    dir: TempDir,
    path: PathBuf,
    balances: BTreeMap<String, i64>,
}

impl Input {
    fn new() -> Input {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("accounts.jsonl");
        let (events, accounts) = (EVENTS.to_string(), ACCOUNTS.to_string());
        common::run_ok(
            WEIR,
            [
                "gen", "accounts", "--events", &events, "--keys", &accounts, "--output",
            ]
            .map(OsString::from)
            .into_iter()
            .chain([path.clone().into()]),
        )
        .expect("weir gen accounts");
        let mut file = OpenOptions::new().append(true).open(&path).expect("input");
        writeln!(
            file,
            r#"{{"account":"a1","type":"steal","amount":5,"ts":1}}"#
        )
        .expect("write");
        let balances = balances(&path);
        assert_eq!(balances.len() as u64, ACCOUNTS, "every account has events");
        Input {
            dir,
            path,
            balances,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `weir run account-balances` on the input, following it, serving its API on a free
    /// loopback port, with `extra` options.
    fn args(&self, run: &str, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["run", "account-balances", "--input"]
            .map(OsString::from)
            .into();
        args.push(self.path.clone().into());
        args.push("--output".into());
        args.push(self.path(&format!("{run}.jsonl")).into());
        for a in ["--follow", "--metrics-addr", "127.0.0.1:0", "--quiet"]
            .iter()
            .chain(extra)
        {
            args.push(a.into());
        }
        args
    }
}

fn get_with(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    get_json(addr, path, token)
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    get_json(addr, path, None)
}

/// Events the `balances` operator received in this run (all instances).
fn applied(addr: &str) -> u64 {
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with("weir_events_in_total{") && l.contains(r#"operator="balances""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the `balances` operator received every valid event. Queries are answered
/// between batches, so every answer after this includes all of them.
fn wait_applied(job: &mut Process, addr: &str) {
    let started = Instant::now();
    while applied(addr) < EVENTS {
        assert!(
            job.is_running() && started.elapsed() < LIMIT,
            "balances applied {} of {EVENTS} events; stderr:\n{}",
            applied(addr),
            job.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A scan's balances by account (entries in the order answered) and the whole answer.
fn scan(addr: &str, query: &str) -> (Vec<(String, i64)>, Value) {
    let (status, body) = get(addr, &format!("/api/v1/state/balances?{query}"));
    assert_eq!(status, 200, "{query}: {body}");
    let entries = body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{query}: no entries in {body}"))
        .iter()
        .map(|e| {
            let key = e["key"].as_str().expect("string key").to_string();
            (
                key,
                e["value"]["balance"].as_i64().expect("numeric balance"),
            )
        })
        .collect();
    (entries, body)
}

/// Checks every kind of query of a job that applied the whole input against `want`.
fn check_queries(addr: &str, want: &BTreeMap<String, i64>) {
    let all: Vec<(String, i64)> = want.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let (got, body) = scan(addr, "limit=10000");
    assert_eq!(got, all, "a scan of every account");
    assert_eq!(body["more"], false);
    assert!(
        body["watermark"].as_i64().is_some(),
        "no watermark: {}",
        body["watermark"]
    );

    for account in ["a0", "a17", "a123", "a399"] {
        let (status, body) = get(addr, &format!("/api/v1/state/balances/{account}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["key"], account);
        assert_eq!(
            body["value"]["balance"].as_i64(),
            Some(want[account]),
            "{account}"
        );
        assert!(body["watermark"].as_i64().is_some() && body.get("checkpoint").is_some());
    }

    let range: Vec<_> = all
        .iter()
        .filter(|(k, _)| k.as_str() >= "a2" && k.as_str() < "a3")
        .cloned()
        .collect();
    let (got, body) = scan(addr, "from=a2&to=a3&limit=5");
    assert_eq!(got, range[..5], "the first 5 of [a2, a3)");
    assert_eq!(body["more"], true);
    let (got, body) = scan(addr, "from=a2&to=a3&limit=10000");
    assert_eq!((got, body["more"].clone()), (range, Value::Bool(false)));

    let prefixed: Vec<_> = all
        .iter()
        .filter(|(k, _)| k.starts_with("a39"))
        .cloned()
        .collect();
    assert_eq!(scan(addr, "prefix=a39").0, prefixed);

    let rich: Vec<_> = all.iter().filter(|(_, b)| *b > 10_000).cloned().collect();
    assert!(
        !rich.is_empty() && rich.len() < all.len(),
        "the input has both kinds"
    );
    assert_eq!(scan(addr, "filter=balance%3E10000&limit=10000").0, rich);
    let overdrawn: Vec<_> = all.iter().filter(|(_, b)| *b <= -1).cloned().collect();
    assert_eq!(
        scan(addr, "filter=balance%3C%3D-1&limit=10000").0,
        overdrawn
    );

    let (status, body) = get(addr, "/api/v1/state/balances/nobody");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("nobody")),
        "{body}"
    );
    let (status, body) = get(addr, "/api/v1/state/balance/a1");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("[balances]")),
        "{body}"
    );
    let (status, body) = get(addr, "/api/v1/state/balances?filter=balance%3E%3Eten");
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(addr, "/api/v1/state/balances?limit=10001");
    assert_eq!(status, 400);
    let (status, body) = get(addr, "/api/v1/state");
    assert_eq!(
        (status, &body["tables"][0]["name"]),
        (200, &Value::from("balances"))
    );
}

#[test]
fn balances_equal_the_reference_with_either_backend_at_parallelism_1_and_2() {
    let input = Input::new();
    for (state, parallelism) in BACKENDS_AT_P1_AND_P2 {
        let run = format!("{state}-p{parallelism}");
        let dir = input.path(&format!("{run}-state"));
        let dir = dir.to_str().expect("UTF-8 path");
        let args = input.args(
            &run,
            &[
                "--state",
                state,
                "--parallelism",
                parallelism,
                "--state-dir",
                dir,
            ],
        );
        let mut job = Process::start(WEIR, &args, input.path(&format!("{run}.stderr")));
        let addr = api_addr(&mut job);
        wait_applied(&mut job, &addr);
        check_queries(&addr, &input.balances);
        check_table_metrics(&run, &addr, parallelism);
        assert!(job.is_running(), "{run}: the job stays up while queried");
    }
}

/// `weir_state_table_entries` of the `balances` operator's table holds one entry per
/// account, summed over its instances, each of which holds some; the window's table, one
/// entry per account with open panes, is there too.
fn check_table_metrics(run: &str, addr: &str, parallelism: &str) {
    let metrics = common::http_get(addr, "/metrics").expect("GET /metrics");
    let family = "weir_state_table_entries";
    let balances = [r#"operator="balances""#, r#"table="process-state""#];
    assert_eq!(
        common::sample_sum(&metrics, family, &balances),
        ACCOUNTS as f64,
        "{run}: one entry per account in the balances table:\n{metrics}"
    );
    let instances: usize = parallelism.parse().expect("a number");
    if instances > 1 {
        for subtask in 0..instances {
            let subtask = format!("subtask=\"{subtask}\"");
            let held = common::sample_sum(&metrics, family, &[balances[0], balances[1], &subtask]);
            assert!(
                held > 0.0 && held < ACCOUNTS as f64,
                "{run}: instance {subtask} holds {held} of {ACCOUNTS} accounts"
            );
        }
    }
    let panes = [r#"operator="window""#, r#"table="window-panes""#];
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(family) && panes.iter().all(|p| l.contains(p))),
        "{run}: no series of the window's table:\n{metrics}"
    );
    let open = common::sample_sum(&metrics, family, &panes);
    assert!(
        (0.0..=ACCOUNTS as f64).contains(&open),
        "{run}: {open} keys with open windows, of {ACCOUNTS} accounts"
    );
}

#[test]
fn the_state_endpoints_need_the_token_when_one_is_set() {
    let input = Input::new();
    let args = input.args("token", &["--state", "memory", "--api-token", "s3cret"]);
    let mut job = Process::start(WEIR, &args, input.path("token.stderr"));
    let addr = api_addr(&mut job);
    wait_applied(&mut job, &addr);
    for path in [
        "/api/v1/state",
        "/api/v1/state/balances/a1",
        "/api/v1/state/balances",
    ] {
        let (status, body) = get(&addr, path);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = get_with(&addr, path, Some("wrong"));
        assert_eq!(status, 401, "{path}");
        let (status, body) = get_with(&addr, path, Some("s3cret"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, body) = get_with(&addr, "/api/v1/state/balances/a1", Some("s3cret"));
    assert_eq!(
        body["value"]["balance"].as_i64(),
        Some(input.balances["a1"])
    );
}

/// The last completed checkpoint an answer reports.
fn answered_checkpoint(addr: &str) -> u64 {
    scan(addr, "limit=1").1["checkpoint"].as_u64().unwrap_or(0)
}

#[test]
fn a_restart_from_a_checkpoint_answers_the_same_balances_without_reading_the_input_again() {
    let input = Input::new();
    for state in ["rocksdb", "memory"] {
        let dir = input.path(&format!("{state}-restart"));
        let dir = dir.to_str().expect("UTF-8 path");
        let extra = [
            "--state",
            state,
            "--parallelism",
            "2",
            "--state-dir",
            dir,
            "--checkpoint-interval",
            "200ms",
        ];
        let args = input.args(&format!("{state}-restart"), &extra);
        let mut first = Process::start(WEIR, &args, input.path(&format!("{state}-1.stderr")));
        let addr = api_addr(&mut first);
        wait_applied(&mut first, &addr);
        // The second checkpoint completed after this one started after every event was
        // applied: its state holds them all and its position is the end of the input.
        let seen = answered_checkpoint(&addr);
        let started = Instant::now();
        while answered_checkpoint(&addr) < seen + 2 {
            assert!(
                started.elapsed() < LIMIT,
                "{state}: no checkpoint after {seen}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        drop(first); // SIGKILL

        let mut second = Process::start(WEIR, &args, input.path(&format!("{state}-2.stderr")));
        let addr = api_addr(&mut second);
        let started = Instant::now();
        loop {
            let (status, body) = get(&addr, "/api/v1/state/balances?limit=10000");
            if status == 200 {
                break;
            }
            assert!(
                status == 503 && started.elapsed() < LIMIT,
                "{state}: the restarted job does not answer: {status} {body}; stderr:\n{}",
                second.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
        check_queries(&addr, &input.balances);
        assert_eq!(
            applied(&addr),
            0,
            "{state}: the restored job read events again"
        );
    }
}
