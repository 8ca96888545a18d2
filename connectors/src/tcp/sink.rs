//! The TCP sink: a client that sends each result as one JSON line to `HOST:PORT`.
//!
//! # Behaviour
//! - It connects when the first batch is written. Writes block while the peer reads slowly
//!   (TCP flow control), which holds the job back: memory stays bounded.
//! - When the connection cannot be made (refused, or not accepted within 5 s) or breaks, it
//!   says so on stderr and tries again with a backoff (0.1 s doubling to 5 s), for as long
//!   as it takes; the job waits. The batch
//!   being written is sent again whole on the new connection.
//! - Delivery is at-least-once for the lines the sink knows failed, and best effort for the
//!   rest: TCP has no acknowledgements, so lines the kernel had accepted when a connection
//!   broke may never have reached the peer. Use Kafka or files where every result counts.

use std::io::Write;
use std::net::{Shutdown, TcpStream};

use serde::Serialize;
use weir_engine::{BoxError, Record, Sink};

use super::{connect, Backoff, CONNECT_TIMEOUT};

/// Sends results as JSON lines to a TCP server.
#[derive(Debug)]
pub struct TcpSink<T> {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    _item: std::marker::PhantomData<fn(&T)>,
}

impl<T> TcpSink<T> {
    /// Sends to `addr` (`HOST:PORT`).
    pub fn new(addr: impl Into<String>) -> Self {
        TcpSink {
            addr: addr.into(),
            stream: None,
            buf: Vec::with_capacity(1 << 16),
            _item: std::marker::PhantomData,
        }
    }

    /// Writes `self.buf` whole, connecting (again) as often as needed.
    fn send_buffer(&mut self) {
        let mut backoff = Backoff::new();
        loop {
            let result = match &mut self.stream {
                Some(stream) => stream.write_all(&self.buf),
                None => match connect(&self.addr, CONNECT_TIMEOUT) {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        self.stream.insert(stream).write_all(&self.buf)
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    let what = if self.stream.is_some() {
                        "the connection broke"
                    } else {
                        "cannot connect"
                    };
                    eprintln!(
                        "weir: tcp sink {}: {what} ({e}); trying again in {:.1} s",
                        self.addr,
                        backoff.next_secs()
                    );
                    self.stream = None;
                    backoff.sleep();
                }
            }
        }
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for TcpSink<T> {
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        self.buf.clear();
        for record in records {
            serde_json::to_writer(&mut self.buf, &record.value)?;
            self.buf.push(b'\n');
        }
        if !self.buf.is_empty() {
            self.send_buffer();
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        if let Some(stream) = &mut self.stream {
            stream.flush()?;
            // Tells the peer the results are complete.
            let _ = stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    use weir_engine::Record;

    use super::*;

    fn records(values: &[i64]) -> Vec<Record<i64>> {
        values
            .iter()
            .map(|&value| Record {
                ts: 0,
                watermark: 0,
                value,
            })
            .collect()
    }

    #[test]
    fn reconnects_after_the_peer_went_away_and_sends_the_batch_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut sink = TcpSink::new(addr.clone());
        sink.write(&records(&[1, 2])).unwrap();
        let (mut first, _) = listener.accept().unwrap();
        let mut got = [0u8; 4];
        first.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"1\n2\n");
        // The peer goes away; the listener is closed too, so the sink must wait for a new one.
        drop(first);
        drop(listener);
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = TcpListener::bind(&addr).unwrap();
            let (mut second, _) = listener.accept().unwrap();
            let mut text = String::new();
            second.read_to_string(&mut text).unwrap();
            text
        });
        // A write to a closed peer may succeed once (the kernel accepts it) before it fails:
        // write until the sink has reconnected and the new server sees the lines.
        for _ in 0..3 {
            sink.write(&records(&[3, 4])).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        sink.finish().unwrap();
        let text = server.join().unwrap();
        assert!(
            text.ends_with("3\n4\n") && text.lines().all(|l| l == "3" || l == "4"),
            "the new connection got {text:?}"
        );
    }
}
