//! `weir run`: builds the job, serves its HTTP API, runs it until its input ends or a
//! signal stops it, and says how it went (the summary line, hints for a stopped run and for
//! many late events).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_engine::time::{format_duration_ms, format_timestamp};
use weir_engine::{JobControl, RunOptions, RunSummary};

use super::ServeOptions;
use crate::http::{HttpError, HttpServer, OneJob, Outcome, Serving};
use crate::options::{JobOptions, UsageError};
use crate::registry::JobSpec;
use crate::stop_signal::StopSignal;

pub(super) fn run(
    spec: &JobSpec,
    options: &JobOptions,
    serve: &ServeOptions,
) -> anyhow::Result<()> {
    let name = spec.name.as_str();
    // Listening before anything is built: a signal while the job is built, its state
    // restored or its sources connect stops it like any other (the default action would
    // kill the process and leave temporary state behind).
    let stop = Arc::new(AtomicBool::new(false));
    let control: Arc<Mutex<Option<Arc<JobControl>>>> = Arc::default();
    let signal = StopSignal::listen({
        let (stop, control) = (stop.clone(), control.clone());
        move || {
            stop.store(true, Ordering::SeqCst);
            if let Some(control) = control.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                control.stop();
            }
        }
    })?;
    options.check_paths(name)?;
    options.check_uris()?;
    if crate::partitioned::kafka_input(options).is_some() {
        let serving = crate::partitioned::Serving {
            metrics_addr: serve.metrics_addr.clone(),
            api_token: serve.api_token.clone(),
            quiet: serve.quiet,
            advertised_api_addr: serve.advertised_api_addr.clone(),
        };
        let done = crate::partitioned::run(spec, options, &serving, &stop)?;
        let what = done
            .total
            .as_ref()
            .map_or("nothing left to read".into(), summarize);
        let ended = if signal.received() { "stopped" } else { "done" };
        eprintln!(
            "weir: {name} {ended}: partitions {:?} finished in this process: {what}",
            done.partitions
        );
        if let Some(hint) = done.total.as_ref().and_then(|t| late_hint(t, options)) {
            eprintln!("{hint}");
        }
        return linger(serve, &signal);
    }
    let job = (spec.build)(options)?;
    announce_dead_letters(name, options);
    *control.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.control());
    // A stop that came before the control was there (JobControl keeps a stop requested
    // before its run starts: the run then ends at once, stopped).
    if stop.load(Ordering::SeqCst) {
        job.control().stop();
    }
    let served = OneJob {
        metrics: job.metrics(),
        control: job.control(),
        state: job.queryable_state(),
    };
    let serving = Arc::new(Serving {
        plan: Some(job.plan(options.parallelism)),
        dead_letters: options
            .input
            .is_some()
            .then(|| options.dead_letter_path(name)),
        token: serve.api_token.clone(),
        ..Serving::new(name, Arc::new(served))
    });
    let _server = serve_http(
        serve.metrics_addr.as_deref(),
        serve.api_token.as_deref(),
        &serving,
    )?;
    let mut run_options = options.run_options(name)?;
    if !serve.quiet {
        run_options.progress_interval = Some(Duration::from_secs(1));
    }
    let result = job.run(&run_options);
    options.remove_temporary_state(&run_options);
    serving.ended(match &result {
        Ok(_) => Outcome::Finished,
        Err(e) => Outcome::Failed(e.to_string()),
    });
    serving.wait_for_owed_answers(Duration::from_secs(5));
    let summary = result?;
    match summary.stopped {
        true => eprintln!(
            "weir: {name} stopped: {}{}",
            summarize(&summary),
            resume_hint(&run_options)
        ),
        false => eprintln!("weir: {name} done: {}", summarize(&summary)),
    }
    if let Some(hint) = late_hint(&summary, options) {
        eprintln!("{hint}");
    }
    linger(serve, &signal)
}

/// Says where records that cannot be read go when that is not beside a file `--output`
/// (with `stdout:`, a TCP or Kafka output it is a file in the working directory).
fn announce_dead_letters(name: &str, options: &JobOptions) {
    if options.input.is_some() && options.output_file().is_none() {
        eprintln!(
            "weir: records that cannot be read go to {}",
            options.dead_letter_path(name).display()
        );
    }
}

/// What a stopped run leaves for the next one.
fn resume_hint(run_options: &RunOptions) -> &'static str {
    match &run_options.checkpoints {
        Some(_) => "; a final checkpoint was taken: run the same command again to go on from here",
        None => {
            "; windows still open were not fired (without --checkpoint-interval and \
             --state-dir a stopped run cannot be resumed)"
        }
    }
}

/// Where the HTTP API is served unless `--metrics-addr` says otherwise.
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9898";

/// Starts the HTTP API at `--metrics-addr` (`requested`; `None` for the default, `off` for
/// none) for `serving`, and says where it is. When the default port is taken (another weir
/// run on this machine), a free port is used instead of failing. An address other than
/// loopback needs a `token`.
pub(crate) fn serve_http(
    requested: Option<&str>,
    token: Option<&str>,
    serving: &Arc<Serving>,
) -> anyhow::Result<Option<HttpServer>> {
    let start = |addr: &str| HttpServer::start(addr, serving.clone());
    let server = match requested {
        Some("off") => return Ok(None),
        Some(addr) => {
            refuse_open_address_without_token(addr, token)?;
            start(addr)?
        }
        None => match start(DEFAULT_METRICS_ADDR) {
            Err(e) if e.is_addr_in_use() => {
                let server = start("127.0.0.1:0")?;
                eprintln!(
                    "weir: {DEFAULT_METRICS_ADDR} is in use (another weir run?), so metrics are \
                     on a free port; pass --metrics-addr to choose one"
                );
                server
            }
            other => other?,
        },
    };
    eprintln!("weir: metrics at http://{}/metrics", server.addr());
    eprintln!("weir: dashboard at http://{}/", server.addr());
    Ok(Some(server))
}

/// The API can stop the job and show its data: on an address other than loopback it
/// needs a token.
fn refuse_open_address_without_token(addr: &str, token: Option<&str>) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let resolved: Vec<std::net::SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let open = resolved.iter().any(|a| !a.ip().is_loopback());
    if open && token.is_none_or(str::is_empty) {
        return Err(UsageError(format!(
            "--metrics-addr {addr} is reachable from other machines, and the API can stop the \
             job and read its dead letters: pass --api-token TOKEN (or WEIR_API_TOKEN), or \
             bind 127.0.0.1"
        ))
        .into());
    }
    Ok(())
}

/// Keeps the metrics endpoint up for `--linger` after the job ended, or until a signal.
fn linger(serve: &ServeOptions, signal: &StopSignal) -> anyhow::Result<()> {
    if let Some(linger) = serve.linger {
        eprintln!("weir: serving metrics for {linger:?} more (SIGINT/SIGTERM ends it)");
        let until = Instant::now() + linger;
        while !signal.received() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// One line of advice when more than 1 % of the events read were late: the watermark
/// delay is smaller than the input's out-of-orderness, and results are missing events.
fn late_hint(s: &RunSummary, options: &JobOptions) -> Option<String> {
    if s.late_events.saturating_mul(100) <= s.events_read {
        return None;
    }
    let now = options
        .watermark_delay
        .map_or("the job's default".to_string(), |d| {
            format_duration_ms(weir_engine::time::duration_ms(d))
        });
    Some(format!(
        "weir: hint: {} of {} events ({:.1} %) were late and left out of their windows: the \
         input is further out of order than --watermark-delay ({now}) allows; raise it to at \
         least the input's out-of-orderness (for `weir gen events`, its --disorder-ms), or \
         keep late events with --allowed-lateness or --late-output",
        s.late_events,
        s.events_read,
        s.late_events as f64 * 100.0 / s.events_read as f64
    ))
}

fn summarize(s: &RunSummary) -> String {
    let secs = s.elapsed.as_secs_f64();
    let watermark = s.watermark.map_or_else(
        || "none".to_string(),
        |w| format!("{w} ({})", format_timestamp(w)),
    );
    format!(
        "{} events read in {secs:.3}s ({:.0} events/s), {} results written, {} late events, {} dead letters, last watermark {watermark}",
        s.events_read,
        s.events_read as f64 / secs.max(1e-9),
        s.results_written,
        s.late_events,
        s.dead_letters
    )
}
