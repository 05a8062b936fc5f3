//! The tracker loop: one thread owns the source, the state-tree watch and the reconciler;
//! it applies hints as they come and answers requests the server hands it.
//!
//! Invariants: the source and the state watch are attached before the bootstrap scan
//! (DESIGN.md 4); every answer is fenced (5) and never given while the index is unsettled.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvError, SendError, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::hint::Hint;
use crate::protocol::{ErrorKind, Request, Response};
use crate::reconcile::{ReconcileError, Reconciler, Settled};
use crate::report::{Disclosure, RootKind};
use crate::scan::ScanOptions;
use crate::source::Source;
use crate::state_watch::StateWatch;

/// A request, what its caller may see of the answer, and where to send it.
pub struct Job {
    pub request: Request,
    pub disclosure: Disclosure,
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

/// The sending side, held by the server. Each job also wakes the tracker loop, which would
/// otherwise see it only when its source's wait timed out (up to `poll_interval` late).
#[derive(Clone)]
pub struct JobSender {
    jobs: Sender<Job>,
    wake: Arc<EventFd>,
}

/// The tracker loop's side: jobs, and the eventfd its source's wait watches.
pub struct JobReceiver {
    jobs: Receiver<Job>,
    wake: Arc<EventFd>,
}

/// A channel for jobs whose every send makes [`JobReceiver::wake_fd`] readable.
pub fn job_channel() -> std::io::Result<(JobSender, JobReceiver)> {
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(std::io::Error::from)?;
    let wake = Arc::new(wake);
    let (sender, receiver) = std::sync::mpsc::channel();
    Ok((
        JobSender {
            jobs: sender,
            wake: wake.clone(),
        },
        JobReceiver {
            jobs: receiver,
            wake,
        },
    ))
}

impl JobSender {
    /// Queues `job`, then wakes the loop (in that order: see [`JobReceiver::try_recv`]).
    pub fn send(&self, job: Job) -> Result<(), SendError<Job>> {
        self.jobs.send(job)?;
        // Only EAGAIN (the counter at its maximum: already awake) can fail here.
        let _ = self.wake.write(1);
        Ok(())
    }
}

impl JobReceiver {
    /// Readable while a wake-up is pending; a source's wait returns when it is.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The next queued job. Taking one clears the wake-up (a read of the eventfd per job, none
    /// per pass of an idle or event-busy loop): a job queued before the clear is found by the
    /// caller's next call, which goes on until the queue is empty; one queued after it wakes
    /// the next wait again.
    pub fn try_recv(&self) -> Result<Job, TryRecvError> {
        let job = self.jobs.try_recv()?;
        // EAGAIN: another job's wake-up was cleared already.
        let _ = self.wake.read();
        Ok(job)
    }

    /// Blocks for the next job (stand-ins for the tracker loop in tests and the fuzzer).
    pub fn recv(&self) -> Result<Job, RecvError> {
        self.jobs.recv()
    }
}

#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// How long a query waits for an unsettled index to settle when it does not say.
    pub default_query_wait: Duration,
    /// Upper bound on any query's wait.
    pub max_query_wait: Duration,
    /// How often the index is compared with a fresh scan (`None`: never).
    pub verify_interval: Option<Duration>,
    /// How long the loop waits for hints before looking at requests again.
    pub poll_interval: Duration,
    /// Why this backend was chosen (shown by `status`).
    pub backend_reason: String,
    /// How long to wait after the index becomes unsettled before rescanning on our own (a
    /// query rescans at once). Debounces storms of lost hints; tests use it to observe the
    /// unsettled state.
    pub rescan_delay: Duration,
    /// What the privilege drop kept and enforced (privilege.rs), shown by `status`.
    pub privileges: serde_json::Value,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            default_query_wait: Duration::from_secs(30),
            max_query_wait: Duration::from_secs(300),
            verify_interval: Some(Duration::from_secs(3600)),
            poll_interval: Duration::from_millis(20),
            backend_reason: String::new(),
            rescan_delay: Duration::ZERO,
            privileges: serde_json::Value::Null,
        }
    }
}

pub struct Tracker {
    reconciler: Reconciler,
    source: Box<dyn Source>,
    state_watch: StateWatch,
    jobs: JobReceiver,
    options: TrackerOptions,
    started: SystemTime,
    last_fence: Option<Duration>,
    /// From an operation's completion (kernel time, where the source has it) to the index.
    lag_from_kernel: LagWindow,
    /// From the tracker reading a batch of hints to the index reflecting it.
    lag_from_receipt: LagWindow,
    next_verify: Option<Instant>,
    /// When the index was first seen unsettled since the last rescan.
    unsettled_since: Option<Instant>,
    last_auto_rescan: Option<Instant>,
}

/// Minimum time between two rescans the loop starts on its own.
const AUTO_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

impl Tracker {
    /// `source` and `state_watch` must already be attached: the bootstrap scan runs in `run`.
    pub fn new(
        reconciler: Reconciler,
        source: Box<dyn Source>,
        state_watch: StateWatch,
        jobs: JobReceiver,
        options: TrackerOptions,
    ) -> Self {
        let next_verify = options
            .verify_interval
            .map(|interval| Instant::now() + interval);
        Self {
            reconciler,
            source,
            state_watch,
            jobs,
            options,
            started: SystemTime::now(),
            last_fence: None,
            lag_from_kernel: LagWindow::default(),
            lag_from_receipt: LagWindow::default(),
            next_verify,
            unsettled_since: None,
            last_auto_rescan: None,
        }
    }

    /// Runs until `shutdown` is set or every job sender is gone.
    ///
    /// Errors do not stop it: whatever failed (a full disk under the index, an unreadable
    /// store database) leaves the index unsettled, so queries refuse until a later rescan
    /// succeeds. It fails closed and keeps trying.
    pub fn run(mut self, shutdown: &Arc<AtomicBool>) -> Result<(), ReconcileError> {
        let settled = self.settle();
        self.survive("the bootstrap scan", settled);
        while !shutdown.load(Ordering::Relaxed) {
            self.check_proc_reader();
            let mut hints = Vec::new();
            let polled = self.source.poll(
                self.options.poll_interval,
                Some(self.jobs.wake_fd()),
                &mut hints,
            );
            if let Err(error) = polled {
                hints.push(lost(format!(
                    "{} source failed: {error}",
                    self.source.name()
                )));
            }
            let received = monotonic_ns();
            self.drain_state_watch(&mut hints);
            let applied = self.apply(&hints, received);
            self.survive("applying hints", applied);
            if *self.reconciler.settled() == Settled::Settled {
                self.unsettled_since = None;
            } else {
                let since = *self.unsettled_since.get_or_insert_with(Instant::now);
                // At most one unprompted rescan per AUTO_RESCAN_INTERVAL, so a cause that
                // persists (a filesystem the source cannot watch) costs a rescan a second,
                // not a busy loop. Queries rescan at once.
                let rested = self
                    .last_auto_rescan
                    .is_none_or(|last| last.elapsed() >= AUTO_RESCAN_INTERVAL);
                if since.elapsed() >= self.options.rescan_delay && rested {
                    self.last_auto_rescan = Some(Instant::now());
                    let settled = self.settle();
                    self.survive("a rescan", settled);
                }
            }
            loop {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        let response = match self.handle(job.request, job.disclosure) {
                            Ok(response) => response,
                            Err(error) => {
                                let message = format!("{:#}", anyhow::Error::from(error));
                                self.survive("a request", Err::<(), _>(message.clone()));
                                Response::error(
                                    ErrorKind::Internal,
                                    disclosed_reason(&message, job.disclosure),
                                )
                            }
                        };
                        let _ = job.reply.send(response);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if self.next_verify.is_some_and(|due| Instant::now() >= due) {
                let verified = self.reconciler.verify().map(drop);
                self.check_mounts_after_reading();
                self.survive("a verification sweep", verified);
                self.next_verify = self
                    .options
                    .verify_interval
                    .map(|interval| Instant::now() + interval);
            }
        }
        Ok(())
    }

    /// A /proc reader that died (logged where it is noticed) leaves the index unsettled for
    /// good: without runtime roots no answer may be given, and no new reader can be started.
    fn check_proc_reader(&mut self) {
        if let Some(reason) = crate::proc_reader::failure() {
            self.reconciler
                .unsettle_for_good(format!("the /proc reader is gone ({reason})"));
        }
    }

    /// Logs a failure and makes the index unsettled: after a failed read or write the index
    /// may not hold every root.
    fn survive<E: std::fmt::Display>(&mut self, what: &str, result: Result<(), E>) {
        if let Err(error) = result {
            tracing::error!(%error, "{what} failed");
            self.reconciler.unsettle(format!("{what} failed: {error}"));
        }
    }

    fn drain_state_watch(&mut self, hints: &mut Vec<Hint>) {
        if let Err(error) = self.state_watch.drain(hints) {
            hints.push(lost(format!("state-tree watch failed: {error}")));
        }
    }

    /// Applies a batch of hints read at `received` (`CLOCK_MONOTONIC` ns) and records how long
    /// the changes behind them took to reach the index.
    fn apply(&mut self, hints: &[Hint], received: u64) -> Result<(), ReconcileError> {
        let completed = self.source.take_earliest_completion();
        if hints.is_empty() {
            return Ok(());
        }
        let mounts = self.source.mount_table();
        self.reconciler.apply(hints, mounts.as_ref())?;
        self.check_mounts_after_reading();
        self.push_interest()?;
        let now = monotonic_ns();
        self.lag_from_receipt.record(now.saturating_sub(received));
        if let Some(completed) = completed {
            self.lag_from_kernel.record(now.saturating_sub(completed));
        }
        Ok(())
    }

    /// After the reconciler read the filesystem: if the mount table moved since the source last
    /// read it, that read is repeated with the next mount change (see `mounts`).
    fn check_mounts_after_reading(&mut self) {
        if self.source.mounts_changed_since_table() {
            self.reconciler.read_while_mounts_moved();
        } else {
            self.reconciler.mounts_held_still();
        }
    }

    /// Gives the source the index's current interest, then re-examines every entry that
    /// depends on a path the source did not cover before: "attach first, then scan" (DESIGN.md
    /// invariant 4) for paths that became interesting after the bootstrap. A change made
    /// between our read of such a path and the source starting to watch it is caught by this
    /// second read. Repeats while re-examining finds new paths, a few rounds at most.
    fn push_interest(&mut self) -> Result<(), ReconcileError> {
        for _ in 0..8 {
            if !self.reconciler.take_interest_changed() {
                return Ok(());
            }
            let interest = self.reconciler.index().interest(self.reconciler.layout());
            if let Err(error) = self.source.set_interest(&interest) {
                self.reconciler.unsettle(format!(
                    "cannot update the {} source's filter: {error}",
                    self.source.name()
                ));
                return Ok(());
            }
            let new_paths = self.reconciler.take_new_watched();
            if new_paths.len() * 2 > self.reconciler.index().watched_len() {
                // Most paths are new (after the bootstrap, all are): every entry is read
                // again, in batches, without listing the entries that depend on each path.
                drop(new_paths);
                self.reconciler.recheck_all()?;
            } else {
                let mut entries = BTreeSet::new();
                for path in new_paths {
                    entries.extend(self.reconciler.index().entries_watching(&path));
                }
                if entries.is_empty() {
                    return Ok(());
                }
                self.reconciler.recheck(&entries)?;
            }
            self.check_mounts_after_reading();
        }
        self.reconciler
            .unsettle("the set of watched paths kept changing while it was being watched");
        Ok(())
    }

    /// Rescans and hands the source the new interest. Hints lost during the rescan arrive
    /// later and unsettle the index anew, so callers look at `settled` afterwards.
    fn settle(&mut self) -> Result<(), ReconcileError> {
        self.unsettled_since = None;
        if crate::proc_reader::failure().is_some() {
            // A rescan would settle an index no query may use.
            self.check_proc_reader();
            return Ok(());
        }
        let mounts = self.source.mount_table();
        let rescanned = self.reconciler.rescan(mounts.as_ref());
        if rescanned.is_ok() {
            self.check_mounts_after_reading();
        }
        let rescanned = rescanned.and_then(|()| self.push_interest());
        release_free_memory();
        rescanned
    }

    fn handle(
        &mut self,
        request: Request,
        disclosure: Disclosure,
    ) -> Result<Response, ReconcileError> {
        Ok(match request {
            Request::Status {} => Response::Status {
                status: self.status(disclosure),
            },
            Request::Query { wait_ms } => {
                let wait = wait_ms
                    .map_or(self.options.default_query_wait, Duration::from_millis)
                    .min(self.options.max_query_wait);
                self.query(wait, disclosure)?
            }
        })
    }

    /// The fenced answer: every change that completed before now is applied first.
    fn query(
        &mut self,
        wait: Duration,
        disclosure: Disclosure,
    ) -> Result<Response, ReconcileError> {
        let started = Instant::now();
        let deadline = started + wait;
        // Waiting cannot help: the reader is not coming back (see proc_reader.rs).
        if let Some(reason) = crate::proc_reader::failure() {
            self.check_proc_reader();
            return Ok(Response::error(
                ErrorKind::Internal,
                format!(
                    "the tracker's /proc reader is gone ({}); runtime roots cannot be read, so there is no answer until the tracker is restarted",
                    disclosed_reason(&reason, disclosure)
                ),
            ));
        }
        loop {
            let mut hints = Vec::new();
            let fence_deadline = deadline.max(Instant::now() + Duration::from_millis(100));
            if let Err(error) = self.source.fence(fence_deadline, &mut hints) {
                hints.push(lost(format!(
                    "{} source failed: {error}",
                    self.source.name()
                )));
            }
            let received = monotonic_ns();
            self.drain_state_watch(&mut hints);
            self.apply(&hints, received)?;
            match self.reconciler.settled().clone() {
                Settled::Settled => break,
                Settled::Unsettled { reason } if Instant::now() >= deadline => {
                    return Ok(Response::error(
                        ErrorKind::Unsettled,
                        format!(
                            "the root index is unsettled ({}); not answering rather than guessing",
                            disclosed_reason(&reason, disclosure)
                        ),
                    ));
                }
                Settled::Unsettled { .. } => self.settle()?,
            }
        }
        self.last_fence = Some(started.elapsed());
        let answer = self.reconciler.answer(&ScanOptions::default())?;
        let json = answer.report().disclosed(disclosure).to_json_string();
        drop(answer);
        // What building the answer freed (the findings, the validity lookups): without this
        // the heap keeps the high-water mark of the largest query for the tracker's life.
        release_free_memory();
        match json.and_then(serde_json::value::RawValue::from_string) {
            Ok(report) => Ok(Response::Roots { report }),
            Err(error) => Ok(Response::error(
                ErrorKind::Internal,
                format!("cannot write the answer as JSON: {error}"),
            )),
        }
    }

    /// What `status` shows. A censored caller sees why the index is unsettled only as
    /// `{censored}`: reasons name paths (a link that changed, a directory that moved).
    fn status(&self, disclosure: Disclosure) -> serde_json::Value {
        let index = self.reconciler.index();
        let stats = self.reconciler.stats();
        let seconds = |time: Option<SystemTime>| {
            time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                .map(|since| since.as_secs())
        };
        serde_json::json!({
            "backend": self.source.name(),
            "backend_reason": self.options.backend_reason,
            "settled": match self.reconciler.settled() {
                Settled::Unsettled { reason } => Settled::Unsettled {
                    reason: disclosed_reason(reason, disclosure),
                },
                settled => settled.clone(),
            },
            "generation": index.generation(),
            "roots": {
                "static": index.count(RootKind::Static),
                "indirect": index.count(RootKind::Indirect),
            },
            "watched_paths": index.watched_len(),
            "watched_state_dirs": self.state_watch.watched_dirs(),
            "source": self.source.stats(),
            "source_checks": self.source.checks(),
            "reconciler": stats,
            "last_rescan_unix": seconds(stats.last_rescan),
            "started_unix": seconds(Some(self.started)),
            "last_fence_ms": self.last_fence.map(|fence| fence.as_secs_f64() * 1e3),
            "lag": {
                "from_kernel_event": self.lag_from_kernel.summary(),
                "from_receipt": self.lag_from_receipt.summary(),
            },
            "privileges": self.options.privileges,
            "proc_reader": crate::proc_reader::status(),
            "landlock_check": crate::privilege::landlock_self_check(
                self.options.privileges["proc_reader"]["pid"]
                    .as_u64()
                    .and_then(|pid| u32::try_from(pid).ok()),
            ),
        })
    }
}

/// Tunes glibc's allocator for a long-lived process whose transients are large (a scan's
/// findings, a query's answer of hundreds of MB) and whose lasting data is many small paths.
/// Measured on 100k indirect roots: peak RSS 312 -> 243 MiB, RSS after queries 286 -> 221 MiB.
/// - A fixed mmap threshold: a block of 128 KiB or more is mapped on its own and unmapped when
///   freed. glibc otherwise raises the threshold to the largest block freed (up to 32 MiB), so
///   the answers and vectors of every later query come from the heap and stay resident.
/// - Two arenas: the scan's sixteen threads would each get one (glibc allows eight per core),
///   and an arena never shrinks below what its longest-lived block keeps in use.
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before the tracker starts threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the heap a rescan freed back to the system. glibc keeps freed memory mapped (one
/// arena per scan thread, too), so without this a bootstrap over a million roots would hold
/// gigabytes of transient structures for the tracker's whole life.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, so kernel event times
/// and ours can be subtracted.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(now.tv_nsec()).unwrap_or(0))
    })
}

/// The last [`LagWindow::CAPACITY`] lags (ns) and the largest ever, for `status`.
#[derive(Default)]
struct LagWindow {
    recent: std::collections::VecDeque<u64>,
    samples: u64,
    max: u64,
}

impl LagWindow {
    const CAPACITY: usize = 1024;

    fn record(&mut self, lag_ns: u64) {
        if self.recent.len() == Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(lag_ns);
        self.samples += 1;
        self.max = self.max.max(lag_ns);
    }

    /// `null` before the first sample; percentiles are over the recent window.
    fn summary(&self) -> serde_json::Value {
        let Some(&last) = self.recent.back() else {
            return serde_json::Value::Null;
        };
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let percentile = |fraction: f64| {
            let rank = ((sorted.len() - 1) as f64 * fraction).round() as usize;
            sorted.get(rank).copied().unwrap_or(last)
        };
        let ms = |ns: u64| ns as f64 / 1e6;
        serde_json::json!({
            "samples": self.samples,
            "last_ms": ms(last),
            "p50_ms": ms(percentile(0.5)),
            "p99_ms": ms(percentile(0.99)),
            "max_ms": ms(self.max),
        })
    }
}

fn lost(reason: String) -> Hint {
    Hint::Lost { reason }
}

/// A message that may name paths, as a caller may see it: whole, or `{censored}`.
fn disclosed_reason(reason: &str, disclosure: Disclosure) -> String {
    match disclosure {
        Disclosure::Full => reason.to_owned(),
        Disclosure::Censored => crate::report::CENSORED.to_owned(),
    }
}
