//! SIGINT and SIGTERM as a graceful stop of `weir run`, as Flink's `stop`.
//!
//! The first signal calls the stop action ([`weir_engine::JobControl::stop`] on the
//! running job: sources end where they are, a final checkpoint is taken when checkpoints
//! are on, sinks flush and close, temporary state is removed, the summary is printed, and
//! the process exits 0). A second signal ends the process at once with the shell's code for
//! a killed process (130 for SIGINT, 143 for SIGTERM), like the default action would.
//!
//! The signals are received by a thread of signal-hook's self-pipe iterator, not in a
//! signal handler, so the stop action may lock and print. The listener stays for the rest
//! of the process: signal-hook cannot give the default action back, and a process that
//! ignored SIGTERM after its job ended (while it lingers) could not be stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Listens for SIGINT/SIGTERM for the rest of the process.
#[derive(Debug)]
pub(crate) struct StopSignal {
    received: Arc<AtomicBool>,
}

impl StopSignal {
    /// Calls `stop` on the first SIGINT or SIGTERM; exits the process on the second.
    pub(crate) fn listen(stop: impl Fn() + Send + 'static) -> std::io::Result<StopSignal> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let received = Arc::new(AtomicBool::new(false));
        let seen = received.clone();
        std::thread::Builder::new()
            .name("weir-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if seen.swap(true, Ordering::SeqCst) {
                        eprintln!("weir: {name} again: exiting at once");
                        std::process::exit(128 + signal);
                    }
                    eprintln!(
                        "weir: {name}: stopping (sources end, a final checkpoint is taken if \
                         checkpoints are on, outputs are flushed); send it again to exit at once"
                    );
                    stop();
                }
            })?;
        Ok(StopSignal { received })
    }

    /// True once a signal came.
    pub(crate) fn received(&self) -> bool {
        self.received.load(Ordering::SeqCst)
    }
}
