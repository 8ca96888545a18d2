//! The TCP server sink: `--output tcp://HOST:PORT?mode=listen` serves each result as one JSON
//! line to every connected subscriber.
//!
//! # Behaviour
//! - Subscribers get the results written after they connected (no history), whole lines
//!   only: each batch is encoded once and shared by every subscriber's queue.
//! - **A subscriber that falls behind is disconnected, never waited for** (as a Kafka broker
//!   does not slow producers down for a slow consumer; unlike Flink's backpressure, which
//!   fits a job's own edges, not its audience): one slow or stalled subscriber would
//!   otherwise hold back the job and every other subscriber. Each subscriber has a queue of
//!   at most [`MAX_QUEUED_BYTES`] encoded results in front of its socket; a batch that would
//!   overflow it, or a socket that takes nothing for [`STALLED`], disconnects the
//!   subscriber, says so on stderr and counts it in `weir_tcp_subscribers_dropped_total`.
//!   Memory stays bounded by subscribers x queue.
//! - `subscribers=N` makes the first result wait until N subscribers are connected (so a
//!   bounded job does not run before its audience arrives); by default results nobody is
//!   connected for are dropped.
//! - At the end every subscriber gets what its queue holds, then the connection is closed
//!   (end of file tells it the results are complete).
//! - Delivery is best effort: a disconnected subscriber misses what followed. Use Kafka or
//!   files where every result counts.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use serde::Serialize;
use weir_engine::metrics::TcpServerMetrics;
use weir_engine::{BoxError, JobMetrics, Record, Sink};

/// Most bytes of encoded results queued for one subscriber.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;
/// How long a subscriber's socket may take nothing before it is disconnected.
pub const STALLED: Duration = Duration::from_secs(10);

/// Serves results as JSON lines to TCP subscribers (see the module docs).
pub struct TcpServerSink<T> {
    addr: String,
    wait_for: usize,
    metrics: Option<TcpServerMetrics>,
    server: Option<Server>,
    buf: Vec<u8>,
    _item: std::marker::PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for TcpServerSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServerSink")
            .field("addr", &self.addr)
            .field("wait_for", &self.wait_for)
            .finish_non_exhaustive()
    }
}

/// The listening socket's subscribers, filled by the accepting thread.
struct Server {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

struct Subscriber {
    peer: SocketAddr,
    queue: Sender<Arc<[u8]>>,
    queued: Arc<AtomicUsize>,
    /// To unblock the writer when the subscriber is dropped.
    socket: TcpStream,
    writer: JoinHandle<()>,
}

fn locked(subscribers: &Mutex<Vec<Subscriber>>) -> MutexGuard<'_, Vec<Subscriber>> {
    subscribers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> TcpServerSink<T> {
    /// Listens on `addr` (`HOST:PORT`, port 0 picks one); the first result waits for
    /// `wait_for` subscribers.
    pub fn new(addr: impl Into<String>, wait_for: usize) -> Self {
        TcpServerSink {
            addr: addr.into(),
            wait_for,
            metrics: None,
            server: None,
            buf: Vec::with_capacity(1 << 16),
            _item: std::marker::PhantomData,
        }
    }

    fn listen(&mut self, metrics: TcpServerMetrics) -> Result<(), BoxError> {
        let listener = TcpListener::bind(&self.addr).map_err(|e| {
            format!(
                "cannot serve results on tcp://{}: {e} (pick another port, or 0 for any)",
                self.addr
            )
        })?;
        eprintln!("weir: serving results on tcp://{}", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let subscribers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (subscribers, stop) = (subscribers.clone(), stop.clone());
            let metrics = metrics.clone();
            move || accept(listener, &subscribers, &stop, &metrics)
        };
        let acceptor = std::thread::Builder::new()
            .name("weir-tcp-serve".into())
            .spawn(accept)?;
        self.metrics = Some(metrics);
        self.server = Some(Server {
            subscribers,
            stop,
            acceptor: Some(acceptor),
        });
        Ok(())
    }
}

impl<T> Drop for TcpServerSink<T> {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Blocks until `count` subscribers are connected.
fn wait_for_subscribers(addr: &str, count: usize, server: &Server) {
    eprintln!("weir: tcp://{addr}: waiting for {count} subscribers before the first result");
    while locked(&server.subscribers).len() < count {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Accepts subscribers until `stop`, each with a writer thread.
fn accept(
    listener: TcpListener,
    subscribers: &Mutex<Vec<Subscriber>>,
    stop: &AtomicBool,
    metrics: &TcpServerMetrics,
) {
    while !stop.load(Ordering::Relaxed) {
        let (socket, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        match subscribe(socket, peer, metrics) {
            Ok(subscriber) => {
                let mut all = locked(subscribers);
                all.push(subscriber);
                metrics.subscribers.set(all.len() as i64);
            }
            Err(e) => eprintln!("weir: cannot serve subscriber tcp://{peer}: {e}"),
        }
    }
}

fn subscribe(
    socket: TcpStream,
    peer: SocketAddr,
    metrics: &TcpServerMetrics,
) -> std::io::Result<Subscriber> {
    socket.set_nonblocking(false)?;
    socket.set_nodelay(true)?;
    socket.set_write_timeout(Some(STALLED))?;
    let (queue, chunks) = unbounded::<Arc<[u8]>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mut socket, queued) = (socket.try_clone()?, queued.clone());
        let dropped = metrics.dropped.clone();
        std::thread::Builder::new()
            .name(format!("weir-tcp-sub-{peer}"))
            .spawn(move || {
                for chunk in chunks {
                    match socket.write_all(&chunk) {
                        Ok(()) => queued.fetch_sub(chunk.len(), Ordering::Relaxed),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            dropped.inc();
                            eprintln!(
                                "weir: subscriber tcp://{peer} took nothing for {} s: disconnected",
                                STALLED.as_secs()
                            );
                            break;
                        }
                        // Gone, or disconnected by the sink: it said so.
                        Err(_) => break,
                    };
                }
                let _ = socket.shutdown(Shutdown::Both);
            })?
    };
    Ok(Subscriber {
        peer,
        queue,
        queued,
        socket,
        writer,
    })
}

impl<T: Serialize + Send + 'static> Sink<T> for TcpServerSink<T> {
    fn open(&mut self, metrics: &JobMetrics) -> Result<(), BoxError> {
        self.listen(metrics.tcp_server())
    }

    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let (Some(server), Some(metrics)) = (&self.server, &self.metrics) else {
            return Err(format!(
                "tcp://{}: the sink was not opened by a job (Sink::open)",
                self.addr
            )
            .into());
        };
        if self.wait_for > 0 {
            wait_for_subscribers(&self.addr, self.wait_for, server);
            self.wait_for = 0;
        }
        self.buf.clear();
        for record in records {
            serde_json::to_writer(&mut self.buf, &record.value)?;
            self.buf.push(b'\n');
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk: Arc<[u8]> = Arc::from(&self.buf[..]);
        let mut all = locked(&server.subscribers);
        all.retain(|s| {
            let queued = s.queued.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            let why = if queued > MAX_QUEUED_BYTES {
                metrics.dropped.inc();
                format!(
                    "fell behind by more than {} MiB: disconnected",
                    MAX_QUEUED_BYTES >> 20
                )
            } else if s.queue.send(chunk.clone()).is_err() {
                "left".to_string()
            } else {
                return true;
            };
            eprintln!("weir: subscriber tcp://{}: {why}", s.peer);
            let _ = s.socket.shutdown(Shutdown::Both);
            false
        });
        metrics.subscribers.set(all.len() as i64);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        server.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = server.acceptor.take() {
            let _ = acceptor.join();
        }
        let all = std::mem::take(&mut *locked(&server.subscribers));
        for subscriber in all {
            // Closing the queue lets the writer send what is left, then close the socket.
            drop(subscriber.queue);
            let _ = subscriber.writer.join();
        }
        if let Some(metrics) = &self.metrics {
            metrics.subscribers.set(0);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("tcp server tcp://{} for subscribers", self.addr)
    }
}
