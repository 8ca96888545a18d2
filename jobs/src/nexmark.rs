//! Nexmark: the streaming benchmark of auctions, bids and persons (used by Flink, Arroyo,
//! RisingWave), as a deterministic in-process generator and bundled queries.
//!
//! # Generator (close to the standard model, not byte-identical to Flink's)
//! Per 50 events: 1 person, 3 auctions, 46 bids. Event time advances 0.1 ms per event
//! (10,000 events/s of event time) from 2026-01-01, in order. Bids go to a *hot* auction (the
//! newest multiple of 100 among open auctions) 1 time in 2, else to one of the 100 newest
//! auctions; bidders likewise (hot 3 in 4, among the 1000 newest persons). Every field of
//! every event is produced, strings included, padded (`extra`) to the standard average
//! payload sizes (string bytes plus 8 per number): person 200 bytes, auction 500, bid 100.
//! It is a parallel source: at parallelism P, instance `i` makes the epochs of 50 events
//! `i, i + P, ..` (events `50i..50i + 50`, then `50(i + P)..`), so every instance makes the
//! same mix of persons, auctions and bids.
//!
//! # Queries (`--query`)
//! - `q0`: pass-through of all events.
//! - `q1`: bids with the price converted from dollars to euros (x 0.908).
//! - `q2`: bids on auctions whose id is a multiple of 123: `(auction, price)`.
//! - `q3`: local item suggestion: auctions of category 10 by sellers in OR, ID or CA, with
//!   the seller's name, city and state. An incremental (regular) join keyed by person id:
//!   each row is emitted as soon as both sides are there, and persons stay in state for the
//!   whole run, as in Flink's regular join without state TTL.
//! - `q4`: average closing price per category: an auction closes at `expires` with its
//!   highest bid made in `[date_time, expires]` (auctions without such a bid do not close
//!   with a price); every closing updates its category's running average (integer division,
//!   as SQL `AVG` over `BIGINT`), emitted as `{category, average_price, auctions}`. The
//!   last row per category is the final answer.
//! - `q5`: hot items: per sliding window of 10 s every 2 s, the auction with the most bids
//!   (ties to the smaller id; the standard query returns all tied auctions). Counted in two
//!   phases: per 2 s pane in each worker, then merged per window after the exchange.
//! - `q7`: highest bid per tumbling 10 s window (ties to the earlier, then smaller bidder).
//! - `q8`: new users: persons who opened an auction in the same tumbling 10 s window as they
//!   registered (a window co-group of persons `(id, name)` and auction sellers on
//!   `person.id = auction.seller`), one row per person and window.
//!
//! Every query reads only the fields it needs right after the source (a projection, as a
//! SQL planner pushes it down), so strings that a query never reads do not cross an
//! exchange.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use weir_engine::{BoxError, Job, Source, SourceStatus, Stream, Watermarks};
use weir_operators::aggregate::AggregateError;
use weir_operators::prelude::*;

use crate::generate::{SplitMix64, START_TS};
use crate::options::JobOptions;
use crate::output::OutputSink;

/// One line of `weir jobs`.
pub const ABOUT: &str =
    "Nexmark queries q0-q5 q7 q8 on the in-process generator (--query, --events, --rate)";

/// The queries `--query` accepts, in the order `--all` runs them.
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// A person (a seller or bidder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    /// Person id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Email address.
    pub email_address: String,
    /// Credit card number.
    pub credit_card: String,
    /// City.
    pub city: String,
    /// US state.
    pub state: String,
    /// Event time, epoch ms.
    pub date_time: i64,
    /// Padding to the standard size.
    pub extra: String,
}

/// An auction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auction {
    /// Auction id.
    pub id: u64,
    /// Item name.
    pub item_name: String,
    /// Item description.
    pub description: String,
    /// Initial bid.
    pub initial_bid: u64,
    /// Reserve price.
    pub reserve: u64,
    /// Event time, epoch ms.
    pub date_time: i64,
    /// When the auction ends, epoch ms.
    pub expires: i64,
    /// Seller (a person id).
    pub seller: u64,
    /// Category.
    pub category: u64,
    /// Padding to the standard size.
    pub extra: String,
}

/// A bid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bid {
    /// The auction bid on.
    pub auction: u64,
    /// The bidder (a person id).
    pub bidder: u64,
    /// Price in cents.
    pub price: u64,
    /// Channel the bid came through.
    pub channel: String,
    /// URL.
    pub url: String,
    /// Event time, epoch ms.
    pub date_time: i64,
    /// Padding to the standard size.
    pub extra: String,
}

/// A Nexmark event. Persons and auctions (8 % of events) are boxed so that every event,
/// moved several times on its way through a batch, is the size of a bid (112 bytes, not 136).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NexmarkEvent {
    /// A new person.
    Person(Box<Person>),
    /// A new auction.
    Auction(Box<Auction>),
    /// A bid.
    Bid(Bid),
}

impl NexmarkEvent {
    /// Event time, epoch ms.
    pub fn date_time(&self) -> i64 {
        match self {
            NexmarkEvent::Person(p) => p.date_time,
            NexmarkEvent::Auction(a) => a.date_time,
            NexmarkEvent::Bid(b) => b.date_time,
        }
    }

    fn bid(self) -> Option<Bid> {
        match self {
            NexmarkEvent::Bid(b) => Some(b),
            _ => None,
        }
    }

    fn person(self) -> Option<Person> {
        match self {
            NexmarkEvent::Person(p) => Some(*p),
            _ => None,
        }
    }

    fn auction(self) -> Option<Auction> {
        match self {
            NexmarkEvent::Auction(a) => Some(*a),
            _ => None,
        }
    }
}

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
fn push_decimal(s: &mut String, mut n: u64) {
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
const EPOCH: u64 = 50;
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

/// q1 output: a bid with its price in euros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EuroBid {
    /// The auction.
    pub auction: u64,
    /// The bidder.
    pub bidder: u64,
    /// Price in euro cents (x 0.908, rounded down).
    pub price: u64,
    /// Event time.
    pub date_time: i64,
}

/// q3 output: an auction of category 10 by a seller in OR, ID or CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalItem {
    /// The seller's name.
    pub name: String,
    /// The seller's city.
    pub city: String,
    /// The seller's state.
    pub state: String,
    /// The auction.
    pub auction: u64,
}

/// q3 input, keyed by the person id: a person, or an auction of category 10.
#[derive(Debug, Clone)]
enum SellerEvent {
    Person {
        id: u64,
        /// Name, city and state, if the person lives in one of q3's states.
        local: Option<(String, String, String)>,
    },
    Auction {
        id: u64,
        seller: u64,
    },
}

impl SellerEvent {
    fn from_event(e: NexmarkEvent) -> Option<SellerEvent> {
        match e {
            NexmarkEvent::Person(p) => Some(SellerEvent::Person {
                id: p.id,
                local: matches!(p.state.as_str(), "OR" | "ID" | "CA")
                    .then_some((p.name, p.city, p.state)),
            }),
            NexmarkEvent::Auction(a) if a.category == 10 => Some(SellerEvent::Auction {
                id: a.id,
                seller: a.seller,
            }),
            _ => None,
        }
    }

    fn person(&self) -> u64 {
        match self {
            SellerEvent::Person { id, .. } => *id,
            SellerEvent::Auction { seller, .. } => *seller,
        }
    }
}

/// q3 state per person.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seller {
    /// `None` until the person arrives; then their name, city and state if local.
    person: Option<Option<(String, String, String)>>,
    /// Auctions that arrived before their seller.
    waiting: Vec<u64>,
}

fn q3_join(_: &u64, seller: &mut Seller, _: i64, event: &SellerEvent, out: &mut Vec<LocalItem>) {
    let row = |(name, city, state): &(String, String, String), auction| LocalItem {
        name: name.clone(),
        city: city.clone(),
        state: state.clone(),
        auction,
    };
    match event {
        SellerEvent::Person { local, .. } => {
            if let Some(local) = local {
                out.extend(seller.waiting.iter().map(|&a| row(local, a)));
            }
            seller.waiting = Vec::new();
            seller.person = Some(local.clone());
        }
        SellerEvent::Auction { id, .. } => match &seller.person {
            Some(Some(local)) => out.push(row(local, *id)),
            Some(None) => {}
            None => seller.waiting.push(*id),
        },
    }
}

/// q4 input, keyed by the auction id: an auction or a bid, with only the fields q4 reads.
#[derive(Debug, Clone)]
enum AuctionEvent {
    Auction {
        id: u64,
        category: u64,
        date_time: i64,
        expires: i64,
    },
    Bid {
        auction: u64,
        price: u64,
        date_time: i64,
    },
}

impl AuctionEvent {
    fn from_event(e: NexmarkEvent) -> Option<AuctionEvent> {
        match e {
            NexmarkEvent::Auction(a) => Some(AuctionEvent::Auction {
                id: a.id,
                category: a.category,
                date_time: a.date_time,
                expires: a.expires,
            }),
            NexmarkEvent::Bid(b) => Some(AuctionEvent::Bid {
                auction: b.auction,
                price: b.price,
                date_time: b.date_time,
            }),
            NexmarkEvent::Person(_) => None,
        }
    }

    fn auction(&self) -> u64 {
        match self {
            AuctionEvent::Auction { id, .. } => *id,
            AuctionEvent::Bid { auction, .. } => *auction,
        }
    }
}

/// q4 state per auction.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OpenAuction {
    /// `(category, date_time, expires)` once the auction arrived.
    auction: Option<(u64, i64, i64)>,
    /// The highest bid price in `[date_time, expires]` so far.
    highest: Option<u64>,
    /// `(date_time, price)` of bids that arrived before their auction.
    early: Vec<(i64, u64)>,
}

/// An auction closed with its highest bid (q4's inner query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClosedAuction {
    category: u64,
    price: u64,
}

/// q4's inner query: the winning bid of each auction, when it expires.
#[derive(Debug, Clone, Copy)]
struct WinningBid;

impl TimerFunction<u64, AuctionEvent> for WinningBid {
    type State = OpenAuction;
    type Out = ClosedAuction;

    fn on_event(
        &self,
        _: &u64,
        open: &mut OpenAuction,
        _: i64,
        event: &AuctionEvent,
        ctx: &mut TimerContext<ClosedAuction>,
    ) {
        let in_time = |(_, start, end): (u64, i64, i64), at: i64| (start..=end).contains(&at);
        match *event {
            AuctionEvent::Auction {
                category,
                date_time,
                expires,
                ..
            } => {
                let auction = (category, date_time, expires);
                open.auction = Some(auction);
                for (at, price) in std::mem::take(&mut open.early) {
                    if in_time(auction, at) {
                        open.highest = open.highest.max(Some(price));
                    }
                }
                ctx.register_timer(expires);
            }
            AuctionEvent::Bid {
                price, date_time, ..
            } => match open.auction {
                Some(auction) if in_time(auction, date_time) => {
                    open.highest = open.highest.max(Some(price));
                }
                Some(_) => {}
                None => {
                    // An auction that arrives after the watermark passed the bid's time would
                    // be late (and its bids before it invalid), so the bid waits until then.
                    // One timer per key, at its earliest waiting bid: at P > 1 some bids
                    // reach their auction's worker before it (the generator instances make
                    // neighbouring runs of events at once), and a timer per bid made q4 run
                    // 8 % more instructions at P = 2 than with this.
                    if open.early.iter().all(|&(at, _)| at > date_time) {
                        ctx.register_timer(date_time);
                    }
                    open.early.push((date_time, price));
                }
            },
        }
    }

    fn on_timer(
        &self,
        _: &u64,
        open: &mut OpenAuction,
        time: i64,
        ctx: &mut TimerContext<ClosedAuction>,
    ) {
        match open.auction {
            Some((category, _, expires)) if time == expires => {
                if let Some(price) = open.highest {
                    ctx.emit(ClosedAuction { category, price });
                }
                ctx.clear_state();
            }
            Some(_) => {}
            None => {
                open.early.retain(|&(at, _)| at > time);
                match open.early.iter().map(|&(at, _)| at).min() {
                    Some(earliest) => ctx.register_timer(earliest),
                    None => ctx.clear_state(),
                }
            }
        }
    }
}

/// q4 output: a category's average closing price after one more auction closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryAverage {
    /// The category.
    pub category: u64,
    /// Average closing price of its closed auctions (integer division).
    pub average_price: u64,
    /// How many of its auctions closed with a price.
    pub auctions: u64,
}

/// q4's outer query: the running average per category, as `(sum, count)`.
fn q4_average(
    category: &u64,
    total: &mut (u64, u64),
    _: i64,
    closed: &ClosedAuction,
    out: &mut Vec<CategoryAverage>,
) {
    total.0 += closed.price;
    total.1 += 1;
    out.push(CategoryAverage {
        category: *category,
        average_price: total.0 / total.1,
        auctions: total.1,
    });
}

/// q5 output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotItem {
    /// Window start (the window is 10 s long).
    pub window_start: i64,
    /// The auction with the most bids in the window.
    pub auction: u64,
    /// Its bids in the window.
    pub bids: u64,
}

/// q7 output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HighestBid {
    /// Window start (the window is 10 s long).
    pub window_start: i64,
    /// The highest bid of the window.
    pub bid: Bid,
}

/// q8 output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewUser {
    /// Window start (the window is 10 s long).
    pub window_start: i64,
    /// The person.
    pub id: u64,
    /// Their name.
    pub name: String,
}

/// The highest bid; ties to the earlier bid, then the smaller bidder.
#[derive(Debug, Clone, Copy)]
struct MaxBid;

fn beats(a: &Bid, b: &Bid) -> bool {
    (
        a.price,
        std::cmp::Reverse(a.date_time),
        std::cmp::Reverse(a.bidder),
    ) > (
        b.price,
        std::cmp::Reverse(b.date_time),
        std::cmp::Reverse(b.bidder),
    )
}

impl Aggregator<Bid> for MaxBid {
    type Acc = Option<Bid>;
    type Output = Option<Bid>;
    fn create(&self) -> Option<Bid> {
        None
    }
    fn add(&self, acc: &mut Option<Bid>, bid: &Bid) -> Result<(), AggregateError> {
        if acc.as_ref().is_none_or(|best| beats(bid, best)) {
            *acc = Some(bid.clone());
        }
        Ok(())
    }
    fn merge(&self, acc: &mut Option<Bid>, other: &Option<Bid>) -> Result<(), AggregateError> {
        if let Some(bid) = other {
            self.add(acc, bid)?;
        }
        Ok(())
    }
    fn finish(&self, acc: &Option<Bid>) -> Option<Bid> {
        acc.clone()
    }
}

/// Builds the Nexmark query `--query` on `--events` generated events (default 1 M).
pub fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = Job::new("nexmark");
    let (events, rate) = (opts.events.unwrap_or(1_000_000), opts.rate.unwrap_or(0));
    // The epochs a run's instances share; the engine makes instance 0 of a run first.
    let run_epochs = RefCell::new(SharedEpochs::default());
    let events = job
        .parallel_source("nexmark", move |instance, _| {
            if instance == 0 {
                run_epochs.replace(SharedEpochs::default());
            }
            NexmarkGenerator::new(events)
                .sharing(&run_epochs.borrow())
                .paced(rate)
        })
        .timestamps(NexmarkEvent::date_time, Watermarks::bounded(Duration::ZERO));
    let query = opts.query.as_deref().unwrap_or("q0");
    let bids = |events: Stream<NexmarkEvent>| events.flat_map(NexmarkEvent::bid);
    match query {
        "q0" => events.sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q1" => bids(events)
            .map(|b| EuroBid {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price * 908 / 1000,
                date_time: b.date_time,
            })
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q2" => bids(events)
            .filter(|b| b.auction % 123 == 0)
            .map(|b| (b.auction, b.price))
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q3" => events
            .flat_map(SellerEvent::from_event)
            .key_by(SellerEvent::person)
            .process_with_state("q3-join", q3_join)
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q4" => events
            .flat_map(AuctionEvent::from_event)
            .key_by(AuctionEvent::auction)
            .process_with_timers("q4-winning-bid", WinningBid)
            .key_by(|c: &ClosedAuction| c.category)
            .process_with_state("q4-average", q4_average)
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q5" => events
            // Only the auction id is read: the bid's strings do not cross the exchange.
            .flat_map(|e| e.bid().map(|b| b.auction))
            .key_by(|auction: &u64| *auction)
            .window(Sliding::of(Duration::from_secs(10), Duration::from_secs(2)))
            // Counted per 2 s pane in each worker first (Flink's local-global aggregation):
            // half the bids go to one hot auction, so the exchange carries a partial count
            // per auction and pane, not every bid (P = 2 / P = 1 1.60 -> 1.71 in paired
            // rounds, BENCHMARKS.md).
            .aggregate_two_phase(Count)
            .top_n(1, |bids: &u64| *bids)
            .map(|r| HotItem {
                window_start: r.window.start,
                auction: r.key,
                bids: r.value,
            })
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q7" => bids(events)
            .key_by(|_: &Bid| 0u8)
            .window(Tumbling::of(Duration::from_secs(10)))
            // One key: each worker takes the maximum of its own bids first, so only one
            // partial per window and worker crosses the exchange.
            .aggregate_two_phase(MaxBid)
            .flat_map(|r| {
                let window_start = r.window.start;
                r.value.map(|bid| HighestBid { window_start, bid })
            })
            .sink("output", OutputSink::from_spec(opts.output.as_deref())),
        "q8" => {
            // Bids (92 % of events) are dropped before the stream is split in two, so the
            // split copies only persons and auctions; each side is cut down to what the
            // result needs before it enters window state (as a SQL planner would project).
            let others = events.filter(|e| !matches!(e, NexmarkEvent::Bid(_)));
            let persons = others
                .clone()
                .flat_map(NexmarkEvent::person)
                .map(|p| (p.id, p.name));
            let sellers = others.flat_map(|e| e.auction().map(|a| a.seller));
            // One row per person and window with at least one auction of theirs: the
            // co-group of the window, not its pairs (which would repeat a person once per
            // auction and need a dedup after).
            persons
                .window_cogroup(
                    sellers,
                    |p: &(u64, String)| p.0,
                    |seller: &u64| *seller,
                    Tumbling::of(Duration::from_secs(10)),
                )
                .flat_map(|group| {
                    let (window_start, opened) = (group.window.start, !group.right.is_empty());
                    group
                        .left
                        .into_iter()
                        .filter(move |_| opened)
                        .map(move |(id, name)| NewUser {
                            window_start,
                            id,
                            name,
                        })
                })
                .sink("output", OutputSink::from_spec(opts.output.as_deref()))
        }
        other => bail!(
            "unknown Nexmark query `{other}`: use one of {}",
            QUERIES.join(", ")
        ),
    };
    Ok(job)
}

impl NexmarkEvent {
    /// Payload size as the Nexmark generator counts it: string bytes plus 8 per number.
    pub fn payload_bytes(&self) -> usize {
        match self {
            NexmarkEvent::Person(p) => {
                2 * 8
                    + p.name.len()
                    + p.email_address.len()
                    + p.credit_card.len()
                    + p.city.len()
                    + p.state.len()
                    + p.extra.len()
            }
            NexmarkEvent::Auction(a) => {
                7 * 8 + a.item_name.len() + a.description.len() + a.extra.len()
            }
            NexmarkEvent::Bid(b) => 4 * 8 + b.channel.len() + b.url.len() + b.extra.len(),
        }
    }
}

/// Average payload sizes of persons, auctions and bids over the first `n` events (the
/// standard: 200, 500 and 100 bytes).
pub fn average_sizes(n: u64) -> [f64; 3] {
    let mut totals = [(0usize, 0usize); 3];
    for e in NexmarkGenerator::new(n) {
        let kind = match &e {
            NexmarkEvent::Person(_) => 0,
            NexmarkEvent::Auction(_) => 1,
            NexmarkEvent::Bid(_) => 2,
        };
        totals[kind].0 += e.payload_bytes();
        totals[kind].1 += 1;
    }
    totals.map(|(bytes, count)| bytes as f64 / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_like_display() {
        for n in [0, 7, 10, 99, 100, 123_456_789, u64::MAX] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    fn json(events: impl Iterator<Item = NexmarkEvent>) -> Vec<String> {
        events
            .map(|e| serde_json::to_string(&e).unwrap_or_default())
            .collect()
    }

    /// Polls `instances` sharing one stream of `events` in turn, `max` (varying) at a
    /// time, sleeping as long as a paced one asks; what each instance made, in order.
    fn made_by_sharing(events: u64, instances: usize, paced: u64) -> Vec<Vec<NexmarkEvent>> {
        let epochs = SharedEpochs::default();
        let mut sources: Vec<NexmarkGenerator> = (0..instances)
            .map(|_| NexmarkGenerator::new(events).sharing(&epochs).paced(paced))
            .collect();
        let mut made = vec![Vec::new(); instances];
        let mut done = vec![false; instances];
        // Bounded: a few thousand polls at most, each waiting as long as the source asks.
        for round in 0..20_000 {
            if done.iter().all(|d| *d) {
                break;
            }
            let i = (round * 7 / 3) % instances;
            match sources[i].poll_batch(&mut made[i], 1 + round % 300) {
                Ok(SourceStatus::Pending(wait)) => std::thread::sleep(wait),
                Ok(SourceStatus::Exhausted) => done[i] = true,
                Ok(_) => {}
                Err(e) => panic!("the generator failed: {e}"),
            }
        }
        assert!(done.iter().all(|d| *d), "the instances did not finish");
        made
    }

    #[test]
    fn instances_sharing_epochs_together_make_the_whole_stream_each_in_order() {
        for (events, instances, paced) in [(5_001, 2, 0), (5_001, 3, 0), (777, 2, 1_000_000)] {
            let made = made_by_sharing(events, instances, paced);
            for part in &made {
                assert!(
                    part.windows(2)
                        .all(|w| w[0].date_time() <= w[1].date_time()),
                    "an instance made its events out of stream order"
                );
            }
            let mut merged = json(made.into_iter().flatten());
            let mut whole = json(NexmarkGenerator::new(events));
            merged.sort();
            whole.sort();
            assert_eq!(merged.len(), events as usize);
            assert_eq!(merged, whole, "{instances} instances, paced {paced}");
        }
    }

    #[test]
    fn a_paced_instance_makes_at_most_an_epoch_more_than_is_due() {
        let per_second = 1_000;
        let mut source = NexmarkGenerator::new(1_000).paced(per_second);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        // The clock starts at the first poll: nothing is due yet.
        let first = source.poll_batch(&mut out, 1_000).ok();
        assert!(matches!(first, Some(SourceStatus::Pending(_))), "{first:?}");
        assert!(out.is_empty());
        std::thread::sleep(Duration::from_millis(60));
        let _ = source.poll_batch(&mut out, 1_000);
        let due = started.elapsed().as_secs_f64() * per_second as f64;
        assert!(!out.is_empty(), "nothing made {due} events after the start");
        assert!(
            out.len() as f64 <= due + EPOCH as f64,
            "{} events made when {due} were due",
            out.len()
        );
    }
}
