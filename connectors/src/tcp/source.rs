//! The TCP source: newline-delimited records over TCP, either as a server on
//! `tcp://HOST:PORT` (127.0.0.1 unless told otherwise) accepting many clients, or, with
//! `?mode=connect`, as a client of one server that reconnects when the connection drops.
//!
//! # Behaviour
//! - Each connection has a reader thread that hands lines over in batches through one
//!   bounded channel. When the job falls behind the channel fills, readers block, stop
//!   reading their sockets, and TCP flow control slows the peers down: memory stays bounded.
//! - A line that does not decode goes to the dead letters as `tcp://PEER` with its line
//!   number on that connection; the connection and everyone else go on. A line longer than
//!   the maximum is rejected the same way (its first KiB kept) and skipped to its end.
//! - Server: connections beyond the maximum are told why in one line and closed.
//!   `?until=disconnect` makes the source end once every client that connected has
//!   disconnected (for batch runs and tests); by default it serves until the job is stopped.
//! - Client (`mode=connect`): a refused, broken or closed connection, or one not accepted
//!   within 5 s, is reported on stderr
//!   and made again after a backoff (0.1 s doubling to 5 s, reset by a connection that
//!   works). A line cut off by the connection's end (no line break) is discarded, not
//!   decoded: it may be incomplete, and a server that resumes sends it again. With
//!   `?until=disconnect` the source ends when the server closes the connection cleanly
//!   (after a line break); otherwise it reconnects until the job is stopped. What the
//!   server sent is read at most once, but TCP cannot tell which lines reached weir before
//!   a connection broke: resuming at the right line is the server's business.
//! - TCP cannot be replayed, so a job reading it cannot checkpoint (it says so at start).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use weir_engine::{BoxError, Source, SourceStatus};

use super::{connect, Backoff, CONNECT_TIMEOUT};
use crate::dead_letter::{DeadLetter, Raw, KEPT_OF_LONG_LINE};
use crate::format::Decoder;
use crate::max_future::{EventTimeOf, MaxFuture};
use crate::origin::{Origin, OriginNames, TcpPeers};

/// Lines a reader hands over at once, at most.
const LINES_PER_BATCH: usize = 1024;
/// Batches queued between the readers and the job before readers block.
const QUEUED_BATCHES: usize = 64;
/// How long a poll waits for lines before saying the source is idle.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// Whether a [`TcpSource`] waits for connections or makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// A server: clients connect and send (`mode=listen`, the default).
    Listen,
    /// A client of one server that sends (`mode=connect`).
    Connect,
}

/// Where and how a [`TcpSource`] reads, parsed from
/// `tcp://HOST:PORT[?mode=listen|connect&until=disconnect&max_line=N&max_connections=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSpec {
    /// Address to listen on (port 0 picks a free one), or the server to connect to.
    pub addr: String,
    /// Server or client.
    pub mode: TcpMode,
    /// Server: end once all clients that connected have disconnected. Client: end when the
    /// server closes the connection cleanly.
    pub until_disconnect: bool,
    /// Longest line accepted, in bytes.
    pub max_line: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
}

impl TcpSpec {
    /// Parses a `tcp://` URI (see [`TcpSpec`]); `None` if `uri` is not a TCP URI.
    pub fn parse(uri: &str) -> Option<Result<TcpSpec, String>> {
        let rest = uri.strip_prefix("tcp://")?;
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut spec = TcpSpec {
            addr: addr.to_string(),
            mode: TcpMode::Listen,
            until_disconnect: false,
            max_line: 1 << 20,
            max_connections: 64,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("until", "disconnect")) => spec.until_disconnect = true,
                Some(("mode", "listen")) => spec.mode = TcpMode::Listen,
                Some(("mode", "connect")) => spec.mode = TcpMode::Connect,
                Some(("max_line", n)) => match n.parse() {
                    Ok(n) => spec.max_line = n,
                    Err(_) => return Some(Err(format!("{uri}: max_line={n} is not a number"))),
                },
                Some(("max_connections", n)) => match n.parse() {
                    Ok(n) => spec.max_connections = n,
                    Err(_) => {
                        return Some(Err(format!("{uri}: max_connections={n} is not a number")))
                    }
                },
                _ => {
                    return Some(Err(format!(
                        "{uri}: unknown option `{pair}` (known: mode=listen|connect, until=disconnect, max_line=N, max_connections=N)"
                    )))
                }
            }
        }
        Some(Ok(spec))
    }
}

/// Lines from one client, or the news that it left.
enum Delivery {
    Lines(Lines),
    Gone,
}

/// Consecutive lines of one client in one buffer (one allocation per batch, not per line).
struct Lines {
    client: SocketAddr,
    /// The connection's line number of the first line.
    first: u64,
    /// The lines, back to back, with their line breaks.
    bytes: Vec<u8>,
    /// Where each line ends in `bytes`; a refused line is empty there.
    ends: Vec<usize>,
    /// Lines refused while reading (over-long), by index in `ends`, with the reason and
    /// what the dead letter keeps of them.
    refused: Vec<(usize, String, Raw)>,
}

impl Lines {
    /// Forgets the last line (cut off by the end of the connection).
    fn drop_last_line(&mut self) {
        if self.ends.pop().is_some() {
            let at = self.ends.len();
            self.refused.retain(|(i, _, _)| *i != at);
            self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    fn new(client: SocketAddr, first: u64) -> Self {
        Lines {
            client,
            first,
            bytes: Vec::with_capacity(64 * 1024),
            ends: Vec::with_capacity(LINES_PER_BATCH),
            refused: Vec::new(),
        }
    }
}

/// A TCP server source (see the module docs).
pub struct TcpSource<D: Decoder> {
    spec: TcpSpec,
    decoder: D,
    started: Option<Started>,
    rejected: Vec<DeadLetter>,
    /// Refuses events too far ahead of the input's time (`--max-future`).
    future: Option<MaxFuture<D::Item>>,
    /// The peers of connections, by the number in events' origins.
    peers: TcpPeers,
}

struct Started {
    deliveries: Receiver<Delivery>,
    connected: Arc<AtomicUsize>,
    ever_connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    left: usize,
}

impl<D: Decoder> std::fmt::Debug for TcpSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSource")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<D: Decoder> Drop for TcpSource<D> {
    fn drop(&mut self) {
        if let Some(s) = &self.started {
            s.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl<D: Decoder> TcpSource<D> {
    /// A server for `spec`, decoding lines with `decoder`; rejected lines are its dead
    /// letters ([`Source::take_dead_letters`]).
    pub fn new(spec: TcpSpec, decoder: D) -> Self {
        TcpSource {
            spec,
            decoder,
            started: None,
            rejected: Vec::new(),
            future: None,
            peers: TcpPeers::default(),
        }
    }

    /// The words for the origins this source gives its events (connection and line,
    /// through [`Decoder::set_origin`]).
    pub fn origin_names(&self) -> OriginNames {
        OriginNames::Tcp(self.peers.clone())
    }

    /// Events whose `time` is more than `max_ahead` ahead of the largest event time
    /// accepted so far from this input (all clients together: they make one stream with
    /// one watermark) are dead letters (see [`crate::max_future`]). `None` (the default): all accepted.
    pub fn max_future(mut self, time: EventTimeOf<D::Item>, max_ahead: Option<Duration>) -> Self {
        self.future = max_ahead.map(|max_ahead| MaxFuture::new(time, max_ahead));
        self
    }

    fn start(&mut self) -> Result<(), BoxError> {
        let listener = match self.spec.mode {
            TcpMode::Listen => {
                let listener = TcpListener::bind(&self.spec.addr).map_err(|e| {
                    format!(
                        "cannot listen on tcp://{}: {e} (pick another port, or 0 for any)",
                        self.spec.addr
                    )
                })?;
                eprintln!("weir: listening on tcp://{}", listener.local_addr()?);
                Some(listener)
            }
            TcpMode::Connect => None,
        };
        let (tx, rx) = bounded(QUEUED_BATCHES);
        let started = Started {
            deliveries: rx,
            connected: Arc::new(AtomicUsize::new(0)),
            ever_connected: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            left: 0,
        };
        let reader = Reader {
            deliveries: tx,
            connected: started.connected.clone(),
            max_line: self.spec.max_line,
        };
        if let Some(listener) = listener {
            let accept = Acceptor {
                listener,
                reader,
                ever_connected: started.ever_connected.clone(),
                stop: started.stop.clone(),
                max_connections: self.spec.max_connections,
            };
            std::thread::Builder::new()
                .name("weir-tcp-accept".into())
                .spawn(move || accept.run())?;
        } else {
            // The client counts as one connection until it ends (with `until=disconnect`).
            started.connected.fetch_add(1, Ordering::SeqCst);
            started.ever_connected.store(true, Ordering::SeqCst);
            let connect = Connector {
                addr: self.spec.addr.clone(),
                reader,
                until_disconnect: self.spec.until_disconnect,
                stop: started.stop.clone(),
            };
            std::thread::Builder::new()
                .name("weir-tcp-connect".into())
                .spawn(move || connect.run())?;
        }
        self.started = Some(started);
        Ok(())
    }

    /// Decodes a batch of lines into `out`, rejects into the dead letters.
    fn take(&mut self, lines: Lines, out: &mut Vec<D::Item>) {
        let client = lines.client;
        let connection = self.peers.number_of(client);
        let reject = |number: u64, error: String, raw: Raw| DeadLetter {
            source: format!("tcp://{client}"),
            line: number,
            error,
            raw,
        };
        let mut refused = lines.refused.into_iter().peekable();
        let mut start = 0;
        for (i, &end) in lines.ends.iter().enumerate() {
            let number = lines.first + i as u64;
            let bytes = &lines.bytes[start..end];
            start = end;
            if let Some((_, reason, kept)) = refused.next_if(|(at, _, _)| *at == i) {
                self.rejected.push(reject(number, reason, kept));
                continue;
            }
            match std::str::from_utf8(bytes).map(|t| t.trim_end_matches(['\r', '\n'])) {
                Err(e) => {
                    let end = bytes
                        .iter()
                        .rposition(|b| !matches!(b, b'\r' | b'\n'))
                        .map_or(0, |last| last + 1);
                    self.rejected.push(reject(
                        number,
                        format!("line is not UTF-8: {e}"),
                        Raw::of(&bytes[..end]),
                    ))
                }
                Ok(t) if t.trim().is_empty() => {}
                Ok(t) => match self.decoder.decode(t) {
                    Ok(mut item) => match self.future.as_mut().map(|f| f.admit(&item)) {
                        Some(Err(error)) => self.rejected.push(reject(number, error, Raw::from(t))),
                        _ => {
                            let origin = Origin::new(connection, number);
                            self.decoder.set_origin(&mut item, origin);
                            out.push(item)
                        }
                    },
                    Err(error) => self.rejected.push(reject(number, error, Raw::from(t))),
                },
            }
        }
    }
}

impl<D: Decoder> Source for TcpSource<D> {
    type Item = D::Item;

    fn poll_batch(&mut self, out: &mut Vec<D::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        if self.started.is_none() {
            self.start()?;
        }
        let mut status = SourceStatus::More;
        let start = out.len();
        while out.len() - start < max {
            let Some(started) = self.started.as_mut() else {
                break;
            };
            let wait = if out.len() == start {
                POLL_WAIT
            } else {
                Duration::ZERO
            };
            match started.deliveries.recv_timeout(wait) {
                Ok(Delivery::Lines(lines)) => self.take(lines, out),
                Ok(Delivery::Gone) => started.left += 1,
                Err(RecvTimeoutError::Timeout) => {
                    status = SourceStatus::Idle;
                    break;
                }
                // The client source's thread ends after the end it waited for.
                Err(RecvTimeoutError::Disconnected)
                    if started.connected.load(Ordering::SeqCst) == 0 =>
                {
                    status = SourceStatus::Idle;
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the TCP listener stopped".into());
                }
            }
        }
        if let Some(s) = &self.started {
            let all_left = s.ever_connected.load(Ordering::SeqCst)
                && s.connected.load(Ordering::SeqCst) == 0
                && s.deliveries.is_empty();
            if self.spec.until_disconnect && all_left && status == SourceStatus::Idle {
                status = SourceStatus::Exhausted;
            }
        }
        Ok(status)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        out.append(&mut self.rejected);
    }

    fn describe(&self) -> String {
        match (self.spec.mode, self.spec.until_disconnect) {
            (TcpMode::Listen, false) => format!("tcp server {}", self.spec.addr),
            (TcpMode::Listen, true) => format!(
                "tcp server {}, until all clients disconnect",
                self.spec.addr
            ),
            (TcpMode::Connect, false) => format!("tcp client of {}", self.spec.addr),
            (TcpMode::Connect, true) => format!(
                "tcp client of {}, until the server closes the connection",
                self.spec.addr
            ),
        }
    }
}

/// Accepts clients and starts a reader for each.
struct Acceptor {
    listener: TcpListener,
    reader: Reader,
    ever_connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    max_connections: usize,
}

impl Acceptor {
    fn run(self) {
        // Non-blocking accept so the thread notices the job ending.
        if self.listener.set_nonblocking(true).is_err() {
            return;
        }
        let connected = &self.reader.connected;
        while !self.stop.load(Ordering::Relaxed) {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(client) = stream.peer_addr() else {
                continue;
            };
            if connected.load(Ordering::SeqCst) >= self.max_connections {
                let _ = writeln!(
                    stream,
                    "weir: too many connections (at most {}); try again later",
                    self.max_connections
                );
                eprintln!(
                    "weir: refused tcp://{client}: already {} clients (max_connections)",
                    self.max_connections
                );
                continue;
            }
            connected.fetch_add(1, Ordering::SeqCst);
            self.ever_connected.store(true, Ordering::SeqCst);
            let reader = self.reader.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("weir-tcp-{client}"))
                .spawn(move || reader.serve(stream, client));
            if spawned.is_err() {
                connected.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Connects to one server, reads its lines, and connects again when the connection ends
/// (see the module docs).
struct Connector {
    addr: String,
    reader: Reader,
    until_disconnect: bool,
    stop: Arc<AtomicBool>,
}

impl Connector {
    fn run(self) {
        let mut backoff = Backoff::new();
        let peer = format!("tcp source tcp://{}", self.addr);
        while !self.stop.load(Ordering::Relaxed) {
            let connected =
                connect(&self.addr, CONNECT_TIMEOUT).and_then(|s| Ok((s.peer_addr()?, s)));
            let (server, stream) = match connected {
                Ok(connection) => connection,
                Err(e) => {
                    eprintln!(
                        "weir: {peer}: cannot connect ({e}); trying again in {:.1} s",
                        backoff.next_secs()
                    );
                    backoff.sleep();
                    continue;
                }
            };
            backoff.reset();
            let (mut batch, end) = self.reader.read(stream, server);
            let why = match end {
                End::Stopped => break,
                End::Clean if self.until_disconnect => {
                    self.reader.hand_over_last(batch);
                    break;
                }
                End::Clean => "the server closed the connection".to_string(),
                End::Unterminated => {
                    batch.drop_last_line();
                    "the connection ended in the middle of a line (discarded)".to_string()
                }
                End::Failed(e) => format!("the connection broke ({e})"),
            };
            if !batch.ends.is_empty()
                && self.reader.deliveries.send(Delivery::Lines(batch)).is_err()
            {
                break;
            }
            eprintln!(
                "weir: {peer}: {why}; connecting again in {:.1} s",
                backoff.next_secs()
            );
            backoff.sleep();
        }
        self.reader.gone();
    }
}

/// How a connection's stream of lines ended.
enum End {
    /// End of stream after a line break (or before any byte).
    Clean,
    /// End of stream in the middle of a line.
    Unterminated,
    /// A read failed (reset, timeout).
    Failed(std::io::Error),
    /// The job no longer takes lines.
    Stopped,
}

/// Reads connections' lines and hands them over in batches.
#[derive(Clone)]
struct Reader {
    deliveries: Sender<Delivery>,
    connected: Arc<AtomicUsize>,
    max_line: usize,
}

impl Reader {
    /// Serves one client of the server until it leaves.
    fn serve(self, stream: TcpStream, client: SocketAddr) {
        // A client's last line counts even without a line break: the client decides what
        // it sent.
        let (batch, _) = self.read(stream, client);
        self.hand_over_last(batch);
        self.gone();
    }

    /// Hands over the last lines of a connection, if any.
    fn hand_over_last(&self, batch: Lines) {
        if !batch.ends.is_empty() {
            let _ = self.deliveries.send(Delivery::Lines(batch));
        }
    }

    /// Says a connection (or the client source) is gone for good.
    fn gone(&self) {
        let _ = self.deliveries.send(Delivery::Gone);
        self.connected.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads `stream` to its end, handing over every batch but the last, which it returns
    /// with how the stream ended.
    fn read(&self, stream: TcpStream, peer: SocketAddr) -> (Lines, End) {
        let _ = stream.set_nonblocking(false);
        let mut input = BufReader::with_capacity(64 * 1024, stream);
        let mut number = 1;
        let mut batch = Lines::new(peer, number);
        let mut terminated = true;
        loop {
            let start = batch.bytes.len();
            let limit = self.max_line as u64 + 1;
            match input
                .by_ref()
                .take(limit)
                .read_until(b'\n', &mut batch.bytes)
            {
                Ok(0) if terminated => return (batch, End::Clean),
                Ok(0) => return (batch, End::Unterminated),
                Err(e) => return (batch, End::Failed(e)),
                Ok(_) => {}
            }
            let read = batch.bytes.len() - start;
            terminated = batch.bytes.last() == Some(&b'\n');
            if read > self.max_line && !terminated {
                // Over-long: keep its start for the dead letter, skip the rest of it.
                let (raw, kept) =
                    Raw::of_start(&batch.bytes[start..start + KEPT_OF_LONG_LINE.min(read)]);
                batch.bytes.truncate(start);
                // A failed read shows again, as the stream's end, at the next read.
                terminated = skip_rest_of_line(&mut input).unwrap_or(false);
                batch.refused.push((
                    batch.ends.len(),
                    format!(
                        "line longer than {} bytes (max_line); its first {kept} bytes are kept \
                         here",
                        self.max_line
                    ),
                    raw,
                ));
            }
            batch.ends.push(batch.bytes.len());
            number += 1;
            // Hand over when the batch is full or nothing more is buffered right now; a line
            // without its line break stays: the end of the stream decides about it.
            if terminated && (batch.ends.len() >= LINES_PER_BATCH || input.buffer().is_empty()) {
                let full = std::mem::replace(&mut batch, Lines::new(peer, number));
                if self.deliveries.send(Delivery::Lines(full)).is_err() {
                    return (batch, End::Stopped);
                }
            }
        }
    }
}

/// Reads past the rest of a line without keeping it (an over-long line may be of any
/// length, or never end); true once its line break came, false at the end of the stream.
fn skip_rest_of_line(input: &mut impl BufRead) -> std::io::Result<bool> {
    loop {
        let buffered = input.fill_buf()?;
        if buffered.is_empty() {
            return Ok(false);
        }
        match memchr::memchr(b'\n', buffered) {
            Some(at) => {
                input.consume(at + 1);
                return Ok(true);
            }
            None => {
                let all = buffered.len();
                input.consume(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_with_options_and_clear_errors() {
        let spec = TcpSpec::parse("tcp://127.0.0.1:0?until=disconnect&max_line=10")
            .unwrap()
            .unwrap();
        assert_eq!(spec.addr, "127.0.0.1:0");
        assert!(spec.until_disconnect);
        assert_eq!(spec.max_line, 10);
        assert_eq!(spec.mode, TcpMode::Listen);
        let spec = TcpSpec::parse("tcp://127.0.0.1:9?mode=connect")
            .unwrap()
            .unwrap();
        assert_eq!(spec.mode, TcpMode::Connect);
        assert!(TcpSpec::parse("/tmp/file.jsonl").is_none());
        let err = TcpSpec::parse("tcp://127.0.0.1:1?speed=fast")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("unknown option `speed=fast`"), "{err}");
    }
}
