//! A progress bar on stderr for the demo's long steps: redrawn in place on a terminal, one
//! closing line otherwise (so logs and CI output stay readable).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub(super) struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Instant,
    terminal: bool,
}

const WIDTH: u64 = 28;

impl Progress {
    pub(super) fn new(label: &'static str, total: usize) -> Progress {
        let now = Instant::now();
        let progress = Progress {
            label,
            total: total as u64,
            done: 0,
            started: now,
            drawn: now,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw();
        progress
    }

    pub(super) fn advance(&mut self, n: usize) {
        self.done = (self.done + n as u64).min(self.total);
        if self.terminal && self.drawn.elapsed() >= Duration::from_millis(50) {
            self.drawn = Instant::now();
            self.draw();
        }
    }

    fn line(&self) -> String {
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '█' } else { '░' })
            .collect();
        format!(
            "  {:<26} {bar} {:>6}/{:<6} {:>5.1}s",
            self.label,
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        )
    }

    fn draw(&self) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", self.line());
            let _ = err.flush();
        }
    }

    /// Completes the bar and returns how long the step took.
    pub(super) fn finish(mut self) -> Duration {
        self.done = self.total;
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = writeln!(err, "\r{}", self.line());
        } else {
            let _ = writeln!(err, "{}", self.line());
        }
        self.started.elapsed()
    }
}
