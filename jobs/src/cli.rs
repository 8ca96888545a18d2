//! The `weir` command line: `jobs`, `describe`, `run`, `bench`, `gen`, `savepoint` and
//! `stop`.
//!
//! [`main`] is the whole CLI for any [`Registry`], so a crate with its own jobs gets the same
//! commands, HTTP API (metrics, dashboard) and progress output as the `weir` binary.

mod job_args;
mod run_job;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use weir_engine::parse_duration;

use crate::generate::{
    open_output, write_accounts, write_events, write_orders, write_sagas, EventStreamSpec,
    RateLimited,
};
use crate::http::ApiClient;
use crate::options::{given_options, JobOptions, UsageError};
use crate::registry::{JobSpec, Registry};

pub(crate) use run_job::serve_http;

#[derive(Debug, Parser)]
// Named `weir` whatever the binary is called: `--version` says which weir it is built on.
#[command(name = "weir", version, about = "weir: event-time stream processing", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the jobs this binary offers.
    Jobs,
    /// Print a job's operator graph: one line per node, or with --dot Graphviz DOT.
    Describe {
        /// The job.
        job: String,
        /// Print only the graph in Graphviz DOT, e.g. `weir describe JOB --dot | dot -Tsvg
        /// > job.svg`.
        #[arg(long)]
        dot: bool,
        #[command(flatten)]
        options: JobOptions,
    },
    /// Run a job until its input ends, serving Prometheus metrics meanwhile.
    #[command(
        after_help = "`weir run JOB --help` lists the options JOB reads, with its own ones."
    )]
    Run {
        /// The job.
        job: String,
        #[command(flatten)]
        options: JobOptions,
        #[command(flatten)]
        serve: ServeOptions,
    },
    /// Measure a job's throughput; results are discarded unless --output is given.
    Bench {
        /// The job.
        job: String,
        /// Run every query of the job (nexmark) one after another and end with a table.
        #[arg(long, conflicts_with = "query")]
        all: bool,
        #[command(flatten)]
        options: JobOptions,
    },
    /// Ask a running job (started with --checkpoint-interval) for a savepoint; prints its
    /// directory, for `weir run ... --from-savepoint DIR`.
    Savepoint {
        #[command(flatten)]
        api: ApiOptions,
    },
    /// Stop a running job gracefully, as SIGTERM does: sources end, what is in flight
    /// drains, a final checkpoint is taken (with checkpoints on), sinks close.
    Stop {
        #[command(flatten)]
        api: ApiOptions,
        /// Keep the final checkpoint as a savepoint and print its directory.
        #[arg(long)]
        savepoint: bool,
    },
    /// Create a crate with a job of your own (the page-dwell example) that builds against
    /// this weir: its source, Cargo.lock, release profile and build directory, so that
    /// RocksDB and weir's other dependencies are not compiled again.
    New {
        /// The crate's name, also its binary's (letters, digits, `-`, `_`).
        name: String,
        /// Where to create it (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// weir's source checkout (default: the one this binary was built from).
        #[arg(long, value_name = "DIR")]
        weir: Option<PathBuf>,
        /// The build directory to share with weir (default: $CARGO_TARGET_DIR, else the one
        /// this binary was built into).
        #[arg(long, value_name = "DIR")]
        target_dir: Option<PathBuf>,
    },
    /// Write a deterministic synthetic stream as JSON lines.
    Gen {
        /// Which stream.
        #[arg(value_enum)]
        stream: GenStream,
        /// Where to write: a file path, `tcp://HOST:PORT` (connects and sends lines), or
        /// `kafka://BROKER:PORT/TOPIC` (one record per line; the topic must exist).
        #[arg(long)]
        output: String,
        /// Number of events.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Distinct keys (`events` stream; accounts of the `accounts` stream).
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Maximum out-of-orderness in milliseconds (`events` stream).
        #[arg(long, default_value_t = crate::generate::DEFAULT_DISORDER_MS)]
        disorder_ms: u64,
        /// Lines per second at most (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Kafka output only: key each record by this field of its line (e.g. `key`), so
        /// all records of a key land in one partition. Without it records have no key.
        #[arg(long)]
        key_field: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GenStream {
    /// `{"ts","key","value"}` events, one per millisecond, for `window-agg`.
    Events,
    /// Order events for `order-analytics`.
    Orders,
    /// Order saga steps for `saga-monitor`.
    Sagas,
    /// Nexmark persons, auctions and bids (the `nexmark` job's generator), one JSON object
    /// per line: `{"person":{..}}`, `{"auction":{..}}` or `{"bid":{..}}`.
    Nexmark,
    /// Bank-account deposits and withdrawals for `account-balances` (`--keys` accounts).
    Accounts,
}

/// Where a running job's API is, for the verbs that talk to it.
#[derive(Debug, Args)]
struct ApiOptions {
    /// The running job's --metrics-addr.
    #[arg(long, default_value = "127.0.0.1:9898")]
    metrics_addr: String,
    /// The running job's --api-token, if it has one.
    #[arg(long, env = "WEIR_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

#[derive(Debug, Args)]
struct ServeOptions {
    /// Serve the HTTP API at ADDR: Prometheus metrics at /metrics, the dashboard at /, the
    /// JSON API under /api/v1 (port 0 picks one; `off` disables). Default: 127.0.0.1:9898,
    /// or a free port if another process has that one.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// A token that stop, savepoints and dead letters need (`Authorization: Bearer
    /// TOKEN`); required to serve on an address other than loopback.
    #[arg(long, env = "WEIR_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// With `--input kafka://..?tasks=per-partition` over several processes: the
    /// HOST:PORT of this process's API that the others send callers to (421 answers to
    /// state queries for keys of this process's partitions), as Kafka Streams'
    /// `application.server`. Default: the address the API bound.
    #[arg(long, value_name = "HOST:PORT")]
    advertised_api_addr: Option<String>,
    /// Keep serving metrics this long after the job ends (e.g. `30s`), for a last scrape.
    #[arg(long, value_parser = |s: &str| parse_duration(s))]
    linger: Option<Duration>,
    /// Do not print progress lines.
    #[arg(long)]
    quiet: bool,
}

/// The exit code of a process whose output pipe was closed (`weir .. | head`): 128 +
/// SIGPIPE, what a shell shows for any tool ended that way.
const CLOSED_PIPE: u8 = 141;

/// Runs the CLI with `registry`'s jobs; returns the process exit code.
pub fn main(registry: Registry) -> ExitCode {
    end_quietly_when_output_is_closed();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match job_args::for_job_in_args(Cli::command(), &registry, &argv) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let matches = command.get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches.subcommand().map(|(_, sub)| sub);
    // The job options given on the command line, not left at their defaults: a job
    // refuses those it does not read.
    let given = Given {
        options: sub.map_or_else(Vec::new, given_options),
        job_args: sub
            .map(|sub| job_args::parse(&registry, sub))
            .transpose()
            .unwrap_or_else(|e| e.exit())
            .flatten(),
    };
    match execute(&registry, cli.command, &given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_closed_pipe(&e) => ExitCode::from(CLOSED_PIPE),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("weir: error: {e:#}");
            // As for the option parser's own errors.
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// True if `e` comes from writing to a pipe whose reader left.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A reader of stdout or stderr that went away (`weir .. 2>&1 | head`) makes the next
/// print panic in whichever thread prints; the process then ends at once, silently, with
/// [`CLOSED_PIPE`], as a Unix tool killed by SIGPIPE does. (SIGPIPE itself stays ignored:
/// a TCP sink must see a broken connection as an error it can retry.)
fn end_quietly_when_output_is_closed() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(i32::from(CLOSED_PIPE));
        }
        default(info);
    }));
}

/// What the command line gave a job besides [`JobOptions`].
struct Given {
    /// The long names of the [`JobOptions`] given (not left at their defaults).
    options: Vec<String>,
    /// The job's own options ([`JobSpec::args`]), parsed.
    job_args: Option<Arc<dyn Any + Send + Sync>>,
}

/// The job called `name`, if it reads every option and `--param` key given and `options`
/// give its outputs (or `fill` stands for those not given, see
/// [`JobSpec::check_outputs`]); `options` learn its name and own options.
fn job<'r>(
    registry: &'r Registry,
    name: &str,
    given: &Given,
    options: &mut JobOptions,
    fill: Option<&str>,
) -> anyhow::Result<&'r JobSpec> {
    let spec = registry.get(name)?;
    spec.check_options(&given.options)?;
    spec.check_params(options)?;
    spec.check_outputs(options, fill)?;
    options.job_name = Some(spec.name.clone());
    options.job_args = given.job_args.clone();
    Ok(spec)
}

fn execute(registry: &Registry, command: Command, given: &Given) -> anyhow::Result<()> {
    match command {
        Command::Jobs => {
            let width = registry
                .jobs()
                .iter()
                .map(|j| j.name.len())
                .max()
                .unwrap_or(0);
            for job in registry.jobs() {
                println!("{:width$}  {}", job.name, job.about);
            }
            Ok(())
        }
        Command::Describe {
            job: name,
            dot,
            mut options,
        } => {
            let spec = job(registry, &name, given, &mut options, Some("stdout:"))?;
            // Building a job does no I/O, so a placeholder lets jobs that need an input
            // be described without one.
            options
                .input
                .get_or_insert_with(|| PathBuf::from("<input>"));
            let built = (spec.build)(&options)?;
            match dot {
                true => print!("{}", built.to_dot(options.parallelism)),
                false => print!("{}", built.describe(options.parallelism)),
            }
            Ok(())
        }
        Command::Run {
            job: name,
            mut options,
            serve,
        } => run_job::run(
            job(registry, &name, given, &mut options, None)?,
            &options,
            &serve,
        ),
        Command::Savepoint { api } => {
            let dir = ApiClient::new(&api.metrics_addr, api.api_token).savepoint()?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Stop { api, savepoint } => {
            let client = ApiClient::new(&api.metrics_addr, api.api_token);
            match client.stop(savepoint)? {
                Some(dir) => println!("{}", dir.display()),
                None => eprintln!(
                    "weir: the job at {} is stopping (it drains, takes a final checkpoint if \
                     it checkpoints, and exits)",
                    api.metrics_addr
                ),
            }
            Ok(())
        }
        Command::Bench {
            job: name,
            all,
            mut options,
        } => {
            let spec = job(registry, &name, given, &mut options, Some("null:"))?;
            if !all {
                bench_once(spec, &options)?;
                return Ok(());
            }
            if spec.queries.is_empty() {
                bail!("--all runs every query of a job that has several (nexmark); `{name}` has none: drop --all");
            }
            let mut results = Vec::new();
            for query in spec.queries {
                let options = JobOptions {
                    query: Some(query.to_string()),
                    ..options.clone()
                };
                results.push(bench_once(spec, &options)?);
            }
            println!("\n{}", crate::bench::markdown_table(&results));
            Ok(())
        }
        Command::New {
            name,
            dir,
            weir,
            target_dir,
        } => {
            let new = crate::new_crate::NewCrate {
                name: name.clone(),
                dir,
                weir,
                target_dir,
            };
            let created = crate::new_crate::create(&new)?;
            let (dir, target) = (created.dir.display(), created.target_dir.display());
            eprintln!(
                "weir: created crate `{name}` in {dir}; build it with `cd {dir} && cargo build \
                 --release`, then run `{target}/release/{name} run page-dwell --help`"
            );
            Ok(())
        }
        Command::Gen {
            stream,
            output,
            events,
            keys,
            disorder_ms,
            rate,
            key_field,
        } => {
            let spec = EventStreamSpec {
                events,
                keys,
                disorder_ms,
            };
            if weir_connectors::arrow::is_arrow_file(Path::new(&output)) {
                if !matches!(stream, GenStream::Events) || rate.is_some() || key_field.is_some() {
                    bail!(
                        "an Arrow IPC output (.arrow) takes the `events` stream, written as fast \
                         as possible: drop --rate and --key-field, or write JSON lines"
                    );
                }
                crate::arrow_events::write_events_arrow(Path::new(&output), spec)
                    .with_context(|| format!("cannot write {output}"))?;
                eprintln!("weir: wrote {events} events to {output} (Arrow IPC)");
                return Ok(());
            }
            let w = RateLimited::new(open_output(&output, key_field.as_deref())?, rate);
            match stream {
                GenStream::Events => write_events(w, spec),
                GenStream::Orders => write_orders(w, events),
                GenStream::Sagas => write_sagas(w, events),
                GenStream::Nexmark => crate::nexmark::write_events(w, events),
                GenStream::Accounts => write_accounts(w, events, keys),
            }
            .with_context(|| format!("cannot write {output}"))?;
            eprintln!("weir: wrote {events} events to {output}");
            Ok(())
        }
    }
}

/// Runs one benchmark, prints its summary on stderr and its `RESULT` line on stdout.
fn bench_once(
    spec: &crate::registry::JobSpec,
    options: &JobOptions,
) -> anyhow::Result<crate::bench::BenchResult> {
    let result = crate::bench::run(spec, options)?;
    let latency = result.latency.map_or(String::new(), |l| {
        format!(
            ", latency p50 {:.3} ms p99 {:.3} ms",
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3
        )
    });
    eprintln!(
        "weir bench: {} events in {:.3}s = {:.0} events/s, {} events/s per core ({:.3} CPU s), peak RSS {:.1} MiB{latency}",
        result.events,
        result.seconds,
        result.events_per_sec(),
        result
            .events_per_sec_per_core()
            .map_or("NA (too little CPU time to tell)".into(), |v| format!("{v:.0}")),
        result.cpu_seconds,
        result.peak_rss_mb
    );
    println!("{}", result.result_line());
    Ok(result)
}
