//! The bundled `account-balances` job, the read side of CQRS: bank-account events in, a
//! balance per account readable while the job runs (queryable table `balances`), the
//! withdrawals per account and minute, and an alert on rapid withdrawals.
//!
//! ```text
//!                                ┌ key_by(account) -> balance + alert (queryable `balances`) ┐
//! events -> timestamps ──────────┤                                                            ├ union -> output
//!                                └ withdrawals -> key_by(account) -> tumble 1m -> count ──────┘
//! ```
//!
//! Events are `{"account":"a17","type":"deposit"|"withdraw","amount":250,"ts":..}` (`weir gen
//! accounts`), from a file or a Kafka topic (`--input kafka://..`; keyed by account and
//! with `tasks=per-partition`, several processes split the accounts and each answers for
//! its own, redirecting the others: see `crate::partitioned::routing`); a line that is not one (an unknown type, a negative amount) goes to the dead
//! letters. `GET /api/v1/state/balances/a17` answers the account's
//! `{"balance","deposits","withdrawals","last_ts","recent_withdrawals"}`: `balance` is the
//! sum of deposits minus withdrawals applied so far (withdrawals may overdraw).
//!
//! Output lines are tagged by `type`:
//! `{"type":"withdrawals_per_minute","account":"a17","window_start":..,"window_end":..,"withdrawals":2}`
//! and `{"type":"rapid_withdrawals","account":"a17","first_ts":..,"ts":..,"withdrawals":3}`,
//! the latter when an account's third withdrawal comes within a minute of the first (the
//! count starts over after an alert). Balances and alerts follow arrival order, which is the
//! order of the input: a file is read by one reader at any parallelism, and a Kafka topic
//! keyed by account keeps each account's events in order. So they are deterministic for a
//! given input.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::{Job, Watermarks};
use weir_operators::prelude::*;

use crate::dead_letters::write_dead_letters;
use crate::input::InputSpec;
use crate::options::JobOptions;
use crate::output::OutputSink;

/// One line of `weir jobs`.
pub const ABOUT: &str = "balance per account, queryable while it runs (table `balances`), withdrawals per minute, alerts on 3 withdrawals within a minute";

/// The queryable table of balances.
pub const TABLE: &str = "balances";

/// Withdrawals within this long of the first make an alert ...
pub const RAPID_WINDOW_MS: i64 = 60_000;

/// ... when there are this many.
pub const RAPID_WITHDRAWALS: usize = 3;

/// What happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    /// Money in.
    Deposit,
    /// Money out.
    Withdraw,
}

/// An account event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// The account.
    pub account: String,
    /// Deposit or withdrawal.
    #[serde(rename = "type")]
    pub movement: Movement,
    /// How much, in currency units.
    pub amount: u64,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// An account's state: what `GET /api/v1/state/balances/{account}` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Deposits minus withdrawals.
    pub balance: i64,
    /// Deposits applied.
    pub deposits: u64,
    /// Withdrawals applied.
    pub withdrawals: u64,
    /// Event time of the last event applied.
    pub last_ts: i64,
    /// Times of the withdrawals counted towards the next alert.
    pub recent_withdrawals: Vec<i64>,
}

impl Account {
    /// Applies `event`; an alert if it was the third withdrawal within a minute.
    pub fn apply(&mut self, account: &str, event: &AccountEvent) -> Option<AccountOutput> {
        let amount = i64::try_from(event.amount).unwrap_or(i64::MAX);
        self.last_ts = event.ts;
        match event.movement {
            Movement::Deposit => {
                self.balance = self.balance.saturating_add(amount);
                self.deposits += 1;
                None
            }
            Movement::Withdraw => {
                self.balance = self.balance.saturating_sub(amount);
                self.withdrawals += 1;
                self.recent_withdrawals
                    .retain(|&t| event.ts - t < RAPID_WINDOW_MS);
                self.recent_withdrawals.push(event.ts);
                if self.recent_withdrawals.len() < RAPID_WITHDRAWALS {
                    return None;
                }
                let first_ts = self.recent_withdrawals.iter().copied().min()?;
                self.recent_withdrawals.clear();
                Some(AccountOutput::RapidWithdrawals {
                    account: account.to_string(),
                    first_ts,
                    ts: event.ts,
                    withdrawals: RAPID_WITHDRAWALS as u64,
                })
            }
        }
    }
}

/// What the job writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AccountOutput {
    /// Withdrawals of one account in one minute.
    WithdrawalsPerMinute {
        /// The account.
        account: String,
        /// Window start, epoch ms.
        window_start: i64,
        /// Window end, epoch ms (exclusive).
        window_end: i64,
        /// Number of withdrawals.
        withdrawals: u64,
    },
    /// Three withdrawals within a minute.
    RapidWithdrawals {
        /// The account.
        account: String,
        /// Time of the first of them.
        first_ts: i64,
        /// Time of the last of them.
        ts: i64,
        /// How many.
        withdrawals: u64,
    },
}

/// Builds `account-balances` from options.
pub fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = Job::new("account-balances");
    let source = InputSpec::from_options(opts, "account-balances")?
        .open_serde::<AccountEvent>(opts, &job)?
        // The alert counts withdrawals in input order: a file is read by one reader.
        .in_input_order()
        .max_future(|e: &AccountEvent| e.ts, opts.max_future);
    let source = job.source("events", source).uid("events");
    let events = source
        .clone()
        .timestamps(
            |e: &AccountEvent| e.ts,
            Watermarks::bounded(opts.watermark_delay_or(Duration::from_secs(2))),
        )
        .uid("event-time");

    let alerts = events
        .clone()
        .key_by(|e: &AccountEvent| e.account.clone())
        .process_with_state(
            "balances",
            |account: &String,
             state: &mut Account,
             _ts,
             event: &AccountEvent,
             out: &mut Vec<AccountOutput>| {
                out.extend(state.apply(account, event));
            },
        )
        .queryable(TABLE)
        .uid("balances");

    let per_minute = events
        .filter(|e: &AccountEvent| e.movement == Movement::Withdraw)
        .key_by(|e: &AccountEvent| e.account.clone())
        .window(Tumbling::of(Duration::from_secs(60)))
        .aggregate(Count)
        .uid("withdrawals-per-minute")
        .map(|r| AccountOutput::WithdrawalsPerMinute {
            account: r.key,
            window_start: r.window.start,
            window_end: r.window.end,
            withdrawals: r.value,
        });

    alerts
        .union(per_minute)
        .sink("output", OutputSink::from_spec(opts.output()))
        .uid("output");
    write_dead_letters(&source, opts.dead_letter_path("account-balances"));
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(movement: Movement, amount: u64, ts: i64) -> AccountEvent {
        AccountEvent {
            account: "a1".into(),
            movement,
            amount,
            ts,
        }
    }

    #[test]
    fn the_balance_follows_deposits_and_withdrawals_and_three_quick_withdrawals_alert() {
        let mut account = Account::default();
        assert_eq!(account.apply("a1", &event(Movement::Deposit, 500, 0)), None);
        assert_eq!(
            account.apply("a1", &event(Movement::Withdraw, 100, 1_000)),
            None
        );
        // 61 s after the first withdrawal: the first no longer counts.
        assert_eq!(
            account.apply("a1", &event(Movement::Withdraw, 100, 50_000)),
            None
        );
        assert_eq!(
            account.apply("a1", &event(Movement::Withdraw, 100, 61_000)),
            None
        );
        let alert = account.apply("a1", &event(Movement::Withdraw, 100, 100_000));
        assert_eq!(
            alert,
            Some(AccountOutput::RapidWithdrawals {
                account: "a1".into(),
                first_ts: 50_000,
                ts: 100_000,
                withdrawals: 3
            })
        );
        assert_eq!(
            (account.balance, account.deposits, account.withdrawals),
            (100, 1, 4)
        );
        assert!(
            account.recent_withdrawals.is_empty(),
            "the count starts over"
        );
    }
}
