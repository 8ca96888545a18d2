//! `weir run window-agg --input tcp://127.0.0.1:0?until=disconnect`: several clients at
//! once over real sockets, one of them sending garbage and an over-long line. The results
//! must equal a run over a file holding the same good events, and every bad line must be a
//! dead letter naming its client; the other clients are not disturbed. `--input
//! tcp://..?mode=connect` reads from a server that cuts the connection mid-line and is
//! unreachable for a while: weir reconnects and the results equal the file run's.
//! `--output tcp://` to a slow reader: the job waits with bounded memory and every row
//! arrives. `--output tcp://..?mode=listen` serves every subscriber all rows, and
//! disconnects one that does not read instead of waiting for it.

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
/// window-agg settings of the runs compared with a file run.
const WINDOW_ARGS: [&str; 7] = [
    "--window",
    "tumble:1m",
    // No event is late whatever the interleaving of clients: results do not depend on it.
    "--watermark-delay",
    "2h",
    "--metrics-addr",
    "off",
    "--quiet",
];

/// A line in Latin-1, not UTF-8, that client 0 sends.
const NOT_UTF8: &[u8] = b"{\"ts\":1,\"key\":\"caf\xe9\",\"value\":1}";

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
    let common_args = WINDOW_ARGS;
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
                    socket.write_all(NOT_UTF8)?;
                    socket.write_all(b"\n")?;
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
    assert!(done.contains(" 6 dead letters"), "{done}");

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
    assert_eq!(
        dead.len(),
        6,
        "4 garbage lines, 1 not UTF-8 and 1 over-long line"
    );
    assert!(dead.iter().all(|d| d["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("tcp://127.0.0.1:"))));
    let long = dead
        .iter()
        .find(|d| {
            d["error"]
                .as_str()
                .is_some_and(|e| e.contains("longer than 4096 bytes"))
        })
        .ok_or("no dead letter for the over-long line")?;
    let kept = long["raw"]
        .as_str()
        .ok_or("the over-long line keeps its start")?;
    assert_eq!(kept.len(), 1024, "{long}");
    assert!(kept.starts_with("{\"key\":\"xxx"), "{long}");
    // A line that is not UTF-8 keeps its exact bytes, in base64.
    use base64::Engine as _;
    let binary = dead
        .iter()
        .find_map(|d| d["raw_base64"].as_str())
        .ok_or("no dead letter with raw_base64")?;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(binary)?,
        NOT_UTF8
    );
    Ok(())
}

/// `weir gen events` (100 K keys) into `events.jsonl` in `dir`; returns its path.
fn generate_events(dir: &std::path::Path, events: &str) -> Result<String, Box<dyn Error>> {
    let path = dir.join("events.jsonl");
    let path = path.to_str().ok_or("temp path is not UTF-8")?.to_string();
    common::run_ok(
        WEIR,
        [
            "gen", "events", "--output", &path, "--events", events, "--keys", "100000",
        ],
    )?;
    Ok(path)
}

/// `weir run window-agg` over `input` in tumbling 1 s windows.
fn tumble_1s(input: &str) -> [&str; 6] {
    [
        "run",
        "window-agg",
        "--input",
        input,
        "--window",
        "tumble:1s",
    ]
}

/// `--output tcp://` to a server that reads 10x slower than the job produces for a while:
/// the job waits (TCP flow control reaches back through the bounded queues to the file
/// source), its memory stays flat, and once the reader speeds up every row arrives.
#[test]
fn a_slow_tcp_reader_holds_the_job_back_with_bounded_memory() -> TestResult {
    use std::io::Read;
    let dir = tempfile::tempdir()?;
    let input = generate_events(dir.path(), "2000000")?;
    let input = input.as_str();
    let job = |output: &str| {
        let args = tumble_1s(input);
        let mut command = Command::new(WEIR);
        command
            .args(args)
            .args(["--output", output, "--metrics-addr", "off", "--quiet"])
            .stderr(Stdio::null());
        command
    };
    let reference = dir.path().join("reference.jsonl");
    let status = job(reference.to_str().ok_or("temp path is not UTF-8")?).status()?;
    assert!(status.success());
    let expected = std::fs::read_to_string(&reference)?;

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut child = common::KillOnDrop(job(&format!("tcp://{addr}")).spawn()?);
    let pid = child.0.id();
    let (mut conn, _) = listener.accept()?;
    let mut received = Vec::with_capacity(expected.len());
    let mut chunk = vec![0u8; 16 * 1024];
    // Slow phase: 16 KiB every 10 ms, about 1.6 MB/s, a tenth of what the job produces.
    let slow_until = Instant::now() + Duration::from_secs(3);
    let mut peak = 0.0f64;
    while Instant::now() < slow_until {
        let n = conn.read(&mut chunk)?;
        received.extend_from_slice(&chunk[..n]);
        peak = peak.max(common::peak_rss_mib(pid).unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.0.try_wait()?.is_none(),
        "the job finished while its reader was slow: the test did not exercise backpressure"
    );
    assert!(
        received.len() < expected.len() / 2,
        "the slow reader got {} of {} bytes",
        received.len(),
        expected.len()
    );
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
        peak = peak.max(common::peak_rss_mib(pid).unwrap_or(0.0));
    }
    assert!(child.0.wait()?.success());
    assert!(
        peak > 0.0 && peak < 200.0,
        "peak RSS {peak:.1} MiB with a slow reader (limit 200 MiB)"
    );
    let received = String::from_utf8(received)?;
    let (mut got, mut want): (Vec<&str>, Vec<&str>) =
        (received.lines().collect(), expected.lines().collect());
    got.sort_unstable();
    want.sort_unstable();
    assert!(
        got == want,
        "{} rows over TCP, {} in the file run",
        got.len(),
        want.len()
    );
    Ok(())
}

/// The client source (`mode=connect`) against a server in the test that cuts the first
/// connection in the middle of a line, is unreachable for half a second, then serves the
/// rest from that line on: every event is read once, the cut line is not a dead letter, a
/// garbage line is, and the job ends when the server closes the second connection.
#[test]
fn the_client_source_reconnects_and_reads_every_line_once() -> TestResult {
    const EVENTS: usize = 50_000;
    const CUT_AT: usize = 20_000;
    let dir = tempfile::tempdir()?;
    let mut lines: Vec<String> = (0..EVENTS).map(|i| event_line(1, i)).collect();
    lines.insert(100, "{garbage\n".into());
    let good: String = lines
        .iter()
        .filter(|l| !l.starts_with("{garbage"))
        .cloned()
        .collect();

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut first, _) = listener.accept()?;
        drop(listener);
        for line in &lines[..CUT_AT] {
            first.write_all(line.as_bytes())?;
        }
        let cut = &lines[CUT_AT];
        first.write_all(&cut.as_bytes()[..cut.len() / 2])?;
        drop(first);
        std::thread::sleep(Duration::from_millis(500));
        let listener = std::net::TcpListener::bind(addr)?;
        let (mut second, _) = listener.accept()?;
        for line in &lines[CUT_AT..] {
            second.write_all(line.as_bytes())?;
        }
        Ok(())
    });

    let output = dir.path().join("client.jsonl");
    let input = format!("tcp://{addr}?mode=connect&until=disconnect");
    let common_args = WINDOW_ARGS;
    let mut args = vec!["run", "window-agg", "--input", &input, "--output"];
    args.push(output.to_str().ok_or("path")?);
    args.extend(common_args);
    let run = common::run_ok(WEIR, &args)?;
    server.join().map_err(|_| "server panicked")??;
    let summary = common::Summary::from_stderr(&run.stderr)?;
    assert_eq!(
        (summary.events_read, summary.dead_letters),
        (EVENTS as u64, 1),
        "events read, dead letters; stderr:\n{}",
        run.stderr
    );
    for says in ["middle of a line", "cannot connect", "connecting again"] {
        assert!(
            run.stderr.contains(says),
            "no `{says}` on stderr:\n{}",
            run.stderr
        );
    }
    let dead = std::fs::read_to_string(dir.path().join("client.jsonl.dead.jsonl"))?;
    let letter: Value = serde_json::from_str(dead.trim())?;
    assert_eq!(letter["source"], format!("tcp://{addr}"), "{dead}");
    assert_eq!(letter["line"], 101, "{dead}");

    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, good)?;
    let file_output = dir.path().join("file.jsonl");
    let mut args = vec![
        "run",
        "window-agg",
        "--input",
        input.to_str().ok_or("path")?,
    ];
    args.extend(["--output", file_output.to_str().ok_or("path")?]);
    args.extend(common_args);
    common::run_ok(WEIR, &args)?;
    let expected = sorted_rows(&std::fs::read_to_string(&file_output)?);
    assert!(expected.len() > 100, "{} rows", expected.len());
    assert!(sorted_rows(&std::fs::read_to_string(&output)?) == expected);
    Ok(())
}

/// `--output tcp://127.0.0.1:0?mode=listen&subscribers=3`: two subscribers that read get
/// every row of the file run; a third that never reads is disconnected (a stderr line and
/// `weir_tcp_subscribers_dropped_total`) instead of holding back the job or the others, and
/// memory stays bounded.
#[test]
fn the_server_sink_serves_all_rows_and_drops_a_subscriber_that_does_not_read() -> TestResult {
    use std::io::Read;
    let dir = tempfile::tempdir()?;
    let input = generate_events(dir.path(), "500000")?;
    let job = tumble_1s(&input);
    let reference = dir.path().join("reference.jsonl");
    let reference_arg = reference.to_str().ok_or("temp path is not UTF-8")?;
    let mut args = job.to_vec();
    args.extend(["--output", reference_arg, "--metrics-addr", "off"]);
    common::run_ok(WEIR, &args)?;
    let mut expected: Vec<String> = std::fs::read_to_string(&reference)?
        .lines()
        .map(str::to_string)
        .collect();
    expected.sort_unstable();

    let mut args = job.to_vec();
    args.extend(["--output", "tcp://127.0.0.1:0?mode=listen&subscribers=3"]);
    args.extend(["--metrics-addr", "127.0.0.1:0", "--linger", "60s"]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let mut running = common::Running::spawn(WEIR, &args)?;
    let serving = running.wait_for_line(Duration::from_secs(30), |l| {
        l.starts_with("weir: serving results on tcp://")
    })?;
    let addr = serving
        .trim_start_matches("weir: serving results on tcp://")
        .to_string();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut socket = TcpStream::connect(&addr)?;
            socket.set_read_timeout(Some(Duration::from_secs(60)))?;
            Ok(std::thread::spawn(move || -> std::io::Result<String> {
                let mut text = String::new();
                socket.read_to_string(&mut text)?;
                Ok(text)
            }))
        })
        .collect::<std::io::Result<_>>()?;
    let mut idle = TcpStream::connect(&addr)?;
    let done = running.wait_for_line(Duration::from_secs(120), |l| l.contains(" done: "))?;
    let peak = common::peak_rss_mib(running.child.0.id()).unwrap_or(0.0);
    let stderr = running.stderr();
    for reader in readers {
        let text = reader.join().map_err(|_| "reader panicked")??;
        let mut got: Vec<&str> = text.lines().collect();
        got.sort_unstable();
        assert!(
            got == expected,
            "a subscriber got {} rows, the file run has {}; {done}\n{stderr}",
            got.len(),
            expected.len()
        );
    }
    assert!(stderr.contains("fell behind"), "{stderr}");
    let metrics = running.scrape()?;
    assert_eq!(
        common::sample_sum(&metrics, "weir_tcp_subscribers_dropped_total", &[]),
        1.0,
        "{metrics}"
    );
    idle.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut cut_off = Vec::new();
    let _ = idle.read_to_end(&mut cut_off);
    assert!(
        cut_off.len() < std::fs::metadata(&reference)?.len() as usize / 2,
        "the subscriber that did not read still got {} bytes",
        cut_off.len()
    );
    assert!(
        peak > 0.0 && peak < 200.0,
        "peak RSS {peak:.1} MiB (limit 200 MiB)"
    );
    Ok(())
}

/// A client that sends one 512 MiB line (no line break until its end) and then a good one:
/// the over-long line is a dead letter, the good line counts, and the server's memory
/// stays bounded (it skips the rest of an over-long line instead of collecting it).
#[test]
fn an_endless_line_is_skipped_in_bounded_memory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out.jsonl");
    let mut running = common::Running::spawn(
        WEIR,
        &[
            "run",
            "window-agg",
            "--input",
            "tcp://127.0.0.1:0?until=disconnect",
            "--output",
            output.to_str().ok_or("path")?,
            "--metrics-addr",
            "off",
        ]
        .map(std::ffi::OsStr::new),
    )?;
    let listening = running.wait_for_line(Duration::from_secs(30), |l| {
        l.starts_with("weir: listening on tcp://")
    })?;
    let addr = listening
        .trim_start_matches("weir: listening on tcp://")
        .to_string();
    let pid = running.child.0.id();
    let mut socket = TcpStream::connect(&addr)?;
    let chunk = vec![b'x'; 1 << 20];
    socket.write_all(b"{\"key\":\"")?;
    for _ in 0..512 {
        socket.write_all(&chunk)?;
    }
    socket.write_all(b"\"}\n")?;
    socket.write_all(event_line(0, 1).as_bytes())?;
    socket.flush()?;
    // Sent: the server has read all but what the socket buffers hold. Its peak so far:
    let peak = common::peak_rss_mib(pid).ok_or("weir ended early")?;
    drop(socket);
    let done = running.wait_for_line(Duration::from_secs(60), |l| l.contains(" done: "))?;
    assert!(
        done.contains(" 1 events read") && done.contains(" 1 dead letters"),
        "{done}"
    );
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB for a 512 MiB line");
    Ok(())
}
