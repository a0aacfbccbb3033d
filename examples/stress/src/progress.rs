//! The live progress bar. Drawn on stderr, and only when stderr is a
//! terminal, so stdout stays clean for the report (or its JSON) and logs and
//! pipes get no escape codes. Workers bump two relaxed counters; the bar
//! reads them on a timer.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

/// Requests completed so far, shared by the workers and the bar.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    done: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// Counts one completed request.
    pub(crate) fn record(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the bar measures progress against.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Completed requests out of this many.
    Requests(u64),
    /// Elapsed milliseconds out of this many.
    Millis(u64),
}

/// A progress bar on stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    goal: Goal,
    start: Instant,
}

impl Progress {
    /// A bar for a run of `requests` requests or `duration`, or `None` if
    /// stderr is not a terminal.
    pub(crate) fn start(requests: Option<u64>, duration: Option<Duration>) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let goal = match (requests, duration) {
            (Some(requests), _) => Goal::Requests(requests),
            (None, Some(duration)) => {
                Goal::Millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
            }
            (None, None) => Goal::Requests(0),
        };
        let template = match goal {
            Goal::Requests(_) => "{elapsed:>4} [{wide_bar}] {pos}/{len} {msg}",
            Goal::Millis(_) => "{elapsed:>4} [{wide_bar}] {msg}",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let length = match goal {
            Goal::Requests(n) | Goal::Millis(n) => n,
        };
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
            .with_style(style);
        Some(Self {
            bar,
            goal,
            start: Instant::now(),
        })
    }

    /// Redraws the bar from the counters.
    pub(crate) fn update(&self, counters: &Counters) {
        let done = counters.done.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        match self.goal {
            Goal::Requests(_) => self.bar.set_position(done),
            Goal::Millis(_) => self
                .bar
                .set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
        }
        // Successful responses only, as in the report: failures (refused
        // connections) come back fast and would inflate the rate.
        #[expect(clippy::cast_precision_loss, reason = "request counts fit in f64")]
        let rate = done.saturating_sub(failed) as f64 / elapsed.as_secs_f64().max(1e-3);
        let mut message = format!("{rate:.0} successful req/s");
        if matches!(self.goal, Goal::Millis(_)) {
            message = format!("{done} requests, {message}");
        }
        if failed > 0 {
            message.push_str(&format!(", {failed} failed"));
        }
        self.bar.set_message(message);
    }

    /// Removes the bar, leaving the terminal to the report.
    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}
