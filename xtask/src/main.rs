//! Project tasks: `cargo xtask setup | test | run | bench | soak | vm`. See README.md.

mod bench;
mod bench_events;
mod bench_gc;
mod bench_memory;
mod fixture;
mod setup;
mod soak;
mod store_owner;
mod tracker_process;
mod vm;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "root-tracker's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, nightly rust-src, bpf-linker).
    /// Idempotent: quick when everything is present.
    Setup,
    /// Run setup, then every test: unit, integration and privileged (run as root), the fuzz
    /// target briefly, and `vm` (the eBPF source on Linux 6.1 under qemu).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
    /// The main job, as far as it exists: scan this machine's Nix store and summarise the roots
    /// (or, with no Nix store here, a demo store built with the real nix-store).
    Run,
    /// Measure, and write the results to BENCHMARKS.md.
    Bench {
        #[arg(value_enum, default_value = "scan")]
        area: BenchArea,
        /// Smaller sizes, for trying the benchmark itself.
        #[arg(long)]
        quick: bool,
        /// Store sizes (paths) for `gc`, instead of 20k, 100k and 1M; roots for `memory`,
        /// instead of 100k.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// `memory`: keep each store on disk (printed), for profiling by hand.
        #[arg(long)]
        keep: bool,
    },
    /// Run setup, then the live random-workload test (tracker vs scan, each backend) with
    /// many seeds, in release mode.
    Soak {
        /// Seeds per backend (`RT_LIVE_SEEDS`).
        #[arg(long, default_value_t = 2000)]
        seeds: u64,
        /// Operations per seed (`RT_LIVE_OPS`).
        #[arg(long, default_value_t = 500)]
        ops: u64,
    },
    /// Boot Debian's 6.1 cloud kernel under qemu (software emulation) with the BPF LSM enabled
    /// and check the eBPF source there: fexit/LSM probes, tracepoints, fentry/fexit, fenced
    /// tracker queries. Installs qemu-system-x86 and busybox-static; caches the kernel under
    /// target/vm/.
    Vm {
        /// Kill qemu and fail after this many seconds (boot included).
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
        timeout_secs: u64,
        /// Boot this kernel package instead of the one linux-image-cloud-amd64 depends on.
        #[arg(long)]
        kernel_package: Option<String>,
        /// Show every console line, not only the test's markers.
        #[arg(long)]
        verbose: bool,
        /// Run these vm-check steps instead of the default set, e.g. `--steps overhead`
        /// (unrelated file churn with no source, the tracepoint set and the fentry set).
        #[arg(long, value_delimiter = ',')]
        steps: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchArea {
    /// `root-tracker scan` against `nix-store --gc --print-roots`, 10k and 100k indirect roots.
    Scan,
    /// Live tracker: overhead on unrelated file churn, no tracker vs each backend. Run it on
    /// an idle machine (not right after `gc`, whose deletions leave the disk busy).
    Overhead,
    /// Live tracker: the overhead (as `overhead`, first, while the disk is quiet), event
    /// throughput and lag, and fenced query time against a scan at 10k, 100k and 1M roots.
    Events,
    /// `store-gc` against `nix-store --gc` (roots phase, dry run, real collection, memory) on
    /// synthetic stores of 20k, 100k and 1M paths.
    Gc,
    /// Only build `gc`'s store of each `--sizes` and keep it (printed), for profiling by hand.
    GcStore,
    /// The live tracker's memory on `events`' store of each `--sizes` roots (default 100k):
    /// resident set after bootstrap and queries, index size, `scan --json` peak. Printed only.
    Memory,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => {
            setup_and_report()?;
        }
        Task::Test { cargo_test_args } => test(&cargo_test_args)?,
        Task::Run => run_main_job()?,
        Task::Bench {
            area,
            quick,
            sizes,
            keep,
        } => match area {
            BenchArea::Scan => bench::scan(quick)?,
            BenchArea::Overhead => bench_events::overhead_only(quick)?,
            BenchArea::Events => bench_events::events(quick)?,
            BenchArea::Gc => bench_gc::gc(quick, &sizes)?,
            BenchArea::GcStore => bench_gc::keep_store(&sizes)?,
            BenchArea::Memory => bench_memory::memory(&sizes, keep)?,
        },
        Task::Soak { seeds, ops } => soak::soak(seeds, ops)?,
        Task::Vm {
            timeout_secs,
            kernel_package,
            verbose,
            steps,
        } => {
            let env = setup_and_report()?;
            let summary = vm::vm(
                &env,
                &vm::VmOptions {
                    timeout: std::time::Duration::from_secs(timeout_secs),
                    kernel_package,
                    verbose,
                    steps,
                },
            )?;
            println!("{summary}");
        }
    }
    Ok(())
}

/// Runs setup and prints what it found and did.
pub fn setup_and_report() -> anyhow::Result<setup::SetupReport> {
    let report = setup::run().context("setup failed")?;
    eprint!("{report}");
    Ok(report)
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), PathBuf::from)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || workspace_root().join("target"),
            |dir| {
                if dir.is_absolute() {
                    dir
                } else {
                    workspace_root().join(dir)
                }
            },
        )
}

/// A `cargo` command in the workspace, with the environment setup chose for the eBPF build.
pub fn cargo(env: &setup::SetupReport) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(workspace_root())
        .envs(env.env.iter().copied());
    command
}

/// Runs `command`, copying its standard output to ours line by line and showing each line
/// to `on_line` (to summarise a test run, say).
pub fn run_tee(
    command: &mut Command,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<std::process::ExitStatus> {
    command.stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.with_context(|| format!("cannot read the output of {command:?}"))?;
            println!("{line}");
            on_line(&line);
        }
    }
    Ok(child.wait()?)
}

/// Runs `command`, failing with its description if it does not succeed.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn test(cargo_test_args: &[String]) -> anyhow::Result<()> {
    let env = setup_and_report()?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "xtask: warning: not root; the privileged tests (eBPF, users, unprivileged scans) will fail. CI runs this as root."
        );
    }
    run(cargo(&env).args(["build", "--workspace", "--all-targets"]))?;
    let mut command = cargo(&env);
    command
        .args(["test", "--workspace", "--no-fail-fast", "--"])
        .args(cargo_test_args);
    let mut totals = TestTotals::default();
    let status = run_tee(&mut command, |line| totals.add(line))?;
    // The fuzz targets, briefly: counted as one test each.
    let mut fuzz_failures = Vec::new();
    for target in FUZZ_TARGETS {
        match fuzz(&env, target) {
            Ok(()) => totals.passed += 1,
            Err(error) => {
                eprintln!("xtask: fuzz target {target} failed: {error:#}");
                totals.failed += 1;
                fuzz_failures.push(*target);
            }
        }
    }
    // The eBPF source on Debian 12's 6.1 kernel under qemu (`cargo xtask vm`): this host's
    // kernel is not the one most machines run, and its verifier accepts what 6.1's refused
    // once. Counted as one test.
    let vm_failure = match vm::vm(&env, &vm::VmOptions::default()) {
        Ok(summary) => {
            println!("{summary}");
            totals.passed += 1;
            None
        }
        Err(error) => {
            eprintln!("xtask: vm (Linux 6.1 under qemu) failed: {error:#}");
            totals.failed += 1;
            Some(error)
        }
    };
    // One closing line for all test binaries, so CI does not judge the run by the last
    // binary's summary (often a doc-test run with 0 tests).
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if !fuzz_failures.is_empty() {
        bail!(
            "fuzz target(s) failed: {} (inputs in root-tracker/fuzz/artifacts/)",
            fuzz_failures.join(", ")
        );
    }
    if let Some(error) = vm_failure {
        return Err(error.context("the Linux 6.1 VM check (cargo xtask vm) failed"));
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The cargo-fuzz targets of `root-tracker/fuzz`.
const FUZZ_TARGETS: &[&str] = &["request"];
/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u32 = 20;

/// Builds and runs one fuzz target for [`FUZZ_SECONDS`] with the toolchain setup chose. The
/// eBPF object is not needed for it (`AYA_BUILD_SKIP`). A dev build without sanitizer: the code
/// under test is safe Rust, and this build costs about a quarter of the CPU time of cargo-fuzz's
/// default (release, AddressSanitizer, one codegen unit) for a fifth of its speed, which 20 s of
/// smoke-fuzzing does not need. Its own target dir (`root-tracker/fuzz/target`), never mixed
/// with the workspace's.
fn fuzz(env: &setup::SetupReport, target: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    println!("xtask: fuzzing {target} for {FUZZ_SECONDS} s (the first build takes minutes)");
    // The rustup proxy, not $CARGO: `+toolchain` picks the toolchain.
    run(Command::new("cargo")
        .current_dir(workspace_root().join("root-tracker"))
        .envs(env.env.iter().copied())
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO_TARGET_DIR")
        .arg(format!("+{}", env.ebpf_toolchain.name()))
        .args(["fuzz", "run", "--dev", "--sanitizer", "none", target, "--"])
        .arg(format!("-max_total_time={FUZZ_SECONDS}")))?;
    println!(
        "xtask: fuzz target {target} passed ({} s with its build)",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Sums cargo test's `test result: ok. N passed; M failed; K ignored; ...` lines.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(count), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

fn run_main_job() -> anyhow::Result<()> {
    let env = setup_and_report()?;
    run(cargo(&env).args(["build", "--release", "-p", "root-tracker", "-p", "daemon"]))?;
    let tracker = target_dir().join("release/root-tracker");
    let store_gc = target_dir().join("release/store-gc");
    let machine_db = PathBuf::from("/nix/var/nix/db/db.sqlite");
    if machine_db.exists() {
        println!("xtask: scanning this machine's Nix store (/nix/store, /nix/var/nix)");
        let mut scan = Command::new(&tracker);
        scan.arg("scan")
            .arg("--summary")
            .env_remove("NIX_STORE_DIR")
            .env_remove("NIX_STATE_DIR");
        report_scan(scan.status().context("cannot run root-tracker")?)?;
    } else {
        println!(
            "xtask: no Nix store on this machine ({} is absent)",
            machine_db.display()
        );
    }
    // The live tracker and the collector are shown on a store of their own: the machine's
    // store is never collected by this job.
    println!("xtask: building a demo store with nix-store");
    let demo = fixture::Fixture::demo().context("cannot build the demo store")?;
    // A path nothing roots: the collection below deletes it.
    let garbage = demo.add_file("garbage")?;
    println!("xtask: demo store in {}", demo.root().display());
    println!("xtask: root-tracker scan --summary:");
    let mut scan = demo.tracker_scan(&tracker);
    report_scan(
        scan.arg("--summary")
            .status()
            .context("cannot run root-tracker")?,
    )?;

    // The collector runs as the store's owner, an ordinary user, as in production. Creating
    // one needs root, as the tracker does.
    if !nix::unistd::geteuid().is_root() {
        println!("xtask: not root: the tracker and the collection demo need root; skipped");
        return Ok(());
    }
    let owner = store_owner::StoreOwner::create("rtdemo")?;
    owner.own(&demo)?;
    println!(
        "xtask: the demo store now belongs to the unprivileged user uid {}",
        owner.uid
    );
    let uid = owner.uid.to_string();
    let allow_args = ["--allow-uid", uid.as_str()];
    // The tracker runs as a dedicated system user of its own after attaching, as it should in
    // production. Declared before the tracker, so it is deleted after the tracker stops.
    let tracker_user = store_owner::StoreOwner::create("rtdemotrk")?;
    println!(
        "xtask: starting root-tracker run --backend auto --user {} on the demo store",
        tracker_user.name
    );
    let running = tracker_process::RunningTracker::start_as(
        &tracker,
        &demo,
        "auto",
        Some(&tracker_user),
        &allow_args,
    )?;
    let ask = |command: &str| -> anyhow::Result<()> {
        println!("xtask: root-tracker {command}:");
        // Exit 3 (incomplete) is explained by the tracker itself on stderr.
        let _ = Command::new(&tracker)
            .arg(command)
            .arg("--socket")
            .arg(running.socket())
            .status()
            .with_context(|| format!("cannot run root-tracker {command}"))?;
        Ok(())
    };
    ask("status")?;
    ask("query")?;
    // A new indirect root, made with the real nix-store while the tracker runs: the next
    // (fenced) query has it.
    let project = demo.root().join("home/alice/new-project");
    std::fs::create_dir_all(&project)?;
    let path = demo.add_file("new-build")?;
    demo.nix_store(
        &[
            "--add-root",
            &project.join("result").to_string_lossy(),
            "--indirect",
            "-r",
            &path.to_string_lossy(),
        ],
        None,
    )?;
    println!(
        "xtask: added the indirect root {}",
        project.join("result").display()
    );
    ask("query")?;
    collect_demo(&owner, &store_gc, &demo, &running, &garbage, &path)?;
    println!("xtask: stopping the tracker");
    drop(running);
    Ok(())
}

/// `store-gc collect` as the store's owner, with roots from the running tracker: what is
/// dead, then a real collection, then proof that it kept the roots and removed the garbage.
fn collect_demo(
    owner: &store_owner::StoreOwner,
    store_gc: &Path,
    demo: &fixture::Fixture,
    running: &tracker_process::RunningTracker,
    garbage: &Path,
    rooted: &Path,
) -> anyhow::Result<()> {
    // StoreOwner::store_gc passes --allow-unreadable-runtime: this machine may hide processes
    // even from root (a sandbox's pid 1), and store-gc refuses such answers unless told to
    // treat those /proc entries as Nix does. Any other unreadable entry still refuses.
    let collect = |args: &[&str], what: &str| -> anyhow::Result<()> {
        println!("xtask: store-gc collect {what}, as uid {}:", owner.uid);
        let status = owner
            .store_gc(store_gc, demo, &running.socket(), args)
            .status()
            .context("cannot run store-gc")?;
        if !status.success() {
            bail!("store-gc collect {what} failed: {status}");
        }
        Ok(())
    };
    collect(&["--print-dead"], "--print-dead")?;
    collect(&["--json"], "--json (deletes)")?;
    if garbage.exists() || !rooted.exists() {
        bail!(
            "the collection did not do what it should: garbage {} exists: {}, root {} exists: {}",
            garbage.display(),
            garbage.exists(),
            rooted.display(),
            rooted.exists()
        );
    }
    println!(
        "xtask: collected: {} is gone, the indirect root's {} is kept",
        garbage.display(),
        rooted.display()
    );
    Ok(())
}

fn report_scan(status: std::process::ExitStatus) -> anyhow::Result<()> {
    match status.code() {
        Some(0) => println!("xtask: the scan is complete"),
        Some(3) => println!(
            "xtask: the scan is incomplete (see the message above): some potential roots could not be read"
        ),
        _ => bail!("root-tracker scan failed: {status}"),
    }
    Ok(())
}
