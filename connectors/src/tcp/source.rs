//! The TCP source: a server on `tcp://HOST:PORT` (127.0.0.1 unless told otherwise) that
//! accepts many clients, each sending newline-delimited records.
//!
//! # Behaviour
//! - Each client has a reader thread that hands lines over in batches through one bounded
//!   channel. When the job falls behind the channel fills, readers block, stop reading their
//!   sockets, and TCP flow control slows the clients down: memory stays bounded.
//! - A line that does not decode goes to the dead letters as `tcp://CLIENT` with its line
//!   number on that connection; the client and everyone else go on. A line longer than the
//!   maximum is rejected the same way (its first KiB kept) and skipped to its end.
//! - Connections beyond the maximum are told why in one line and closed.
//! - `?until=disconnect` makes the source end once every client that connected has
//!   disconnected (for batch runs and tests); by default it serves until the job is stopped.
//! - TCP cannot be replayed, so a job reading it cannot checkpoint (it says so at start).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use weir_engine::{BoxError, Source, SourceStatus};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::format::Decoder;

/// Lines a reader hands over at once, at most.
const LINES_PER_BATCH: usize = 1024;
/// Batches queued between the readers and the job before readers block.
const QUEUED_BATCHES: usize = 64;
/// How long a poll waits for lines before saying the source is idle.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How much of an over-long line the dead letter keeps.
const KEPT_OF_LONG_LINE: usize = 1024;

/// Where and how a [`TcpSource`] listens, parsed from `tcp://HOST:PORT[?until=disconnect]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSpec {
    /// Address to listen on (port 0 picks a free one).
    pub addr: String,
    /// End once all clients that connected have disconnected.
    pub until_disconnect: bool,
    /// Longest line accepted, in bytes.
    pub max_line: usize,
    /// Most clients connected at once.
    pub max_connections: usize,
}

impl TcpSpec {
    /// Parses `tcp://HOST:PORT[?until=disconnect]`; `None` if `uri` is not a TCP URI.
    pub fn parse(uri: &str) -> Option<Result<TcpSpec, String>> {
        let rest = uri.strip_prefix("tcp://")?;
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut spec = TcpSpec {
            addr: addr.to_string(),
            until_disconnect: false,
            max_line: 1 << 20,
            max_connections: 64,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("until", "disconnect")) => spec.until_disconnect = true,
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
                        "{uri}: unknown option `{pair}` (known: until=disconnect, max_line=N, max_connections=N)"
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
    /// Lines refused while reading (over-long), by index in `ends`, with the reason.
    refused: Vec<(usize, String)>,
}

impl Lines {
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
pub struct TcpSource<D> {
    spec: TcpSpec,
    decoder: D,
    dead_letters: DeadLetters,
    started: Option<Started>,
    rejected: Vec<DeadLetter>,
}

struct Started {
    deliveries: Receiver<Delivery>,
    connected: Arc<AtomicUsize>,
    ever_connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    left: usize,
}

impl<D> std::fmt::Debug for TcpSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSource")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<D> Drop for TcpSource<D> {
    fn drop(&mut self) {
        if let Some(s) = &self.started {
            s.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl<D: Decoder> TcpSource<D> {
    /// A server for `spec`, decoding lines with `decoder`; rejects go to `dead_letters`.
    pub fn new(spec: TcpSpec, decoder: D, dead_letters: DeadLetters) -> Self {
        TcpSource {
            spec,
            decoder,
            dead_letters,
            started: None,
            rejected: Vec::new(),
        }
    }

    fn start(&mut self) -> Result<(), BoxError> {
        let listener = TcpListener::bind(&self.spec.addr).map_err(|e| {
            format!(
                "cannot listen on tcp://{}: {e} (pick another port, or 0 for any)",
                self.spec.addr
            )
        })?;
        let bound = listener.local_addr()?;
        eprintln!("weir: listening on tcp://{bound}");
        self.dead_letters.open()?;
        let (tx, rx) = bounded(QUEUED_BATCHES);
        let started = Started {
            deliveries: rx,
            connected: Arc::new(AtomicUsize::new(0)),
            ever_connected: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            left: 0,
        };
        let accept = Acceptor {
            listener,
            deliveries: tx,
            connected: started.connected.clone(),
            ever_connected: started.ever_connected.clone(),
            stop: started.stop.clone(),
            max_line: self.spec.max_line,
            max_connections: self.spec.max_connections,
        };
        std::thread::Builder::new()
            .name("weir-tcp-accept".into())
            .spawn(move || accept.run())?;
        self.started = Some(started);
        Ok(())
    }

    /// Decodes a batch of lines into `out`, rejects into the dead letters.
    fn take(&mut self, lines: Lines, out: &mut Vec<D::Item>) {
        let client = lines.client;
        let reject = |number: u64, error: String, raw: &[u8]| DeadLetter {
            source: format!("tcp://{client}"),
            line: number,
            error,
            raw: String::from_utf8_lossy(raw).into_owned(),
        };
        let mut refused = lines.refused.into_iter().peekable();
        let mut start = 0;
        for (i, &end) in lines.ends.iter().enumerate() {
            let number = lines.first + i as u64;
            let bytes = &lines.bytes[start..end];
            start = end;
            if let Some((_, reason)) = refused.next_if(|(at, _)| *at == i) {
                self.rejected.push(reject(number, reason, b""));
                continue;
            }
            match std::str::from_utf8(bytes).map(|t| t.trim_end_matches(['\r', '\n'])) {
                Err(e) => {
                    self.rejected
                        .push(reject(number, format!("line is not UTF-8: {e}"), bytes))
                }
                Ok(t) if t.trim().is_empty() => {}
                Ok(t) => match self.decoder.decode(t) {
                    Ok(item) => out.push(item),
                    Err(error) => self.rejected.push(reject(number, error, t.as_bytes())),
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
        if !self.rejected.is_empty() {
            self.dead_letters.write(&self.rejected)?;
            self.rejected.clear();
        }
        Ok(status)
    }

    fn describe(&self) -> String {
        let until = if self.spec.until_disconnect {
            ", until all clients disconnect"
        } else {
            ""
        };
        format!("tcp server {}{until}", self.spec.addr)
    }
}

/// Accepts clients and starts a reader for each.
struct Acceptor {
    listener: TcpListener,
    deliveries: Sender<Delivery>,
    connected: Arc<AtomicUsize>,
    ever_connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    max_line: usize,
    max_connections: usize,
}

impl Acceptor {
    fn run(self) {
        // Non-blocking accept so the thread notices the job ending.
        if self.listener.set_nonblocking(true).is_err() {
            return;
        }
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
            if self.connected.load(Ordering::SeqCst) >= self.max_connections {
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
            self.connected.fetch_add(1, Ordering::SeqCst);
            self.ever_connected.store(true, Ordering::SeqCst);
            let reader = Reader {
                client,
                deliveries: self.deliveries.clone(),
                connected: self.connected.clone(),
                max_line: self.max_line,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("weir-tcp-{client}"))
                .spawn(move || reader.run(stream));
            if spawned.is_err() {
                self.connected.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Reads one client's lines and hands them over in batches.
struct Reader {
    client: SocketAddr,
    deliveries: Sender<Delivery>,
    connected: Arc<AtomicUsize>,
    max_line: usize,
}

impl Reader {
    fn run(self, stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let mut input = BufReader::with_capacity(64 * 1024, stream);
        let mut number = 1;
        let mut batch = Lines::new(self.client, number);
        loop {
            let start = batch.bytes.len();
            let limit = self.max_line as u64 + 1;
            match input
                .by_ref()
                .take(limit)
                .read_until(b'\n', &mut batch.bytes)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let read = batch.bytes.len() - start;
            if read > self.max_line && batch.bytes.last() != Some(&b'\n') {
                // Over-long: keep its start for the dead letter, skip the rest of it.
                let kept = String::from_utf8_lossy(
                    &batch.bytes[start..start + KEPT_OF_LONG_LINE.min(read)],
                )
                .into_owned();
                batch.bytes.truncate(start);
                let mut rest = Vec::new();
                let _ = input.read_until(b'\n', &mut rest);
                batch.refused.push((
                    batch.ends.len(),
                    format!(
                        "line longer than {} bytes (max_line); it starts: {kept}",
                        self.max_line
                    ),
                ));
            }
            batch.ends.push(batch.bytes.len());
            number += 1;
            // Hand over when the batch is full or nothing more is buffered right now.
            if batch.ends.len() >= LINES_PER_BATCH || input.buffer().is_empty() {
                let full = std::mem::replace(&mut batch, Lines::new(self.client, number));
                if self.deliveries.send(Delivery::Lines(full)).is_err() {
                    break;
                }
            }
        }
        if !batch.ends.is_empty() {
            let _ = self.deliveries.send(Delivery::Lines(batch));
        }
        let _ = self.deliveries.send(Delivery::Gone);
        self.connected.fetch_sub(1, Ordering::SeqCst);
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
        assert!(TcpSpec::parse("/tmp/file.jsonl").is_none());
        let err = TcpSpec::parse("tcp://127.0.0.1:1?speed=fast")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("unknown option `speed=fast`"), "{err}");
    }
}
