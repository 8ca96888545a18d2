//! The `weir` binary: the CLI with the bundled jobs.

fn main() -> std::process::ExitCode {
    weir_jobs::cli::main(weir_jobs::registry::Registry::bundled())
}
