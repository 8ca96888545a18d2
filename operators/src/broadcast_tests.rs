//! Unit tests of broadcast process functions: the operator driven directly, and small jobs
//! at P = 1 and P = 2.

use super::*;
use crate::test_support::{operator_context, sorted, Collect};
use weir_engine::operator::BroadcastOperator;
use weir_engine::{
    BroadcastStateDescriptor, Job, KeyedOperator, MemoryBackend, Record, Routed, RunOptions,
};

const LIMITS: BroadcastStateDescriptor<String, u64> = BroadcastStateDescriptor::new("limits");

/// Alerts on an amount above its currency's limit (none without a limit), counting each
/// account's alerts; control elements set (`Some`) or remove (`None`) a limit.
#[derive(Clone)]
struct Limits;

type Payment = (String, String, u64);
type Rule = (String, Option<u64>);

impl BroadcastProcessFunction<String, Payment, Rule> for Limits {
    type State = u32;
    type BroadcastKey = String;
    type BroadcastValue = u64;
    type Out = String;

    fn process_element(
        &self,
        account: &String,
        alerts: &mut u32,
        _: Timestamp,
        (_, currency, amount): &Payment,
        limits: &BroadcastState<String, u64>,
        ctx: &mut TimerContext<String>,
    ) {
        if limits.get(currency).is_some_and(|limit| amount > limit) {
            *alerts += 1;
            ctx.emit(format!("{account} {amount} {currency} #{alerts}"));
        }
    }

    fn process_broadcast_element(
        &self,
        _: Timestamp,
        (currency, limit): &Rule,
        limits: &mut BroadcastState<String, u64>,
        _: &mut BroadcastContext<String>,
    ) {
        match limit {
            Some(limit) => limits.insert(currency.clone(), *limit),
            None => limits.remove(currency),
        };
    }
}

type Op = EventTime<BroadcastProcessOperator<MemoryBackend, Limits, String, Payment, Rule>>;

fn instance() -> Op {
    let factory = BroadcastProcessFactory {
        side: KeyedSide {
            f: Limits,
            broadcast: BroadcastState::new(&LIMITS),
            _types: PhantomData,
        },
    };
    assert_eq!(factory.tables(), ["process-state", "limits"]);
    factory
        .create(&operator_context("limits"), MemoryBackend::new())
        .unwrap()
}

fn payment(ts: i64, account: &str, currency: &str, amount: u64) -> Record<Keyed<String, Payment>> {
    let value = (account.to_string(), currency.to_string(), amount);
    Record {
        ts,
        watermark: ts - 1,
        value: Keyed {
            key: account.to_string(),
            value,
        },
    }
}

fn rule(ts: i64, currency: &str, limit: Option<u64>) -> Record<Rule> {
    Record {
        ts,
        watermark: ts - 1,
        value: (currency.to_string(), limit),
    }
}

fn emitted(out: &mut Output<String>) -> Vec<String> {
    out.take().into_iter().map(|r| r.value).collect()
}

#[test]
fn the_keyed_side_reads_the_limits_the_broadcast_side_wrote() {
    let mut op = instance();
    let mut out = Output::default();
    op.process(vec![payment(1, "a", "EUR", 500)], &mut out)
        .unwrap();
    assert_eq!(emitted(&mut out), Vec::<String>::new(), "no limit yet");
    op.process_broadcast(
        vec![rule(2, "EUR", Some(100)), rule(3, "USD", Some(1000))],
        &mut out,
    )
    .unwrap();
    op.process(
        vec![
            payment(4, "a", "EUR", 500),
            payment(5, "b", "USD", 500),
            payment(6, "a", "EUR", 101),
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(emitted(&mut out), ["a 500 EUR #1", "a 101 EUR #2"]);
    op.process_broadcast(vec![rule(7, "EUR", None)], &mut out)
        .unwrap();
    op.process(vec![payment(8, "a", "EUR", 500)], &mut out)
        .unwrap();
    assert_eq!(
        emitted(&mut out),
        Vec::<String>::new(),
        "the limit was removed"
    );
    let tables: Vec<(String, usize)> = op
        .tables()
        .iter()
        .map(|t| (t.name().to_string(), t.len()))
        .collect();
    // Accounts a and b have state; USD is the one limit left.
    assert_eq!(
        tables,
        [("process-state".to_string(), 2), ("limits".to_string(), 1)]
    );
}

#[test]
fn a_restored_instance_gets_the_broadcast_state_and_the_keyed_state_separately() {
    let mut op = instance();
    let mut out = Output::default();
    op.process_broadcast(vec![rule(1, "EUR", Some(10))], &mut out)
        .unwrap();
    let bytes = op
        .broadcast_state()
        .unwrap()
        .expect("it has broadcast state");
    let mut restored = instance();
    restored.restore_broadcast_state(&bytes).unwrap();
    restored.restore(&[]).unwrap();
    restored
        .process(vec![payment(2, "c", "EUR", 11)], &mut out)
        .unwrap();
    assert_eq!(emitted(&mut out), ["c 11 EUR #1"]);
    assert!(
        instance().restore_broadcast_state(&[0xff]).is_err(),
        "bytes that are no broadcast state fail the restore"
    );
}

#[derive(Clone)]
enum Input {
    Payment(Payment),
    Rule(Rule),
}

/// Hands out one item per poll: a split sends each batch's side output before its main
/// output, so one-item batches keep the source's order across the two.
struct OneByOne(std::collections::VecDeque<Input>);

impl weir_engine::Source for OneByOne {
    type Item = Input;
    fn poll_batch(
        &mut self,
        out: &mut Vec<Input>,
        _: usize,
    ) -> Result<weir_engine::SourceStatus, BoxError> {
        out.extend(self.0.pop_front());
        Ok(match self.0.is_empty() {
            true => weir_engine::SourceStatus::Exhausted,
            false => weir_engine::SourceStatus::More,
        })
    }
    fn describe(&self) -> String {
        "one by one".into()
    }
}

/// Payments and rules in one stream, in the order a user wrote them, split in two: every
/// instance sees the rules before the payments that follow them in the source.
fn run(parallelism: usize) -> Vec<String> {
    let job = Job::new("limits");
    let input = vec![
        Input::Rule(("EUR".to_string(), Some(100))),
        Input::Payment(("a".to_string(), "EUR".to_string(), 150)),
        Input::Payment(("b".to_string(), "EUR".to_string(), 50)),
        Input::Payment(("c".to_string(), "USD".to_string(), 5000)),
        Input::Rule(("USD".to_string(), Some(1000))),
        Input::Rule(("EUR".to_string(), Some(20))),
        Input::Payment(("b".to_string(), "EUR".to_string(), 50)),
        Input::Payment(("c".to_string(), "USD".to_string(), 5000)),
        Input::Payment(("a".to_string(), "EUR".to_string(), 30)),
    ];
    let (payments, rules) =
        job.source("input", OneByOne(input.into()))
            .split("by-kind", |e: Input| match e {
                Input::Payment(p) => Routed::Main(p),
                Input::Rule(r) => Routed::Side(r),
            });
    let (sink, seen) = Collect::new();
    payments
        .key_by(|p: &Payment| p.0.clone())
        .connect_broadcast(rules, &LIMITS)
        .process_with_broadcast("alerts", Limits)
        .sink("out", sink);
    let options = RunOptions {
        parallelism,
        ..Default::default()
    };
    job.run(&options).unwrap();
    sorted(&seen)
}

#[test]
fn every_instance_applies_every_rule_at_p1_and_p2() {
    let expected = [
        "a 150 EUR #1",
        "a 30 EUR #2",
        "b 50 EUR #1",
        "c 5000 USD #1",
    ];
    assert_eq!(run(1), expected);
    assert_eq!(run(2), expected);
}
