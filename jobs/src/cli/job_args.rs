//! What `weir run JOB` (and `describe`, `bench`) takes for one job: the job's own options
//! ([`JobSpec::args`]) added to the command line for that job only, and its `--help` showing
//! what the job reads (its own options, its `--param` keys) without the options of weir
//! it does not read.
//!
//! The job is known only once its name is read, and the options must be there before clap
//! parses: so the name is found in the raw arguments first, with the command's own
//! definitions telling which options take a value.

use std::any::Any;
use std::ffi::OsString;
use std::sync::Arc;

use anyhow::bail;
use clap::{ArgMatches, Args, Command};

use crate::options::JobOptions;
use crate::registry::{JobSpec, Registry, EVERY_JOB_READS};

/// The subcommands that take a job and its options.
const JOB_COMMANDS: [&str; 3] = ["run", "describe", "bench"];

/// `cli` with the options of the job named in `argv` (if it names one of `registry`) added
/// to its subcommand. An error if the job's own options clash with weir's: a mistake in
/// the job, not in how it was called.
pub(super) fn for_job_in_args(
    cli: Command,
    registry: &Registry,
    argv: &[OsString],
) -> anyhow::Result<Command> {
    let Some(sub) = argv
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| JOB_COMMANDS.contains(a))
    else {
        return Ok(cli);
    };
    let Some(command) = cli.find_subcommand(sub) else {
        return Ok(cli);
    };
    let Some(spec) = job_named(command, registry, &argv[2..]) else {
        return Ok(cli);
    };
    refuse_clashes(command, spec)?;
    Ok(cli.mut_subcommand(sub, |command| with_job(command, spec)))
}

/// The first argument in `args` that is no option nor an option's value and names a job.
fn job_named<'r>(
    command: &Command,
    registry: &'r Registry,
    args: &[OsString],
) -> Option<&'r JobSpec> {
    let mut rest = args.iter().filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        let candidate = match arg.strip_prefix("--") {
            Some("") => rest.next()?,
            Some(long) if !long.contains('=') => {
                let takes_value = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(long))
                    .is_some_and(|a| a.get_action().takes_values());
                if takes_value {
                    rest.next();
                }
                continue;
            }
            Some(_) => continue,
            None if arg.starts_with('-') => continue,
            None => arg,
        };
        if let Ok(spec) = registry.get(candidate) {
            return Some(spec);
        }
    }
    None
}

/// Refuses a job whose own options have the name (or the id) of one of `command`'s.
fn refuse_clashes(command: &Command, spec: &JobSpec) -> anyhow::Result<()> {
    let Some(args) = &spec.args else {
        return Ok(());
    };
    for (id, long) in args.names() {
        let clash = command.get_arguments().find(|a| {
            a.get_id().as_str() == id || (long.is_some() && a.get_long() == long.as_deref())
        });
        if let Some(clash) = clash {
            let name = clash.get_long().unwrap_or(clash.get_id().as_str());
            bail!(
                "job `{}` declares an option `{id}` ({}) that clashes with weir's own --{name}: \
                 rename it (`#[arg(long = \"..\")]` for the flag, the field for the id)",
                spec.name,
                args.type_name
            );
        }
    }
    Ok(())
}

/// `command` for `spec`: the options of [`JobOptions`] the job does not read hidden from
/// its help, its own options added, its `--param` keys listed after the options.
fn with_job(mut command: Command, spec: &JobSpec) -> Command {
    if let Some(reads) = &spec.reads {
        let options = JobOptions::augment_args(Command::new("options"));
        for arg in options.get_arguments() {
            let read = arg
                .get_long()
                .is_some_and(|l| EVERY_JOB_READS.contains(&l) || reads.contains(&l));
            if !read {
                command = command.mut_arg(arg.get_id(), |a| a.hide(true));
            }
        }
    }
    command = command.before_help(format!("job `{}`: {}", spec.name, spec.about));
    if let Some(args) = &spec.args {
        command = (args.augment)(command.next_help_heading("Options of the job"));
    }
    if let Some(params) = spec.params.as_ref().filter(|p| !p.is_empty()) {
        // Not aligned: padding the key would split `KEY=VALUE`.
        let lines: Vec<String> = params
            .iter()
            .map(|(key, what)| format!("  --param {key}={what}"))
            .collect();
        command = command.after_help(format!(
            "Params of the job (--param KEY=VALUE):\n{}",
            lines.join("\n")
        ));
    }
    command
}

/// The job's own options from the matches of its subcommand, if it declared any.
pub(super) fn parse(
    registry: &Registry,
    matches: &ArgMatches,
) -> Result<Option<Arc<dyn Any + Send + Sync>>, clap::Error> {
    let Some(job) = matches.try_get_one::<String>("job").ok().flatten() else {
        return Ok(None);
    };
    match registry.get(job).ok().and_then(|spec| spec.args.as_ref()) {
        Some(args) => (args.parse)(matches).map(Some),
        None => Ok(None),
    }
}
