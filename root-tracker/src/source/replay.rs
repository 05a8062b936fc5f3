//! A source fed by the caller instead of the kernel: everything after the kernel (reconciler,
//! index, tracker loop, server) runs in tests without privileges, as fact's replay does.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use super::{Interest, Source, SourceError, SourceStats};
use crate::hint::Hint;

pub struct ReplaySource {
    hints: Receiver<Hint>,
    interest: std::sync::Arc<std::sync::Mutex<Interest>>,
    stats: SourceStats,
}

/// The feeding end, and a view of the interest the tracker last set.
#[derive(Clone)]
pub struct ReplayFeed {
    pub hints: Sender<Hint>,
    pub interest: std::sync::Arc<std::sync::Mutex<Interest>>,
}

impl ReplaySource {
    pub fn new() -> (Self, ReplayFeed) {
        let (sender, receiver) = channel();
        let interest = std::sync::Arc::new(std::sync::Mutex::new(Interest::default()));
        (
            Self {
                hints: receiver,
                interest: interest.clone(),
                stats: SourceStats::default(),
            },
            ReplayFeed {
                hints: sender,
                interest,
            },
        )
    }
}

impl Source for ReplaySource {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn set_interest(&mut self, interest: &Interest) -> Result<(), SourceError> {
        if let Ok(mut current) = self.interest.lock() {
            *current = interest.clone();
        }
        Ok(())
    }

    /// `wake` is not watched: a test's request waits up to `timeout` (the channel has no fd).
    fn poll(
        &mut self,
        timeout: Duration,
        _wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<(), SourceError> {
        match self.hints.recv_timeout(timeout) {
            Ok(hint) => out.push(hint),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(()),
        }
        self.stats.events += 1;
        self.fence(Instant::now(), out)
    }

    /// Everything sent before this call is in the channel: drain it.
    fn fence(&mut self, _deadline: Instant, out: &mut Vec<Hint>) -> Result<(), SourceError> {
        while let Ok(hint) = self.hints.try_recv() {
            self.stats.events += 1;
            out.push(hint);
        }
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }
}
