//! The `store-gc` command line: parses arguments, refuses uid 0, calls [`crate::collect`], and
//! turns errors into one line and an exit status. Nothing else.

use std::io::{self, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::collect::{Action, CollectError, CollectOptions, Summary, collect};
use crate::layout::StoreLayout;
use crate::nix_conf;
use crate::tracker_client::DEFAULT_SOCKET;

/// Exit status when the roots cannot be trusted (tracker unreachable, unsettled,
/// unauthorized, incomplete, or watching another store). Nothing was deleted.
pub const EXIT_ROOTS_REFUSED: u8 = 3;
/// Exit status when run as uid 0.
pub const EXIT_ROOT_USER: u8 = 4;

/// A garbage collector for Nix stores that runs as the store's owner and gets its roots from
/// root-tracker instead of traversing what only root can read.
///
/// Exit status: 0 success; 1 error; 2 usage error; 3 the roots could not be trusted (the
/// tracker is unreachable, unsettled, refused us, or could not read every potential root) and
/// nothing was deleted; 4 refused to run as root (uid 0).
#[derive(Parser, Debug)]
#[command(name = "store-gc", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Collect garbage once, as `nix-store --gc` does, with roots from the tracker.
    ///
    /// Takes `<state>/gc.lock` and serves `<state>/gc-socket/socket` for the whole run (so Nix
    /// clients can still add temp roots), takes the tracker's fenced answer, reads temp roots
    /// from `<state>/temproots`, loads the store database once, and decides what is dead
    /// exactly as Nix 2.8's collectGarbage, deleting as it goes unless a --print-* flag or
    /// --dry-run is given. Refuses (exit 3) when the tracker cannot vouch for every root.
    Collect(CollectArgs),
    /// Run as a daemon: collect on a schedule and when free space runs low, serve metrics.
    ///
    /// Each collection is a `collect` (deleting, or deciding only with --dry-run), one at a
    /// time. A refused collection (the tracker cannot vouch for the roots) deletes nothing and
    /// is retried after --check-interval, then after twice that, and so on up to 5 minutes.
    /// SIGTERM or SIGINT stops it after the collection in progress, if any. Logs each
    /// collection to stderr (RUST_LOG, default info); refuses to run as root, as collect does.
    Serve(crate::serve::ServeArgs),
}

#[derive(Args, Debug)]
struct CollectArgs {
    /// Decide what is dead and summarise; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the roots as `nix-store --gc --print-roots` does (`LINK -> STOREPATH`, sorted).
    #[arg(long, group = "print")]
    print_roots: bool,
    /// Print the live paths as `nix-store --gc --print-live` does; delete nothing.
    #[arg(long, group = "print")]
    print_live: bool,
    /// Print the dead paths as `nix-store --gc --print-dead` does; delete nothing.
    #[arg(long, group = "print")]
    print_dead: bool,
    /// Stop after freeing this many bytes (suffixes K, M, G, T as in Nix). 0 does nothing.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_freed: Option<u64>,
    #[command(flatten)]
    pub(crate) store: CollectorArgs,
    /// Print a JSON summary (roots, counts, bytes, milliseconds per phase).
    #[arg(long, conflicts_with = "print")]
    json: bool,
    /// No progress line (shown on standard error only when it is a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// What every collection needs, for `collect` and `serve` alike: where the store and the
/// tracker are, and the keep-* settings.
#[derive(Args, Debug)]
pub(crate) struct CollectorArgs {
    /// The tracker's socket.
    #[arg(long, value_name = "PATH", env = "STORE_GC_TRACKER_SOCKET", default_value = DEFAULT_SOCKET)]
    tracker_socket: PathBuf,
    /// How long the tracker may wait for its index to settle before answering "unsettled".
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    tracker_wait_ms: u64,
    /// The store directory.
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_STORE_DIR",
        default_value = "/nix/store"
    )]
    store_dir: PathBuf,
    /// The state directory (database, gcroots, temproots, gc.lock).
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_STATE_DIR",
        default_value = "/nix/var/nix"
    )]
    state_dir: PathBuf,
    /// Where nix.conf is read from (keep-derivations, keep-outputs; for `serve` also min-free
    /// and max-free); `serve` reads it once, at start.
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_CONF_DIR",
        default_value = "/etc/nix"
    )]
    conf_dir: PathBuf,
    /// Override nix.conf's keep-derivations (default true).
    #[arg(long, value_name = "BOOL")]
    keep_derivations: Option<bool>,
    /// Override nix.conf's keep-outputs (default false).
    #[arg(long, value_name = "BOOL")]
    keep_outputs: Option<bool>,
    /// Accept an answer whose only unreadable entries are under /proc (processes the tracker
    /// may not inspect). Nix ignores those too; any other unreadable entry still refuses.
    #[arg(long)]
    allow_unreadable_runtime: bool,
}

impl CollectorArgs {
    /// `<conf-dir>/nix.conf`, as found (the keep-* flags are applied by [`Self::options`]).
    pub(crate) fn nix_settings(&self) -> anyhow::Result<nix_conf::NixSettings> {
        nix_conf::read_settings(&self.conf_dir)
            .with_context(|| format!("reading {}/nix.conf", self.conf_dir.display()))
    }

    /// Collection options with nix.conf read and the flags applied; the caller picks the
    /// action, the bound and the progress line.
    pub(crate) fn options(
        &self,
        action: Action,
        max_freed: u64,
        progress: bool,
    ) -> anyhow::Result<CollectOptions> {
        let layout = StoreLayout::new(&self.store_dir, &self.state_dir)?;
        let mut settings = self.nix_settings()?.gc;
        if let Some(keep) = self.keep_derivations {
            settings.keep_derivations = keep;
        }
        if let Some(keep) = self.keep_outputs {
            settings.keep_outputs = keep;
        }
        Ok(CollectOptions {
            layout,
            tracker_socket: self.tracker_socket.clone(),
            tracker_wait_ms: self.tracker_wait_ms,
            settings,
            action,
            max_freed,
            allow_unreadable_runtime: self.allow_unreadable_runtime,
            progress,
        })
    }
}

/// Nix's `getIntArg` with units: a number with an optional K, M, G or T suffix.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K') => (&text[..text.len() - 1], 10),
        Some(b'M') => (&text[..text.len() - 1], 20),
        Some(b'G') => (&text[..text.len() - 1], 30),
        Some(b'T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let value: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    // Nix clamps negative values to 0.
    let value = u64::try_from(value.max(0)).unwrap_or(0);
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon's log is its only report of each run; a one-shot collection prints its own.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        Command::Collect(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    // DESIGN.md invariant 6: the collector never needs root, and running it as root would
    // hide exactly the permission problems the tracker exists to solve.
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        eprintln!("store-gc: error: refusing to run as root (uid 0); run it as the store's owner");
        return ExitCode::from(EXIT_ROOT_USER);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("store-gc: error: {error:#}");
            let refused = error
                .downcast_ref::<CollectError>()
                .is_some_and(CollectError::is_roots_refusal);
            ExitCode::from(if refused { EXIT_ROOTS_REFUSED } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Command::Collect(args) => args,
        Command::Serve(args) => return crate::serve::run(args),
    };
    let action = if args.print_roots {
        Action::PrintRoots
    } else if args.print_live {
        Action::PrintLive
    } else if args.print_dead {
        Action::PrintDead
    } else if args.dry_run {
        Action::DryRun
    } else {
        Action::Delete
    };
    let options = args.store.options(
        action,
        args.max_freed.unwrap_or(u64::MAX),
        !args.no_progress,
    )?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    // The error is returned as is (not wrapped) so `main` can tell a roots refusal apart.
    let summary = collect(&options, &mut out)?;
    if args.json {
        serde_json::to_writer(&mut out, &summary).context("writing the summary")?;
        writeln!(out).context("writing the summary")?;
    } else if action == Action::DryRun {
        print_dry_run(&summary, &mut out).context("writing the summary")?;
    } else if action == Action::Delete {
        // Nix's `PrintFreed`, word for word.
        writeln!(
            out,
            "{} store paths deleted, {:.2} MiB freed",
            summary.deleted,
            summary.freed_bytes as f64 / (1024.0 * 1024.0)
        )
        .context("writing the summary")?;
    }
    Ok(())
}

fn print_dry_run(summary: &Summary, out: &mut dyn io::Write) -> io::Result<()> {
    writeln!(
        out,
        "{} store paths would be deleted ({:.2} MiB by NAR size); {} alive",
        summary.dead,
        summary.dead_nar_bytes as f64 / (1024.0 * 1024.0),
        summary.alive
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn byte_counts_take_units() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("2K"), Ok(2048));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("-5"), Ok(0));
        assert!(parse_bytes("x").is_err());
    }
}
