//! `store-gc serve`: the collector as a daemon. Collects on a schedule (`--interval`) and when
//! the store's filesystem runs short of space (`--min-free`/`--max-free`, as Nix's auto-GC
//! does), exports what each run did as Prometheus metrics ([`crate::metrics`]), and logs one
//! span per run.
//!
//! Invariant: at most one collection runs at a time, and each is a plain [`collect`]: a refusal
//! (the tracker cannot vouch for the roots) deletes nothing and is retried later. On SIGTERM or
//! SIGINT a collection in progress is waited for, never abandoned half-way.

use std::fs;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::collect::{Action, CollectError, CollectOptions, Summary, collect};
use crate::metrics::{self, LiveValues, Metrics, Outcome, Trigger};
use crate::tracker_status;

/// Run the collector as a daemon: on a schedule, and when free space runs low.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Collect everything dead this often (e.g. 90s, 15m, 1h, 1d, 1h30m; a bare number is
    /// seconds). The first scheduled collection is one interval after start. `off`: only
    /// collect when free space runs low.
    #[arg(long, value_name = "DURATION|off", default_value = "1d", value_parser = parse_interval)]
    interval: OffOr<Duration>,
    /// Collect when the store's filesystem has less than this many bytes available (suffixes
    /// K, M, G, T as in Nix), as Nix's `min-free`. Unset: nix.conf's `min-free`; if that is
    /// unset or 0 too, never collect for space.
    #[arg(long, value_name = "BYTES", value_parser = crate::cli::parse_bytes)]
    min_free: Option<u64>,
    /// A collection started by --min-free stops once this many bytes are available, i.e. it
    /// frees at most max-free minus the free space at its start, as Nix's `max-free`.
    /// Unset: nix.conf's `max-free`, else no limit. Must not be below min-free.
    #[arg(long, value_name = "BYTES", value_parser = crate::cli::parse_bytes)]
    max_free: Option<u64>,
    /// How often free space is checked against --min-free (statvfs on the store directory).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    check_interval: Duration,
    /// Where the time of the last successful scheduled collection is kept, so that a
    /// restarted daemon keeps the schedule instead of starting a new interval (a daemon
    /// restarted more often than --interval would otherwise never collect). Default:
    /// `<state-dir>/store-gc/last-scheduled-run`. `off`: not kept; the first scheduled
    /// collection is one interval after start.
    #[arg(long, value_name = "PATH|off")]
    schedule_file: Option<PathBuf>,
    /// Stop a scheduled collection after freeing this many bytes (suffixes K, M, G, T).
    #[arg(long, value_name = "BYTES", value_parser = crate::cli::parse_bytes)]
    max_freed: Option<u64>,
    /// Decide what is dead and record it in the metrics, but delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics over HTTP at `http://ADDR/metrics`. ADDR must be a loopback
    /// address with a port (e.g. 127.0.0.1:9784; port 0 picks a free one); the address bound is
    /// printed on stdout. Every local user can read it (counts, sizes and timings; no paths).
    /// `off`: no metrics endpoint.
    #[arg(long, value_name = "ADDR|off", default_value = "off", value_parser = parse_listen)]
    metrics_listen: OffOr<SocketAddr>,
    #[command(flatten)]
    collector: crate::cli::CollectorArgs,
}

/// `off` or a value. An alias, because clap takes a field typed `Option` for an optional flag
/// without a default, and these flags have defaults.
type OffOr<T> = Option<T>;

/// A duration: `<number><unit>`, repeated (`1h30m`), units `ms`, `s`, `m`, `h`, `d`; a bare
/// number is seconds. Zero is refused: a zero period would spin.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration (e.g. 90s, 15m, 1h30m, 1d)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    if rest.bytes().all(|byte| byte.is_ascii_digit()) {
        let seconds: u64 = rest.parse().map_err(|_| invalid())?;
        total = Duration::from_secs(seconds);
    } else {
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let unit_len = rest[digits..]
                .bytes()
                .take_while(u8::is_ascii_alphabetic)
                .count();
            if digits == 0 || unit_len == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            let unit = match &rest[digits..digits + unit_len] {
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                "d" => Duration::from_secs(86_400),
                _ => return Err(invalid()),
            };
            let part = u32::try_from(number)
                .ok()
                .and_then(|number| unit.checked_mul(number))
                .ok_or_else(invalid)?;
            total = total.checked_add(part).ok_or_else(invalid)?;
            rest = &rest[digits + unit_len..];
        }
    }
    if total.is_zero() {
        return Err(format!("{text:?}: the duration must not be zero"));
    }
    Ok(total)
}

fn parse_interval(text: &str) -> Result<Option<Duration>, String> {
    if text == "off" {
        return Ok(None);
    }
    parse_duration(text).map(Some)
}

/// Only loopback: the endpoint is for a local scraper (or a local proxy in front of it);
/// binding a routable address is a decision to make outside this daemon.
fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    let address: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address with a port (e.g. 127.0.0.1:9784)"))?;
    if !address.ip().is_loopback() {
        return Err(format!(
            "{text:?} is not a loopback address; the metrics endpoint is local only"
        ));
    }
    Ok(Some(address))
}

/// Bytes available to an unprivileged user on the filesystem holding `dir` (`f_bavail` in
/// fragments). Nix's auto-GC (`LocalStore::autoGC`) multiplies `f_bavail` by `f_bsize`; on
/// the filesystems Nix stores live on the two sizes are equal.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    // fsblkcnt_t and c_ulong: at most 64 bits on Linux, so widening casts.
    let blocks = stat.blocks_available() as u64;
    let size = stat.fragment_size() as u64;
    Ok(blocks.saturating_mul(size))
}

/// Retries after a refusal or an unproductive run wait the check interval, doubled each time,
/// up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// When to collect, and how much. Pure: time and free space are passed in, so the policy is
/// tested without a clock or a disk.
#[derive(Debug)]
struct Scheduler {
    interval: Option<Duration>,
    check_interval: Duration,
    min_free: Option<u64>,
    /// `u64::MAX` when unset.
    max_free: u64,
    /// `--max-freed` for scheduled runs; `u64::MAX` when unset.
    scheduled_max_freed: u64,
    next_scheduled: Option<Instant>,
    next_check: Instant,
    /// Consecutive runs that achieved nothing (refused, failed, or a free-space run that
    /// deleted nothing): retrying at once would only repeat them.
    unproductive: u32,
}

impl Scheduler {
    /// `since_last`: how long ago the last scheduled collection succeeded, if known; the next
    /// one is due an interval after it (at once if that has passed), else an interval from now.
    fn new(config: &ServeArgs, now: Instant, since_last: Option<Duration>) -> Self {
        Self {
            interval: config.interval,
            check_interval: config.check_interval,
            min_free: config.min_free,
            max_free: config.max_free.unwrap_or(u64::MAX),
            scheduled_max_freed: config.max_freed.unwrap_or(u64::MAX),
            next_scheduled: config
                .interval
                .map(|interval| now + interval.saturating_sub(since_last.unwrap_or_default())),
            next_check: now,
            unproductive: 0,
        }
    }

    /// The collection due at `now` (what started it, and its max-freed), if any.
    fn due(
        &mut self,
        now: Instant,
        free: impl FnOnce() -> io::Result<u64>,
    ) -> Option<(Trigger, u64)> {
        if self.next_scheduled.is_some_and(|at| now >= at) {
            self.next_scheduled = self.interval.map(|interval| now + interval);
            return Some((Trigger::Schedule, self.scheduled_max_freed));
        }
        let min_free = self.min_free?;
        if now < self.next_check {
            return None;
        }
        self.next_check = now + self.check_interval;
        match free() {
            // Nix's autoGC: below min-free, collect until max-free is available.
            Ok(free) if free < min_free => {
                tracing::info!(free, min_free, "free space below min-free");
                Some((Trigger::FreeSpace, self.max_free.saturating_sub(free)))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot read the free space of the store's filesystem");
                None
            }
        }
    }

    /// When [`Self::due`] may next have something to do.
    fn next_wake(&self) -> Option<Instant> {
        let check = self.min_free.map(|_| self.next_check);
        match (self.next_scheduled, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes note of a finished run: an unproductive one is retried after a growing delay.
    fn finished(&mut self, trigger: Trigger, outcome: Outcome, deleted: usize, now: Instant) {
        let productive = match (outcome, trigger) {
            (Outcome::Ok, Trigger::Schedule) => true,
            (Outcome::Ok, Trigger::FreeSpace) => deleted > 0,
            (Outcome::Refused | Outcome::Error, _) => false,
        };
        if productive {
            self.unproductive = 0;
            return;
        }
        self.unproductive = self.unproductive.saturating_add(1);
        let doublings = self.unproductive.saturating_sub(1).min(16);
        let backoff = self
            .check_interval
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF.max(self.check_interval));
        let retry = now + backoff;
        match (outcome, trigger) {
            // A scheduled run that did not happen is retried soon, not an interval later.
            (Outcome::Refused | Outcome::Error, Trigger::Schedule) => {
                self.next_scheduled = Some(self.next_scheduled.map_or(retry, |at| at.min(retry)));
            }
            (_, Trigger::FreeSpace) => self.next_check = self.next_check.max(retry),
            (Outcome::Ok, Trigger::Schedule) => {}
        }
    }
}

/// What the metrics endpoint reads: the counters, and where to look for live values.
struct Shared {
    metrics: Mutex<Metrics>,
    tracker_socket: PathBuf,
    store_dir: PathBuf,
    min_free: Option<u64>,
}

impl Shared {
    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        // A panic while holding the lock leaves counters that are still counters.
        self.metrics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a scrape waits for the tracker's status.
const TRACKER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many scrapes are served at once; more connections are closed at once.
const MAX_SCRAPES: usize = 8;
/// A scrape connection, request to response, may take this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// `store-gc serve`: runs until SIGTERM or SIGINT.
pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    // The flags win; otherwise nix.conf's, as Nix's own automatic collection reads them.
    let conf = args.collector.nix_settings()?;
    let max_free_flag = args.max_free.is_some();
    args.min_free = args.min_free.or(conf.min_free);
    args.max_free = args.max_free.or(conf.max_free);
    match (args.min_free, args.max_free) {
        (Some(min_free), Some(max_free)) => anyhow::ensure!(
            max_free >= min_free,
            "max-free ({max_free}) must not be below min-free ({min_free}) (flags, else nix.conf)"
        ),
        (None, Some(_)) => anyhow::ensure!(
            !max_free_flag,
            "--max-free needs a min-free (--min-free, or min-free in nix.conf)"
        ),
        _ => {}
    }
    anyhow::ensure!(
        args.interval.is_some() || args.min_free.is_some(),
        "nothing to do: --interval is off and no min-free is set (--min-free or nix.conf)"
    );
    let options = collect_options(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, options))
}

/// The options every run starts from (nix.conf is read once, here).
fn collect_options(args: &ServeArgs) -> anyhow::Result<CollectOptions> {
    let action = if args.dry_run {
        Action::DryRun
    } else {
        Action::Delete
    };
    // A daemon logs; it draws no progress line.
    args.collector.options(action, u64::MAX, false)
}

async fn serve(args: ServeArgs, options: CollectOptions) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let shared = Arc::new(Shared {
        metrics: Mutex::new(Metrics::default()),
        tracker_socket: options.tracker_socket.clone(),
        store_dir: options.layout.store_dir().to_owned(),
        min_free: args.min_free,
    });
    if let Some(address) = args.metrics_listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics endpoint {address}"))?;
        let bound = listener
            .local_addr()
            .context("reading the metrics address")?;
        tracing::info!(address = %bound, "serving metrics");
        // The address on stdout, so a caller that asked for port 0 learns the port.
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "metrics: http://{bound}/metrics")
            .and_then(|()| stdout.flush())
            .context("writing the metrics address")?;
        tokio::spawn(serve_metrics(listener, Arc::clone(&shared)));
    }
    tracing::info!(
        interval_s = args.interval.map(|interval| interval.as_secs_f64()),
        min_free = args.min_free,
        max_free = args.max_free,
        check_interval_s = args.check_interval.as_secs_f64(),
        dry_run = args.dry_run,
        "store-gc serve started"
    );

    let schedule_file = match &args.schedule_file {
        Some(path) if path.as_os_str() == "off" => None,
        Some(path) => Some(path.clone()),
        None => Some(
            options
                .layout
                .state_dir()
                .join("store-gc/last-scheduled-run"),
        ),
    };
    let since_last = schedule_file
        .as_deref()
        .and_then(last_scheduled_run)
        // A time in the future (the clock was set back) counts as just now.
        .map(|last| SystemTime::now().duration_since(last).unwrap_or_default());
    if let Some(since_last) = since_last {
        tracing::info!(
            since_last_s = since_last.as_secs(),
            "last scheduled collection found"
        );
    }
    let mut scheduler = Scheduler::new(&args, Instant::now(), since_last);
    let store_dir = options.layout.store_dir().to_owned();
    let mut run_number: u64 = 0;
    loop {
        let due = scheduler.due(Instant::now(), || free_bytes(&store_dir));
        if let Some((trigger, max_freed)) = due {
            run_number += 1;
            let mut run_options = options.clone();
            run_options.max_freed = max_freed;
            let span = tracing::info_span!(
                "gc",
                run = run_number,
                trigger = trigger.label(),
                max_freed = (max_freed != u64::MAX).then_some(max_freed),
                dry_run = args.dry_run,
            );
            shared.metrics().set_running(true);
            let running = tokio::task::spawn_blocking({
                let span = span.clone();
                move || span.in_scope(|| collect(&run_options, &mut io::sink()))
            });
            let mut running = std::pin::pin!(running);
            // Deletion is not interruptible from outside `collect`, and abandoning it would
            // leave a half-done chunk to the next run: a stop request waits for the run.
            let mut stopping = false;
            let result = loop {
                tokio::select! {
                    result = &mut running => break result,
                    _ = terminate.recv() => {
                        tracing::info!("SIGTERM: stopping after the collection in progress");
                        stopping = true;
                    }
                    _ = interrupt.recv() => {
                        tracing::info!("SIGINT: stopping after the collection in progress");
                        stopping = true;
                    }
                }
            };
            let (outcome, deleted) = span.in_scope(|| record(&shared, trigger, result));
            scheduler.finished(trigger, outcome, deleted, Instant::now());
            if let (Outcome::Ok, Trigger::Schedule, Some(path)) =
                (outcome, trigger, schedule_file.as_deref())
            {
                remember_scheduled_run(path, SystemTime::now());
            }
            if stopping {
                break;
            }
            continue;
        }
        let wake = scheduler.next_wake();
        tokio::select! {
            () = sleep_until(wake) => {}
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
        }
    }
    tracing::info!("store-gc serve stopped");
    Ok(())
}

/// The time in `path` (Unix seconds), if there is a readable one.
fn last_scheduled_run(path: &Path) -> Option<SystemTime> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the schedule file; starting a new interval");
            return None;
        }
    };
    match text.trim().parse::<u64>() {
        Ok(seconds) => Some(UNIX_EPOCH + Duration::from_secs(seconds)),
        Err(_) => {
            tracing::warn!(path = %path.display(), "the schedule file holds no time; starting a new interval");
            None
        }
    }
}

/// Writes `at` to `path` (replaced whole, through a temporary file and a rename); a failure
/// is logged: it only costs a restarted daemon its place in the schedule.
fn remember_scheduled_run(path: &Path, at: SystemTime) {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let temp = path.with_extension("tmp");
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::write(&temp, format!("{seconds}\n")))
        .and_then(|()| fs::rename(&temp, path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot record the scheduled collection");
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake).await,
        None => std::future::pending().await,
    }
}

/// Logs a finished run and counts it; returns its outcome and how many paths it deleted.
fn record(
    shared: &Shared,
    trigger: Trigger,
    result: Result<Result<Summary, CollectError>, tokio::task::JoinError>,
) -> (Outcome, usize) {
    let (outcome, summary) = match result {
        Ok(Ok(summary)) => {
            tracing::info!(
                outcome = "ok",
                deleted = summary.deleted,
                freed_bytes = summary.freed_bytes,
                dead = summary.dead,
                alive = summary.alive,
                roots_static = summary.roots.static_,
                roots_indirect = summary.roots.indirect,
                roots_runtime = summary.roots.runtime,
                roots_temp = summary.roots.temp + summary.roots.tracker_temp,
                stopped_early = summary.stopped_early,
                ms = summary.ms.total,
                "collection finished"
            );
            (Outcome::Ok, Some(summary))
        }
        Ok(Err(error)) if error.is_roots_refusal() => {
            let error = anyhow::Error::from(error);
            tracing::warn!(
                outcome = "refused",
                "collection refused, nothing deleted: {error:#}"
            );
            (Outcome::Refused, None)
        }
        Ok(Err(error)) => {
            let error = anyhow::Error::from(error);
            tracing::error!(outcome = "error", "collection failed: {error:#}");
            (Outcome::Error, None)
        }
        Err(error) => {
            tracing::error!(outcome = "error", "collection panicked: {error}");
            (Outcome::Error, None)
        }
    };
    let deleted = summary.as_ref().map_or(0, |summary| summary.deleted);
    let mut metrics = shared.metrics();
    metrics.record(trigger, outcome, summary.as_ref());
    metrics.set_running(false);
    (outcome, deleted)
}

async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: wait rather than spin.
                tracing::warn!(%error, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&scrapes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many metrics connections; closing this one");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let served = metrics::serve_http(stream, || scrape(shared));
            match tokio::time::timeout(SCRAPE_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

/// The exposition, with free space and the tracker's status read now.
async fn scrape(shared: Arc<Shared>) -> String {
    let socket = shared.tracker_socket.clone();
    let tracker = tokio::task::spawn_blocking(move || {
        tracker_status::status(&socket, TRACKER_STATUS_TIMEOUT)
    })
    .await;
    let tracker = match tracker {
        Ok(Ok(health)) => Some(health),
        Ok(Err(error)) => {
            tracing::debug!("tracker status: {:#}", anyhow::Error::from(error));
            None
        }
        Err(error) => {
            tracing::warn!(%error, "tracker status request panicked");
            None
        }
    };
    let live = LiveValues {
        free_bytes: free_bytes(&shared.store_dir).ok(),
        min_free_bytes: shared.min_free,
        tracker,
    };
    metrics::render(&shared.metrics(), &live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve"];
        argv.extend(extra);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "0", "0s", "h", "1x", "1.5h", "-1s", "1h 30m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_interval("off"), Ok(None));
    }

    #[test]
    fn metrics_listen_is_loopback_only() {
        assert_eq!(parse_listen("off"), Ok(None));
        assert!(parse_listen("127.0.0.1:9784").unwrap().is_some());
        assert!(parse_listen("[::1]:0").unwrap().is_some());
        assert!(parse_listen("0.0.0.0:9784").is_err());
        assert!(parse_listen("localhost:9784").is_err());
    }

    #[test]
    fn a_restart_keeps_the_schedule() {
        let start = Instant::now();
        let hour = Duration::from_secs(3600);
        let config = args(&["--interval", "1h"]);
        let wake = |since_last| Scheduler::new(&config, start, since_last).next_wake();
        assert_eq!(wake(None), Some(start + hour));
        // Last run 20 minutes ago: due 40 minutes from now, not an hour.
        assert_eq!(
            wake(Some(Duration::from_secs(1200))),
            Some(start + Duration::from_secs(2400))
        );
        // Overdue: at once.
        let mut overdue = Scheduler::new(&config, start, Some(2 * hour));
        assert_eq!(
            overdue.due(start, || panic!("no --min-free, no statvfs")),
            Some((Trigger::Schedule, u64::MAX))
        );
    }

    #[test]
    fn the_schedule_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-gc/last-scheduled-run");
        assert_eq!(last_scheduled_run(&path), None);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        remember_scheduled_run(&path, at);
        assert_eq!(last_scheduled_run(&path), Some(at));
        fs::write(&path, "yesterday").unwrap();
        assert_eq!(last_scheduled_run(&path), None);
    }

    #[test]
    fn schedule_fires_each_interval() {
        let start = Instant::now();
        let mut scheduler = Scheduler::new(&args(&["--interval", "60s"]), start, None);
        let no_disk = || -> io::Result<u64> { panic!("no --min-free, no statvfs") };
        assert_eq!(scheduler.due(start, no_disk), None);
        assert_eq!(scheduler.next_wake(), Some(start + Duration::from_secs(60)));
        let at = start + Duration::from_secs(61);
        assert_eq!(
            scheduler.due(at, no_disk),
            Some((Trigger::Schedule, u64::MAX))
        );
        assert_eq!(scheduler.next_wake(), Some(at + Duration::from_secs(60)));
    }

    #[test]
    fn low_free_space_collects_up_to_max_free() {
        let start = Instant::now();
        let mut scheduler = Scheduler::new(
            &args(&[
                "--interval",
                "off",
                "--min-free",
                "1000",
                "--max-free",
                "5000",
                "--check-interval",
                "10s",
            ]),
            start,
            None,
        );
        assert_eq!(scheduler.due(start, || Ok(2000)), None);
        // Not checked again before the check interval.
        assert_eq!(
            scheduler.due(start + Duration::from_secs(1), || Ok(10)),
            None
        );
        let at = start + Duration::from_secs(10);
        assert_eq!(
            scheduler.due(at, || Ok(400)),
            Some((Trigger::FreeSpace, 4600))
        );
        scheduler.finished(Trigger::FreeSpace, Outcome::Ok, 3, at);
        assert_eq!(scheduler.next_wake(), Some(at + Duration::from_secs(10)));
    }

    #[test]
    fn unproductive_runs_back_off() {
        let start = Instant::now();
        let mut scheduler = Scheduler::new(
            &args(&[
                "--interval",
                "1h",
                "--min-free",
                "1000",
                "--check-interval",
                "10s",
            ]),
            start,
            None,
        );
        let hour = start + Duration::from_secs(3600);
        assert_eq!(
            scheduler.due(hour, || Ok(5000)),
            Some((Trigger::Schedule, u64::MAX))
        );
        // Refused: retried after the check interval, then twice that, not an hour later.
        scheduler.finished(Trigger::Schedule, Outcome::Refused, 0, hour);
        assert_eq!(
            scheduler.next_scheduled,
            Some(hour + Duration::from_secs(10))
        );
        let retry = hour + Duration::from_secs(10);
        assert!(scheduler.due(retry, || Ok(5000)).is_some());
        scheduler.finished(Trigger::Schedule, Outcome::Refused, 0, retry);
        assert_eq!(
            scheduler.next_scheduled,
            Some(retry + Duration::from_secs(20))
        );
        // Success resets; a free-space run that deletes nothing backs off too.
        scheduler.finished(Trigger::Schedule, Outcome::Ok, 0, retry);
        assert_eq!(scheduler.unproductive, 0);
        scheduler.finished(Trigger::FreeSpace, Outcome::Ok, 0, retry);
        scheduler.finished(Trigger::FreeSpace, Outcome::Ok, 0, retry);
        assert_eq!(scheduler.next_check, retry + Duration::from_secs(20));
        for _ in 0..40 {
            scheduler.finished(Trigger::FreeSpace, Outcome::Error, 0, retry);
        }
        assert_eq!(scheduler.next_check, retry + MAX_BACKOFF);
    }

    #[test]
    fn refuses_contradictory_thresholds() {
        let conf = tempfile::tempdir().unwrap();
        let dir = conf.path().to_str().unwrap();
        let with_conf = |extra: &[&str]| {
            let mut all = vec!["--conf-dir", dir];
            all.extend(extra);
            args(&all)
        };
        let error = run(with_conf(&["--min-free", "2G", "--max-free", "1G"])).unwrap_err();
        assert!(error.to_string().contains("max-free"), "{error}");
        let error = run(with_conf(&["--interval", "off"])).unwrap_err();
        assert!(error.to_string().contains("nothing to do"), "{error}");
        let error = run(with_conf(&["--max-free", "1G"])).unwrap_err();
        assert!(error.to_string().contains("needs a min-free"), "{error}");
        // nix.conf's values count as if given, and the flags still win over them.
        fs::write(
            conf.path().join("nix.conf"),
            "min-free = 2G\nmax-free = 1G\n",
        )
        .unwrap();
        let error = run(with_conf(&[])).unwrap_err();
        assert!(error.to_string().contains("must not be below"), "{error}");
        let error = run(with_conf(&["--max-free", "1K", "--min-free", "2K"])).unwrap_err();
        assert!(error.to_string().contains("(1024)"), "{error}");
    }

    #[test]
    fn reads_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
