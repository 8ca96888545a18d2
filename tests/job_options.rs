//! What `weir run JOB` takes for one job: its `--help` lists the options that job reads
//! (and its `--param` keys), not those it does not, and a `--param` key it does not know
//! is refused naming the ones it does (the custom job's typed options are tested in
//! tests/custom_job.rs).

use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weir(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output()
}

/// The help of `weir run JOB` (`weir run --help` without a job).
fn help(job: Option<&str>) -> Result<String, Box<dyn std::error::Error>> {
    let out = match job {
        Some(job) => weir(&["run", job, "--help"])?,
        None => weir(&["run", "--help"])?,
    };
    assert!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn a_jobs_help_lists_what_it_reads() -> TestResult {
    let general = help(None)?;
    assert!(general.contains("--window <WINDOW>"), "{general}");
    assert!(general.contains("`weir run JOB --help` lists the options JOB reads"));

    let agg = help(Some("window-agg"))?;
    for wanted in [
        "job `window-agg`:",
        "--window <WINDOW>",
        "--top <TOP>",
        "--input <INPUT>",
        "--output <[NAME=]SPEC>",
        "--metrics-addr",
    ] {
        assert!(agg.contains(wanted), "`{wanted}` not in:\n{agg}");
    }
    // `--query <QUERY>` (the operators benchmark's), not `--queryable`, which it reads.
    assert!(
        !agg.contains("--query <") && !agg.contains("--param"),
        "{agg}"
    );

    let sagas = help(Some("saga-monitor"))?;
    for wanted in [
        "job `saga-monitor`:",
        "Params of the job (--param KEY=VALUE):",
        "--param deadline=DURATION: how long after OrderPlaced",
        "--watermark-delay",
    ] {
        assert!(sagas.contains(wanted), "`{wanted}` not in:\n{sagas}");
    }
    assert!(
        !sagas.contains("--window") && !sagas.contains("--top"),
        "{sagas}"
    );

    let ops = help(Some("operators"))?;
    assert!(ops.contains("--param keys=") && ops.contains("--param generators="));
    Ok(())
}

#[test]
fn param_keys_a_job_does_not_declare_are_refused() -> TestResult {
    for (args, wanted) in [
        (
            ["describe", "saga-monitor", "--param", "dedline=5s"],
            "`--param dedline=..`: job `saga-monitor` has no param `dedline`; its params are \
             deadline= (see `weir run saga-monitor --help`)",
        ),
        (
            ["describe", "operators", "--param", "key=10"],
            "job `operators` has no param `key`; its params are keys=, generators=",
        ),
        (
            ["describe", "window-agg", "--param", "keys=10"],
            "`--param` is not an option of job `window-agg`",
        ),
    ] {
        let out = weir(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    // The keys they declare still work, and are read: a bad value fails the build.
    for args in [
        ["describe", "saga-monitor", "--param", "deadline=5s"],
        ["describe", "operators", "--param", "keys=10"],
    ] {
        let out = weir(&args)?;
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let bad = weir(&["describe", "saga-monitor", "--param", "deadline=soon"])?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("--param deadline=.."),
        "{stderr}"
    );
    Ok(())
}
