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
//!
//! # Layout
//! - `model`: the events (persons, auctions, bids) and their payload sizes.
//! - `generator`: the deterministic generator, as a parallel source.
//! - `queries`: the bundled queries and their output rows.

mod generator;
mod model;
mod queries;
#[cfg(test)]
mod tests;

pub use generator::{write_events, NexmarkGenerator, SharedEpochs};
pub use model::{average_sizes, Auction, Bid, NexmarkEvent, Person};
pub use queries::{build, CategoryAverage, EuroBid, HighestBid, HotItem, LocalItem, NewUser};

/// One line of `weir jobs`.
pub const ABOUT: &str =
    "Nexmark queries q0-q5 q7 q8 on the in-process generator (--query, --events, --rate)";

/// The queries `--query` accepts, in the order `--all` runs them.
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];
