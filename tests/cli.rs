//! The `weir` command line itself: listing, its version, and clear errors for bad input
//! (`weir describe` has tests/describe.rs).

use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weir(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output()
}

#[test]
fn jobs_lists_the_bundled_jobs() -> TestResult {
    let out = weir(&["jobs"])?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "window-agg",
            "order-analytics",
            "saga-monitor",
            "account-balances",
            "nexmark",
            "operators"
        ]
    );
    Ok(())
}

#[test]
fn version_names_weir() -> TestResult {
    let out = weir(&["--version"])?;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("weir {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[test]
fn mistakes_get_one_clear_message_and_a_failing_exit_code() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.jsonl");
    let missing = missing.to_str().ok_or("path")?;
    // Usage errors (how weir was called) exit with 2, as the option parser's own do;
    // failures while running (an input that cannot be opened) with 1.
    let cases: [(&[&str], &str, i32); 7] = [
        (
            &["run", "window-agg", "--metrics-addr", "off"],
            "needs an input: pass --input FILE",
            2,
        ),
        (
            &[
                "run",
                "window-agg",
                "--metrics-addr",
                "off",
                "--input",
                missing,
            ],
            "nope.jsonl",
            1,
        ),
        (
            &["run", "no-such-job"],
            "the jobs are: window-agg, order-analytics",
            2,
        ),
        (
            &["run", "window-agg", "--window", "hop:10s"],
            "hop:SIZE/SLIDE",
            2,
        ),
        (
            &["run", "window-agg", "--window", "tumble:1m30s"],
            "invalid duration `1m30s`: expected a whole number with a unit",
            2,
        ),
        (
            &[
                "run",
                "window-agg",
                "--input",
                missing,
                "--parallelism",
                "0",
                "--metrics-addr",
                "off",
            ],
            "parallelism 0 is out of range",
            2,
        ),
        // Checkpoints that cannot work are refused before the input is opened.
        (
            &[
                "run",
                "window-agg",
                "--input",
                missing,
                "--metrics-addr",
                "off",
                "--checkpoint-interval",
                "1s",
            ],
            "--checkpoint-interval needs --state-dir DIR",
            2,
        ),
    ];
    for (args, expected, code) in cases {
        let out = weir(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn csv_header_without_the_needed_column_fails_with_the_columns_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("e.csv");
    std::fs::write(&input, "time,key,value\n1,a,2\n")?;
    let out = weir(&[
        "run",
        "window-agg",
        "--metrics-addr",
        "off",
        "--input",
        input.to_str().ok_or("path")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 1: no column `ts` in the CSV header (columns: time, key, value)"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn state_dir_keeps_everything_but_its_own_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("e.jsonl");
    std::fs::write(&input, "{\"ts\":1,\"key\":\"a\",\"value\":2}\n")?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("precious.txt"), "keep me")?;
    for _ in 0..2 {
        let out = weir(&[
            "run",
            "window-agg",
            "--metrics-addr",
            "off",
            "--input",
            input.to_str().ok_or("path")?,
            "--output",
            dir.path().join("o.jsonl").to_str().ok_or("path")?,
            "--state-dir",
            state.to_str().ok_or("path")?,
        ])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_to_string(state.join("precious.txt"))?,
        "keep me"
    );
    assert!(
        state.join("window-agg/rocksdb/window-0/CURRENT").exists(),
        "each keyed instance's database lives in the job's own subdirectory"
    );
    Ok(())
}

/// `weir run window-agg` in `dir` with `args`, metrics off.
fn run_in(dir: &std::path::Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "window-agg", "--metrics-addr", "off"])
        .args(args)
        .current_dir(dir)
        .output()
}

#[test]
fn an_output_that_is_the_input_is_refused_before_anything_is_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = "{\"ts\":1,\"key\":\"a\",\"value\":2}\n";
    std::fs::create_dir(dir.path().join("sub"))?;
    std::fs::write(dir.path().join("in.jsonl"), input)?;
    for (args, says) in [
        (
            &["--input", "in.jsonl", "--output", "./sub/../in.jsonl"][..],
            "--output",
        ),
        (
            &["--input", "in.jsonl", "--late-output", "in.jsonl"][..],
            "--late-output",
        ),
        (
            &[
                "--input",
                "in.jsonl",
                "--output",
                "out.jsonl",
                "--late-output",
                "out.jsonl",
            ][..],
            "--late-output and --output are the same file",
        ),
    ] {
        let out = run_in(dir.path(), args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("in.jsonl"))?,
            input,
            "{args:?} touched the input"
        );
    }
    Ok(())
}

#[test]
fn an_output_scheme_weir_does_not_know_is_refused_not_taken_as_a_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"key\":\"a\",\"value\":2}\n",
    )?;
    let out = run_in(
        dir.path(),
        &[
            "--input",
            "in.jsonl",
            "--output",
            "mysql://u@h:3306/db?table=t",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("weir has no `mysql` output") && stderr.contains("kafka://"),
        "{stderr}"
    );
    assert_eq!(
        files_in(dir.path())?,
        ["in.jsonl"],
        "nothing may be created for it"
    );
    Ok(())
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_not_a_dead_letter() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("in.jsonl"),
        "\u{feff}{\"ts\":1,\"key\":\"a\",\"value\":2}\n{\"ts\":2,\"key\":\"a\",\"value\":3}\n",
    )?;
    let out = run_in(
        dir.path(),
        &["--input", "in.jsonl", "--output", "out.jsonl", "--quiet"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 dead letters"), "{stderr}");
    let rows = std::fs::read_to_string(dir.path().join("out.jsonl"))?;
    assert!(rows.contains("\"count\":2,\"sum\":5"), "{rows}");
    Ok(())
}

#[test]
fn a_taken_default_metrics_port_falls_back_to_a_free_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"key\":\"a\",\"value\":2}\n",
    )?;
    // The default port, held by this test (waiting for another holder to let go).
    let started = std::time::Instant::now();
    let _held = loop {
        match std::net::TcpListener::bind("127.0.0.1:9898") {
            Ok(listener) => break listener,
            Err(e) if started.elapsed() > std::time::Duration::from_secs(30) => {
                return Err(e.into())
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "run",
            "window-agg",
            "--input",
            "in.jsonl",
            "--output",
            "null:",
        ])
        .current_dir(dir.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:9898 is in use")
            && stderr.contains("metrics at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("metrics at http://127.0.0.1:9898/"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_run_quietly() -> TestResult {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    let gen = weir(&[
        "gen",
        "events",
        "--events",
        "200000",
        "--output",
        input.to_str().ok_or("path")?,
    ])?;
    assert!(gen.status.success());
    // As `weir run .. 2>&1 | head -1`: both outputs into one pipe, closed after a line.
    let (reader, writer) = std::io::pipe()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "window-agg", "--metrics-addr", "off", "--input"])
        .arg(&input)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()?;
    let mut first = String::new();
    std::io::BufReader::new(reader).read_line(&mut first)?;
    assert!(!first.is_empty());
    let status = child.wait()?;
    assert_eq!(
        status.code(),
        Some(141),
        "a closed pipe must end weir quietly (128 + SIGPIPE), not panic (101) or fail (1)"
    );
    Ok(())
}

#[test]
fn an_output_below_a_file_is_refused_naming_the_file_not_the_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"key\":\"a\",\"value\":2}\n",
    )?;
    std::fs::write(dir.path().join("afile"), "x")?;
    let out = run_in(
        dir.path(),
        &["--input", "in.jsonl", "--output", "afile/out.jsonl"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("afile is a file, not a directory") && !stderr.contains("source"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn resuming_into_another_output_directory_says_so() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events: String = (0..200)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"key\":\"k{}\",\"value\":1}}\n",
                i * 100,
                i % 3
            )
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), events)?;
    let checkpointed = |output: &str| {
        run_in(
            dir.path(),
            &[
                "--input",
                "in.jsonl",
                "--output",
                output,
                "--state-dir",
                "state",
                "--checkpoint-interval",
                "1s",
                "--quiet",
            ],
        )
    };
    let first = checkpointed("out1")?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = checkpointed("out2")?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("out2 does not hold part")
            && stderr.contains("resume with the --output of the run that took the checkpoint")
            && !stderr.contains("disk is full")
            && !stderr.contains("disk full"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn with_output_to_stdout_the_run_says_where_dead_letters_go() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"ts\":1,\"key\":\"a\",\"value\":2}\nnot json\n",
    )?;
    let out = run_in(dir.path(), &["--input", "in.jsonl", "--output", "stdout:"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("records that cannot be read go to window-agg.dead.jsonl"),
        "{stderr}"
    );
    assert!(dir.path().join("window-agg.dead.jsonl").exists());
    Ok(())
}

#[test]
fn options_a_job_does_not_read_are_refused_naming_the_option_and_the_job() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("sagas.jsonl"),
        "{\"order_id\":\"o1\",\"type\":\"OrderPlaced\",\"ts\":1}\n",
    )?;
    let saga = ["run", "saga-monitor", "--input", "sagas.jsonl"];
    let cases: [(Vec<&str>, &str); 6] = [
        (
            [&saga[..], &["--window", "tumble:5s"]].concat(),
            "`--window` is not an option of job `saga-monitor`: it reads --input, --format, \
             --follow, --max-line, --split-bytes, --max-future, --watermark-delay, --param, besides the \
             options of every job",
        ),
        (
            [&saga[..], &["--top", "3", "--queryable", "t"]].concat(),
            "are not options of job `saga-monitor`",
        ),
        // The same for `describe` and `bench`, and for jobs that generate their input.
        (
            vec!["describe", "order-analytics", "--param", "x=1"],
            "`--param` is not an option of job `order-analytics`",
        ),
        (
            vec!["bench", "nexmark", "--input", "sagas.jsonl"],
            "`--input` is not an option of job `nexmark`: it reads --events, --query, --rate,",
        ),
        (
            vec!["run", "operators", "--follow"],
            "`--follow` is not an option of job `operators`",
        ),
        (
            vec!["run", "account-balances", "--events", "5", "--rate", "1"],
            "`--events` and `--rate` are not options of job `account-balances`",
        ),
    ];
    for (args, says) in &cases {
        let out = weir_in(dir.path(), args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?}: expected `{says}` in: {stderr}"
        );
    }
    assert_eq!(
        files_in(dir.path())?,
        ["sagas.jsonl"],
        "a refused run must not start"
    );

    // What the job reads, and the options of every job, are taken; so are defaults
    // (saga-monitor has a `--window` default it never reads, as every job).
    let taken = [
        &saga[..],
        &["--watermark-delay", "1s", "--param", "deadline=5s"],
        &[
            "--parallelism",
            "2",
            "--state",
            "memory",
            "--output",
            "out.jsonl",
        ],
        &["--metrics-addr", "off", "--quiet"],
    ]
    .concat();
    let out = weir_in(dir.path(), &taken)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{taken:?}: {stderr}");
    assert!(dir.path().join("out.jsonl").exists());
    Ok(())
}

/// `weir ARGS` run in `dir`.
fn weir_in(dir: &std::path::Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        .output()
}

/// The names of the files in `dir`, sorted.
fn files_in(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}
