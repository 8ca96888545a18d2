//! `weir run window-agg --input tcp://127.0.0.1:0?until=disconnect`: several clients at
//! once over real sockets, one of them sending garbage and an over-long line. The results
//! must equal a run over a file holding the same good events, and every bad line must be a
//! dead letter naming its client; the other clients are not disturbed.

mod common;

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const CLIENTS: usize = 4;
const EVENTS_PER_CLIENT: usize = 20_000;

fn event_line(client: usize, i: usize) -> String {
    // Every client's events are spread over the same hour, keys shared between clients.
    let ts = 1_700_000_000_000 + (i * 97 % 3_600_000) as i64 + client as i64;
    format!(
        "{{\"ts\":{ts},\"key\":\"k{}\",\"value\":{}}}\n",
        (i + client) % 37,
        i % 100
    )
}

fn sorted_rows(text: &str) -> Vec<String> {
    let mut rows: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|v| v.to_string()))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    rows.sort();
    rows
}

#[test]
fn many_clients_one_sending_garbage_give_the_file_results() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("tcp.jsonl");
    let common_args = [
        "--window",
        "tumble:1m",
        // No event is late whatever the interleaving of clients: results do not depend on it.
        "--watermark-delay",
        "2h",
        "--metrics-addr",
        "off",
        "--quiet",
    ];
    let mut child = Command::new(WEIR)
        .args([
            "run",
            "window-agg",
            "--input",
            "tcp://127.0.0.1:0?until=disconnect&max_line=4096",
            "--output",
        ])
        .arg(&output)
        .args(common_args)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| "weir did not start listening")?;
        if let Some(addr) = line.strip_prefix("weir: listening on tcp://") {
            break addr.to_string();
        }
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = addr.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut socket = TcpStream::connect(&addr)?;
                for i in 0..EVENTS_PER_CLIENT {
                    socket.write_all(event_line(client, i).as_bytes())?;
                    if client == 0 && i % 5_000 == 17 {
                        socket.write_all(b"{this is not json\n")?;
                    }
                }
                if client == 0 {
                    let long = format!("{{\"key\":\"{}\"}}\n", "x".repeat(10_000));
                    socket.write_all(long.as_bytes())?;
                    socket.write_all(event_line(client, EVENTS_PER_CLIENT).as_bytes())?;
                }
                socket.flush()
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "client panicked")??;
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("weir did not end after all clients disconnected".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let summary: Vec<String> = rx.try_iter().collect();
    let done = summary
        .iter()
        .find(|l| l.contains(" done: "))
        .ok_or("no summary line")?;
    let good = CLIENTS * EVENTS_PER_CLIENT + 1;
    assert!(done.contains(&format!(" {good} events read")), "{done}");
    assert!(done.contains(" 5 dead letters"), "{done}");

    // The same good events from a file.
    let mut lines = String::new();
    for client in 0..CLIENTS {
        for i in 0..EVENTS_PER_CLIENT {
            lines.push_str(&event_line(client, i));
        }
    }
    lines.push_str(&event_line(0, EVENTS_PER_CLIENT));
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines)?;
    let file_output = dir.path().join("file.jsonl");
    let input_arg = input.to_str().ok_or("path")?;
    let output_arg = file_output.to_str().ok_or("path")?;
    let mut args = vec![
        "run",
        "window-agg",
        "--input",
        input_arg,
        "--output",
        output_arg,
    ];
    args.extend(common_args);
    common::run_ok(WEIR, &args)?;
    let expected = sorted_rows(&std::fs::read_to_string(&file_output)?);
    assert!(!expected.is_empty());
    assert_eq!(sorted_rows(&std::fs::read_to_string(&output)?), expected);

    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("tcp.jsonl.dead.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(dead.len(), 5, "4 garbage lines and 1 over-long line");
    assert!(dead.iter().all(|d| d["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("tcp://127.0.0.1:"))));
    assert!(dead.iter().any(|d| d["error"]
        .as_str()
        .is_some_and(|e| e.contains("longer than 4096 bytes"))));
    Ok(())
}
