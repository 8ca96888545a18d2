//! The Nexmark events: persons, auctions and bids, and their payload sizes as the
//! standard generator counts them.

use serde::{Deserialize, Serialize};

use super::NexmarkGenerator;

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

    pub(super) fn bid(self) -> Option<Bid> {
        match self {
            NexmarkEvent::Bid(b) => Some(b),
            _ => None,
        }
    }

    pub(super) fn person(self) -> Option<Person> {
        match self {
            NexmarkEvent::Person(p) => Some(*p),
            _ => None,
        }
    }

    pub(super) fn auction(self) -> Option<Auction> {
        match self {
            NexmarkEvent::Auction(a) => Some(*a),
            _ => None,
        }
    }
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
