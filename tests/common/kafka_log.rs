//! Reading a topic as a `read_committed` consumer of Apache Kafka sees it, applying the
//! transaction markers in the log itself.
//!
//! Why not librdkafka with `isolation.level=read_committed`: the test broker (Tansu) writes
//! the COMMIT and ABORT markers into the log but sends an empty aborted-transactions list
//! with every fetch response, and librdkafka filters by that list, so it shows the records of
//! aborted transactions (a run killed in the middle of a commit, whose transaction the
//! restart's producer aborts when it fences it) as if they were committed.
//!
//! A minimal Kafka client for that: Fetch v4 requests (`read_uncommitted`, every record up to
//! the high watermark) over one TCP connection, record batches of format v2, uncompressed
//! (weir's producers compress nothing). Kafka's rules: a record of a non-transactional batch
//! is visible; a transactional batch's records become visible when a COMMIT marker of the
//! same producer id follows in the partition, are dropped when an ABORT one does, and stay
//! invisible while neither has (an open transaction, beyond the last stable offset).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A record: its partition, key and value.
pub(crate) type Row = (i32, Option<String>, String);

/// Every committed record of `topic`'s partitions `0..partitions` on the broker at `addr`,
/// from the start of each partition to its current end, with aborted and open transactions
/// left out. Panics on anything unexpected (an error code, a compressed batch), saying what.
pub(crate) fn read_committed(addr: &str, topic: &str, partitions: i32) -> Vec<Row> {
    let mut connection = Connection::open(addr);
    (0..partitions)
        .flat_map(|partition| connection.read_partition(topic, partition))
        .collect()
}

/// The values of every committed record of `topic`'s partitions `0..partitions`, sorted
/// (so that rows compare as multisets: a lost or repeated row shows).
pub(crate) fn sorted_values(addr: &str, topic: &str, partitions: i32) -> Vec<String> {
    let mut values: Vec<String> = read_committed(addr, topic, partitions)
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    values.sort_unstable();
    values
}

/// How long reading one partition may take.
const PARTITION_TIME: Duration = Duration::from_secs(60);
/// The Fetch request's API key and the version this client speaks.
const FETCH: (i16, i16) = (1, 4);
/// What one fetch may return for the partition.
const MAX_BYTES: i32 = 16 << 20;

struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    fn open(addr: &str) -> Connection {
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("cannot set a read timeout: {e}"));
        Connection {
            stream,
            correlation: 0,
        }
    }

    /// The committed records of one partition, in offset order.
    fn read_partition(&mut self, topic: &str, partition: i32) -> Vec<Row> {
        let started = Instant::now();
        let mut log = Log::default();
        let mut next = 0i64;
        loop {
            let fetched = self.fetch(topic, partition, next);
            let mut batches = Reader::new(&fetched.records);
            let mut progressed = false;
            while let Some(batch) = batches.batch() {
                let end = batch.base_offset + i64::from(batch.last_offset_delta) + 1;
                // A fetch may start with the batch holding the previous fetch's last offset.
                if end > next {
                    log.apply(partition, &batch);
                    next = end;
                    progressed = true;
                }
            }
            if next >= fetched.high_watermark {
                return log.visible;
            }
            assert!(
                progressed && started.elapsed() < PARTITION_TIME,
                "{topic}/{partition}: stuck at offset {next} of {} after {:?}",
                fetched.high_watermark,
                started.elapsed()
            );
        }
    }

    /// One Fetch v4 request for `topic`/`partition` at `offset`, `read_uncommitted`.
    fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> Fetched {
        self.correlation += 1;
        let mut request = Vec::new();
        request.extend(FETCH.0.to_be_bytes());
        request.extend(FETCH.1.to_be_bytes());
        request.extend(self.correlation.to_be_bytes());
        put_string(&mut request, "weir-test-log-reader");
        request.extend((-1i32).to_be_bytes()); // replica id: a consumer
        request.extend(100i32.to_be_bytes()); // max wait (ms)
        request.extend(0i32.to_be_bytes()); // min bytes: answer at once
        request.extend(MAX_BYTES.to_be_bytes());
        request.push(0); // isolation: read_uncommitted (the markers are applied here)
        request.extend(1i32.to_be_bytes()); // one topic
        put_string(&mut request, topic);
        request.extend(1i32.to_be_bytes()); // one partition
        request.extend(partition.to_be_bytes());
        request.extend(offset.to_be_bytes());
        request.extend(MAX_BYTES.to_be_bytes());
        let size = i32::try_from(request.len()).expect("a small request");
        self.stream
            .write_all(&[&size.to_be_bytes()[..], &request].concat())
            .unwrap_or_else(|e| panic!("cannot send a fetch request: {e}"));

        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .unwrap_or_else(|e| panic!("no fetch response: {e}"));
        let mut response = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap_or(0)];
        self.stream
            .read_exact(&mut response)
            .unwrap_or_else(|e| panic!("a fetch response cut short: {e}"));
        let mut r = Reader::new(&response);
        assert_eq!(r.i32(), self.correlation, "a response to another request");
        r.i32(); // throttle time
        assert_eq!(r.i32(), 1, "fetch response: not one topic");
        assert_eq!(r.string(), topic, "fetch response: another topic");
        assert_eq!(r.i32(), 1, "fetch response: not one partition");
        assert_eq!(r.i32(), partition, "fetch response: another partition");
        let error = r.i16();
        assert_eq!(
            error, 0,
            "{topic}/{partition} at {offset}: fetch error code {error}"
        );
        let high_watermark = r.i64();
        r.i64(); // last stable offset: the markers are applied here instead
        let aborted = r.i32(); // aborted transactions: Tansu sends none (see the module doc)
        for _ in 0..aborted.max(0) {
            r.i64();
            r.i64();
        }
        let records = r.bytes().to_vec();
        Fetched {
            high_watermark,
            records,
        }
    }
}

struct Fetched {
    high_watermark: i64,
    records: Vec<u8>,
}

/// A record's key and value as read (either may be null).
type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A record batch (format v2) as read.
struct Batch {
    base_offset: i64,
    last_offset_delta: i32,
    transactional: bool,
    control: bool,
    producer_id: i64,
    /// Key and value of each record.
    records: Vec<RawRecord>,
}

/// The records of one partition seen so far.
#[derive(Default)]
struct Log {
    visible: Vec<Row>,
    /// The records of each producer's open transaction, waiting for its marker.
    open: HashMap<i64, Vec<Row>>,
}

impl Log {
    fn apply(&mut self, partition: i32, batch: &Batch) {
        if batch.control {
            for (key, _) in &batch.records {
                // A control record's key: version (i16), type (i16: 0 abort, 1 commit).
                let key = key.as_deref().expect("a control record without a key");
                let kind = Reader::new(key).skip(2).i16();
                let held = self.open.remove(&batch.producer_id).unwrap_or_default();
                match kind {
                    0 => {}
                    1 => self.visible.extend(held),
                    other => panic!("a control record of unknown type {other}"),
                }
            }
            return;
        }
        let rows = batch.records.iter().map(|(key, value)| {
            let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
            (
                partition,
                key.as_ref().map(text),
                value.as_ref().map(text).unwrap_or_default(),
            )
        });
        if batch.transactional {
            self.open.entry(batch.producer_id).or_default().extend(rows);
        } else {
            self.visible.extend(rows);
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend(
        i16::try_from(s.len())
            .expect("a short string")
            .to_be_bytes(),
    );
    out.extend(s.as_bytes());
}

/// Big-endian fields and Kafka's zig-zag varints from a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let taken = self
            .bytes
            .get(self.at..self.at + n)
            .unwrap_or_else(|| panic!("a response cut short at byte {}", self.at));
        self.at += n;
        taken
    }

    fn skip(mut self, n: usize) -> Self {
        self.take(n);
        self
    }

    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().expect("2 bytes"))
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().expect("8 bytes"))
    }

    fn string(&mut self) -> String {
        let len = usize::try_from(self.i16()).expect("a string, not null");
        String::from_utf8_lossy(self.take(len)).into_owned()
    }

    /// Nullable bytes with an i32 length (null reads as empty).
    fn bytes(&mut self) -> &'a [u8] {
        let len = self.i32();
        self.take(usize::try_from(len).unwrap_or(0))
    }

    fn varint(&mut self) -> i64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = self.take(1)[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            assert!(shift < 64, "a varint too long");
        }
        (value >> 1) as i64 ^ -((value & 1) as i64)
    }

    /// Varint-length bytes; a negative length is null.
    fn varbytes(&mut self) -> Option<Vec<u8>> {
        let len = self.varint();
        (len >= 0).then(|| self.take(usize::try_from(len).unwrap_or(0)).to_vec())
    }

    /// The next whole record batch; `None` at the end (a fetch may end with a partial one).
    fn batch(&mut self) -> Option<Batch> {
        // base offset (8) and batch length (4), then that many bytes.
        let header = self.bytes.get(self.at..self.at + 12)?;
        let length = i32::from_be_bytes(header[8..12].try_into().ok()?);
        let whole = self
            .bytes
            .get(self.at..self.at + 12 + usize::try_from(length).ok()?)?;
        self.at += whole.len();
        let mut r = Reader::new(whole);
        let base_offset = r.i64();
        r.i32(); // batch length
        r.i32(); // partition leader epoch
        let magic = r.take(1)[0];
        assert_eq!(magic, 2, "a record batch of format {magic}, not 2");
        r.i32(); // crc
        let attributes = r.i16();
        assert_eq!(
            attributes & 0x7,
            0,
            "a compressed record batch: this reader reads uncompressed ones only"
        );
        let last_offset_delta = r.i32();
        r.i64(); // first timestamp
        r.i64(); // max timestamp
        let producer_id = r.i64();
        r.i16(); // producer epoch
        r.i32(); // base sequence
        let count = r.i32();
        let records = (0..count)
            .map(|_| {
                r.varint(); // record length
                r.take(1); // attributes
                r.varint(); // timestamp delta
                r.varint(); // offset delta
                let key = r.varbytes();
                let value = r.varbytes();
                for _ in 0..r.varint() {
                    r.varbytes(); // header key
                    r.varbytes(); // header value
                }
                (key, value)
            })
            .collect();
        Some(Batch {
            base_offset,
            last_offset_delta,
            transactional: attributes & 0x10 != 0,
            control: attributes & 0x20 != 0,
            producer_id,
            records,
        })
    }
}
