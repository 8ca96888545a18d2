//! The bank-account example (examples/bank-account) end to end: its binary reads account
//! events, keeps a balance per `AccountId` (a newtype key), alerts on three withdrawals
//! within a minute with `SkipPastLastEvent`, and looks each alert's owner up from a real
//! HTTP service on 127.0.0.1 through `map_async`.
//!
//! Every run is compared with a reference computed here by brute force, at P = 1 and
//! P = 2: the balance rows, the alerts (each withdrawal in one alert at most), the owners
//! the service gave (none for an account it does not know), the alerts whose lookups failed
//! for good in their dead-letter file, and the malformed line in the source's.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_bank-account");
const ACCOUNTS: u64 = 40;
/// The malformed line of the input (an unknown type), at this line number.
const BAD_LINE: usize = 700;
const BAD: &str = r#"{"account":"a1","type":"refund","amount":5,"ts":1}"#;
/// A withdrawal ten days ahead of the others, at this line number: with `--max-future 1h`
/// a dead letter, not an event that would make every later one late.
const FUTURE_LINE: usize = 1_500;
const FUTURE: &str = r#"{"account":"a2","type":"withdraw","amount":5,"ts":1700864000000}"#;

/// One event: (account, withdraw?, amount, ts), in input order.
type Event = (String, bool, u64, i64);
/// A balance row: (account, ts, balance, deposits, withdrawals).
type BalanceRow = (String, i64, i64, u64, u64);
/// An alert: (account, first_ts, last_ts, withdrawn, owner).
type Alert = (String, i64, i64, u64, Option<String>);

/// The owner the service gives `account`, if it knows one.
fn owner_of(account: &str) -> Option<String> {
    let n: u64 = account.trim_start_matches('a').parse().ok()?;
    (!n.is_multiple_of(5)).then(|| format!("owner of {account}"))
}

/// Accounts whose lookups always fail (HTTP 503): their alerts become dead letters.
fn lookup_fails(account: &str) -> bool {
    account == "a13" || account == "a26"
}

/// The owner service: 2 ms per answer; the first request for an account whose number is a
/// multiple of 3 fails (a retry gets it), those of [`lookup_fails`] always do, accounts of
/// no owner are 404.
fn start_owner_service() -> SocketAddr {
    async fn owner(
        State(seen): State<Arc<Mutex<HashMap<String, u32>>>>,
        UrlPath(account): UrlPath<String>,
    ) -> (StatusCode, String) {
        let attempt = {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(account.clone()).or_default();
            *n += 1;
            *n
        };
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let number: u64 = account.trim_start_matches('a').parse().unwrap_or(1);
        if lookup_fails(&account) || (attempt == 1 && number.is_multiple_of(3)) {
            return (StatusCode::SERVICE_UNAVAILABLE, "try later".into());
        }
        match owner_of(&account) {
            Some(name) => (StatusCode::OK, name),
            None => (StatusCode::NOT_FOUND, String::new()),
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            let app = axum::Router::new()
                .route("/owners/{account}", axum::routing::get(owner))
                .with_state(Arc::new(Mutex::new(HashMap::new())));
            axum::serve(listener, app).await.expect("the owner service");
        })
    });
    addr
}

/// `n` events over [`ACCOUNTS`] accounts, about 60 % withdrawals, 0-150 ms apart and up
/// to 500 ms out of order (less than the job's 1 s bound, so none is late).
fn events(n: usize) -> Vec<Event> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    let mut clock = 1_700_000_000_000i64;
    (0..n)
        .map(|_| {
            clock += next(150) as i64;
            let account = format!("a{}", next(ACCOUNTS));
            let withdraw = next(10) < 6;
            (account, withdraw, 1 + next(500), clock - next(500) as i64)
        })
        .collect()
}

fn write_input(dir: &Path, events: &[Event]) -> Fallible<String> {
    let mut lines: Vec<String> = events
        .iter()
        .map(|(account, withdraw, amount, ts)| {
            let kind = if *withdraw { "withdraw" } else { "deposit" };
            format!(r#"{{"account":"{account}","type":"{kind}","amount":{amount},"ts":{ts}}}"#)
        })
        .collect();
    lines.insert(BAD_LINE - 1, BAD.to_string());
    lines.insert(FUTURE_LINE - 1, FUTURE.to_string());
    let path = dir.join("events.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(path.display().to_string())
}

/// Each account's balance after each of its events, in input order.
fn expected_balances(events: &[Event]) -> Vec<BalanceRow> {
    let mut state: HashMap<&str, (i64, u64, u64)> = HashMap::new();
    let mut rows: Vec<BalanceRow> = events
        .iter()
        .map(|(account, withdraw, amount, ts)| {
            let s = state.entry(account).or_default();
            if *withdraw {
                s.0 -= *amount as i64;
                s.2 += 1;
            } else {
                s.0 += *amount as i64;
                s.1 += 1;
            }
            (account.clone(), *ts, s.0, s.1, s.2)
        })
        .collect();
    rows.sort();
    rows
}

/// Per account, its withdrawals in event-time order (ties in input order), taken three at
/// a time where the third is less than 60 s after the first; a withdrawal in an alert is
/// in no other (`SkipPastLastEvent`), one that cannot start an alert is passed over.
fn expected_alerts(events: &[Event]) -> Vec<Alert> {
    let mut withdrawals: BTreeMap<&str, Vec<(i64, u64)>> = BTreeMap::new();
    for (account, _, amount, ts) in events.iter().filter(|e| e.1) {
        withdrawals.entry(account).or_default().push((*ts, *amount));
    }
    let mut alerts = Vec::new();
    for (account, mut list) in withdrawals {
        list.sort_by_key(|w| w.0);
        let mut i = 0;
        while i + 2 < list.len() {
            let (first, last) = (list[i], list[i + 2]);
            if last.0 - first.0 < 60_000 {
                let withdrawn = list[i..i + 3].iter().map(|w| w.1).sum();
                alerts.push((
                    account.to_string(),
                    first.0,
                    last.0,
                    withdrawn,
                    owner_of(account),
                ));
                i += 3;
            } else {
                i += 1;
            }
        }
    }
    alerts.sort();
    alerts
}

fn read_json_lines(path: &Path) -> Fallible<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_lines(&text)
}

fn parse_lines(text: &str) -> Fallible<Vec<Value>> {
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// How many complete checkpoints (with a manifest) the checkpoint directory `root` holds.
fn complete_checkpoints(root: &Path) -> usize {
    std::fs::read_dir(root).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("_manifest").is_file())
            .count()
    })
}

/// The rows of the committed part files of a checkpointed run's output directory.
fn committed(dir: &Path) -> Fallible<Vec<Value>> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".inprogress"), "{name} left in {dir:?}");
        if name.starts_with("part-") {
            text.push_str(&std::fs::read_to_string(dir.join(name))?);
        }
    }
    parse_lines(&text)
}

fn balance_rows(path: &Path) -> Fallible<Vec<BalanceRow>> {
    balances_of(read_json_lines(path)?)
}

fn balances_of(rows: Vec<Value>) -> Fallible<Vec<BalanceRow>> {
    let mut rows = rows
        .iter()
        .map(|r| {
            Ok((
                r["account"].as_str().ok_or("account")?.to_string(),
                r["ts"].as_i64().ok_or("ts")?,
                r["balance"].as_i64().ok_or("balance")?,
                r["deposits"].as_u64().ok_or("deposits")?,
                r["withdrawals"].as_u64().ok_or("withdrawals")?,
            ))
        })
        .collect::<Fallible<Vec<_>>>()?;
    rows.sort();
    Ok(rows)
}

fn alert(r: &Value) -> Fallible<Alert> {
    Ok((
        r["account"].as_str().ok_or("account")?.to_string(),
        r["first_ts"].as_i64().ok_or("first_ts")?,
        r["last_ts"].as_i64().ok_or("last_ts")?,
        r["withdrawn"].as_u64().ok_or("withdrawn")?,
        r["owner"].as_str().map(str::to_string),
    ))
}

fn alert_rows(path: &Path) -> Fallible<Vec<Alert>> {
    alerts_of(read_json_lines(path)?)
}

fn alerts_of(rows: Vec<Value>) -> Fallible<Vec<Alert>> {
    let mut rows = rows.iter().map(alert).collect::<Fallible<Vec<_>>>()?;
    rows.sort();
    Ok(rows)
}

/// The alerts whose lookups failed, from their dead letters (the alert as JSON in `raw`).
fn failed_lookups(path: &Path) -> Fallible<Vec<Alert>> {
    let mut rows = Vec::new();
    for letter in read_json_lines(path)? {
        let reason = letter["error"].as_str().ok_or("error")?;
        assert!(reason.contains("HTTP 503"), "{letter}");
        let raw: Value = serde_json::from_str(letter["raw"].as_str().ok_or("raw")?)?;
        rows.push(alert(&raw)?);
    }
    rows.sort();
    Ok(rows)
}

#[test]
fn balances_alerts_and_owners_equal_a_brute_force_reference_at_p1_and_p2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = events(3_000);
    let input = write_input(dir.path(), &events)?;
    let owners = start_owner_service();
    let balances = expected_balances(&events);
    let (failed, alerts): (Vec<Alert>, Vec<Alert>) = expected_alerts(&events)
        .into_iter()
        .partition(|a| lookup_fails(&a.0));
    // A dead letter holds the alert as it was before its lookup.
    let failed: Vec<Alert> = failed
        .into_iter()
        .map(|a| (a.0, a.1, a.2, a.3, None))
        .collect();
    assert!(
        alerts.len() > 50 && !failed.is_empty(),
        "{} alerts",
        alerts.len()
    );
    // Without a strategy the same pattern gives overlapping alerts; here a withdrawal is in
    // one alert at most.
    let withdrawals = events.iter().filter(|e| e.1).count();
    assert!(3 * (alerts.len() + failed.len()) <= withdrawals);

    for p in ["1", "2"] {
        let out_balances = dir.path().join(format!("balances-{p}.jsonl"));
        let out_alerts = dir.path().join(format!("alerts-{p}.jsonl"));
        let run = Command::new(BIN)
            .args(["run", "bank-account", "--metrics-addr", "off", "--quiet"])
            .args(["--input", &input, "--parallelism", p, "--max-future", "1h"])
            .args(["--owners", &format!("http://{owners}"), "--lookups", "8"])
            .arg(format!("--output=balances={}", out_balances.display()))
            .arg(format!("--output=alerts={}", out_alerts.display()))
            .current_dir(dir.path())
            .output()?;
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "P = {p}: {stderr}");

        assert_eq!(balance_rows(&out_balances)?, balances, "P = {p}");
        assert_eq!(alert_rows(&out_alerts)?, alerts, "P = {p}");
        let dead = format!("{}.dead", out_balances.display());
        let lookups = Path::new(&format!("{dead}.lookups.jsonl")).to_path_buf();
        assert_eq!(failed_lookups(&lookups)?, failed, "P = {p}");
        let letters = read_json_lines(Path::new(&format!("{dead}.jsonl")))?;
        let letters: Vec<(u64, &str)> = letters
            .iter()
            .map(|l| {
                (
                    l["line"].as_u64().unwrap_or(0),
                    l["raw"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            letters,
            [(BAD_LINE as u64, BAD), (FUTURE_LINE as u64, FUTURE)],
            "P = {p}"
        );
    }
    Ok(())
}

#[test]
fn without_an_owner_service_alerts_go_out_without_owners() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = events(3_000);
    let input = write_input(dir.path(), &events)?;
    let out_alerts = dir.path().join("alerts.jsonl");
    let run = Command::new(BIN)
        .args(["run", "bank-account", "--metrics-addr", "off", "--quiet"])
        .args(["--input", &input, "--max-future", "1h"])
        .arg(format!(
            "--output=balances={}",
            dir.path().join("b.jsonl").display()
        ))
        .arg(format!("--output=alerts={}", out_alerts.display()))
        .current_dir(dir.path())
        .output()?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected: Vec<Alert> = expected_alerts(&events)
        .into_iter()
        .map(|a| (a.0, a.1, a.2, a.3, None))
        .collect();
    assert_eq!(alert_rows(&out_alerts)?, expected);

    // A URL that is not plain HTTP is refused before the job starts, naming the option.
    let refused = Command::new(BIN)
        .args([
            "run",
            "bank-account",
            "--input",
            &input,
            "--owners",
            "ftp://x",
        ])
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--owners"));
    Ok(())
}

#[test]
fn killed_with_lookups_in_flight_and_resumed_at_another_parallelism_it_is_exactly_once(
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = events(20_000);
    let input = write_input(dir.path(), &events)?;
    let owners = start_owner_service();
    let (failed, alerts): (Vec<Alert>, Vec<Alert>) = expected_alerts(&events)
        .into_iter()
        .partition(|a| lookup_fails(&a.0));
    let failed: Vec<Alert> = failed
        .into_iter()
        .map(|a| (a.0, a.1, a.2, a.3, None))
        .collect();
    let (balances, alerts_dir) = (dir.path().join("balances"), dir.path().join("alerts"));
    let run = |p: u32| {
        let mut command = Command::new(BIN);
        command
            .args(["run", "bank-account", "--metrics-addr", "off", "--quiet"])
            .args(["--input", &input, "--max-future", "1h", "--lookups", "16"])
            .args(["--owners", &format!("http://{owners}")])
            .args(["--parallelism", &p.to_string()])
            .arg(format!("--output=balances={}", balances.display()))
            .arg(format!("--output=alerts={}", alerts_dir.display()))
            .arg(format!(
                "--state-dir={}",
                dir.path().join("state").display()
            ))
            .args(["--checkpoint-interval", "100ms", "--batch-size", "64"])
            .current_dir(dir.path());
        command
    };
    // Each run is SIGKILLed once it has completed a checkpoint of its own, 0-300 ms later,
    // with lookups in flight, at parallelism 1 and 2 in turn. Batches of 64 events: a
    // batch waits for free lookup slots, and barriers go between batches.
    let checkpoints = dir.path().join("state/bank-account/checkpoints");
    let mut killed = 0;
    for (i, extra_ms) in [150u64, 0, 300].into_iter().enumerate() {
        let before = complete_checkpoints(&checkpoints);
        let mut child = run(1 + i as u32 % 2)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let started = std::time::Instant::now();
        while child.try_wait()?.is_none() && complete_checkpoints(&checkpoints) <= before {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "run {i}: no checkpoint within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(extra_ms));
        if child.try_wait()?.is_none() {
            child.kill()?;
            killed += 1;
        }
        child.wait()?;
    }
    let last = run(2).output()?;
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success(), "{stderr}");
    assert!(
        killed >= 2,
        "only {killed} of 3 kills landed: the test proved little"
    );
    assert!(
        stderr.contains("resuming"),
        "the last run started over: {stderr}"
    );

    assert_eq!(
        balances_of(committed(&balances)?)?,
        expected_balances(&events)
    );
    assert_eq!(alerts_of(committed(&alerts_dir)?)?, alerts);
    let lookups = dir.path().join("balances.dead.lookups.jsonl");
    assert_eq!(
        failed_lookups(&lookups)?,
        failed,
        "failed lookups, once each"
    );
    let letters = read_json_lines(&dir.path().join("balances.dead.jsonl"))?;
    let lines: Vec<u64> = letters.iter().filter_map(|l| l["line"].as_u64()).collect();
    assert_eq!(lines, [BAD_LINE as u64, FUTURE_LINE as u64], "{letters:?}");
    Ok(())
}
