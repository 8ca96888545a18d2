//! TCP: a source reading newline-delimited records, either as a server that accepts many
//! clients (`--input tcp://HOST:PORT`) or as a client of one server that reconnects when the
//! connection drops (`--input tcp://HOST:PORT?mode=connect`) ([`TcpSource`]); a client
//! sink that sends results as JSON lines to a server ([`TcpSink`], `--output
//! tcp://HOST:PORT`); and a server sink that serves them to subscribers ([`TcpServerSink`],
//! `--output tcp://HOST:PORT?mode=listen`), disconnecting those that fall behind.
//!
//! TCP has no replay and no acknowledgements: a job reading TCP cannot checkpoint, and the
//! sink cannot know what a peer received before a connection broke (see [`TcpSink`]).

mod serve;
mod sink;
mod source;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use serve::{TcpServerSink, MAX_QUEUED_BYTES, STALLED};
pub use sink::TcpSink;
pub use source::{TcpMode, TcpSource, TcpSpec};

/// What `--output tcp://HOST:PORT[?mode=connect|listen&subscribers=N]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOutput {
    /// Send results to the server at this address (`mode=connect`, the default).
    Connect(String),
    /// Serve results to subscribers on this address; the first result waits until
    /// `subscribers` are connected.
    Listen {
        /// Address to listen on (port 0 picks one).
        addr: String,
        /// Subscribers to wait for before the first result.
        subscribers: usize,
    },
}

impl TcpOutput {
    /// Parses a `tcp://` output URI; `None` if `uri` is not one.
    pub fn parse(uri: &str) -> Option<Result<TcpOutput, String>> {
        let rest = uri.strip_prefix("tcp://")?;
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut listen, mut subscribers) = (false, 0);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("mode", "connect")) => listen = false,
                Some(("mode", "listen")) => listen = true,
                Some(("subscribers", n)) => match n.parse() {
                    Ok(n) => subscribers = n,
                    Err(_) => return Some(Err(format!("{uri}: subscribers={n} is not a number"))),
                },
                _ => {
                    return Some(Err(format!(
                        "{uri}: unknown option `{pair}` (known: mode=connect|listen, subscribers=N)"
                    )))
                }
            }
        }
        let addr = addr.to_string();
        Some(match (listen, subscribers) {
            (true, subscribers) => Ok(TcpOutput::Listen { addr, subscribers }),
            (false, 0) => Ok(TcpOutput::Connect(addr)),
            (false, _) => Err(format!("{uri}: subscribers=N needs mode=listen")),
        })
    }
}

/// How long a client waits for a server to accept a connection. Without a bound, an
/// address that drops connection requests (a firewall, a host that is gone, a server whose
/// accept queue is full) holds the attempt for the kernel's SYN retries, about two minutes
/// on Linux, with nothing said; with it, the attempt fails, is reported and backed off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` (`HOST:PORT`), trying each address it resolves to for at most
/// `timeout`.
fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for candidate in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Waits between connection attempts: 0.1 s, doubling up to 5 s, back to 0.1 s once a
/// connection worked.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    /// The next wait, in seconds (for the message announcing it).
    fn next_secs(&self) -> f64 {
        self.0.as_secs_f64()
    }

    /// Sleeps the next wait and lengthens the one after.
    fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_connection_to_a_server_that_drops_requests_times_out() {
        // A listener that never accepts: once its accept queue is full, the kernel drops
        // further connection requests, as a firewall or a vanished host does.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let short = Duration::from_millis(300);
        let mut held = Vec::new();
        let started = Instant::now();
        let timed_out = loop {
            assert!(held.len() < 10_000, "the accept queue never filled");
            match connect(&addr, short) {
                Ok(stream) => held.push(stream),
                Err(e) => break e,
            }
        };
        assert_eq!(timed_out.kind(), io::ErrorKind::TimedOut, "{timed_out}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "connecting took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn output_uris() {
        assert_eq!(
            TcpOutput::parse("tcp://h:1"),
            Some(Ok(TcpOutput::Connect("h:1".into())))
        );
        assert_eq!(
            TcpOutput::parse("tcp://127.0.0.1:0?mode=listen&subscribers=2"),
            Some(Ok(TcpOutput::Listen {
                addr: "127.0.0.1:0".into(),
                subscribers: 2
            }))
        );
        assert_eq!(TcpOutput::parse("out.jsonl"), None);
        for (uri, says) in [
            ("tcp://h:1?subscribers=2", "needs mode=listen"),
            ("tcp://h:1?mode=listen&subscribers=x", "not a number"),
            ("tcp://h:1?fast=yes", "unknown option"),
        ] {
            let err = TcpOutput::parse(uri).and_then(Result::err);
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{uri}: {err:?}"
            );
        }
    }
}
