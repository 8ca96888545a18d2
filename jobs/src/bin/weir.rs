//! The `weir` binary: the CLI with the bundled jobs.

/// mimalloc instead of the system allocator: events own their strings, so a job allocates
/// and frees per event; with glibc's malloc that was about a third of the Nexmark profile
/// (see BENCHMARKS.md, "Nexmark").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir_jobs::cli::main(weir_jobs::registry::Registry::bundled())
}
