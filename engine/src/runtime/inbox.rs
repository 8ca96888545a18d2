//! The receiving end of a channel ([`Inbox`]): merges its producers' watermarks
//! ([`Inputs`]: the minimum over producers that are not idle, never going back) and aligns
//! checkpoint barriers ([`super::alignment::Alignment`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use prometheus::IntGauge;

use super::alarm;
use super::alignment::Alignment;
use super::doorbell::Doorbell;
use super::push::{Envelope, Flush, Message, Push};
use super::worker::{Part, Step};
use crate::checkpoint::coordinator::Checkpointing;
use crate::error::{EngineError, Result};
use crate::record::{Batch, Data};
use crate::time::{Timestamp, END_WATERMARK, MIN_WATERMARK};

/// The producers feeding one channel: their watermarks, and which of them are idle.
///
/// The combined watermark is the minimum over producers that are not idle; it never goes
/// backwards (a producer that wakes up behind it does not pull it back, as in Flink).
pub(super) struct Inputs {
    pub(super) watermarks: Vec<Timestamp>,
    last_seen: Vec<Instant>,
    idle: Vec<bool>,
    idle_timeout: Option<Duration>,
    combined: Timestamp,
    pub(super) ended: usize,
}

impl Inputs {
    pub(super) fn new(producers: usize, idle_timeout: Option<Duration>) -> Self {
        Inputs {
            watermarks: vec![MIN_WATERMARK; producers],
            last_seen: vec![Instant::now(); producers],
            idle: vec![false; producers],
            // Idleness only matters where there is a minimum to take.
            idle_timeout: idle_timeout.filter(|_| producers > 1),
            combined: MIN_WATERMARK,
            ended: 0,
        }
    }

    /// Minimum watermark of the active producers other than `except`; `None` if none.
    fn others(&self, except: usize) -> Option<Timestamp> {
        (0..self.watermarks.len())
            .filter(|&p| p != except && !self.idle[p])
            .map(|p| self.watermarks[p])
            .min()
    }

    /// Producer `p` delivered a batch at `now`: stamps its records and the batch with
    /// combined watermarks.
    pub(super) fn on_batch<T>(&mut self, p: usize, batch: &mut Batch<T>, now: Instant) {
        self.last_seen[p] = now;
        self.idle[p] = false;
        if self.watermarks.len() == 1 {
            self.combined = self.combined.max(batch.watermark);
            return;
        }
        let others = self.others(p).unwrap_or(END_WATERMARK);
        for r in &mut batch.records {
            r.watermark = r.watermark.min(others).max(self.combined);
        }
        self.watermarks[p] = batch.watermark;
        self.combined = self.combined.max(batch.watermark.min(others));
        batch.watermark = self.combined;
    }

    pub(super) fn on_end(&mut self, p: usize) {
        self.ended += 1;
        self.watermarks[p] = END_WATERMARK;
        self.idle[p] = false;
    }

    /// Marks producers idle that delivered nothing for the idle timeout up to `now`;
    /// returns the new combined watermark if that moved it forward.
    fn check_idle(&mut self, now: Instant) -> Option<Timestamp> {
        let timeout = self.idle_timeout?;
        let mut changed = false;
        for p in 0..self.watermarks.len() {
            let quiet = now.duration_since(self.last_seen[p]) >= timeout;
            if quiet && !self.idle[p] && self.watermarks[p] != END_WATERMARK {
                self.idle[p] = true;
                changed = true;
            }
        }
        let active_min = (0..self.watermarks.len())
            .filter(|&p| !self.idle[p])
            .map(|p| self.watermarks[p])
            .min()?;
        if changed && active_min > self.combined {
            self.combined = active_min;
            return Some(active_min);
        }
        None
    }
}

/// How long a receiver waits at most before it looks at idle producers (or, for a sink,
/// at its channel: a safety net, as every send rings its doorbell).
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(50);

/// The receiving end of a channel: merges its producers' watermarks and aligns checkpoint
/// barriers, handing batches on to `down`, until every producer ended.
pub(super) struct Inbox<T> {
    pub(super) name: String,
    pub(super) rx: Receiver<Envelope<T>>,
    pub(super) inputs: Inputs,
    pub(super) alignment: Alignment<T>,
    pub(super) fill: IntGauge,
    pub(super) down: Box<dyn Push<T>>,
    pub(super) checkpointing: Option<Arc<Checkpointing>>,
    /// A sink's: its thread waits on this, not on the channel.
    pub(super) doorbell: Option<Arc<Doorbell>>,
}

impl<T: Data> Inbox<T> {
    fn gone(&self) -> EngineError {
        EngineError::UpstreamGone {
            name: self.name.clone(),
        }
    }

    fn ended(&self) -> bool {
        self.inputs.ended == self.inputs.watermarks.len()
    }

    /// Receives in a thread of its own until every producer ended.
    pub(super) fn run(mut self) -> Result<()> {
        while !self.ended() {
            let received = match self.alignment.released.pop_front() {
                Some(envelope) => Some(envelope),
                None => self.receive()?,
            };
            self.handle(received)?;
        }
        self.finish()
    }

    /// The next message, waiting for it; `None` after a while without one, if producers
    /// can become idle or a doorbell is rung without a message.
    fn receive(&mut self) -> Result<Option<Envelope<T>>> {
        if self.rx.is_empty() {
            self.down.flush(Flush::All)?;
        }
        // At most this long between looks at idle producers, and no longer than until a
        // processing-time timer of an operator after this inbox is due.
        let timeout = self
            .inputs
            .idle_timeout
            .map_or(IDLE_CHECK, |t| t.min(IDLE_CHECK));
        let timeout = alarm::bound(timeout);
        if let Some(doorbell) = &self.doorbell {
            return match self.rx.try_recv() {
                Ok(envelope) => Ok(Some(envelope)),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(self.gone()),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    let rx = &self.rx;
                    doorbell.wait_while(|| rx.is_empty(), timeout);
                    Ok(None)
                }
            };
        }
        // Without idleness the wait still ends now and then: the flush before the next
        // wait is where a keyed instance answers queries asked while its input is quiet.
        match self.rx.recv_timeout(timeout) {
            Ok(envelope) => Ok(Some(envelope)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self.gone()),
        }
    }

    /// One message (or, with `None`, a look at idle producers).
    fn handle(&mut self, received: Option<Envelope<T>>) -> Result<()> {
        self.fill.set(self.rx.len() as i64);
        if let Some((producer, message)) = received {
            match self.alignment.admit(producer, message) {
                Some(Message::Batch(mut batch)) => {
                    self.inputs.on_batch(producer, &mut batch, Instant::now());
                    self.down.push(batch)?;
                }
                Some(Message::End) => self.inputs.on_end(producer),
                Some(Message::Barrier(_)) | None => {}
            }
        }
        if let Some((id, took)) = self.alignment.complete() {
            if let Some(c) = &self.checkpointing {
                c.aligned(took);
            }
            self.down.barrier(id)?;
        }
        if let Some(watermark) = self.inputs.check_idle(Instant::now()) {
            self.down.push(Batch::new(Vec::new(), watermark))?;
        }
        Ok(())
    }

    /// Every producer ended. Each sent the end watermark first if its input ended, so it
    /// has passed on already; producers that stopped ([`JobControl::stop`]) did not, and
    /// their windows stay open.
    fn finish(&mut self) -> Result<()> {
        self.down.finish()
    }
}

impl<T: Data> Part for Inbox<T> {
    fn step(&mut self) -> Result<Step> {
        // A bounded share of the channel per step, so the worker's other parts get turns.
        const MESSAGES_PER_STEP: usize = 64;
        let mut worked = false;
        for _ in 0..MESSAGES_PER_STEP {
            if self.ended() {
                break;
            }
            let envelope = match self.alignment.released.pop_front() {
                Some(envelope) => envelope,
                None => match self.rx.try_recv() {
                    Ok(envelope) => envelope,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(self.gone()),
                },
            };
            self.handle(Some(envelope))?;
            worked = true;
        }
        if self.ended() {
            self.finish()?;
            return Ok(Step::Done);
        }
        if !worked {
            self.handle(None)?;
            return Ok(Step::Idle);
        }
        Ok(Step::Worked)
    }

    fn watch<'a>(&'a self, select: &mut Select<'a>) {
        select.recv(&self.rx);
    }

    fn wake_after(&self) -> Option<Duration> {
        None
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    /// A batch of one record at `watermark`, as producer `p` sends it.
    fn deliver(inputs: &mut Inputs, p: usize, watermark: Timestamp, at: Instant) -> Batch<()> {
        let record = Record {
            ts: watermark,
            watermark,
            value: (),
        };
        let mut batch = Batch::new(vec![record], watermark);
        inputs.on_batch(p, &mut batch, at);
        batch
    }

    #[test]
    fn the_watermark_is_the_minimum_over_the_producers() {
        let mut inputs = Inputs::new(2, None);
        let now = Instant::now();
        assert_eq!(deliver(&mut inputs, 0, 10, now).watermark, MIN_WATERMARK);
        assert_eq!(deliver(&mut inputs, 1, 5, now).watermark, 5);
        assert_eq!(deliver(&mut inputs, 1, 20, now).watermark, 10);
    }

    #[test]
    fn an_ended_producer_does_not_hold_the_watermark_back() {
        let mut inputs = Inputs::new(2, None);
        inputs.on_end(1);
        assert_eq!(deliver(&mut inputs, 0, 7, Instant::now()).watermark, 7);
    }

    #[test]
    fn an_idle_producer_is_skipped_and_the_watermark_never_goes_back_when_it_wakes() {
        let timeout = Duration::from_secs(1);
        let mut inputs = Inputs::new(2, Some(timeout));
        let start = Instant::now();
        deliver(&mut inputs, 0, 10, start + Duration::from_millis(1500));
        // Producer 1 sent nothing since the start: idle after the timeout, not before.
        assert_eq!(inputs.check_idle(start + Duration::from_millis(900)), None);
        assert_eq!(inputs.check_idle(start + Duration::from_secs(2)), Some(10));
        // It wakes up behind: its records and the batch keep the combined watermark.
        let late = deliver(&mut inputs, 1, 3, start + Duration::from_secs(3));
        assert_eq!(late.watermark, 10);
        assert!(late.records.iter().all(|r| r.watermark >= 10));
        // And it counts again: producer 0 moving on is held back by it.
        assert_eq!(
            deliver(&mut inputs, 0, 30, start + Duration::from_secs(3)).watermark,
            10
        );
    }

    #[test]
    fn a_single_producer_has_no_idleness_to_wait_for() {
        let mut inputs = Inputs::new(1, Some(Duration::from_millis(1)));
        let now = Instant::now();
        assert_eq!(deliver(&mut inputs, 0, 4, now).watermark, 4);
        assert_eq!(inputs.check_idle(now + Duration::from_secs(60)), None);
    }
}
