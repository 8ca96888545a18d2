//! A user crate's bank-account job, written with weir's job API: a balance per account (the
//! projection), an alert on three withdrawals within a minute, and each alert enriched with
//! the account's owner from an HTTP service.
//!
//! ```text
//!                  ┌ key_by(AccountId) -> balance per account ─────────────────────> balances
//! events ─ time ───┤
//!                  └ withdrawals -> key_by(AccountId) -> pattern w{3} within 60 s
//!                      (skip past last event) -> owner lookup (map_async, HTTP) ───> alerts
//! ```
//!
//! Events are `{"account":"a17","type":"deposit"|"withdraw","amount":250,"ts":..}` (what
//! `weir gen accounts` writes), from any `--input` the bundled jobs read:
//!
//! ```text
//! bank-account run bank-account --input events.jsonl --owners http://127.0.0.1:8080 \
//!     --output balances=balances.jsonl --output alerts=alerts.jsonl
//! ```
//!
//! - **Key**: `AccountId`, a newtype of the user's own; `#[derive(StableHash)]` gives it the
//!   hash that routing and checkpoints need, the same in every run and at any parallelism.
//! - **Balances**: one row per event, the account's balance after it, in the order the
//!   account's events arrived (a changelog: the last row of an account is its balance).
//! - **Alerts**: three withdrawals of an account within 60 s of event time. With
//!   `SkipPastLastEvent` a withdrawal is in one alert at most: six quick withdrawals are two
//!   alerts, not the four overlapping ones the default strategy gives.
//! - **Owners**: `GET {owners}/owners/{account}` answers the owner's name (404: none), at
//!   most `--lookups` requests in flight per instance, each under a 2 s timeout with two
//!   retries; the requests in flight are in checkpoints and asked again after a restore.
//!   An alert whose lookup failed for good goes to the dead letters
//!   (`<dead letters>.lookups.jsonl`) with the reason, and is counted. Without `--owners`,
//!   alerts go out without an owner.

mod owners;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_jobs::dead_letters::dead_letter_sink;
use weir_jobs::engine::Timestamp;
use weir_jobs::prelude::*;

use owners::OwnerDirectory;

/// The options of `bank-account` besides weir's own (`bank-account run bank-account --help`).
#[derive(Debug, Clone, clap::Args)]
struct BankArgs {
    /// The owner service, `http://HOST:PORT` (alerts go out without an owner if not given).
    #[arg(long, value_name = "URL", value_parser = owners::base_url)]
    owners: Option<String>,
    /// Owner lookups in flight per instance.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    lookups: u16,
}

/// An account, as the events name it: a key type of the user's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, StableHash)]
struct AccountId(String);

/// What happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Deposit,
    Withdraw,
}

/// One bank-account event: an immutable fact.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountEvent {
    account: AccountId,
    #[serde(rename = "type")]
    kind: Kind,
    amount: u64,
    ts: i64,
}

/// The projection's state per account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Balance {
    balance: i64,
    deposits: u64,
    withdrawals: u64,
}

/// The account's balance after one of its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BalanceRow {
    account: AccountId,
    ts: i64,
    balance: i64,
    deposits: u64,
    withdrawals: u64,
}

/// Three withdrawals of one account within a minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Alert {
    account: AccountId,
    first_ts: i64,
    last_ts: i64,
    withdrawn: u64,
    owner: Option<String>,
}

/// How far out of order events may come.
const OUT_OF_ORDER: Duration = Duration::from_secs(1);
/// Withdrawals in an alert.
const WITHDRAWALS: u32 = 3;
/// The time they must fall within.
const WITHIN: Duration = Duration::from_secs(60);

fn apply(
    account: &AccountId,
    state: &mut Balance,
    ts: Timestamp,
    event: &AccountEvent,
    out: &mut Vec<BalanceRow>,
) {
    let amount = i64::try_from(event.amount).unwrap_or(i64::MAX);
    match event.kind {
        Kind::Deposit => {
            state.balance = state.balance.saturating_add(amount);
            state.deposits += 1;
        }
        Kind::Withdraw => {
            state.balance = state.balance.saturating_sub(amount);
            state.withdrawals += 1;
        }
    }
    out.push(BalanceRow {
        account: account.clone(),
        ts,
        balance: state.balance,
        deposits: state.deposits,
        withdrawals: state.withdrawals,
    });
}

fn alert(found: Match<AccountEvent>) -> Option<Alert> {
    let (first, last) = (found.events.first()?, found.events.last()?);
    Some(Alert {
        account: first.2.account.clone(),
        first_ts: first.1,
        last_ts: last.1,
        withdrawn: found.events.iter().map(|(_, _, e)| e.amount).sum(),
        owner: None,
    })
}

fn bank_account(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = opts.job();
    let args: BankArgs = opts.args()?;
    // An event more than `--max-future` ahead of the others is a dead letter: one bad clock
    // must not move the watermark past everyone else's events.
    let events = read_input_timed::<AccountEvent>(&job, "events", opts, |e| e.ts)?
        .timestamps(|e| e.ts, Watermarks::bounded(OUT_OF_ORDER))
        .uid("event-time");

    events
        .clone()
        .key_by(|e: &AccountEvent| e.account.clone())
        .process_with_state("balance", apply)
        .uid("balance")
        .sink("balances", OutputSink::named(opts, "balances")?)
        .uid("balances");

    let rapid = Pattern::begin("withdrawal")
        .where_(|e: &AccountEvent| e.kind == Kind::Withdraw)
        .times(WITHDRAWALS)
        .within(WITHIN)
        .skip(AfterMatchSkip::SkipPastLastEvent);
    let alerts = events
        .filter(|e| e.kind == Kind::Withdraw)
        .key_by(|e: &AccountEvent| e.account.clone())
        .pattern(rapid)
        .uid("rapid-withdrawals")
        .flat_map(alert);
    let alerts = match args.owners {
        Some(url) => {
            let owners = OwnerDirectory::new(url);
            let options = AsyncOptions::new(usize::from(args.lookups))
                .timeout(Duration::from_secs(2))
                .retries(2, Duration::from_millis(50));
            let (enriched, failed) = alerts.map_async_with("owner-lookup", options, move |a| {
                owners.clone().with_owner(a)
            });
            let failed_file = opts
                .dead_letter_path(job.name())
                .with_extension("lookups.jsonl");
            dead_letter_sink(failed, failed_file);
            enriched.uid("owner-lookup")
        }
        None => alerts,
    };
    alerts
        .sink("alerts", OutputSink::named(opts, "alerts")?)
        .uid("alerts");
    Ok(job)
}

fn main() -> std::process::ExitCode {
    let job = JobSpec::new(
        "bank-account",
        "balance per account, alerts on 3 withdrawals within a minute, enriched with the owner",
        bank_account,
    )
    .reads(&["input", "format", "follow", "max-line", "max-future"])
    .args::<BankArgs>()
    .outputs(&["balances", "alerts"]);
    weir_jobs::cli::main(Registry::new().register(job))
}
