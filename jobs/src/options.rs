//! The flags every job can read. Jobs take what they need and say clearly what is missing.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use weir_connectors::{Format, KafkaSpec, PostgresSpec};
use weir_engine::{parse_duration, CheckpointConfig, Resume, RunOptions, StateConfig};
use weir_operators::{Session, Sliding, Tumbling, WindowSpec};

use crate::temporary_state;

/// The metric of a window result that `--top` ranks keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum RankBy {
    /// Number of events.
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean value.
    Avg,
}

/// What window-agg does with an event its aggregate cannot take (`--on-aggregate-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnAggregateError {
    /// Fail the job.
    Fail,
    /// Write the event to the dead letters and go on without it.
    DeadLetter,
}

/// How window-agg aggregates at `--parallelism` > 1 (`--agg-phase-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AggPhaseStrategy {
    /// Two phases where they give the same results, else one.
    Auto,
    /// Every event crosses to its key's worker.
    OnePhase,
}

/// Options of `weir run`, `weir describe` and `weir bench`.
#[derive(Debug, Clone, Args)]
pub struct JobOptions {
    /// Input file (JSON lines or CSV with a header row), or for window-agg
    /// `tcp://HOST:PORT[?until=disconnect]` to serve newline-delimited JSON to clients, or
    /// `kafka://BROKER:PORT/TOPIC[?group=G&start=earliest&until=end]` to read a topic.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where results go: a file path, `stdout:`, `tcp://HOST:PORT` (JSON lines sent to a
    /// server), `kafka://BROKER:PORT/TOPIC` (JSON values, keyed by the result's key where it
    /// has one), `postgres://USER@HOST:PORT/DB?table=T&key=K` (rows upserted into a table)
    /// or `null:` (discard). A job with several outputs (results and alerts, say) takes
    /// each as `--output NAME=SPEC`, repeated: `--output results=out.jsonl --output
    /// alerts=kafka://..` (a NAME is letters, digits, `-` and `_`; write a file whose name
    /// has `=` in it as `./a=b.jsonl`).
    #[arg(long = "output", value_name = "[NAME=]SPEC")]
    pub outputs: Vec<String>,
    /// Input format; by default taken from the file extension (`.csv` or JSON lines).
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
    /// Keep reading lines appended to the input, like `tail -f`.
    #[arg(long)]
    pub follow: bool,
    /// Longest input line (bytes) a file input decodes; a longer one is a dead letter
    /// keeping its first KiB and its length, never held whole in memory.
    #[arg(long, default_value_t = weir_connectors::file::DEFAULT_MAX_LINE)]
    pub max_line: usize,
    /// Size (bytes) of the pieces a file input is cut into for the workers at
    /// --parallelism > 1; each worker reads every P-th piece. Changing it between runs is
    /// safe. A job whose results follow input order (account-balances) reads a file with
    /// one reader.
    #[arg(long, default_value_t = weir_connectors::file::DEFAULT_SPLIT_BYTES)]
    pub split_bytes: u64,
    /// Field holding the event time, in epoch milliseconds.
    #[arg(long, default_value = "ts")]
    pub ts_field: String,
    /// Field holding the key.
    #[arg(long, default_value = "key")]
    pub key_field: String,
    /// Field holding the (integer) value to aggregate.
    #[arg(long, default_value = "value")]
    pub value_field: String,
    /// Window: `tumble:SIZE`, `hop:SIZE/SLIDE` or `session:GAP` (e.g. `tumble:10s`).
    #[arg(long, default_value = "tumble:10s", value_parser = parse_window)]
    pub window: WindowSpec,
    /// Bounded out-of-orderness of event times (e.g. `2s`); default the job's own
    /// (window-agg 1s, what `weir gen events` makes by default).
    #[arg(long, value_parser = parse_duration_arg)]
    pub watermark_delay: Option<Duration>,
    /// An input event whose time is more than this ahead of the largest event time accepted
    /// so far from its stream (a reader of a file, TCP input, Kafka partition) goes to the dead letters
    /// instead of moving the watermark (e.g. `1h`). Default: off.
    #[arg(long, value_parser = parse_duration_arg)]
    pub max_future: Option<Duration>,
    /// Leave an input of a multi-input operator (union, several workers) out of the
    /// watermark after it delivered nothing for this long (default: never).
    #[arg(long, value_parser = parse_duration_arg)]
    pub idle_timeout: Option<Duration>,
    /// How long fired windows accept late events as updates.
    #[arg(long, default_value = "0s", value_parser = parse_duration_arg)]
    pub allowed_lateness: Duration,
    /// Emit only the N keys with the largest `--by` metric per window, ranked (window-agg).
    #[arg(long)]
    pub top: Option<usize>,
    /// The metric `--top` ranks by.
    #[arg(long, value_enum, default_value_t = RankBy::Sum)]
    pub by: RankBy,
    /// What window-agg does with an event its aggregate cannot take (an i64 sum would
    /// overflow): `fail` the job (the error names the key, window, event time and input
    /// position), or `dead-letter`: write the event to the dead letters with its input
    /// position and the reason, count it (weir_dead_letter_records_total{operator="window"}) and go
    /// on without it. With --checkpoint-interval the letters are committed with the
    /// checkpoints, exactly once, as results are.
    #[arg(long, value_enum, default_value_t = OnAggregateError::Fail)]
    pub on_aggregate_error: OnAggregateError,
    /// How window-agg aggregates at --parallelism > 1 (Flink's
    /// table.optimizer.agg-phase-strategy): `auto` in two phases where they give the same
    /// results (each reader sums its events per key and window before they cross to the
    /// key's worker; sessions, --late-output and --on-aggregate-error dead-letter take one),
    /// `one-phase` sends every event to its key's worker (better with millions of keys of
    /// one or two events each per window).
    #[arg(long, value_enum, default_value_t = AggPhaseStrategy::Auto)]
    pub agg_phase_strategy: AggPhaseStrategy,
    /// window-agg: make each key's latest window result readable while the job runs, under
    /// this table name (e.g. `windows`): `GET /api/v1/state/windows/KEY` answers the row's
    /// `window_start`, `window_end`, `count`, `sum`, `min`, `max` and `avg`.
    #[arg(long, value_name = "TABLE")]
    pub queryable: Option<String>,
    /// Write late events here (JSON lines) instead of only counting them.
    #[arg(long)]
    pub late_output: Option<PathBuf>,
    /// Where keyed state lives: `rocksdb` (state larger than memory) or `memory`.
    #[arg(long, default_value = "rocksdb", value_parser = ["rocksdb", "memory"])]
    pub state: String,
    /// State directory: databases in DIR/JOB/rocksdb (replaced at start), checkpoints in
    /// DIR/JOB/checkpoints. Default: a temporary directory removed when the job ends.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Take a checkpoint this often (e.g. `10s`) and resume from the newest one when the job
    /// is started again with the same --state-dir. `--output` is then a directory of part
    /// files committed with each checkpoint (exactly-once). Default: no checkpoints.
    #[arg(long, value_parser = parse_duration_arg)]
    pub checkpoint_interval: Option<Duration>,
    /// Complete checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    pub checkpoints_retained: usize,
    /// Start from this savepoint (or checkpoint) directory instead of the newest checkpoint.
    #[arg(long, conflicts_with = "replay_from")]
    pub from_savepoint: Option<PathBuf>,
    /// Derive the state again from the input: `beginning` discards all checkpoints; an
    /// event time (epoch ms) does too and also skips events before it.
    #[arg(long, value_parser = parse_replay_from)]
    pub replay_from: Option<ReplayFrom>,
    /// Restore a checkpoint even if some of its state belongs to no operator of the job
    /// (matched by uid, see `weir describe`): that state is dropped. Default: refuse.
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// Entries per state table kept decoded in memory in front of RocksDB.
    #[arg(long, default_value_t = 65_536)]
    pub state_cache_entries: usize,
    /// Keep RocksDB's statistics, for `weir_rocksdb_block_cache_hit_ratio`. Off by default:
    /// every state read then pays for several counters (as Flink's RocksDB native metrics).
    #[arg(long)]
    pub rocksdb_statistics: bool,
    /// Workers per keyed operator (1 to 128).
    #[arg(long, default_value_t = 1)]
    pub parallelism: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Generate this many events in-process instead of reading `--input` (jobs that can).
    #[arg(long)]
    pub events: Option<u64>,
    /// nexmark: the query to run (q0, q1, q2, q3, q4, q5, q7, q8).
    #[arg(long)]
    pub query: Option<String>,
    /// nexmark: generate at most this many events per second of processing time (default:
    /// as fast as possible), e.g. to measure latency at a given load.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Job-specific settings, `KEY=VALUE`, repeatable.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// The dead-letter file, where it is not derived from `--output` (set for each task of
    /// a job run per Kafka partition, so that tasks never share one).
    #[arg(skip)]
    pub dead_letter_file: Option<PathBuf>,
    /// The name of the job being built, as registered ([`crate::registry::JobSpec`]): set
    /// by the CLI, so that a job's builder need not repeat it ([`JobOptions::job`]).
    #[arg(skip)]
    pub job_name: Option<String>,
    /// The job's own options, parsed by the CLI from the type its spec declares
    /// ([`crate::registry::JobSpec::args`]); read with [`JobOptions::args`].
    #[arg(skip)]
    pub job_args: Option<Arc<dyn Any + Send + Sync>>,
}

/// A mistake in how weir was called (a missing or contradictory option), as opposed to a
/// failure while running: the CLI exits with 2 for it, as for the option parser's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns early with a [`UsageError`] made by `format!`.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::options::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// Where `--replay-from` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The start of the input.
    Beginning,
    /// The first event at or after this event time (epoch ms).
    Time(i64),
}

fn parse_replay_from(s: &str) -> anyhow::Result<ReplayFrom> {
    if s == "beginning" {
        return Ok(ReplayFrom::Beginning);
    }
    s.parse().map(ReplayFrom::Time).map_err(|_| {
        anyhow!("--replay-from `{s}`: use `beginning` or an event time in epoch milliseconds")
    })
}

/// The long names of all [`JobOptions`] (`window` for `--window`).
pub(crate) fn option_names() -> Vec<String> {
    JobOptions::augment_args(clap::Command::new("options"))
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_string))
        .collect()
}

/// The long names of the [`JobOptions`] given on the command line that `matches` were
/// parsed from: not those left at their defaults.
pub(crate) fn given_options(matches: &clap::ArgMatches) -> Vec<String> {
    let options = JobOptions::augment_args(clap::Command::new("options"));
    // Only ids present in `matches` are asked about (asking of others is a mistake clap
    // reports by panicking in debug builds).
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|id| {
            let arg = options.get_arguments().find(|a| a.get_id() == id)?;
            arg.get_long().map(str::to_string)
        })
        .collect()
}

/// Parses [`JobOptions`] on their own (for benchmarks, tests and embedding).
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct OptionsOnly {
    #[command(flatten)]
    options: JobOptions,
}

impl JobOptions {
    /// Options from command-line style arguments, e.g. `["--window", "hop:60s/10s"]`.
    pub fn from_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        Ok(OptionsOnly::try_parse_from(args)?.options)
    }

    /// An empty job named as registered ([`JobOptions::job_name`]; `job` if no name was
    /// set, as when options are parsed by [`JobOptions::from_args`]).
    pub fn job(&self) -> weir_engine::Job {
        weir_engine::Job::new(self.job_name.as_deref().unwrap_or("job"))
    }

    /// The job's own options ([`crate::registry::JobSpec::args`]), as parsed from the
    /// command line; their defaults where no command line set them (options made by
    /// [`JobOptions::from_args`]). An error if the job's spec declared another type, or a
    /// required option was not given.
    pub fn args<A>(&self) -> anyhow::Result<A>
    where
        A: clap::Args + Clone + 'static,
    {
        let Some(parsed) = &self.job_args else {
            let command = A::augment_args(clap::Command::new("job").no_binary_name(true));
            let defaults = command
                .try_get_matches_from(Vec::<String>::new())
                .and_then(|m| A::from_arg_matches(&m));
            return defaults.map_err(|e| {
                let e = e.to_string();
                let reason = e.trim_start_matches("error: ").trim_end();
                anyhow::Error::new(UsageError(format!(
                    "the job's options ({}): {reason}",
                    std::any::type_name::<A>()
                )))
            });
        };
        parsed.downcast_ref::<A>().cloned().ok_or_else(|| {
            anyhow!(
                "the job reads its options as {}, which is not the type its spec declares \
                 (JobSpec::args)",
                std::any::type_name::<A>()
            )
        })
    }

    /// The input path, or an error saying the job needs one.
    pub fn require_input(&self, job: &str) -> anyhow::Result<&PathBuf> {
        self.input.as_ref().ok_or_else(|| {
            anyhow::Error::new(UsageError(format!(
                "job `{job}` needs an input: pass --input FILE"
            )))
        })
    }

    /// The input format: `--format`, else the input's extension.
    pub fn input_format(&self) -> Format {
        self.format
            .or_else(|| self.input.as_deref().map(Format::from_path))
            .unwrap_or(Format::JsonLines)
    }

    /// The `--output SPEC` given without a name (the last, if several were).
    pub fn output(&self) -> Option<&str> {
        self.outputs
            .iter()
            .rev()
            .find(|o| split_named_output(o).is_none())
            .map(String::as_str)
    }

    /// The outputs given as `--output NAME=SPEC`, as (NAME, SPEC), in order.
    pub fn named_outputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outputs.iter().filter_map(|o| split_named_output(o))
    }

    /// The SPEC of `--output name=SPEC`, or a [`UsageError`] naming the outputs given.
    pub fn output_named(&self, name: &str) -> anyhow::Result<&str> {
        if let Some((_, spec)) = self.named_outputs().filter(|(n, _)| *n == name).last() {
            return Ok(spec);
        }
        let given: Vec<String> = self.named_outputs().map(|(n, _)| n.to_string()).collect();
        let given = match given.is_empty() {
            true => "none was given by name".to_string(),
            false => format!("the outputs given are {}", given.join(", ")),
        };
        usage!("the job writes to an output named `{name}`: pass --output {name}=SPEC ({given})")
    }

    /// The path of `--output` if it is a file (or a part-file directory), not `stdout:`,
    /// `null:` or a `tcp://`/`kafka://` URI; for a job with named outputs, the first of them
    /// that is a file.
    pub fn output_file(&self) -> Option<&str> {
        let is_file =
            |out: &&str| out.starts_with("file://") || !(out.ends_with(':') || out.contains("://"));
        let out = match self.output() {
            Some(out) => Some(out).filter(is_file),
            None => self.named_outputs().map(|(_, spec)| spec).find(is_file),
        }?;
        Some(out.strip_prefix("file://").unwrap_or(out))
    }

    /// The dead-letter file for this run: `<output>.dead.jsonl` beside a file output, else
    /// `<job>.dead.jsonl` in the working directory.
    pub fn dead_letter_path(&self, job: &str) -> PathBuf {
        if let Some(file) = &self.dead_letter_file {
            return file.clone();
        }
        match self.output_file() {
            // `out/` (a part-file directory) gets `out.dead.jsonl` beside it, not inside.
            Some(out) => PathBuf::from(format!("{}.dead.jsonl", out.trim_end_matches('/'))),
            None => PathBuf::from(format!("{job}.dead.jsonl")),
        }
    }

    /// Refuses outputs that are the input file (or each other): writing them would
    /// truncate what the job reads; and outputs below a file, which cannot be created. Paths are compared canonically (`./a` is `a`, links
    /// are followed); outputs that are not files are not compared.
    pub fn check_paths(&self, job: &str) -> anyhow::Result<()> {
        let file = |p: &Path| -> Option<PathBuf> {
            let s = p.to_str()?;
            let local = !(s.contains("://") || s.ends_with(':') || s == "-");
            local.then(|| canonical(p))
        };
        let input = self.input.as_deref().and_then(file);
        let late = self.late_output.as_deref().and_then(file);
        let dead = file(&self.dead_letter_path(job));
        let mut named: Vec<(String, Option<PathBuf>)> = self
            .outputs
            .iter()
            .map(|out| match split_named_output(out) {
                Some((name, spec)) => (format!("--output {name}"), file(Path::new(spec))),
                None => ("--output".to_string(), file(Path::new(out))),
            })
            .collect();
        named.push(("--late-output".into(), late));
        named.push(("the dead-letter file".into(), dead));
        for (i, (what, path)) in named.iter().enumerate() {
            let Some(path) = path else { continue };
            if let Some(file) = path.ancestors().skip(1).find(|a| a.is_file()) {
                usage!(
                    "{what} {} cannot be written: {} is a file, not a directory; choose \
                     another path",
                    path.display(),
                    file.display()
                );
            }
            if input.as_ref() == Some(path) {
                usage!(
                    "{what} {} is the input file: writing it would destroy the input; choose \
                     another path",
                    path.display()
                );
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, p)| p.as_ref() == Some(path)) {
                usage!(
                    "{what} and {other} are the same file ({}): give each its own path",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Refuses `kafka://` inputs and outputs and `postgres://` outputs that do not parse (a
    /// broker without a valid port, a table not named, say) as usage errors, before
    /// anything runs.
    pub fn check_uris(&self) -> anyhow::Result<()> {
        let input = self.input.as_deref().and_then(Path::to_str);
        if let Some(Err(e)) = input.and_then(KafkaSpec::parse) {
            usage!("--input {e}");
        }
        let outputs = self.outputs.iter().map(|o| match split_named_output(o) {
            Some((name, spec)) => (format!("--output {name}="), spec),
            None => ("--output ".to_string(), o.as_str()),
        });
        for (flag, uri) in outputs {
            if let Some(Err(e)) = KafkaSpec::parse(uri) {
                usage!("{flag}{e}");
            }
            if let Some(Err(e)) = PostgresSpec::parse(uri) {
                usage!("{flag}{e}");
            }
        }
        Ok(())
    }

    /// `--watermark-delay`, or `default` if it was not given.
    pub fn watermark_delay_or(&self, default: Duration) -> Duration {
        self.watermark_delay.unwrap_or(default)
    }

    /// The value of `--param NAME=...`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// How the engine should run the job called `job`.
    pub fn run_options(&self, job: &str) -> anyhow::Result<RunOptions> {
        let max = usize::from(weir_engine::MAX_KEY_GROUPS);
        if !(1..=max).contains(&self.parallelism) {
            usage!(
                "--parallelism {}: parallelism {} is out of range: use 1 to {max}",
                self.parallelism,
                self.parallelism
            );
        }
        let state = match self.state.as_str() {
            "memory" => StateConfig::Memory,
            _ => StateConfig::RocksDb {
                dir: self
                    .state_dir
                    .clone()
                    .unwrap_or_else(temporary_state::fresh_dir),
                cache_entries: self.state_cache_entries,
                statistics: self.rocksdb_statistics,
            },
        };
        let checkpoints = match (self.checkpoint_interval, &self.state_dir) {
            (None, _) => None,
            (Some(_), None) => usage!(
                "--checkpoint-interval needs --state-dir DIR: checkpoints must outlive the \
                 process to be resumed from"
            ),
            (Some(interval), Some(dir)) => Some(CheckpointConfig {
                dir: dir.join(job).join("checkpoints"),
                interval,
                retained: self.checkpoints_retained.max(1),
                resume: match (&self.from_savepoint, self.replay_from) {
                    (Some(savepoint), _) => Resume::From(savepoint.clone()),
                    (None, Some(_)) => Resume::Beginning,
                    (None, None) => Resume::Latest,
                },
            }),
        };
        if checkpoints.is_none() && self.from_savepoint.is_some() {
            usage!("--from-savepoint needs --checkpoint-interval and --state-dir");
        }
        Ok(RunOptions {
            parallelism: self.parallelism,
            batch_size: self.batch_size,
            idle_timeout: self.idle_timeout,
            state,
            checkpoints,
            replay_from: match self.replay_from {
                Some(ReplayFrom::Time(t)) => Some(t),
                _ => None,
            },
            allow_non_restored_state: self.allow_non_restored_state,
            ..RunOptions::default()
        })
    }

    /// Removes the state directory of `run` if it was a default temporary one.
    pub fn remove_temporary_state(&self, run: &RunOptions) {
        if let (None, StateConfig::RocksDb { dir, .. }) = (&self.state_dir, &run.state) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `path` made absolute with links resolved, as far as it exists (an output file may not
/// exist yet: its directory is resolved and its name kept).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(full) = path.canonicalize() {
        return full;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            canonical(parent).join(name)
        }
        _ => path.to_path_buf(),
    }
}

fn parse_format(s: &str) -> anyhow::Result<Format> {
    Format::parse(s).ok_or_else(|| anyhow!("unknown format `{s}`: use json or csv"))
}

fn parse_duration_arg(s: &str) -> anyhow::Result<Duration> {
    Ok(parse_duration(s)?)
}

/// `NAME=SPEC` as (NAME, SPEC); `None` for a SPEC without a name. A NAME is letters,
/// digits, `-` and `_`, so a path or URI (`kafka://b/t?acks=all`) is never taken for one.
pub fn split_named_output(value: &str) -> Option<(&str, &str)> {
    let (name, spec) = value.split_once('=')?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    is_name.then_some((name, spec))
}

fn parse_param(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("`{s}` is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses `tumble:10s`, `hop:60s/10s` or `session:5s`.
pub fn parse_window(s: &str) -> anyhow::Result<WindowSpec> {
    const EXAMPLES: &str = "e.g. tumble:10s, hop:60s/10s or session:5s";
    let (kind, spec) = s.split_once(':').ok_or_else(|| {
        anyhow!(
            "window `{s}` needs a kind: tumble:SIZE, hop:SIZE/SLIDE or session:GAP ({EXAMPLES})"
        )
    })?;
    // The reason goes into the message itself: clap prints only its top line.
    let duration =
        |d: &str| parse_duration(d).map_err(|e| anyhow!("window `{s}`: {e} ({EXAMPLES})"));
    let window: WindowSpec = match kind {
        "tumble" | "tumbling" => Tumbling::of(duration(spec)?).into(),
        "hop" | "sliding" => {
            let (size, slide) = spec.split_once('/').ok_or_else(|| {
                anyhow!("window `{s}`: a hop window is hop:SIZE/SLIDE, e.g. hop:60s/10s")
            })?;
            Sliding::of(duration(size)?, duration(slide)?).into()
        }
        "session" => Session::with_gap(duration(spec)?).into(),
        _ => {
            bail!("unknown window kind `{kind}` in `{s}`: use tumble, hop or session ({EXAMPLES})")
        }
    };
    window
        .check()
        .map_err(|reason| anyhow!("window `{s}`: {reason} ({EXAMPLES})"))?;
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_args() -> anyhow::Result<()> {
        let o = JobOptions::from_args([
            "--window",
            "session:5s",
            "--parallelism",
            "2",
            "--param",
            "a=1",
        ])?;
        assert_eq!(o.window, Session::with_gap(Duration::from_secs(5)).into());
        assert_eq!(
            (o.parallelism, o.param("a"), o.ts_field.as_str()),
            (2, Some("1"), "ts")
        );
        assert!(JobOptions::from_args(["--window", "nope"]).is_err());
        Ok(())
    }

    #[test]
    fn window_specs() -> anyhow::Result<()> {
        assert_eq!(
            parse_window("tumble:10s")?,
            Tumbling::of(Duration::from_secs(10)).into()
        );
        assert_eq!(
            parse_window("hop:60s/10s")?,
            Sliding::of(Duration::from_secs(60), Duration::from_secs(10)).into()
        );
        assert_eq!(
            parse_window("session:5s")?,
            Session::with_gap(Duration::from_secs(5)).into()
        );
        assert!(parse_window("hop:10s/60s").is_err());
        assert!(parse_window("tumble:0s").is_err());
        // Each refusal says why and shows a valid window.
        for (bad, why) in [
            ("tumble:10", "invalid duration `10`"),
            ("tumble:-5s", "invalid duration `-5s`"),
            ("tumble:1m30s", "invalid duration `1m30s`"),
            ("tumble:0s", "at least 1 ms"),
            ("hop:10s/60s", "the slide may not exceed the size"),
        ] {
            let err = parse_window(bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("tumble:10s"),
                "{bad}: {err}"
            );
        }
        assert!(parse_window("weekly:1d").is_err());
        assert!(parse_window("10s").is_err());
        Ok(())
    }
}
