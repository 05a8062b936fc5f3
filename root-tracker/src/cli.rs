//! Command line of `root-tracker`. Parses arguments and calls the library; nothing else.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::layout::{DEFAULT_STATE_DIR, DEFAULT_STORE_DIR, StoreLayout};
use crate::report::{JsonBytes, RootKind, ScanReport};
use crate::scan::{ScanOptions, scan};

/// Exit status of a scan or query whose answer may be missing roots.
pub const EXIT_INCOMPLETE: u8 = 3;

/// Tracks the garbage-collection roots of a Nix store, so that an unprivileged collector can
/// ask for them instead of traversing what only root can read.
///
/// Exit status: 0 success; 1 error; 2 usage error; 3 the answer is incomplete (some potential
/// roots could not be read — see `--json` for which and why).
#[derive(Parser, Debug)]
#[command(name = "root-tracker", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Traverse the roots once and print them as `nix-store --gc --print-roots` does.
    ///
    /// Walks `<state>/gcroots` and `<state>/profiles` (following indirect roots one hop as Nix
    /// does), the temp roots of live clients and the runtime roots in /proc. Nothing is
    /// changed: stale `gcroots/auto` links and dead temp-root files are reported, not deleted.
    Scan(ScanArgs),
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// The store directory.
    #[arg(long, env = "NIX_STORE_DIR", default_value = DEFAULT_STORE_DIR)]
    store_dir: PathBuf,
    /// The state directory (holding gcroots/, profiles/, temproots/ and db/).
    #[arg(long, env = "NIX_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args, Debug)]
struct ScanArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON: every root with kind, link, retainer and target, plus unregistered roots,
    /// stale links, dead temp-root files and unreadable entries.
    #[arg(long, conflicts_with = "summary")]
    json: bool,
    /// Print counts instead of the roots.
    #[arg(long)]
    summary: bool,
    /// Skip runtime roots (/proc and kernel sysctls).
    #[arg(long)]
    no_runtime: bool,
    /// Skip temp roots (`<state>/temproots`).
    #[arg(long)]
    no_temp: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("root-tracker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Scan(args) => scan_command(args),
    }
}

fn scan_command(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let layout = StoreLayout::new(&args.store.store_dir, &args.store.state_dir)?;
    let options = ScanOptions {
        runtime: !args.no_runtime,
        temp: !args.no_temp,
        ..ScanOptions::default()
    };
    let started = std::time::Instant::now();
    let report = scan(&layout, &options).context("scan failed")?;
    let elapsed = started.elapsed();
    let mut stdout = io::BufWriter::new(io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report.to_json())
            .map_err(io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
    } else if args.summary {
        write_summary(&mut stdout, &report, elapsed)
    } else {
        report.write_print_roots(&mut stdout)
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => {}
        // `root-tracker scan | head` is not an error.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
        Err(error) => return Err(error).context("cannot write to standard output"),
    }
    if report.is_complete() {
        return Ok(ExitCode::SUCCESS);
    }
    let first = &report.unreadable[0];
    eprintln!(
        "root-tracker: incomplete: {} potential root(s) could not be read, e.g. {}: {} ({}); the list above may be missing roots",
        report.unreadable.len(),
        serde_json::to_string(&JsonBytes(&first.path)).unwrap_or_default(),
        io::Error::from_raw_os_error(first.errno),
        first.operation,
    );
    Ok(ExitCode::from(EXIT_INCOMPLETE))
}

fn write_summary(
    out: &mut impl io::Write,
    report: &ScanReport,
    elapsed: std::time::Duration,
) -> io::Result<()> {
    let by_kind: Vec<String> = RootKind::ALL
        .into_iter()
        .map(|kind| format!("{} {}", kind.as_str(), report.count(kind)))
        .collect();
    writeln!(
        out,
        "store {}, state {}",
        report.layout.store_dir().display(),
        report.layout.state_dir().display()
    )?;
    writeln!(
        out,
        "roots: {} (found as: {})",
        report.printed_len(),
        by_kind.join(", ")
    )?;
    writeln!(
        out,
        "skipped: {} unregistered, {} stale auto links, {} dead temp-root files",
        report.unregistered.len(),
        report.stale_links.len(),
        report.stale_temp_roots.len()
    )?;
    writeln!(
        out,
        "unreadable: {}{}",
        report.unreadable.len(),
        if report.is_complete() {
            ""
        } else {
            " (answer incomplete)"
        }
    )?;
    writeln!(out, "time: {} ms", elapsed.as_millis())
}
