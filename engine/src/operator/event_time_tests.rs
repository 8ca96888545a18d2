//! Unit tests of the event-time harness: timers by the watermark and by the clock.

use super::*;
use crate::metrics::JobMetrics;
use crate::state::MemoryTimers;

/// Registers, for an event `(key, [t1, t2, ..])`, a timer at each time in queue 0 and
/// one at the first time in queue 1, and emits `(queue, time, key, watermark)` for
/// every timer that fires; a timer of queue 0 at an odd time registers another one
/// at the same watermark (which must fire in the same advance).
#[derive(Default)]
struct Recorder {
    timers: [MemoryTimers<String>; 2],
}

impl EventTimeOperator for Recorder {
    type Key = String;
    type In = Vec<Timestamp>;
    type Out = (usize, Timestamp, String, Timestamp);
    type Timers = MemoryTimers<String>;
    const LATENESS: Lateness = Lateness::Never;

    fn on_event(
        &mut self,
        _ts: Timestamp,
        event: KeyedEvent<Self>,
        watermark: Timestamp,
        _out: &mut Output<Self::Out>,
    ) -> Result<Handled, BoxError> {
        let mut due = false;
        for &time in &event.value {
            self.timers[0].register(time, event.key.clone())?;
            due |= time <= watermark;
        }
        if let Some(&first) = event.value.first() {
            self.timers[1].register(first, event.key.clone())?;
        }
        Ok(if due {
            Handled::TakenTimersDue
        } else {
            Handled::Taken
        })
    }

    fn timers(&mut self) -> &mut [MemoryTimers<String>] {
        &mut self.timers
    }

    fn timer_due(&self, queue: usize) -> Due {
        match queue {
            0 => Due::AtTime,
            // A window of 10 starting at the time, 5 of lateness after it.
            _ => Due::WindowEnd {
                size: 10,
                lateness: 5,
            },
        }
    }

    fn on_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        key: String,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        if queue == 0 && time % 2 != 0 {
            self.timers[0].register(time + 1, format!("{key}+"))?;
        }
        out.emit(time, (queue, time, key, watermark));
        Ok(())
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        Vec::new()
    }

    fn state_entries(&self) -> usize {
        0
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        Ok(())
    }
}

fn harness() -> EventTime<Recorder> {
    EventTime::new(
        Recorder::default(),
        &context("recorder", ProcessingClock::system()),
    )
}

/// The context of the only instance of operator `name`, reading `clock`.
fn context(name: &str, clock: ProcessingClock) -> OperatorContext {
    OperatorContext {
        name: name.into(),
        instance: 0,
        parallelism: 1,
        key_groups: 0..128,
        metrics: JobMetrics::new("test").operator(name, 0),
        clock,
    }
}

fn event(watermark: Timestamp, key: &str, times: &[Timestamp]) -> Record<KeyedEvent<Recorder>> {
    Record {
        ts: 0,
        watermark,
        value: Keyed {
            key: key.to_string(),
            value: times.to_vec(),
        },
    }
}

fn fired(out: &mut Output<(usize, Timestamp, String, Timestamp)>) -> Vec<String> {
    out.take()
        .into_iter()
        .map(|r| {
            let (queue, time, key, watermark) = r.value;
            format!("q{queue} {time} {key} @{watermark}")
        })
        .collect()
}

#[test]
fn timers_fire_queue_by_queue_in_time_order_once_the_watermark_makes_them_due() {
    let mut op = harness();
    let mut out = Output::default();
    op.process(
        vec![event(0, "a", &[30, 10]), event(0, "b", &[20])],
        &mut out,
    )
    .unwrap();
    assert!(fired(&mut out).is_empty(), "nothing is due at watermark 0");
    // Queue 1's timers (at 30, 20) are due at 30 + 14 and 20 + 14.
    op.on_watermark(34, &mut out).unwrap();
    assert_eq!(
        fired(&mut out),
        ["q0 10 a @34", "q0 20 b @34", "q0 30 a @34", "q1 20 b @34"]
    );
    op.on_watermark(43, &mut out).unwrap();
    assert!(fired(&mut out).is_empty(), "a's window timer waits for 44");
    op.on_watermark(44, &mut out).unwrap();
    assert_eq!(fired(&mut out), ["q1 30 a @44"]);
}

#[test]
fn a_timer_already_due_fires_before_the_next_event_and_timers_registered_by_timers_fire_too() {
    let mut op = harness();
    let mut out = Output::default();
    op.process(
        vec![event(100, "a", &[7, 200]), event(100, "b", &[300])],
        &mut out,
    )
    .unwrap();
    // a's 7 fired at once (before b's event) and registered "a+" at 8, due too; then
    // queue 1's timer at 7 (due at 21).
    assert_eq!(
        fired(&mut out),
        ["q0 7 a @100", "q0 8 a+ @100", "q1 7 a @100"]
    );
}

#[test]
fn a_window_end_saturates_near_the_largest_time() {
    let due = Due::WindowEnd {
        size: 10,
        lateness: 5,
    };
    assert!(!due.at(i64::MAX - 3, i64::MAX - 1));
    assert!(due.at(i64::MAX - 3, i64::MAX));
    assert!(due.at(0, 14) && !due.at(0, 13));
    assert!(Due::AtTime.at(5, 5) && !Due::AtTime.at(6, 5));
}

/// Registers, for an event `(key, [t1, t2, ..])`, a processing-time timer at each time,
/// and emits `(time, key, watermark)` for every one that fires.
#[derive(Default)]
struct OnTheClock {
    processing: [MemoryTimers<String>; 1],
}

impl EventTimeOperator for OnTheClock {
    type Key = String;
    type In = Vec<Timestamp>;
    type Out = (Timestamp, String, Timestamp);
    type Timers = MemoryTimers<String>;
    const LATENESS: Lateness = Lateness::Never;

    fn on_event(
        &mut self,
        _ts: Timestamp,
        event: KeyedEvent<Self>,
        _watermark: Timestamp,
        _out: &mut Output<Self::Out>,
    ) -> Result<Handled, BoxError> {
        for &time in &event.value {
            self.processing[0].register(time, event.key.clone())?;
        }
        Ok(Handled::Taken)
    }

    fn timers(&mut self) -> &mut [MemoryTimers<String>] {
        &mut []
    }

    fn processing_timers(&mut self) -> &mut [MemoryTimers<String>] {
        &mut self.processing
    }

    fn on_processing_timer(
        &mut self,
        _queue: usize,
        time: Timestamp,
        key: String,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        out.emit(time, (time, key, watermark));
        Ok(())
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        Vec::new()
    }

    fn state_entries(&self) -> usize {
        0
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        Ok(())
    }
}

/// [`OnTheClock`] reading `clock`.
fn on_the_clock(clock: &crate::clock::ManualClock) -> EventTime<OnTheClock> {
    EventTime::new(
        OnTheClock::default(),
        &context("on-the-clock", clock.clock()),
    )
}

fn fired_on_the_clock(out: &mut Output<(Timestamp, String, Timestamp)>) -> Vec<String> {
    out.take()
        .into_iter()
        .map(|r| format!("{} {} @{}", r.value.0, r.value.1, r.value.2))
        .collect()
}

#[test]
fn processing_timers_fire_when_the_clock_reaches_them_and_say_how_long_until_the_next() {
    let clock = crate::clock::ManualClock::new(1_000);
    let mut op = on_the_clock(&clock);
    let mut out = Output::default();
    assert!(!op.has_processing_timers());
    op.process(
        vec![event(7, "a", &[1_100, 1_050]), event(7, "b", &[1_050])],
        &mut out,
    )
    .unwrap();
    assert!(op.has_processing_timers());
    let ms = Duration::from_millis;
    assert_eq!(op.on_processing_time(&mut out).unwrap(), Some(ms(50)));
    assert!(
        fired_on_the_clock(&mut out).is_empty(),
        "nothing is due at 1000"
    );
    // However far the watermark moves, the clock decides.
    op.on_watermark(5_000, &mut out).unwrap();
    assert!(fired_on_the_clock(&mut out).is_empty());
    clock.set(1_060);
    assert_eq!(op.on_processing_time(&mut out).unwrap(), Some(ms(40)));
    assert_eq!(
        fired_on_the_clock(&mut out),
        ["1050 a @5000", "1050 b @5000"]
    );
    clock.advance(1_000);
    assert_eq!(op.on_processing_time(&mut out).unwrap(), None);
    assert_eq!(fired_on_the_clock(&mut out), ["1100 a @5000"]);
    assert!(!op.has_processing_timers());
}

#[test]
fn processing_timers_do_not_fire_once_the_input_ended() {
    let clock = crate::clock::ManualClock::new(0);
    let mut op = on_the_clock(&clock);
    let mut out = Output::default();
    op.process(vec![event(0, "a", &[10])], &mut out).unwrap();
    op.on_watermark(crate::time::END_WATERMARK, &mut out)
        .unwrap();
    clock.set(20);
    assert!(!op.has_processing_timers());
    assert_eq!(op.on_processing_time(&mut out).unwrap(), None);
    assert!(fired_on_the_clock(&mut out).is_empty());
}

#[test]
fn an_operator_without_processing_timers_has_none_pending() {
    let mut op = harness();
    let mut out = Output::default();
    op.process(vec![event(0, "a", &[30])], &mut out).unwrap();
    assert!(!op.has_processing_timers());
}
