//! The deterministic Nexmark event stream, as a parallel source (see [`NexmarkGenerator`]).
//!
//! Event `n` depends on `n` alone, so instances that share a [`SharedEpochs`] counter make
//! exactly the events of one stream between them, each in stream order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_engine::{BoxError, Source, SourceStatus};

use super::{Auction, Bid, NexmarkEvent, Person};
use crate::generate::{SplitMix64, START_TS};

const FIRST_NAMES: [&str; 8] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie",
];
const LAST_NAMES: [&str; 8] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// Each channel's bid URL up to the auction id (lower-cased once, not per bid).
const CHANNEL_URLS: [&str; 4] = [
    "https://www.nexmark.com/google/item.htm?query=",
    "https://www.nexmark.com/facebook/item.htm?query=",
    "https://www.nexmark.com/baidu/item.htm?query=",
    "https://www.nexmark.com/apple/item.htm?query=",
];

/// Appends the decimal digits of `n` (what `write!` does, without the formatting machinery
/// that shows in the generator's profile).
pub(super) fn push_decimal(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

/// The deterministic Nexmark event stream, as a source.
///
/// Event `n` depends on `n` alone (its random numbers are draws `n * DRAWS_PER_EVENT..`
/// of one sequence), so several instances can make one stream together: each takes the
/// next [`TAKE_EPOCHS`] epochs ([`EPOCH`] events each) that nobody has taken from a
/// [`SharedEpochs`] counter whenever it has made the last ones, as Flink's FLIP-27 readers
/// ask for the next split when they need one. Together they make exactly the events of
/// one, each instance in stream order, and an instance that gets more CPU makes more of
/// them instead of waiting for the others.
///
/// Why not fixed shares: with instance `i` of `k` making the epochs `i, i + k, ..`, the
/// instances had to move in step (a slow one holds every keyed operator's watermark back),
/// so the faster worker waited for the slower one, and 3.3-4.8 M of q4's 18.4 M bids (20 M
/// events, P = 2) reached their worker before their auction, made by the other instance at
/// the same moment, and were kept as early bids. With runs of 1,000 events taken as they
/// go: no waiting, 2.1-2.3 M early bids, and P = 2 / P = 1 up from 1.62 to 1.80 on q4
/// (BENCHMARKS.md).
#[derive(Debug)]
pub struct NexmarkGenerator {
    events: u64,
    next: u64,
    /// The end of the events this instance took last: at `next == taken_end` it takes more.
    taken_end: u64,
    /// Epochs taken at a time: [`TAKE_EPOCHS`], or one when paced.
    take_epochs: u64,
    epochs: SharedEpochs,
    rng: SplitMix64,
    pace: Option<Pace>,
}

/// The epochs the instances of one run have taken so far (see [`NexmarkGenerator`]).
#[derive(Debug, Clone, Default)]
pub struct SharedEpochs(Arc<AtomicU64>);

const SEED: u64 = 2026;
/// Events per epoch of the model: 1 person, 3 auctions, 46 bids.
pub(super) const EPOCH: u64 = 50;
/// Random numbers reserved per event; a person, the largest event, draws 10.
const DRAWS_PER_EVENT: u64 = 16;
/// Epochs an instance takes at a time when not paced: 1,000 events, about one batch, so
/// the shared counter is touched once per batch.
const TAKE_EPOCHS: u64 = 20;

/// Paces a source to a number of events per second of processing time.
#[derive(Debug)]
struct Pace {
    per_second: u64,
    started: Option<std::time::Instant>,
}

impl Pace {
    /// How many events are due by now (the clock starts at the first call).
    fn due(&mut self) -> u64 {
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        (started.elapsed().as_secs_f64() * self.per_second as f64) as u64
    }
}

impl NexmarkGenerator {
    /// `events` events.
    pub fn new(events: u64) -> Self {
        NexmarkGenerator {
            events,
            next: 0,
            taken_end: 0,
            take_epochs: TAKE_EPOCHS,
            epochs: SharedEpochs::default(),
            rng: SplitMix64::new(SEED),
            pace: None,
        }
    }

    /// One of the instances that make the stream together, taking epochs from `epochs`
    /// (see the type's docs).
    pub fn sharing(mut self, epochs: &SharedEpochs) -> Self {
        self.epochs = epochs.clone();
        self
    }

    /// The same stream, handed to the engine at most `per_second` events a second (all
    /// instances together, if shared), give or take an epoch per instance.
    pub fn paced(mut self, per_second: u64) -> Self {
        self.pace = (per_second > 0).then_some(Pace {
            per_second,
            started: None,
        });
        // One epoch at a time, so that an instance never holds much more than is due.
        self.take_epochs = if self.pace.is_some() { 1 } else { TAKE_EPOCHS };
        self
    }

    /// Takes the next epochs nobody has taken; `false` once the whole stream is taken.
    fn take(&mut self) -> bool {
        let first = self.epochs.0.fetch_add(self.take_epochs, Ordering::Relaxed);
        let start = first.saturating_mul(EPOCH);
        if start >= self.events {
            return false;
        }
        self.next = start;
        self.taken_end = start
            .saturating_add(self.take_epochs * EPOCH)
            .min(self.events);
        true
    }

    /// How many events of the stream the instances have taken so far.
    fn taken(&self) -> u64 {
        let epochs = self.epochs.0.load(Ordering::Relaxed);
        epochs.saturating_mul(EPOCH).min(self.events)
    }

    /// `extra` padding: one random letter repeated up to the standard size.
    fn pad(&mut self, current: usize, target: usize) -> String {
        const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz";
        let at = self.rng.below(26) as usize;
        LETTERS[at..=at].repeat(target.saturating_sub(current))
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.rng.below(options.len() as u64) as usize]
    }

    /// Event number `n`.
    fn event(&mut self, n: u64) -> NexmarkEvent {
        self.rng = SplitMix64::at(SEED, n.wrapping_mul(DRAWS_PER_EVENT));
        let date_time = START_TS + (n / 10) as i64;
        let (epoch, offset) = (n / EPOCH, n % EPOCH);
        // Ids of the newest person and auction created before event `n`.
        let persons = epoch + 1;
        let auctions = epoch * 3 + offset.min(3);
        match offset {
            0 => {
                let name = format!("{} {}", self.pick(&FIRST_NAMES), self.pick(&LAST_NAMES));
                let email_address =
                    format!("{}@{}.com", name.replace(' ', "."), self.pick(&CHANNELS));
                let credit_card = format!(
                    "{:04} {:04} {:04} {:04}",
                    self.rng.below(10_000),
                    self.rng.below(10_000),
                    self.rng.below(10_000),
                    self.rng.below(10_000)
                );
                let city = self.pick(&US_CITIES).to_string();
                let state = self.pick(&US_STATES).to_string();
                let size = 2 * 8
                    + name.len()
                    + email_address.len()
                    + credit_card.len()
                    + city.len()
                    + state.len();
                NexmarkEvent::Person(Box::new(Person {
                    id: epoch,
                    city,
                    state,
                    extra: self.pad(size, 200),
                    name,
                    email_address,
                    credit_card,
                    date_time,
                }))
            }
            1..=3 => {
                let id = epoch * 3 + offset - 1;
                let mut item_name = String::with_capacity(24);
                item_name.push_str("item-");
                push_decimal(&mut item_name, id);
                let description = format!("{} {}", self.pick(&FIRST_NAMES), self.pick(&CHANNELS));
                let initial_bid = 100 + self.rng.below(10_000);
                let size = 7 * 8 + item_name.len() + description.len();
                NexmarkEvent::Auction(Box::new(Auction {
                    id,
                    item_name,
                    description,
                    initial_bid,
                    reserve: initial_bid + self.rng.below(10_000),
                    date_time,
                    expires: date_time + 1_000 + self.rng.below(10_000) as i64,
                    seller: self.rng.below(persons.min(1_000)) + persons.saturating_sub(1_000),
                    category: 10 + self.rng.below(5),
                    extra: self.pad(size, 500),
                }))
            }
            _ => {
                let newest = auctions.saturating_sub(1);
                let auction = if self.rng.below(2) > 0 {
                    newest / 100 * 100
                } else {
                    newest.saturating_sub(self.rng.below(newest.min(100) + 1))
                };
                let newest_person = persons.saturating_sub(1);
                let bidder = if self.rng.below(4) > 0 {
                    newest_person / 1_000 * 1_000
                } else {
                    newest_person.saturating_sub(self.rng.below(newest_person.min(1_000) + 1))
                };
                let which = self.rng.below(CHANNELS.len() as u64) as usize;
                let channel = CHANNELS[which].to_string();
                let mut url = String::with_capacity(CHANNEL_URLS[which].len() + 20);
                url.push_str(CHANNEL_URLS[which]);
                push_decimal(&mut url, auction);
                let size = 4 * 8 + url.len() + channel.len();
                NexmarkEvent::Bid(Bid {
                    auction,
                    bidder,
                    price: 100 + self.rng.below(1_000_000),
                    extra: self.pad(size, 100),
                    channel,
                    url,
                    date_time,
                })
            }
        }
    }
}

impl Iterator for NexmarkGenerator {
    type Item = NexmarkEvent;

    fn next(&mut self) -> Option<NexmarkEvent> {
        if self.next == self.taken_end && !self.take() {
            return None;
        }
        let event = self.event(self.next);
        self.next += 1;
        Some(event)
    }
}

impl Source for NexmarkGenerator {
    type Item = NexmarkEvent;

    fn poll_batch(
        &mut self,
        out: &mut Vec<NexmarkEvent>,
        max: usize,
    ) -> Result<SourceStatus, BoxError> {
        let mut max = max as u64;
        if let Some((due, per_second)) = self.pace.as_mut().map(|p| (p.due(), p.per_second)) {
            // What this instance holds goes out, and more is taken while the stream's
            // taken events are fewer than those due.
            let (held, taken) = (self.taken_end - self.next, self.taken());
            if held == 0 && taken < self.events && taken >= due {
                // Nothing due yet: poll again in a millisecond (or when the next epoch is
                // due, if later) rather than spin; events due meanwhile go out as one batch.
                let wait = (EPOCH as f64 / per_second as f64).max(0.001);
                return Ok(SourceStatus::Pending(Duration::from_secs_f64(wait)));
            }
            max = max.min(held + due.saturating_sub(taken)).max(1);
        }
        for _ in 0..max {
            match self.next() {
                Some(e) => out.push(e),
                None => return Ok(SourceStatus::Exhausted),
            }
        }
        Ok(SourceStatus::More)
    }

    fn aligns_instances(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        match &self.pace {
            Some(pace) => format!(
                "nexmark generator: {} events at {} events/s",
                self.events, pace.per_second
            ),
            None => format!("nexmark generator: {} events", self.events),
        }
    }
}

/// Writes the first `events` events as JSON lines (`weir gen nexmark`), each the same
/// event the in-process generator produces.
pub fn write_events(mut w: impl std::io::Write, events: u64) -> std::io::Result<()> {
    for event in NexmarkGenerator::new(events) {
        serde_json::to_writer(&mut w, &event)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}
