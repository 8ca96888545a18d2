//! `weir new NAME` makes a crate that builds against weir's own dependencies (its
//! Cargo.lock, release profile and build directory): building it compiles neither RocksDB
//! nor librdkafka again, and its job runs. Its Cargo.toml is the README's.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

#[test]
fn a_new_crate_builds_without_compiling_weirs_dependencies_again_and_runs() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("my-job");
    let created = Command::new(WEIR)
        .args(["new", "my-job", "--dir"])
        .arg(&dir)
        .output()?;
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(stderr.contains("weir: created crate `my-job`"), "{stderr}");
    // The example's source, weir's lock; a second `new` into it is refused.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("examples/custom-job/src/main.rs"))?;
    assert_eq!(std::fs::read_to_string(dir.join("src/main.rs"))?, example);
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))?;
    assert_eq!(std::fs::read_to_string(dir.join("Cargo.lock"))?, lock);
    let again = Command::new(WEIR)
        .args(["new", "my-job", "--dir"])
        .arg(&dir)
        .output()?;
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let bad = Command::new(WEIR).args(["new", "my job"]).output()?;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // The README shows the manifest it writes (weir's path written /path/to/weir).
    // Canonical: `absolute` would keep the `jobs/..` of `root`.
    let weir_dir = root.canonicalize()?;
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    let shown = manifest.replace(&weir_dir.display().to_string(), "/path/to/weir");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    assert!(
        readme.contains(&format!("```toml\n{shown}```\n")),
        "the README does not show the Cargo.toml `weir new` writes:\n{shown}"
    );

    // It builds into weir's build directory, where this test's weir is.
    let target = Path::new(WEIR)
        .parent()
        .and_then(Path::parent)
        .ok_or("no build directory")?;
    let config = std::fs::read_to_string(dir.join(".cargo/config.toml"))?;
    assert!(
        config.contains(&format!("target-dir = \"{}\"", target.display())),
        "{config}"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = Instant::now();
    let build = Command::new(cargo)
        .args(["build", "--release", "--offline"])
        .current_dir(&dir)
        // The crate's own .cargo/config.toml says where to build.
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_TERM_COLOR", "never")
        .output()?;
    let seconds = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "{log}");
    let compiled: Vec<&str> = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .collect();
    eprintln!("weir new: the crate built in {seconds:.0} s, compiling {compiled:?}");
    for dependency in [
        "librocksdb-sys",
        "rdkafka-sys",
        "rocksdb",
        "tokio",
        "clap",
        "serde",
    ] {
        assert!(
            !compiled
                .iter()
                .any(|c| c.starts_with(&format!("{dependency} "))),
            "{dependency} was compiled again: {compiled:?}"
        );
    }
    assert!(compiled.iter().any(|c| c.starts_with("my-job ")), "{log}");

    // Its job runs: the alerts of a small input.
    let input = dir.join("views.jsonl");
    let views: Vec<String> = (0..100i64)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"page\":\"/p{}\",\"dwell_ms\":{}}}",
                i * 1000,
                i % 3,
                i * 10
            )
        })
        .collect();
    std::fs::write(&input, views.join("\n") + "\n")?;
    let run = Command::new(target.join("release/my-job"))
        .args([
            "run",
            "page-dwell",
            "--metrics-addr",
            "off",
            "--quiet",
            "--input",
        ])
        .arg(&input)
        .args([
            "--output",
            "dwell=dwell.jsonl",
            "--output",
            "alerts=alerts.jsonl",
        ])
        .args(["--long-view-ms", "900"])
        .current_dir(&dir)
        .output()?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let alerts = std::fs::read_to_string(dir.join("alerts.jsonl"))?;
    // dwell_ms 900, 910, .., 990.
    assert_eq!(alerts.lines().count(), 10, "{alerts}");
    assert!(
        std::fs::read_to_string(dir.join("dwell.jsonl"))?
            .lines()
            .count()
            > 3
    );
    Ok(())
}
