//! Unit tests of process functions: timers, declared state.

use super::*;
use weir_engine::MemoryBackend;
use weir_engine::{KeyedOperator, Record};

/// Sums values per key and emits the sum at a deadline 10 ms after the key's first
/// event, then forgets the key.
#[derive(Clone)]
struct SumUntilDeadline;

impl TimerFunction<String, u64> for SumUntilDeadline {
    type State = Option<u64>;
    type Out = (String, u64);
    fn on_event(
        &self,
        _: &String,
        sum: &mut Option<u64>,
        ts: Timestamp,
        value: &u64,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        if sum.is_none() {
            ctx.register_timer(ts + 10);
        }
        *sum = Some(sum.unwrap_or(0) + value);
    }
    fn on_timer(
        &self,
        key: &String,
        sum: &mut Option<u64>,
        _: Timestamp,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        ctx.emit((key.clone(), sum.unwrap_or(0)));
        ctx.clear_state();
    }
}

fn record(ts: i64, watermark: i64, key: &str, value: u64) -> Record<Keyed<String, u64>> {
    Record {
        ts,
        watermark,
        value: Keyed {
            key: key.to_string(),
            value,
        },
    }
}

fn fired(out: &mut Output<(String, u64)>) -> Vec<(i64, (&'static str, u64))> {
    out.take()
        .into_iter()
        .map(|r| (r.ts, (if r.value.0 == "a" { "a" } else { "b" }, r.value.1)))
        .collect()
}

/// `f` as an operator instance on memory state.
fn in_memory<F: TimerFunction<String, u64>>(
    f: F,
) -> EventTime<TimerProcessOperator<MemoryBackend, F, String, u64>> {
    reading(f, weir_engine::ProcessingClock::system())
}

/// `f` as an operator instance on memory state, reading processing time from `clock`.
fn reading<F: TimerFunction<String, u64>>(
    f: F,
    clock: weir_engine::ProcessingClock,
) -> EventTime<TimerProcessOperator<MemoryBackend, F, String, u64>> {
    let mut ctx = crate::test_support::operator_context("process");
    ctx.clock = clock;
    let factory = TimerProcessFactory::<_, String, u64> {
        f,
        _types: PhantomData,
    };
    factory.create(&ctx, MemoryBackend::new()).expect("create")
}

#[test]
fn timers_fire_in_time_order_when_the_watermark_reaches_them_and_clearing_forgets_the_key() {
    let mut op = in_memory(SumUntilDeadline);
    let mut out = Output::default();
    op.process(
        vec![
            record(0, i64::MIN, "a", 1),
            record(5, 0, "b", 2),
            record(9, 5, "a", 3),
            // Watermark 10 fires a's deadline (10) before this record is handled.
            record(11, 10, "a", 4),
        ],
        &mut out,
    )
    .expect("process");
    assert_eq!(fired(&mut out), vec![(10, ("a", 4))]);
    // a started again at 11 (deadline 21); b's deadline is 15.
    assert_eq!(op.state_entries(), 2);
    op.on_watermark(30, &mut out).expect("watermark");
    assert_eq!(fired(&mut out), vec![(15, ("b", 2)), (21, ("a", 4))]);
    assert_eq!(op.state_entries(), 0);
}

/// Registers a timer 10 ms after each event and deletes the one of the event before
/// (a timeout that restarts on activity), emitting the key's event count when one fires.
#[derive(Clone)]
struct Inactivity;

impl TimerFunction<String, u64> for Inactivity {
    type State = (u64, Option<Timestamp>);
    type Out = (String, u64);
    fn on_event(
        &self,
        _: &String,
        (count, timer): &mut (u64, Option<Timestamp>),
        ts: Timestamp,
        _: &u64,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        if let Some(previous) = timer.take() {
            ctx.delete_timer(previous);
        }
        ctx.register_timer(ts + 10);
        *timer = Some(ts + 10);
        *count += 1;
    }
    fn on_timer(
        &self,
        key: &String,
        (count, _): &mut (u64, Option<Timestamp>),
        _: Timestamp,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        ctx.emit((key.clone(), *count));
        ctx.clear_state();
    }
}

#[test]
fn deleted_timers_do_not_fire_and_the_last_one_registered_does() {
    let mut op = in_memory(Inactivity);
    let mut out = Output::default();
    op.process(
        vec![
            record(0, i64::MIN, "a", 1),
            record(5, 0, "a", 1),
            record(12, 5, "a", 1),
            record(3, 5, "b", 1),
        ],
        &mut out,
    )
    .expect("process");
    // a's timers at 10 and 15 were deleted; only 22 is left. b's is at 13.
    op.on_watermark(21, &mut out).expect("watermark");
    assert_eq!(fired(&mut out), vec![(13, ("b", 1))]);
    op.on_watermark(22, &mut out).expect("watermark");
    assert_eq!(fired(&mut out), vec![(22, ("a", 3))]);
    assert_eq!(op.state_entries(), 0);
}

const SEEN: MapStateDescriptor<u64, u64> = MapStateDescriptor::new("seen");
const OTHER: MapStateDescriptor<u64, u64> = MapStateDescriptor::new("other");

/// Counts each value per key in map state; value 0 asks for a state it did not declare.
#[derive(Clone)]
struct CountValues;

impl TimerFunction<String, u64> for CountValues {
    type State = ();
    type Out = (String, u64);
    fn on_event(
        &self,
        key: &String,
        _: &mut (),
        _: Timestamp,
        value: &u64,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        ctx.emit((key.clone(), *value));
        let wanted = if *value == 0 { &OTHER } else { &SEEN };
        if let Ok(mut seen) = ctx.map_state(wanted) {
            let count = seen.get(value).ok().flatten().unwrap_or(0);
            let _ = seen.put(*value, count + 1);
        }
    }
    fn on_timer(&self, _: &String, _: &mut (), _: Timestamp, _: &mut TimerContext<Self::Out>) {}
    fn declare_state<D: DeclareState<String>>(&self, states: &mut D) {
        states.map(&SEEN);
    }
}

#[test]
fn declared_state_is_a_table_and_an_undeclared_one_fails_the_call() {
    let factory = TimerProcessFactory::<_, String, u64> {
        f: CountValues,
        _types: PhantomData,
    };
    assert_eq!(factory.tables(), vec!["process-state", "seen"]);
    let mut op = in_memory(CountValues);
    let mut out = Output::default();
    op.process(
        vec![
            record(0, i64::MIN, "a", 5),
            record(1, 0, "a", 5),
            record(2, 0, "b", 5),
        ],
        &mut out,
    )
    .expect("process");
    // Two values state entries and two map entries.
    assert_eq!(op.state_entries(), 4);
    assert_eq!(out.take().len(), 3);
    let failed = op.process(vec![record(3, 0, "a", 0)], &mut out);
    let error = failed.expect_err("an undeclared state fails").to_string();
    assert!(
        error.contains("`other`") && error.contains("declare_state"),
        "{error}"
    );
    assert!(
        out.take().is_empty(),
        "what the failed call emitted is dropped"
    );
}

#[test]
fn timers_survive_a_snapshot_and_restore() -> Result<(), BoxError> {
    use weir_engine::state::{shared_block_cache, RocksBackend, RocksStore};
    let ctx = crate::test_support::operator_context("deadline");
    let factory = TimerProcessFactory::<_, String, u64> {
        f: SumUntilDeadline,
        _types: PhantomData,
    };
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
    let mut op = factory.create(&ctx, RocksBackend::new(store.clone(), "op", 1))?;
    let mut out = Output::default();
    op.process(vec![record(0, i64::MIN, "a", 7)], &mut out)?;
    op.snapshot()?;
    // A new instance over the same database rebuilds the timer from the state.
    let mut restored = factory.create(&ctx, RocksBackend::new(store, "op", 1))?;
    restored.restore(&[])?;
    restored.on_watermark(10, &mut out)?;
    assert_eq!(fired(&mut out), vec![(10, ("a", 7))]);
    Ok(())
}

/// A session by the wall clock: each event restarts a 300 ms processing-time timeout, and
/// when it fires the key's event count goes out and the key is forgotten. An event of value
/// 0 also sets an event-time timer at the same time as its timeout, to show the domains
/// apart.
#[derive(Clone)]
struct QuietFor300ms;

impl TimerFunction<String, u64> for QuietFor300ms {
    type State = (u64, Option<Timestamp>);
    type Out = (String, u64, TimeDomain);
    fn on_event(
        &self,
        _: &String,
        (count, timeout): &mut (u64, Option<Timestamp>),
        _: Timestamp,
        value: &u64,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        if let Some(previous) = timeout.take() {
            ctx.delete_processing_time_timer(previous);
        }
        let at = ctx.current_processing_time() + 300;
        ctx.register_processing_time_timer(at);
        if *value == 0 {
            ctx.register_timer(at);
        }
        *timeout = Some(at);
        *count += 1;
    }
    fn on_timer(
        &self,
        key: &String,
        (count, _): &mut (u64, Option<Timestamp>),
        _: Timestamp,
        ctx: &mut TimerContext<Self::Out>,
    ) {
        ctx.emit((key.clone(), *count, ctx.time_domain()));
        if ctx.time_domain() == TimeDomain::ProcessingTime {
            ctx.clear_state();
        }
    }
}

type Session = (i64, (String, u64, TimeDomain));

fn sessions(out: &mut Output<(String, u64, TimeDomain)>) -> Vec<Session> {
    out.take().into_iter().map(|r| (r.ts, r.value)).collect()
}

fn session(at: i64, key: &str, count: u64, domain: TimeDomain) -> Session {
    (at, (key.to_string(), count, domain))
}

#[test]
fn a_processing_time_timeout_restarts_with_each_event_and_fires_once_the_clock_reaches_it() {
    let clock = weir_engine::ManualClock::new(10_000);
    let mut op = reading(QuietFor300ms, clock.clock());
    let mut out = Output::default();
    op.process(vec![record(0, i64::MIN, "a", 1)], &mut out)
        .expect("process");
    clock.set(10_100);
    op.process(
        vec![record(1, i64::MIN, "a", 1), record(2, i64::MIN, "b", 1)],
        &mut out,
    )
    .expect("process");
    // a's first timeout (10 300) was deleted: a waits for 10 400, b for 10 400 too.
    clock.set(10_399);
    assert_eq!(
        op.on_processing_time(&mut out).expect("fire"),
        Some(std::time::Duration::from_millis(1))
    );
    assert!(sessions(&mut out).is_empty(), "a was not quiet for 300 ms");
    clock.set(10_400);
    assert_eq!(op.on_processing_time(&mut out).expect("fire"), None);
    assert_eq!(
        sessions(&mut out),
        [
            session(10_400, "a", 2, TimeDomain::ProcessingTime),
            session(10_400, "b", 1, TimeDomain::ProcessingTime)
        ]
    );
    assert_eq!(op.state_entries(), 0, "both keys were cleared");
}

#[test]
fn timers_of_both_domains_at_one_time_fire_apart_each_by_its_own_clock() {
    let clock = weir_engine::ManualClock::new(1_000);
    let mut op = reading(QuietFor300ms, clock.clock());
    let mut out = Output::default();
    op.process(vec![record(0, i64::MIN, "a", 0)], &mut out)
        .expect("process");
    // The watermark reaches 1 300 first: the event-time timer fires, the other waits.
    op.on_watermark(1_300, &mut out).expect("watermark");
    assert_eq!(
        sessions(&mut out),
        [session(1_300, "a", 1, TimeDomain::EventTime)]
    );
    assert!(op.has_processing_timers());
    clock.set(1_300);
    op.on_processing_time(&mut out).expect("fire");
    assert_eq!(
        sessions(&mut out),
        [session(1_300, "a", 1, TimeDomain::ProcessingTime)]
    );
    assert!(!op.has_processing_timers());
}

#[test]
fn processing_timers_survive_a_snapshot_and_a_due_one_fires_right_after_the_restore(
) -> Result<(), BoxError> {
    use weir_engine::state::{shared_block_cache, RocksBackend, RocksStore};
    let clock = weir_engine::ManualClock::new(50_000);
    let mut ctx = crate::test_support::operator_context("quiet");
    ctx.clock = clock.clock();
    let factory = TimerProcessFactory::<_, String, u64> {
        f: QuietFor300ms,
        _types: PhantomData,
    };
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
    let mut op = factory.create(&ctx, RocksBackend::new(store.clone(), "op", 1))?;
    let mut out = Output::default();
    op.process(
        vec![record(0, i64::MIN, "a", 1), record(0, i64::MIN, "b", 1)],
        &mut out,
    )?;
    op.snapshot()?;
    // Down for a second: the timeouts (50 300) passed meanwhile.
    clock.set(51_000);
    let mut restored = factory.create(&ctx, RocksBackend::new(store, "op", 1))?;
    restored.restore(&[])?;
    assert!(restored.has_processing_timers());
    assert_eq!(restored.on_processing_time(&mut out)?, None);
    assert_eq!(
        sessions(&mut out),
        [
            session(50_300, "a", 1, TimeDomain::ProcessingTime),
            session(50_300, "b", 1, TimeDomain::ProcessingTime)
        ]
    );
    clock.advance(10_000);
    assert_eq!(restored.on_processing_time(&mut out)?, None);
    assert!(sessions(&mut out).is_empty(), "each fired once");
    Ok(())
}

#[test]
fn key_state_written_before_processing_timers_existed_restores_with_none() {
    // The layout of checkpoints taken before processing-time timers: state, timers.
    #[derive(Serialize)]
    struct Before {
        state: u64,
        timers: Vec<Timestamp>,
    }
    let old = bincode::serialize(&Before {
        state: 7,
        timers: vec![1_000, 2_000],
    })
    .unwrap();
    let restored: WithTimers<u64> = bincode::deserialize(&old).unwrap();
    assert_eq!(
        (restored.state, restored.timers, restored.processing),
        (7, vec![1_000, 2_000], vec![])
    );
    // And the new layout keeps its processing-time timers.
    let now = WithTimers {
        state: 7u64,
        timers: vec![1_000],
        processing: vec![5_000],
    };
    let again: WithTimers<u64> = bincode::deserialize(&bincode::serialize(&now).unwrap()).unwrap();
    assert_eq!(again.processing, vec![5_000]);
}
