//! What each partition's task is given: the checks on a run per partition's options, and
//! each task's own options (its partition of the input, its state directory, its outputs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use weir_connectors::kafka::encode_param_value;
use weir_connectors::KafkaSpec;

use crate::options::{split_named_output, usage, JobOptions};

/// The Kafka input if it asks for one task per partition.
pub fn kafka_input(options: &JobOptions) -> Option<KafkaSpec> {
    let uri = options.input.as_deref()?.to_str()?;
    KafkaSpec::parse(uri)?
        .ok()
        .filter(|spec| spec.per_partition_tasks)
}

/// The state directory; refuses what a job run per partition cannot do.
pub(super) fn check_options(options: &JobOptions, input: &KafkaSpec) -> anyhow::Result<PathBuf> {
    let (Some(dir), Some(_)) = (&options.state_dir, options.checkpoint_interval) else {
        usage!(
            "tasks=per-partition keeps each partition's state in checkpoints under a directory \
             every process of the group can read: pass --state-dir DIR and \
             --checkpoint-interval D"
        );
    };
    if options.from_savepoint.is_some() || options.replay_from.is_some() {
        usage!(
            "tasks=per-partition resumes each partition from its own newest checkpoint: \
             --from-savepoint and --replay-from are not supported with it"
        );
    }
    if options
        .outputs
        .iter()
        .any(|o| o.contains("tcp://") && o.contains("mode=listen"))
    {
        usage!(
            "tasks=per-partition runs a sink per partition, and they cannot all listen on one \
             address: use a file, Kafka or tcp:// client output"
        );
    }
    // A revoked partition's task stops before the member gives the partition up only with
    // the classic, eager protocol (see `GroupMember`).
    let eager = input.properties.iter().all(|(k, v)| {
        !(k == "partition.assignment.strategy" && v.contains("cooperative")
            || k == "group.protocol" && v != "classic")
    });
    if !eager {
        usage!(
            "tasks=per-partition needs the classic group protocol with an eager assignor \
             (range or roundrobin): drop group.protocol / the cooperative \
             partition.assignment.strategy from --input"
        );
    }
    Ok(dir.clone())
}

/// `DIR/partition-P`: partition `P`'s state, checkpoints and (for non-file outputs) dead
/// letters.
pub(super) fn task_dir(state_dir: &Path, partition: i32) -> PathBuf {
    state_dir.join(format!("partition-{partition}"))
}

/// The options of partition `partition`'s task: the input reads that partition alone,
/// state and checkpoints live in `DIR/partition-P`, and outputs are the task's own.
pub(super) fn task_options(
    options: &JobOptions,
    state_dir: &Path,
    partition: i32,
) -> anyhow::Result<JobOptions> {
    let own = format!("partition-{partition}");
    let task_dir = task_dir(state_dir, partition);
    std::fs::create_dir_all(&task_dir)
        .with_context(|| format!("cannot create {} (check --state-dir)", task_dir.display()))?;
    let input = options
        .input
        .as_deref()
        .and_then(Path::to_str)
        .unwrap_or_default();
    let input = with_param(
        &with_param(input, "tasks", None),
        "partitions",
        Some(&partition.to_string()),
    );
    // Dead letters go beside a file output (as without tasks), else in the task's directory.
    let mut dead_letter_file = Some(task_dir.join("dead-letters.jsonl"));
    let mut outputs = Vec::with_capacity(options.outputs.len());
    for given in &options.outputs {
        let (name, uri) = match split_named_output(given) {
            Some((name, uri)) => (Some(name), uri),
            None => (None, given.as_str()),
        };
        let own_uri = match KafkaSpec::parse(uri) {
            _ if uri.ends_with(':') || uri == "-" || uri.starts_with("tcp://") => uri.to_string(),
            Some(spec) => {
                let spec = spec.map_err(|e| anyhow!("--output {e}"))?;
                let id = format!("{}.{partition}", spec.transactional_id());
                with_param(uri, "transactional.id", Some(&id))
            }
            None => {
                dead_letter_file = None;
                let dir = Path::new(uri.strip_prefix("file://").unwrap_or(uri)).join(&own);
                dir.to_string_lossy().into_owned()
            }
        };
        outputs.push(match name {
            Some(name) => format!("{name}={own_uri}"),
            None => own_uri,
        });
    }
    Ok(JobOptions {
        input: Some(PathBuf::from(input)),
        outputs,
        state_dir: Some(task_dir),
        late_output: options.late_output.as_ref().map(|p| p.join(&own)),
        dead_letter_file,
        ..options.clone()
    })
}

/// `uri` with query parameter `key` set to `value` (replacing it), or removed (`None`).
fn with_param(uri: &str, key: &str, value: Option<&str>) -> String {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .map(str::to_string)
        .collect();
    if let Some(value) = value {
        // The URI's parser percent-decodes values (a transactional id made of a group's
        // name may hold any character).
        pairs.push(format!("{key}={}", encode_param_value(value)));
    }
    if pairs.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", pairs.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_replaced_added_or_removed() {
        let uri = "kafka://b:1/t?group=g&tasks=per-partition&until=end";
        assert_eq!(
            with_param(&with_param(uri, "tasks", None), "partitions", Some("3")),
            "kafka://b:1/t?group=g&until=end&partitions=3"
        );
        assert_eq!(
            with_param("kafka://b:1/t?tasks=x", "tasks", None),
            "kafka://b:1/t"
        );
        assert_eq!(
            with_param(
                "kafka://b:1/o?transactional.id=a",
                "transactional.id",
                Some("a.2")
            ),
            "kafka://b:1/o?transactional.id=a.2"
        );
    }

    #[test]
    fn refuses_what_partition_tasks_cannot_do_and_says_why() {
        let input = "kafka://b:1/t?tasks=per-partition";
        let state = ["--state-dir", "st", "--checkpoint-interval", "1s"];
        for (args, says) in [
            (vec!["--input", input], "pass --state-dir DIR"),
            (
                [
                    &["--input", input][..],
                    &state,
                    &["--replay-from", "beginning"],
                ]
                .concat(),
                "--replay-from are not supported",
            ),
            (
                [
                    &["--input", input][..],
                    &state,
                    &["--output", "tcp://127.0.0.1:1?mode=listen"],
                ]
                .concat(),
                "cannot all listen",
            ),
            (
                [
                    &[
                        "--input",
                        &format!("{input}&partition.assignment.strategy=cooperative-sticky"),
                    ][..],
                    &state,
                ]
                .concat(),
                "eager assignor",
            ),
        ] {
            let options = JobOptions::from_args(&args).expect("parses");
            let spec = kafka_input(&options).expect("a task input");
            let err = check_options(&options, &spec).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn each_task_has_its_own_input_state_and_outputs() {
        let options = JobOptions::from_args([
            "--input",
            "kafka://b:1/events?group=g&tasks=per-partition",
            "--output",
            "out",
            "--late-output",
            "late",
            "--state-dir",
            "/nonexistent-weir-test/st",
            "--checkpoint-interval",
            "1s",
        ])
        .expect("valid options");
        let dir = std::env::temp_dir().join(format!("weir-task-options-{}", std::process::id()));
        let task = task_options(&options, &dir, 2).expect("task options");
        assert_eq!(
            task.input.as_deref(),
            Some(Path::new("kafka://b:1/events?group=g&partitions=2"))
        );
        assert_eq!(task.output(), Some("out/partition-2"));
        assert_eq!(
            task.late_output.as_deref(),
            Some(Path::new("late/partition-2"))
        );
        assert_eq!(task.state_dir, Some(dir.join("partition-2")));
        assert_eq!(
            task.dead_letter_path("j"),
            PathBuf::from("out/partition-2.dead.jsonl")
        );

        let to_kafka = JobOptions {
            outputs: vec!["kafka://b:1/results".into()],
            ..options
        };
        let task = task_options(&to_kafka, &dir, 3).expect("task options");
        assert_eq!(
            task.output(),
            Some("kafka://b:1/results?transactional.id=weir.weir.results.3")
        );
        assert_eq!(
            task.dead_letter_path("j"),
            dir.join("partition-3").join("dead-letters.jsonl")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
