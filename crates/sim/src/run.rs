//! One run with a progress bar on stderr (drawn only on a terminal), as the
//! command line and the study run the simulator.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::SimConfig;
use crate::engine::{Progress, Simulation};
use crate::stats::Report;
use crate::SimError;

/// One run with a progress bar on stderr (drawn only on a terminal).
pub fn run_with_progress(cfg: SimConfig) -> Result<Report, SimError> {
    run_until(cfg, |_| true)
}

/// One run with a progress bar, stopped early when `keep_going` says so.
pub fn run_until(
    cfg: SimConfig,
    mut keep_going: impl FnMut(&Progress) -> bool,
) -> Result<Report, SimError> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} simulated {msg} [{bar:40}] {percent}% eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = Simulation::run_threads(cfg, &mut |p| {
        bar.set_position(p.now_us.saturating_mul(1000) / p.end_us.max(1));
        bar.set_message(format!("{:.0} s", p.now_us as f64 / 1e6));
        keep_going(p)
    });
    bar.finish_and_clear();
    report
}
