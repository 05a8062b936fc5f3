//! `cargo xtask bench memory`: where the live tracker's memory goes on `bench events`' store
//! (indirect roots `home/u<h>/p<j>/result` with their `gcroots/auto` links): its resident set
//! after the bootstrap scan, after the first fenced query and after a few more, the size of its
//! index database, and `root-tracker scan --json`'s peak on the same store. Printed, never
//! written to BENCHMARKS.md: it is a tool for finding memory, not a published row.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::bench::{measure, median};
use crate::fixture::Fixture;
use crate::tracker_process::RunningTracker;
use crate::{cargo, run, setup_and_report, target_dir};

/// Stores measured when `--sizes` names none.
const DEFAULT_SIZES: [usize; 1] = [100_000];

/// Queries after the first, for the warm time and the steady-state footprint.
const WARM_QUERIES: usize = 3;

/// The memory lines of `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Footprint {
    rss: u64,
    hwm: u64,
    anon: u64,
}

impl Footprint {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
            anon: field("RssAnon:")?,
        })
    }
}

pub fn memory(sizes: &[usize], keep: bool) -> anyhow::Result<()> {
    let env = setup_and_report()?;
    run(cargo(&env).args(["build", "--release", "-p", "root-tracker"]))?;
    let binary = target_dir().join("release/root-tracker");
    let sizes = if sizes.is_empty() {
        &DEFAULT_SIZES[..]
    } else {
        sizes
    };
    for &roots in sizes {
        eprintln!("bench memory: building a store with {roots} indirect roots");
        let fixture = Fixture::with_indirect_roots(roots)?;
        measure_store(&binary, &fixture, roots)?;
        if keep {
            let root = fixture.keep();
            println!("  store kept at {}", root.display());
        }
    }
    Ok(())
}

fn measure_store(binary: &Path, fixture: &Fixture, roots: usize) -> anyhow::Result<()> {
    let mut scan = fixture.tracker_scan(binary);
    scan.arg("--json");
    measure(&mut scan)?;
    let scan_peak_kib = measure(&mut scan)?.max_rss_kib;

    let tracker = RunningTracker::start(binary, fixture, "ebpf")?;
    let bootstrapped = Footprint::of(tracker.pid())?;
    let (first_wall, first_answer) = tracker.query()?;
    let answer_len = first_answer.len();
    drop(first_answer);
    let first = Footprint::of(tracker.pid())?;
    let mut walls = Vec::new();
    for _ in 0..WARM_QUERIES {
        walls.push(tracker.query()?.0);
    }
    let warm = Footprint::of(tracker.pid())?;
    let database_kib = database_kib(&tracker.socket())?;
    drop(tracker);

    let per_root = |kib: u64| kib as f64 * 1024.0 / roots.max(1) as f64;
    let ms = |wall: Duration| wall.as_secs_f64() * 1e3;
    println!("{roots} indirect roots (answer {answer_len} bytes):");
    for (stage, footprint) in [
        ("after bootstrap", bootstrapped),
        ("after 1st query", first),
        ("after warm queries", warm),
    ] {
        println!(
            "  {stage:<20} VmRSS {:>8.1} MiB (anon {:>8.1} MiB)  VmHWM {:>8.1} MiB  ({:.0} B/root peak)",
            footprint.rss as f64 / 1024.0,
            footprint.anon as f64 / 1024.0,
            footprint.hwm as f64 / 1024.0,
            per_root(footprint.hwm),
        );
    }
    println!(
        "  first query {:.0} ms, warm median {:.0} ms; index database {:.1} MiB; scan --json peak {:.1} MiB",
        ms(first_wall),
        ms(median(walls)),
        database_kib as f64 / 1024.0,
        scan_peak_kib as f64 / 1024.0,
    );
    Ok(())
}

/// The index database and its WAL, next to the tracker's socket.
fn database_kib(socket: &Path) -> anyhow::Result<u64> {
    let dir = socket.parent().context("the socket has no directory")?;
    let mut bytes = 0;
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        if let Ok(metadata) = fs::metadata(dir.join(name)) {
            bytes += metadata.len();
        }
    }
    Ok(bytes / 1024)
}
