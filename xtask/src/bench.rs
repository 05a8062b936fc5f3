//! `cargo xtask bench`: measurements against the real alternatives in the same run, written
//! to BENCHMARKS.md. Never part of the tests: timings are reported, not asserted.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::fixture::Fixture;
use crate::{cargo, run, setup_and_report, workspace_root};

/// One timed run of a command: wall time and the child's peak RSS.
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) max_rss_kib: i64,
}

/// GNU time, which reports the peak RSS of the command it runs (`setup` installs it).
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `command` once (stdout discarded): wall time from here, peak RSS from GNU time.
///
/// Not our own `wait4`'s `ru_maxrss`: a child started by `posix_spawn`/`vfork` takes the
/// parent's high-water RSS into its own at `exec`, so every child of a bench that holds a large
/// store listing reported at least the bench's own size (386 MiB at 1M paths, whatever ran).
/// GNU time forks the command from a small process of its own.
pub(crate) fn measure(command: &mut Command) -> anyhow::Result<Sample> {
    let rss_file = tempfile::NamedTempFile::new().context("cannot create a temp file")?;
    let mut timed = Command::new(GNU_TIME);
    timed
        .arg("--format=%M")
        .arg("--output")
        .arg(rss_file.path())
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    timed.stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let status = timed
        .status()
        .with_context(|| format!("cannot start {command:?} under {GNU_TIME}"))?;
    let wall = started.elapsed();
    // `root-tracker scan` exits 3 when the sandbox hides a process from it; that is a result.
    if !(status.success() || status.code() == Some(3)) {
        bail!("{command:?} failed: {status}");
    }
    let report = std::fs::read_to_string(rss_file.path())
        .with_context(|| format!("cannot read {GNU_TIME}'s report"))?;
    // The last line: GNU time puts "Command exited with non-zero status" lines before it.
    let max_rss_kib = report
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("{GNU_TIME} reported no peak RSS: {report:?}"))?;
    Ok(Sample { wall, max_rss_kib })
}

pub(crate) fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Drops the page, dentry and inode caches, so the next run reads from disk.
pub(crate) fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n").context("cannot drop caches (needs root)")
}

struct Row {
    roots: usize,
    cache: &'static str,
    nix: Duration,
    ours: Duration,
    nix_rss: i64,
    ours_rss: i64,
}

pub fn scan(quick: bool) -> anyhow::Result<()> {
    let env = setup_and_report()?;
    run(cargo(&env).args(["build", "--release", "-p", "root-tracker"]))?;
    let tracker = workspace_root().join("target/release/root-tracker");
    let sizes: &[usize] = if quick { &[1_000] } else { &[10_000, 100_000] };
    let (warm_runs, cold_runs) = if quick { (3, 1) } else { (5, 3) };
    let mut rows = Vec::new();
    let mut cold_note = None;
    for &count in sizes {
        eprintln!("bench scan: building a store with {count} indirect roots");
        let built = Instant::now();
        let fixture = Fixture::with_indirect_roots(count)?;
        eprintln!(
            "bench scan: built in {:.1} s",
            built.elapsed().as_secs_f64()
        );
        check_same_output(&fixture, &tracker, count)?;
        let nix = || {
            let mut command = fixture.nix_command("nix-store");
            command.args(["--gc", "--print-roots"]);
            command
        };
        let ours = || fixture.tracker_scan(&tracker);
        // Warm: one untimed run of each fills the caches.
        measure(&mut nix())?;
        measure(&mut ours())?;
        let mut samples = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..warm_runs {
            let n = measure(&mut nix())?;
            let o = measure(&mut ours())?;
            samples.0.push(n.wall);
            samples.1.push(o.wall);
            samples.2 = samples.2.max(n.max_rss_kib);
            samples.3 = samples.3.max(o.max_rss_kib);
        }
        rows.push(Row {
            roots: count,
            cache: "warm",
            nix: median(samples.0),
            ours: median(samples.1),
            nix_rss: samples.2,
            ours_rss: samples.3,
        });
        let mut cold = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..cold_runs {
            if let Err(error) = drop_caches() {
                cold_note = Some(format!("cold runs skipped: {error:#}"));
                break;
            }
            let n = measure(&mut nix())?;
            drop_caches()?;
            let o = measure(&mut ours())?;
            cold.0.push(n.wall);
            cold.1.push(o.wall);
            cold.2 = cold.2.max(n.max_rss_kib);
            cold.3 = cold.3.max(o.max_rss_kib);
        }
        if !cold.0.is_empty() {
            rows.push(Row {
                roots: count,
                cache: "cold",
                nix: median(cold.0),
                ours: median(cold.1),
                nix_rss: cold.2,
                ours_rss: cold.3,
            });
        }
    }
    let table = render_scan_table(&rows, quick, warm_runs, cold_runs, cold_note.as_deref());
    println!("{table}");
    if quick {
        eprintln!("bench scan: --quick results are not written to BENCHMARKS.md");
    } else {
        write_section(&workspace_root().join("BENCHMARKS.md"), "scan", &table)?;
        eprintln!("bench scan: wrote BENCHMARKS.md");
    }
    Ok(())
}

/// A benchmark of a wrong answer is worthless: both must print the same roots.
fn check_same_output(fixture: &Fixture, tracker: &Path, count: usize) -> anyhow::Result<()> {
    let ours = fixture.tracker_scan(tracker).output()?;
    let nix = fixture.nix_store(&["--gc", "--print-roots"], None)?;
    if ours.stdout != nix {
        bail!("root-tracker scan and nix-store --gc --print-roots disagree on the benchmark store");
    }
    let lines = nix.iter().filter(|&&c| c == b'\n').count();
    if lines < count {
        bail!("expected at least {count} roots, nix-store printed {lines}");
    }
    Ok(())
}

fn render_scan_table(
    rows: &[Row],
    quick: bool,
    warm_runs: usize,
    cold_runs: usize,
    cold_note: Option<&str>,
) -> String {
    let mut out = String::new();
    out.push_str("## Root scan: `root-tracker scan` vs `nix-store --gc --print-roots`\n\n");
    out.push_str(&format!(
        "Command: `cargo xtask bench scan{}`. {} (nproc {}). Median of {warm_runs} warm and {cold_runs} cold runs \
         (caches dropped before each cold run). Each store: N registered paths, each rooted by an indirect root \
         `home/u<h>/p<j>/result` (100 per home dir) and its `gcroots/auto` link. Both commands print \
         byte-identical output (checked before timing); both also walk /proc.\n\n",
        if quick { " --quick" } else { "" },
        machine_description(),
        std::thread::available_parallelism().map_or(0, usize::from),
    ));
    out.push_str("| roots | cache | nix-store | root-tracker scan | speed-up | peak RSS nix-store | peak RSS root-tracker |\n");
    out.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} ms | {:.0} ms | {:.1}× | {:.1} MiB | {:.1} MiB |\n",
            row.roots,
            row.cache,
            row.nix.as_secs_f64() * 1e3,
            row.ours.as_secs_f64() * 1e3,
            row.nix.as_secs_f64() / row.ours.as_secs_f64(),
            row.nix_rss as f64 / 1024.0,
            row.ours_rss as f64 / 1024.0,
        ));
    }
    if let Some(note) = cold_note {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out
}

pub(crate) fn machine_description() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("Measured {date} on Linux {}", kernel.trim())
}

/// Replaces (or appends) the `<!-- bench:NAME -->` section of BENCHMARKS.md.
pub(crate) fn write_section(file: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let existing = fs::read_to_string(file).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench`; each section names the command that produced it.\n".to_owned()
    });
    let section = format!("{start}\n{body}{end}\n");
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(from), Some(to)) if from < to => {
            format!(
                "{}{section}{}",
                &existing[..from],
                &existing[to + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{section}", existing.trim_end()),
    };
    fs::write(file, updated).with_context(|| format!("cannot write {}", file.display()))
}
