//! The bundled Nexmark queries (`--query`) and their output rows; the module docs of
//! [`crate::nexmark`] say what each query computes.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use weir_engine::{Job, Stream, Watermarks};
use weir_operators::aggregate::AggregateError;
use weir_operators::prelude::*;

use super::{Bid, NexmarkEvent, NexmarkGenerator, SharedEpochs, QUERIES};
use crate::options::JobOptions;
use crate::output::OutputSink;

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
        "q0" => events.sink("output", OutputSink::from_spec(opts.output())),
        "q1" => bids(events)
            .map(|b| EuroBid {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price * 908 / 1000,
                date_time: b.date_time,
            })
            .sink("output", OutputSink::from_spec(opts.output())),
        "q2" => bids(events)
            .filter(|b| b.auction % 123 == 0)
            .map(|b| (b.auction, b.price))
            .sink("output", OutputSink::from_spec(opts.output())),
        "q3" => events
            .flat_map(SellerEvent::from_event)
            .key_by(SellerEvent::person)
            .process_with_state("q3-join", q3_join)
            .sink("output", OutputSink::from_spec(opts.output())),
        "q4" => events
            .flat_map(AuctionEvent::from_event)
            .key_by(AuctionEvent::auction)
            .process_with_timers("q4-winning-bid", WinningBid)
            .key_by(|c: &ClosedAuction| c.category)
            .process_with_state("q4-average", q4_average)
            .sink("output", OutputSink::from_spec(opts.output())),
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
            .sink("output", OutputSink::from_spec(opts.output())),
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
            .sink("output", OutputSink::from_spec(opts.output())),
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
                .sink("output", OutputSink::from_spec(opts.output()))
        }
        other => bail!(
            "unknown Nexmark query `{other}`: use one of {}",
            QUERIES.join(", ")
        ),
    };
    Ok(job)
}
