//! A progress line on a terminal for long collections: store entries examined, paths deleted,
//! bytes freed, redrawn in place at most ten times a second on standard error.
//!
//! Invariant: it only ever writes to standard error, and only when that is a terminal, so
//! printed output (`--print-dead`, `--json`) and logs read by programs never see it.

use std::cell::Cell;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    enabled: bool,
    /// Valid paths in the store, the walk's rough total.
    total: usize,
    examined: Cell<usize>,
    deleted: Cell<usize>,
    freed: Cell<u64>,
    last_drawn: Cell<Option<Instant>>,
}

impl Progress {
    /// Shown only when `wanted` and standard error is a terminal.
    pub fn new(wanted: bool, total: usize) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
            total,
            examined: Cell::new(0),
            deleted: Cell::new(0),
            freed: Cell::new(0),
            last_drawn: Cell::new(None),
        }
    }

    /// One more store entry looked at by the walk.
    pub fn examined(&self) {
        self.examined.set(self.examined.get() + 1);
        self.maybe_draw();
    }

    /// `count` more store entries looked at at once (a listing read ahead).
    pub fn examined_many(&self, count: usize) {
        self.examined.set(self.examined.get() + count);
        self.maybe_draw();
    }

    /// One more entry removed from the store; `freed` is the running total of bytes.
    pub fn deleted(&self, freed: u64) {
        self.deleted.set(self.deleted.get() + 1);
        self.freed.set(freed);
        self.maybe_draw();
    }

    fn maybe_draw(&self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last_drawn
            .get()
            .is_some_and(|last| now.duration_since(last) < REDRAW_EVERY)
        {
            return;
        }
        self.last_drawn.set(Some(now));
        let line = format!(
            "\rstore-gc: examined {}/~{} entries, deleted {} paths, freed {:.1} MiB",
            self.examined.get(),
            self.total,
            self.deleted.get(),
            self.freed.get() as f64 / (1024.0 * 1024.0)
        );
        // A failed write to a terminal is not worth stopping a collection for.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Clears the line, so what follows starts on a clean one.
    pub fn finish(&self) {
        if self.enabled && self.last_drawn.get().is_some() {
            let _ = std::io::stderr().write_all(b"\r\x1b[2K");
        }
    }
}
