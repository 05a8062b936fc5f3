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
    /// Run the tracker: attach a kernel source, bootstrap the index with a scan, keep it live,
    /// and answer `query` and `status` on a Unix socket.
    ///
    /// Needs root (or CAP_BPF/CAP_PERFMON for eBPF, CAP_SYS_ADMIN for fanotify, and
    /// CAP_DAC_READ_SEARCH to read every user's links). After attaching it switches to --user
    /// (recommended: a dedicated system user) and drops every capability it no longer needs.
    /// Stops on SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Ask a running tracker for the roots, as of now (same output as `scan`).
    ///
    /// The answer is fenced: it reflects every filesystem change that completed before the
    /// tracker received the request. If the tracker is unsettled (it lost events, or mounts
    /// changed) it waits for its rescan, up to --wait-secs, and otherwise fails with exit 4.
    Query(QueryArgs),
    /// Show a running tracker's backend, settledness, counts and counters.
    Status(StatusArgs),
}

/// Exit status of a query the tracker refused to answer because its index is unsettled.
pub const EXIT_UNSETTLED: u8 = 4;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Backend {
    /// eBPF when it loads, else fanotify; `status` says which and why.
    Auto,
    Ebpf,
    Fanotify,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EbpfHooks {
    /// fentry/fexit on the kernel's path workers where all of them load and attach (no
    /// syscall tracepoint: cheaper for every other syscall), else the syscall tracepoints.
    Auto,
    /// The syscall and io_uring tracepoints.
    Tracepoints,
    /// fentry/fexit, or fail.
    Fentry,
}

#[derive(Args, Debug)]
struct SocketArg {
    /// The tracker's socket.
    #[arg(long, default_value = "/run/root-tracker/socket")]
    socket: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    socket: SocketArg,
    /// Which kernel source watches user links.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// The index database (SQLite, WAL).
    #[arg(long, default_value = "/var/lib/root-tracker/index.sqlite")]
    db: PathBuf,
    /// A uid (besides root) allowed to query; repeatable. Its answers are censored: every
    /// retainer and path shows as `{censored}` (as Nix shows untrusted users) unless the uid is
    /// also given to --reveal-uid. Targets, kinds, counts and completeness are never censored.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// A gid allowed to query (censored, like --allow-uid); repeatable. Matched against the
    /// caller's primary gid only: SO_PEERCRED does not carry supplementary groups.
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gids: Vec<u32>,
    /// A uid allowed to query and to see retainers, links and paths uncensored; repeatable.
    /// Root always is.
    #[arg(long = "reveal-uid", value_name = "UID")]
    reveal_uids: Vec<u32>,
    /// A gid allowed to query and to see everything uncensored (primary gid only, as with
    /// --allow-gid); repeatable.
    #[arg(long = "reveal-gid", value_name = "GID")]
    reveal_gids: Vec<u32>,
    /// Connections served at once (on both sockets together); one more gets a `busy` error
    /// and is closed.
    #[arg(long, default_value_t = crate::server::Limits::default().max_connections)]
    max_connections: usize,
    /// Requests answered on one connection; the next gets an error and the connection is
    /// closed. (Each request line is also limited to 64 KiB and --request-timeout-ms.)
    #[arg(long, default_value_t = crate::server::Limits::default().max_requests_per_connection)]
    max_requests_per_connection: usize,
    /// How long a request line may take to arrive, from the connection or the previous answer;
    /// a slower client gets an error and the connection is closed.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Also serve Nix's roots-daemon protocol (for Nix's `use-roots-daemon = true`; off by
    /// default), at PATH or, without one, at `<state>/gc-roots-socket/socket`. Each connection
    /// gets the store path of every root (all kinds), each followed by NUL, then EOF. When the
    /// index is unsettled or the answer incomplete it gets one non-path string instead, which
    /// makes Nix's collector fail rather than collect. --allow-uid/--allow-gid apply.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    nix_roots_socket: Option<Option<PathBuf>>,
    /// On the roots-daemon socket, answer even when the only unreadable entries are under
    /// /proc (processes the tracker may not inspect, e.g. hidden by hidepid or a container's
    /// pid 1), as Nix's own runtime-root scan ignores them. Off: such answers are refused.
    #[arg(long, requires = "nix_roots_socket")]
    nix_roots_allow_unreadable_runtime: bool,
    /// How long a query waits for an unsettled index when the client does not say.
    #[arg(long, default_value_t = 30)]
    query_wait_secs: u64,
    /// How often the index is compared with a fresh scan (0: never).
    #[arg(long, default_value_t = 3600)]
    verify_interval_secs: u64,
    /// Wait this long after hints were lost before rescanning unprompted (a query rescans at
    /// once). Debounces event storms.
    #[arg(long, default_value_t = 0)]
    rescan_delay_ms: u64,
    /// Size of the eBPF ring buffer in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = root_tracker_ebpf::RING_BUF_BYTES)]
    ebpf_ring_buffer_bytes: u32,
    /// Which kernel hooks the eBPF backend attaches; `status` shows which it did and why.
    #[arg(long, value_enum, default_value_t = EbpfHooks::Auto)]
    ebpf_hooks: EbpfHooks,
    /// Run as this user (a name, or a numeric uid in the password database) after attaching,
    /// with its primary group and no supplementary groups; recommended: a dedicated system user.
    /// The tracker gives it the directories it creates for --db and the sockets, and the index
    /// files; an existing directory there must already be writable by it. Without --user the
    /// tracker stays uid 0 (with few capabilities), which still owns every root-owned file.
    #[arg(long, value_name = "USER", conflicts_with = "keep_privileges")]
    user: Option<String>,
    /// Debugging only: keep every capability, the host network and unrestricted writes after
    /// attach (by default they are dropped; `status` shows what is kept).
    #[arg(long)]
    keep_privileges: bool,
}

#[derive(Args, Debug)]
struct QueryArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print JSON (the same object as `scan --json`).
    #[arg(long)]
    json: bool,
    /// Fail at once if the index is unsettled instead of waiting for the rescan.
    #[arg(long, conflicts_with = "wait_secs")]
    no_wait: bool,
    /// Wait at most this long for an unsettled index (default: the tracker's --query-wait-secs).
    #[arg(long)]
    wait_secs: Option<u64>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
        Command::Run(args) => run_command(*args),
        Command::Query(args) => query_command(args),
        Command::Status(args) => status_command(args),
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
        // Streamed: a value tree of a million roots would cost gigabytes.
        serde_json::to_writer_pretty(&mut stdout, &crate::report::MergedReport::new(&[&report]))
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

fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    // Before any thread starts: the allocator's arenas are per thread.
    crate::tracker::configure_allocator();
    let layout = StoreLayout::new(&args.store.store_dir, &args.store.state_dir)?;
    // Looked up now, while the password database and NSS may still be read.
    let user = args
        .user
        .as_deref()
        .map(crate::privilege::TrackerUser::lookup)
        .transpose()?;
    if user.is_none() && !args.keep_privileges {
        tracing::warn!(
            "no --user: the tracker keeps uid 0, which owns every root-owned file; run it with --user and a dedicated system user"
        );
    }
    let nix_roots_socket = args
        .nix_roots_socket
        .clone()
        .map(|path| path.unwrap_or_else(|| layout.state_dir().join("gc-roots-socket/socket")));
    let parent_dir = |path: &std::path::Path| match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // The directories the tracker writes in after the drop (Landlock's list for every thread). Made while we may still write anywhere: the state dir need not be root's (a Nix
    // daemon running as its own user owns it), and after the drop root writes only where it
    // owns. The ones made here are --user's.
    let mut own_dirs = vec![parent_dir(&args.db), parent_dir(&args.socket.socket)];
    own_dirs.extend(nix_roots_socket.as_deref().map(parent_dir));
    let own_dirs_created = crate::privilege::create_own_dirs(
        &own_dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let index = crate::index::Index::open(&args.db)?;
    let mut reconciler = crate::reconcile::Reconciler::new(layout.clone(), index);
    // Before the privilege drop: see ValidityCache::open_now. Failing here is not fatal (the
    // store may not be initialised yet); queries report the error until it can be opened.
    if let Err(error) = reconciler.open_store_db() {
        tracing::warn!(error = %anyhow::Error::from(error), "cannot open the store database yet");
    }
    // Attach first, then scan (invariant 4): the source with the interest the last index
    // had is replaced by the bootstrap scan's interest right after the scan.
    let interest = reconciler.index().interest(&layout);
    let (mut source, backend_reason) = crate::source::open(
        match args.backend {
            Backend::Auto => crate::source::BackendChoice::Auto,
            Backend::Ebpf => crate::source::BackendChoice::Ebpf,
            Backend::Fanotify => crate::source::BackendChoice::Fanotify,
        },
        &interest,
        &crate::source::ebpf::EbpfOptions {
            ring_buf_bytes: args.ebpf_ring_buffer_bytes,
            hooks: match args.ebpf_hooks {
                EbpfHooks::Auto => crate::source::ebpf::HookChoice::Auto,
                EbpfHooks::Tracepoints => crate::source::ebpf::HookChoice::Tracepoints,
                EbpfHooks::Fentry => crate::source::ebpf::HookChoice::Fentry,
            },
            ..crate::source::ebpf::EbpfOptions::default()
        },
    )
    .context("cannot attach a kernel source")?;
    tracing::info!(backend = source.name(), reason = %backend_reason, "source attached");
    let state_watch = crate::state_watch::StateWatch::new(&layout)?;
    let (jobs, job_receiver) =
        crate::tracker::job_channel().context("cannot create the tracker's wake-up eventfd")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let server_config = crate::server::ServerConfig {
        socket: args.socket.socket.clone(),
        nix_roots: nix_roots_socket
            .clone()
            .map(|socket| crate::server::NixRootsConfig {
                socket,
                allow_unreadable_runtime: args.nix_roots_allow_unreadable_runtime,
            }),
        access: crate::server::Access {
            uids: args.allow_uids.iter().copied().collect(),
            gids: args.allow_gids.iter().copied().collect(),
            reveal_uids: args.reveal_uids.iter().copied().collect(),
            reveal_gids: args.reveal_gids.iter().copied().collect(),
        },
        limits: crate::server::Limits {
            max_connections: args.max_connections,
            max_requests_per_connection: args.max_requests_per_connection,
            request_timeout: std::time::Duration::from_millis(args.request_timeout_ms),
            ..crate::server::Limits::default()
        },
    };
    let start_server = || crate::server::serve(server_config, jobs, shutdown.clone());
    // Least privilege (DESIGN.md 6): after attach, before the server thread exists.
    let (server, privileges) = if args.keep_privileges {
        tracing::warn!("--keep-privileges: running with every privilege");
        (start_server()?, crate::privilege::Privileges::kept())
    } else {
        let writable: Vec<&std::path::Path> = own_dirs.iter().map(PathBuf::as_path).collect();
        if let Some(user) = &user {
            // The index (open now, with its WAL files) must stay writable by the user; the
            // sockets are bound after the switch, by the user, in its directories.
            let mut index_files = vec![args.db.clone()];
            for suffix in ["-wal", "-shm"] {
                let mut file = args.db.clone().into_os_string();
                file.push(suffix);
                index_files.push(PathBuf::from(file));
            }
            crate::privilege::hand_over(user, &own_dirs_created, &index_files)?;
        }
        let mut privileges = crate::privilege::drop_privileges(
            source.name(),
            user.as_ref(),
            &writable,
            &layout,
            &mut || {
                source
                    .set_interest(&interest)
                    .map_err(|error| format!("{:#}", anyhow::Error::from(error)))
            },
        )
        .with_context(|| {
            if user.is_some() {
                "cannot switch to --user and drop privileges"
            } else {
                "cannot drop privileges (--keep-privileges skips this, for debugging)"
            }
        })?;
        // Still one thread: the server's and every later one inherit the domain.
        crate::privilege::confine_writes(&mut privileges, &writable)?;
        (start_server()?, privileges)
    };
    let options = crate::tracker::TrackerOptions {
        default_query_wait: std::time::Duration::from_secs(args.query_wait_secs),
        verify_interval: (args.verify_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(args.verify_interval_secs)),
        backend_reason,
        rescan_delay: std::time::Duration::from_millis(args.rescan_delay_ms),
        privileges: privileges.to_json(),
        ..crate::tracker::TrackerOptions::default()
    };
    let tracker =
        crate::tracker::Tracker::new(reconciler, source, state_watch, job_receiver, options);
    let result = tracker.run(&shutdown);
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `status`'s `privileges.identity` in one line.
fn runs_as(identity: &serde_json::Value) -> String {
    let groups = match identity["groups"].as_array() {
        Some(groups) if groups.is_empty() => "no supplementary groups".to_owned(),
        Some(groups) => format!("groups {}", serde_json::Value::from(groups.clone())),
        None => "groups ?".to_owned(),
    };
    let who = match identity["user"].as_str() {
        Some(name) => format!("user {name}"),
        None if identity["uid_0_kept"] == true => "uid 0 kept: no --user".to_owned(),
        None => "?".to_owned(),
    };
    format!(
        "uid {}, gid {}, {groups} ({who})",
        identity["uid"], identity["gid"]
    )
}

/// `status`'s Landlock state and /proc reader in one line.
fn confinement(status: &serde_json::Value) -> String {
    let privileges = &status["privileges"];
    let landlock = &privileges["landlock"];
    let threads = match landlock["threads"].as_array() {
        Some(threads) if !threads.is_empty() => threads
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    };
    let reader = match (&privileges["proc_reader"], &status["proc_reader"]) {
        (serde_json::Value::Object(reader), live) => {
            let caps: Vec<&str> = reader
                .get("capabilities")
                .and_then(serde_json::Value::as_object)
                .map(|caps| caps.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!(
                "; /proc reader pid {} {} ({}, seccomp allow-list, no Landlock)",
                reader.get("pid").unwrap_or(&serde_json::Value::Null),
                live["state"].as_str().unwrap_or("?"),
                caps.join(", ")
            )
        }
        _ => "; no /proc reader".to_owned(),
    };
    format!(
        "Landlock {} on threads: {threads}{reader}",
        landlock["state"].as_str().unwrap_or("?")
    )
}

/// Sends one request and reads one response line.
fn ask(
    socket: &std::path::Path,
    request: &crate::protocol::Request,
    timeout: std::time::Duration,
) -> anyhow::Result<crate::protocol::Response> {
    use std::io::{BufRead as _, BufReader};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the tracker at {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).context("cannot send the request")?;
    let mut response = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut response)
        .context("no answer from the tracker")?;
    serde_json::from_slice(&response).context("the tracker's answer is not valid JSON")
}

fn query_command(args: QueryArgs) -> anyhow::Result<ExitCode> {
    use crate::protocol::{ErrorKind, Request, Response};
    let wait_ms = if args.no_wait {
        Some(0)
    } else {
        args.wait_secs.map(|secs| secs.saturating_mul(1000))
    };
    let timeout = std::time::Duration::from_millis(wait_ms.unwrap_or(300_000))
        + std::time::Duration::from_secs(60);
    match ask(&args.socket.socket, &Request::Query { wait_ms }, timeout)? {
        Response::Roots { report } => {
            let mut stdout = io::BufWriter::new(io::stdout().lock());
            let written = if args.json {
                // Pretty-printed like `scan --json`, straight from the text: no value tree.
                let mut pretty = serde_json::Serializer::pretty(&mut stdout);
                serde_transcode::transcode(
                    &mut serde_json::Deserializer::from_str(report.get()),
                    &mut pretty,
                )
                .map_err(io::Error::from)
                .and_then(|()| stdout.write_all(b"\n"))
            } else {
                crate::report::write_print_roots_json(report.get(), &mut stdout)
            };
            match written.and_then(|()| stdout.flush()) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
                Err(error) => return Err(error).context("cannot write to standard output"),
            }
            let completeness: crate::report::Completeness =
                serde_json::from_str(report.get()).context("the tracker's report is malformed")?;
            if completeness.complete {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "root-tracker: incomplete: {} potential root(s) could not be read; the list above may be missing roots",
                    completeness.unreadable.len()
                );
                Ok(ExitCode::from(EXIT_INCOMPLETE))
            }
        }
        Response::Error {
            error: ErrorKind::Unsettled,
            message,
        } => {
            eprintln!("root-tracker: {message}");
            Ok(ExitCode::from(EXIT_UNSETTLED))
        }
        Response::Error { error, message } => {
            anyhow::bail!("the tracker refused ({error:?}): {message}")
        }
        Response::Status { .. } => anyhow::bail!("the tracker answered a query with a status"),
    }
}

fn status_command(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use crate::protocol::{Request, Response};
    match ask(
        &args.socket.socket,
        &Request::Status {},
        std::time::Duration::from_secs(60),
    )? {
        Response::Status { status } => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let settled = &status["settled"];
                println!(
                    "backend: {} ({})",
                    status["backend"].as_str().unwrap_or("?"),
                    status["backend_reason"].as_str().unwrap_or("")
                );
                let base_dir = &status["source_checks"]["base_dir"];
                match base_dir["state"].as_str() {
                    Some("verified") => println!(
                        "relative paths: named through /proc only if their directory is the one the kernel used"
                    ),
                    Some(state) => println!(
                        "relative paths: {state} ({}): a directory fd reused or a chdir right after a call can misname them",
                        base_dir["reason"].as_str().unwrap_or("")
                    ),
                    None => {}
                }
                let io_uring = &status["source_checks"]["io_uring_names"];
                match io_uring["state"].as_str() {
                    Some("read") => {
                        println!("io_uring path operations: judged by their names, like syscalls")
                    }
                    Some(state) => println!(
                        "io_uring path operations: names {state} ({}): each one unsettles the index",
                        io_uring["reason"].as_str().unwrap_or("")
                    ),
                    None => {}
                }
                println!("runs as: {}", runs_as(&status["privileges"]["identity"]));
                println!("confined: {}", confinement(&status));
                println!(
                    "index: {}{}, generation {}",
                    settled["state"].as_str().unwrap_or("?"),
                    settled["reason"]
                        .as_str()
                        .map(|reason| format!(" ({reason})"))
                        .unwrap_or_default(),
                    status["generation"]
                );
                println!(
                    "roots: static {}, indirect {}",
                    status["roots"]["static"], status["roots"]["indirect"]
                );
                println!(
                    "watching: {} paths, {} state dirs",
                    status["watched_paths"], status["watched_state_dirs"]
                );
                println!(
                    "events: {} seen, {} dropped",
                    status["source"]["events"], status["source"]["dropped"]
                );
                println!(
                    "reconciler: {} hints, {} rechecks, {} rescans, {} verifications, drift {}",
                    status["reconciler"]["hints"],
                    status["reconciler"]["rechecks"],
                    status["reconciler"]["rescans"],
                    status["reconciler"]["verifications"],
                    status["reconciler"]["drift"]
                );
                match status["last_fence_ms"].as_f64() {
                    Some(ms) => println!("last fence: {ms:.2} ms"),
                    None => println!("last fence: none yet (no query answered)"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { error, message } => {
            anyhow::bail!("the tracker refused ({error:?}): {message}")
        }
        Response::Roots { .. } => anyhow::bail!("the tracker answered a status request with roots"),
    }
}
