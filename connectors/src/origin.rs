//! Where a record was read, carried with the record itself so that an operator failing on
//! it later (an integer sum overflowing in a window) can say which input record it was,
//! as a dead letter does.
//!
//! An [`Origin`] is two integers packed in one, handed by the source to its decoder for
//! each decoded item ([`crate::Decoder::set_origin`]): the source alone knows the
//! numbers, the decoder alone knows where its items keep them (most keep nothing). Its text
//! ([`OriginNames`]) is only made when a record is reported, never per record.
//!
//! Numbers are those of the source's dead letters: a file's line (1-based) or an Arrow
//! file's row; a Kafka record's partition and offset; a TCP connection's line.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where one record was read: a stream of the source and a record number in it, packed
/// in one `u64` so that events carrying it stay small (two `u64`s made window-agg's events
/// 48 bytes instead of 40 and cost 3 % of its instructions in copies).
/// The default (zero) means unknown (e.g. generated events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Origin(u64);

impl Origin {
    /// Bits of the stream; the number has the other 44 (17.6 * 10^12 lines or offsets).
    const STREAM_BITS: u32 = 20;
    const NUMBER_BITS: u32 = 64 - Self::STREAM_BITS;

    /// Record `number` of `stream`: 0 for a file; for a Kafka partition the topic's index
    /// in the URI (below 16) above bit 16 and the partition (below 65,536) below it; for a
    /// TCP connection the number the source gave it. A number of 2^44 or more, or a stream
    /// of 2^20 or more, is not representable and gives an unknown origin.
    #[inline]
    pub fn new(stream: u32, number: u64) -> Origin {
        if stream >> Self::STREAM_BITS != 0 || number >> Self::NUMBER_BITS != 0 {
            return Origin::default();
        }
        Origin((u64::from(stream) << Self::NUMBER_BITS) | number)
    }

    /// Line (or row) `number` of a file: cheaper than [`Origin::new`] on the per-line path.
    #[inline]
    pub fn line(number: u64) -> Origin {
        match number >> Self::NUMBER_BITS {
            0 => Origin(number),
            _ => Origin::default(),
        }
    }

    /// The line of a file starting at byte `offset`, for a reader that does not know the
    /// line's number (a reader of a piece of the file: see [`crate::file`]); its number is
    /// counted when the origin is worded ([`OriginNames`]).
    #[inline]
    pub fn file_offset(offset: u64) -> Origin {
        Origin::new(Self::FILE_OFFSET, offset)
    }

    /// The stream of a file's origins that are byte offsets, not line numbers.
    const FILE_OFFSET: u32 = 1;

    /// The stream of the source (see [`Origin::new`]).
    pub fn stream(self) -> u32 {
        (self.0 >> Self::NUMBER_BITS) as u32
    }

    /// The line (1-based) of a file or connection, the row (1-based) of an Arrow file, or
    /// the offset of a Kafka record.
    pub fn number(self) -> u64 {
        self.0 & ((1 << Self::NUMBER_BITS) - 1)
    }

    /// The stream of a Kafka partition: the topic's index in the URI and the partition.
    pub fn kafka_stream(topic: usize, partition: i32) -> u32 {
        match (u32::try_from(topic), u32::try_from(partition)) {
            (Ok(topic), Ok(partition)) if topic < 16 && partition < 1 << 16 => {
                (topic << 16) | partition
            }
            // Out of range: an unknown origin rather than a wrong one.
            _ => u32::MAX,
        }
    }
}

/// Turns an [`Origin`] into words for messages: what each source means by its numbers.
#[derive(Debug, Clone)]
pub enum OriginNames {
    /// A file: `input events.jsonl line 12` (`row` for Arrow files).
    File {
        /// The file.
        path: PathBuf,
        /// `line` or `row`.
        unit: &'static str,
    },
    /// Kafka topics, in the order of their URI: `kafka topic t partition 0 offset 17`
    /// (streams made by [`Origin::kafka_stream`]).
    Kafka {
        /// The topics.
        topics: Vec<String>,
    },
    /// The connections of a TCP source: `tcp://127.0.0.1:40000 line 3`, as its dead
    /// letters say.
    Tcp(TcpPeers),
    /// Rows of a table by id: `postgres://u@h:5432/db outbox events id 17`.
    Table {
        /// The table, as the source describes it.
        name: String,
    },
}

impl OriginNames {
    /// The words for `origin`, or `None` if it is unknown (zeros).
    pub fn describe(&self, origin: Origin) -> Option<String> {
        if origin == Origin::default() {
            return None;
        }
        let (stream, number) = (origin.stream(), origin.number());
        Some(match self {
            OriginNames::File { path, unit } => match file_line(path, origin) {
                Ok(number) => format!("input {} {unit} {number}", path.display()),
                Err(e) => format!(
                    "input {} at byte {number} (its line number could not be counted: {e})",
                    path.display()
                ),
            },
            OriginNames::Kafka { topics } => {
                let (topic, partition) = ((stream >> 16) as usize, stream & 0xFFFF);
                let topic = topics.get(topic).map_or("?", String::as_str);
                format!("kafka topic {topic} partition {partition} offset {number}")
            }
            OriginNames::Tcp(peers) => match peers.peer(stream) {
                Some(peer) => format!("tcp://{peer} line {number}"),
                None => format!("tcp connection {stream} (its peer forgotten) line {number}"),
            },
            OriginNames::Table { name } => format!("{name} id {number}"),
        })
    }

    /// Where a dead letter of the record at `origin` says it came from: its `source` and
    /// `line`, as the source's own dead letters would (`None` if unknown).
    pub fn dead_letter_place(&self, origin: Origin) -> Option<(String, u64)> {
        if origin == Origin::default() {
            return None;
        }
        let (stream, number) = (origin.stream(), origin.number());
        let source = match self {
            OriginNames::File { path, .. } => {
                // 0 if the line cannot be counted (the file is gone): the place is still named.
                let line = file_line(path, origin).unwrap_or(0);
                return Some((path.display().to_string(), line));
            }
            OriginNames::Kafka { topics } => {
                let (topic, partition) = ((stream >> 16) as usize, stream & 0xFFFF);
                let topic = topics.get(topic).map_or("?", String::as_str);
                format!("kafka://{topic}/{partition}")
            }
            OriginNames::Tcp(peers) => match peers.peer(stream) {
                Some(peer) => format!("tcp://{peer}"),
                None => format!("tcp connection {stream}"),
            },
            OriginNames::Table { name } => name.clone(),
        };
        Some((source, number))
    }

    /// The names of a file's lines.
    pub fn file(path: &Path) -> Self {
        OriginNames::File {
            path: path.to_path_buf(),
            unit: "line",
        }
    }
}

/// The line (or row) of a file that `origin` names: its number, or counted from its byte
/// offset ([`Origin::file_offset`]).
fn file_line(path: &Path, origin: Origin) -> std::io::Result<u64> {
    match origin.stream() {
        Origin::FILE_OFFSET => crate::file::line_at(path, origin.number()),
        _ => Ok(origin.number()),
    }
}

/// The peers of a TCP source's connections by connection number (1 for the first), so
/// that an origin can name its client. The last [`TcpPeers::KEPT`] connections are kept:
/// a record is reported soon after it was read, and a flood of short connections must
/// not grow memory.
#[derive(Debug, Clone, Default)]
pub struct TcpPeers(Arc<Mutex<VecDeque<(u32, SocketAddr)>>>);

impl TcpPeers {
    /// How many connections are remembered.
    pub const KEPT: usize = 1024;

    /// The number of the connection from `peer`, given on its first batch (a later
    /// connection from the same address and port gets the same number while remembered).
    pub(crate) fn number_of(&self, peer: SocketAddr) -> u32 {
        let mut peers = self.lock();
        if let Some((number, _)) = peers.iter().rev().find(|(_, p)| *p == peer) {
            return *number;
        }
        // Numbers go round within what an origin holds (2^20 - 1 connections).
        let number = match peers.back() {
            Some((n, _)) if *n < (1 << Origin::STREAM_BITS) - 1 => n + 1,
            _ => 1,
        };
        if peers.len() == Self::KEPT {
            peers.pop_front();
        }
        peers.push_back((number, peer));
        number
    }

    fn peer(&self, number: u32) -> Option<SocketAddr> {
        self.lock()
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, peer)| *peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u32, SocketAddr)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_worded_as_their_source_numbers_them() {
        let file = OriginNames::file(Path::new("ev.jsonl"));
        let line = Origin::new(0, 2);
        assert_eq!((line.stream(), line.number()), (0, 2));
        assert_eq!(
            file.describe(line).as_deref(),
            Some("input ev.jsonl line 2")
        );
        assert_eq!(file.describe(Origin::default()), None, "unknown");
        assert_eq!(
            file.dead_letter_place(line),
            Some(("ev.jsonl".to_string(), 2))
        );
        let kafka = OriginNames::Kafka {
            topics: vec!["a".into(), "b".into()],
        };
        let record = Origin::new(Origin::kafka_stream(1, 3), 17);
        assert_eq!(
            kafka.describe(record).as_deref(),
            Some("kafka topic b partition 3 offset 17")
        );
        assert_eq!(
            kafka.dead_letter_place(record),
            Some(("kafka://b/3".to_string(), 17)),
            "as the Kafka source's dead letters say"
        );
        let peers = TcpPeers::default();
        let peer = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = OriginNames::Tcp(peers.clone());
        let first = Origin::new(peers.number_of(peer(4000)), 5);
        assert_eq!(first.stream(), 1);
        assert_eq!(peers.number_of(peer(4000)), 1, "one number per connection");
        assert_eq!(
            tcp.describe(first).as_deref(),
            Some("tcp://127.0.0.1:4000 line 5")
        );
        for port in 1..=TcpPeers::KEPT as u16 {
            peers.number_of(peer(port + 5000));
        }
        assert_eq!(
            tcp.describe(first).as_deref(),
            Some("tcp connection 1 (its peer forgotten) line 5")
        );
        // What does not fit is unknown, never wrong.
        assert_eq!(Origin::new(0, 1 << 44), Origin::default());
        assert_eq!(
            Origin::new(Origin::kafka_stream(16, 0), 1),
            Origin::default()
        );
        assert_eq!(
            Origin::new(Origin::kafka_stream(0, 70_000), 1),
            Origin::default()
        );
        let last = Origin::new((1 << 20) - 1, (1 << 44) - 1);
        assert_eq!(
            (last.stream(), last.number()),
            ((1 << 20) - 1, (1 << 44) - 1)
        );
    }
}
