//! The README's job example is the real one: its Rust block is
//! examples/custom-job/src/main.rs, which tests/custom_job.rs builds and runs, so the
//! README cannot show code that does not compile or does something else.

use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The body of the first fenced block in `text` that opens with `fence` (e.g. "```rust")
/// and follows `heading`.
fn block_after<'a>(text: &'a str, heading: &str, fence: &str) -> Option<&'a str> {
    let section = &text[text.find(heading)?..];
    let open = section.find(&format!("\n{fence}\n"))? + fence.len() + 2;
    let body = &section[open..];
    Some(&body[..body.find("\n```\n")? + 1])
}

#[test]
fn the_readme_job_example_is_the_example_crate_source() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let example = std::fs::read_to_string(root.join("examples/custom-job/src/main.rs"))?;
    let block = block_after(&readme, "## A job in Rust", "```rust").ok_or("no Rust block")?;
    if block != example {
        let first = block
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or("in length".to_string(), |n| format!("at line {}", n + 1));
        panic!(
            "the README's block under `## A job in Rust` differs from \
             examples/custom-job/src/main.rs {first}: copy the file into the README"
        );
    }
    Ok(())
}
