//! Jobs by name: what `weir jobs` lists and `weir run JOB` builds, with the options each
//! reads: those of [`JobOptions`] it takes, its own typed ones ([`JobSpec::args`]) and the
//! `--param` keys it knows ([`JobSpec::params`]).

use std::any::Any;
use std::sync::Arc;

use weir_engine::Job;

use crate::options::{usage, JobOptions, UsageError};

/// Builds a job from options.
pub type BuildFn = fn(&JobOptions) -> anyhow::Result<Job>;

/// The options of [`JobOptions`] every job takes, by their long names: read by weir itself
/// for any job, not by a job's builder (where results go, and how the engine runs the
/// job: workers, batches, state, checkpoints, restores). [`JobSpec::reads`] adds a job's own.
pub const EVERY_JOB_READS: &[&str] = &[
    "output",
    "parallelism",
    "batch-size",
    "idle-timeout",
    "state",
    "state-dir",
    "state-cache-entries",
    "rocksdb-statistics",
    "checkpoint-interval",
    "checkpoints-retained",
    "from-savepoint",
    "replay-from",
    "allow-non-restored-state",
];

/// What a job that reads events from `--input` (a file, or the URIs its builder takes)
/// and assigns event times from them reads: its input, format, `--follow`, the longest
/// line, the pieces of a file read by several workers, the future bound and the watermark
/// delay.
pub const EVENT_INPUT: &[&str] = &[
    "input",
    "format",
    "follow",
    "max-line",
    "split-bytes",
    "max-future",
    "watermark-delay",
];

/// One registered job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The name used on the command line.
    pub name: String,
    /// One line on what it computes.
    pub about: String,
    /// Its builder.
    pub build: BuildFn,
    /// The queries `--query` selects, for jobs that bundle several (what `--all` runs).
    pub queries: &'static [&'static str],
    /// The options of [`JobOptions`] its builder reads besides [`EVERY_JOB_READS`], by
    /// their long names (`window` for `--window`): `weir run`, `describe` and `bench`
    /// refuse any other given on the command line. `None` if the job did not say (then
    /// every option is taken, and those it does not read do nothing).
    pub reads: Option<Vec<&'static str>>,
    /// The names of its outputs, each given as `--output NAME=SPEC`; empty for a job with
    /// one output, given as `--output SPEC`.
    pub outputs: Vec<&'static str>,
    /// The job's own options, a type deriving [`clap::Args`] ([`JobSpec::args`]).
    pub args: Option<JobArgs>,
    /// The `--param KEY=VALUE` keys it reads, each with one line on its value
    /// ([`JobSpec::params`]); `None` if it did not say (then any key is taken).
    pub params: Option<Vec<(&'static str, &'static str)>>,
}

/// A job's own options: a [`clap::Args`] type, added to `weir run JOB`, `describe` and
/// `bench` (and to their `--help`) for that job only, parsed and validated by clap, and
/// read by the job's builder with [`JobOptions::args`].
#[derive(Clone)]
pub struct JobArgs {
    /// The type's name, for messages.
    pub type_name: &'static str,
    /// Adds the options to a command (`A::augment_args`).
    pub augment: fn(clap::Command) -> clap::Command,
    /// Reads them from the command's matches (`A::from_arg_matches`).
    pub parse: fn(&clap::ArgMatches) -> Result<Arc<dyn Any + Send + Sync>, clap::Error>,
}

impl std::fmt::Debug for JobArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobArgs")
            .field("type_name", &self.type_name)
            .finish_non_exhaustive()
    }
}

impl JobArgs {
    /// The options of `A`.
    pub fn of<A>() -> Self
    where
        A: clap::Args + Send + Sync + 'static,
    {
        JobArgs {
            type_name: std::any::type_name::<A>(),
            augment: A::augment_args,
            parse: |matches| {
                let parsed: Arc<dyn Any + Send + Sync> = Arc::new(A::from_arg_matches(matches)?);
                Ok(parsed)
            },
        }
    }

    /// The long names and ids of the options, for clashes with weir's own.
    pub(crate) fn names(&self) -> Vec<(String, Option<String>)> {
        (self.augment)(clap::Command::new("args"))
            .get_arguments()
            .map(|a| (a.get_id().to_string(), a.get_long().map(str::to_string)))
            .collect()
    }
}

impl JobSpec {
    /// A job called `name` built by `build`, that has not said which options it reads.
    pub fn new(name: &str, about: &str, build: BuildFn) -> Self {
        JobSpec {
            name: name.to_string(),
            about: about.to_string(),
            build,
            queries: &[],
            reads: None,
            outputs: Vec::new(),
            args: None,
            params: None,
        }
    }

    /// Declares the job's own options as a type deriving [`clap::Args`]: `weir run JOB
    /// --help` lists them with their doc comments, clap parses and validates their values
    /// (a bad one is a usage error naming the option, exit 2), and the builder reads them
    /// with [`JobOptions::args`]. Their names may not be those of weir's own options.
    ///
    /// ```
    /// use weir_jobs::prelude::*;
    ///
    /// /// Options of `my-job`.
    /// #[derive(Debug, Clone, clap::Args)]
    /// struct MyArgs {
    ///     /// Alert on values at least this large.
    ///     #[arg(long, default_value_t = 100)]
    ///     threshold: i64,
    /// }
    ///
    /// fn build(opts: &JobOptions) -> anyhow::Result<Job> {
    ///     let args: MyArgs = opts.args()?;
    ///     assert_eq!(args.threshold, 100);
    ///     Ok(opts.job())
    /// }
    ///
    /// let spec = JobSpec::new("my-job", "alerts", build).args::<MyArgs>();
    /// (spec.build)(&JobOptions::from_args(Vec::<String>::new())?)?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn args<A>(mut self) -> Self
    where
        A: clap::Args + Send + Sync + 'static,
    {
        self.args = Some(JobArgs::of::<A>());
        self
    }

    /// Declares the keys of `--param KEY=VALUE` the job reads, each with one line on its
    /// value (shown by `weir run JOB --help`); the CLI refuses other keys, naming these.
    /// Implies that the job reads `--param` ([`JobSpec::reads`]).
    pub fn params(mut self, params: &[(&'static str, &'static str)]) -> Self {
        self.params
            .get_or_insert_with(Vec::new)
            .extend_from_slice(params);
        // A job that did not say what it reads takes `--param` with the rest.
        if self.reads.as_ref().is_some_and(|r| !r.contains(&"param")) {
            self = self.reads(&["param"]);
        }
        self
    }

    /// Refuses `--param` keys the job did not declare ([`JobSpec::params`]), naming those
    /// it did; a job that declared none takes any.
    pub fn check_params(&self, options: &JobOptions) -> anyhow::Result<()> {
        let Some(declared) = &self.params else {
            return Ok(());
        };
        let Some((key, _)) = options
            .params
            .iter()
            .find(|(k, _)| !declared.iter().any(|(d, _)| d == k))
        else {
            return Ok(());
        };
        let valid: Vec<String> = declared.iter().map(|(d, _)| format!("{d}=")).collect();
        let valid = match valid.is_empty() {
            true => "none".to_string(),
            false => valid.join(", "),
        };
        usage!(
            "`--param {key}=..`: job `{}` has no param `{key}`; its params are {valid} \
             (see `weir run {} --help`)",
            self.name,
            self.name
        )
    }

    /// Declares options the job reads (long names, e.g. `["input", "window"]`, or
    /// [`EVENT_INPUT`]), besides [`EVERY_JOB_READS`]; repeatable. Once a job declares any,
    /// the CLI refuses the options it does not read instead of ignoring them.
    pub fn reads(mut self, options: &[&'static str]) -> Self {
        self.reads
            .get_or_insert_with(Vec::new)
            .extend_from_slice(options);
        self
    }

    /// Names the job's outputs (results and alerts, say): each is given as `--output
    /// NAME=SPEC` and the job asks for it with
    /// [`OutputSink::named`](crate::output::OutputSink::named). `weir run` refuses an
    /// unknown name, a missing one and an `--output` without a name, naming the outputs.
    pub fn outputs(mut self, names: &[&'static str]) -> Self {
        self.outputs.extend_from_slice(names);
        self
    }

    /// Refuses `--output` values that do not fit the job's outputs (see
    /// [`JobSpec::outputs`]); with `fill`, gives each output not given that SPEC instead of
    /// refusing (`stdout:` for `weir describe`, which writes nothing; `null:` for `weir
    /// bench`).
    pub fn check_outputs(
        &self,
        options: &mut JobOptions,
        fill: Option<&str>,
    ) -> anyhow::Result<()> {
        let name = &self.name;
        let named: Vec<String> = options
            .named_outputs()
            .map(|(n, _)| n.to_string())
            .collect();
        let unnamed = options.outputs.len() - named.len();
        if self.outputs.is_empty() {
            if let Some(first) = named.first() {
                usage!(
                    "`--output {first}=..`: job `{name}` has one output, not named ones: pass                      --output SPEC"
                );
            }
            if unnamed > 1 {
                usage!("job `{name}` has one output: pass --output once");
            }
            return Ok(());
        }
        let valid = self.outputs.join(", ");
        if unnamed > 0 {
            usage!(
                "job `{name}` writes to named outputs ({valid}): give each as --output NAME=SPEC"
            );
        }
        for (i, given) in named.iter().enumerate() {
            if !self.outputs.contains(&given.as_str()) {
                usage!(
                    "`--output {given}=..`: job `{name}` has no output `{given}`; its outputs \
                     are {valid}"
                );
            }
            if named[..i].contains(given) {
                usage!("--output {given}= is given twice: give each output once");
            }
        }
        for output in &self.outputs {
            if !named.iter().any(|n| n == output) {
                match fill {
                    Some(spec) => options.outputs.push(format!("{output}={spec}")),
                    None => usage!(
                        "job `{name}` writes to outputs {valid}: --output {output}=SPEC is missing"
                    ),
                }
            }
        }
        Ok(())
    }

    /// The queries `--query` selects (what `weir bench JOB --all` runs).
    pub fn queries(mut self, queries: &'static [&'static str]) -> Self {
        self.queries = queries;
        self
    }

    /// Refuses the options in `given` (long names: those given on the command line) that
    /// the job does not read, naming the ones it does; a job that did not declare what
    /// it reads takes them all. An option of a declaration that [`JobOptions`] does not
    /// have is a mistake in the job, reported as such.
    pub fn check_options(&self, given: &[String]) -> anyhow::Result<()> {
        let Some(reads) = &self.reads else {
            return Ok(());
        };
        let known = crate::options::option_names();
        if let Some(typo) = reads.iter().find(|r| !known.iter().any(|k| k == *r)) {
            anyhow::bail!(
                "job `{}` declares that it reads --{typo}, which is no option of weir",
                self.name
            );
        }
        let taken = |name: &str| EVERY_JOB_READS.iter().chain(reads).any(|r| *r == name);
        let refused: Vec<String> = given
            .iter()
            .filter(|g| !taken(g))
            .map(|g| format!("`--{g}`"))
            .collect();
        let what = match refused.split_last() {
            None => return Ok(()),
            Some((one, [])) => format!("{one} is not an option"),
            Some((last, rest)) => format!("{} and {last} are not options", rest.join(", ")),
        };
        let own = match reads.is_empty() {
            true => "none of its own".to_string(),
            false => reads
                .iter()
                .map(|r| format!("--{r}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Err(anyhow::Error::new(UsageError(format!(
            "{what} of job `{}`: it reads {own}, besides the options of every job \
             (--output, --parallelism, --state and the checkpoint options; see `weir run \
             --help`)",
            self.name
        ))))
    }
}

/// The jobs a binary offers.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    jobs: Vec<JobSpec>,
}

impl Registry {
    /// No jobs yet.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The jobs bundled with weir, each with the options it reads: the one table the CLI
    /// checks what it was given against.
    pub fn bundled() -> Self {
        use crate::{
            account_balances as balances, nexmark, operator_bench as ops,
            order_analytics as orders, saga_monitor as sagas, window_agg as agg,
        };
        Registry::new()
            .register(
                JobSpec::new("window-agg", agg::ABOUT, agg::build)
                    .reads(EVENT_INPUT)
                    .reads(&["ts-field", "key-field", "value-field", "events"])
                    .reads(&["window", "allowed-lateness", "late-output", "queryable"])
                    .reads(&["top", "by", "on-aggregate-error", "agg-phase-strategy"]),
            )
            .register(
                JobSpec::new("order-analytics", orders::ABOUT, orders::build).reads(EVENT_INPUT),
            )
            .register(
                JobSpec::new("saga-monitor", sagas::ABOUT, sagas::build)
                    .reads(EVENT_INPUT)
                    .params(&[("deadline", sagas::DEADLINE_PARAM)]),
            )
            .register(
                JobSpec::new("account-balances", balances::ABOUT, balances::build)
                    .reads(EVENT_INPUT),
            )
            .register(
                JobSpec::new("nexmark", nexmark::ABOUT, nexmark::build)
                    .reads(&["events", "query", "rate"])
                    .queries(&nexmark::QUERIES),
            )
            .register(
                JobSpec::new("operators", ops::ABOUT, ops::build)
                    .reads(&["events", "query"])
                    .params(ops::PARAMS),
            )
    }

    /// Adds a job.
    pub fn register(mut self, job: JobSpec) -> Self {
        self.jobs.push(job);
        self
    }

    /// Adds a job that has not said which options it reads (see [`JobSpec::reads`]).
    pub fn job(self, name: &str, about: &str, build: BuildFn) -> Self {
        self.register(JobSpec::new(name, about, build))
    }

    /// Adds a job that bundles several queries, chosen with `--query`.
    pub fn job_with_queries(
        self,
        name: &str,
        about: &str,
        build: BuildFn,
        queries: &'static [&'static str],
    ) -> Self {
        self.register(JobSpec::new(name, about, build).queries(queries))
    }

    /// All jobs, in registration order.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    /// The job called `name`, or an error listing the ones that exist.
    pub fn get(&self, name: &str) -> anyhow::Result<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::Error::new(UsageError(format!(
                "no job called `{name}`; the jobs are: {} (see `weir jobs`)",
                names.join(", ")
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_real_options_and_every_option_has_a_reader() {
        let names = crate::options::option_names();
        let bundled = Registry::bundled();
        let mut read: Vec<&str> = EVERY_JOB_READS.to_vec();
        for job in bundled.jobs() {
            read.extend(job.reads.iter().flatten());
        }
        for name in &read {
            assert!(names.iter().any(|n| n == name), "--{name} is no option");
        }
        // A new option must be added to the table of the jobs that read it.
        for name in &names {
            assert!(read.contains(&name.as_str()), "no job reads --{name}");
        }
    }

    #[test]
    fn only_a_job_that_declared_what_it_reads_refuses_the_rest() -> anyhow::Result<()> {
        let build: BuildFn = |_| Ok(weir_engine::Job::new("j"));
        let given = ["window".to_string(), "parallelism".to_string()];
        JobSpec::new("j", "", build).check_options(&given)?;
        JobSpec::new("j", "", build)
            .reads(&["window"])
            .check_options(&given)?;
        let refused = JobSpec::new("j", "", build)
            .reads(&[])
            .check_options(&given);
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.starts_with("`--window` is not an option of job `j`: it reads none of its own"),
            "{message}"
        );
        let typo = JobSpec::new("j", "", build)
            .reads(&["windwo"])
            .check_options(&[]);
        assert!(typo.is_err_and(|e| e.to_string().contains("--windwo, which is no option")));
        Ok(())
    }
}
