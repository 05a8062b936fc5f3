//! `cargo xtask bench gc`: `store-gc` against `nix-store --gc` on synthetic stores of 20k, 100k
//! and 1M paths, in one run: the roots phase (tracker query vs traversal), the dry run
//! (`--print-dead`), a real collection, and peak memory. Results go to BENCHMARKS.md.
//!
//! The stores are registered with the real `nix-store --register-validity`: closures of up to a
//! thousand paths that share a small base (like a system's generations over a common libc),
//! about 35% of them rooted through direct and indirect roots. `store-gc` runs as an
//! unprivileged user that owns the store, with the tracker (eBPF) running as root.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::{drop_caches, machine_description, measure, median, write_section};
use crate::fixture::{Fixture, nix32_hash};
use crate::store_owner::StoreOwner;
use crate::tracker_process::RunningTracker;
use crate::{cargo, run, setup_and_report, workspace_root};

/// Paths per closure: references stay inside a closure or point into the shared base.
const CLOSURE: usize = 1000;
/// Share of closures that are rooted (alive).
const LIVE_CLOSURES_PERCENT: u64 = 35;
/// Largest store on which the real `nix-store` is run (it needs ~30 s at 100k; minutes at 1M).
const NIX_MAX_PATHS: usize = 100_000;

/// A store to collect: where it is and what went into it.
struct Synthetic {
    fixture: Fixture,
    references: usize,
    roots: usize,
}

/// SplitMix64: reproducible stores from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn build_store(paths: usize, seed: u64) -> anyhow::Result<Synthetic> {
    let fixture = Fixture::new()?;
    let store = fixture.store_dir();
    let name = |index: usize| store.join(format!("{}-p{index}", nix32_hash(seed ^ index as u64)));
    let base = (paths / 100).max(10);
    let mut rng = Rng(seed);
    let mut registration = Vec::with_capacity(paths * 300);
    let mut references = 0;
    for index in 0..paths {
        let path = name(index);
        fs::write(&path, b"")?;
        let closure_start = base + (index.saturating_sub(base) / CLOSURE) * CLOSURE;
        let mut refs: Vec<usize> = Vec::new();
        if index > 0 {
            for _ in 0..rng.below(8) {
                let target = if index < base || rng.below(10) == 0 {
                    rng.below(index.min(base))
                } else if index > closure_start {
                    closure_start + rng.below(index - closure_start)
                } else {
                    continue;
                };
                refs.push(target);
            }
        }
        refs.sort_unstable();
        refs.dedup();
        references += refs.len();
        let nar_size = 1000 + rng.below(100_000);
        let mut entry = format!(
            "{}\nsha256:{}\n{nar_size}\n\n{}\n",
            path.display(),
            "0".repeat(64),
            refs.len()
        );
        for target in refs {
            entry.push_str(&format!("{}\n", name(target).display()));
        }
        registration.extend_from_slice(entry.as_bytes());
    }
    fixture.nix_store(
        &["--register-validity", "--hash-given"],
        Some(&registration),
    )?;
    // Roots: in a rooted closure, a direct root on its top path and indirect roots on a few
    // more (as `nix-build` results in users' homes would be).
    let gcroots = fixture.state_dir().join("gcroots/bench");
    let auto = fixture.state_dir().join("gcroots/auto");
    fs::create_dir_all(&gcroots)?;
    fs::create_dir_all(&auto)?;
    let mut roots = 0;
    let mut closure_start = base;
    while closure_start < paths {
        let end = (closure_start + CLOSURE).min(paths);
        if rng.next() % 100 < LIVE_CLOSURES_PERCENT {
            symlink(name(end - 1), gcroots.join(format!("c{closure_start}")))?;
            roots += 1;
            for extra in 0..(end - closure_start) / 50 {
                let target = closure_start + rng.below(end - closure_start);
                let home = fixture
                    .root()
                    .join(format!("home/u{}/c{closure_start}-{extra}", roots % 100));
                fs::create_dir_all(&home)?;
                let result = home.join("result");
                symlink(name(target), &result)?;
                symlink(&result, auto.join(nix32_hash(seed ^ (roots as u64) << 20)))?;
                roots += 1;
            }
        }
        closure_start = end;
    }
    Ok(Synthetic {
        fixture,
        references,
        roots,
    })
}

/// The seed of the bench's store of `paths` paths.
fn store_seed(paths: usize) -> u64 {
    0x6c0_u64 ^ paths as u64
}

/// `cargo xtask bench gc-store --sizes N`: builds the bench's store of N paths (the same
/// seed, so the same graph and roots) and keeps it, for profiling one phase by hand without
/// running the whole benchmark. Prints where it is and the environment that aims Nix at it;
/// the caller removes it (`rm -rf`) when done.
pub fn keep_store(sizes: &[usize]) -> anyhow::Result<()> {
    if sizes.is_empty() {
        bail!("bench gc-store needs --sizes N");
    }
    for &paths in sizes {
        let synthetic = build_store(paths, store_seed(paths))?;
        let root = synthetic.fixture.keep();
        let (references, roots, root) = (synthetic.references, synthetic.roots, root.display());
        println!(
            "{paths} paths, {references} references, {roots} roots: {root}\n  \
             NIX_STORE_DIR={root}/store NIX_STATE_DIR={root}/state NIX_LOG_DIR={root}/log \
             NIX_CONF_DIR={root}/conf"
        );
    }
    Ok(())
}

struct Row {
    paths: usize,
    references: usize,
    roots: usize,
    dead: usize,
    tracker_query: Duration,
    scan: Duration,
    nix_roots: Option<Duration>,
    ours_dry_warm: Duration,
    ours_dry_cold: Duration,
    ours_dry_rss_kib: i64,
    nix_dry: Option<Duration>,
    nix_dry_rss_kib: Option<i64>,
    phases: serde_json::Value,
    ours_gc: Option<Duration>,
    ours_gc_note: String,
    nix_gc: Option<Duration>,
    same_store_after: Option<bool>,
}

fn stdout_of(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(output.stdout)
}

/// The store directory's entries, by name: what a collection left.
fn store_names(fixture: &Fixture) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(fixture.store_dir())?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.retain(|name| !name.starts_with('.'));
    names.sort();
    Ok(names)
}

fn bench_size(
    paths: usize,
    user: &StoreOwner,
    binaries: &Binaries,
    runs: usize,
) -> anyhow::Result<Row> {
    let seed = store_seed(paths);
    eprintln!("bench gc: building a store of {paths} paths");
    let built = Instant::now();
    let synthetic = build_store(paths, seed)?;
    let fixture = &synthetic.fixture;
    user.own(fixture)?;
    eprintln!("bench gc: built in {:.1} s", built.elapsed().as_secs_f64());
    let tracker = RunningTracker::start_with(
        &binaries.tracker,
        fixture,
        "ebpf",
        &["--allow-uid", &user.uid.to_string()],
    )?;
    let socket = tracker.socket();

    // Roots phase: the tracker's fenced answer against a traversal (ours and Nix's).
    let tracker_query = median(
        (0..runs)
            .map(|_| tracker.query().map(|(wall, _)| wall))
            .collect::<anyhow::Result<_>>()?,
    );
    let scan = median(
        (0..runs)
            .map(|_| measure(&mut fixture.tracker_scan(&binaries.tracker)).map(|s| s.wall))
            .collect::<anyhow::Result<_>>()?,
    );
    let run_nix = paths <= NIX_MAX_PATHS;
    let nix_roots = if run_nix {
        let mut command = fixture.nix_command("nix-store");
        command.args(["--gc", "--print-roots"]);
        Some(measure(&mut command)?.wall)
    } else {
        None
    };

    // Dry run: what is dead, as `--print-dead`, checked byte for byte against Nix's.
    let ours_dead =
        stdout_of(&mut user.store_gc(&binaries.store_gc, fixture, &socket, &["--print-dead"]))?;
    let dead = ours_dead
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let (nix_dry, nix_dry_rss_kib) = if run_nix {
        let mut command = fixture.nix_command("nix-store");
        command.args(["--gc", "--print-dead"]);
        let nix_dead = stdout_of(&mut command)?;
        if nix_dead != ours_dead {
            bail!(
                "store-gc --print-dead differs from nix-store --gc --print-dead at {paths} paths"
            );
        }
        let sample = measure(
            fixture
                .nix_command("nix-store")
                .args(["--gc", "--print-dead"]),
        )?;
        (Some(sample.wall), Some(sample.max_rss_kib))
    } else {
        (None, None)
    };
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.push(measure(&mut user.store_gc(
            &binaries.store_gc,
            fixture,
            &socket,
            &["--dry-run"],
        ))?);
    }
    let ours_dry_rss_kib = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
    let ours_dry_warm = median(samples.iter().map(|s| s.wall).collect());
    drop_caches()?;
    let ours_dry_cold =
        measure(&mut user.store_gc(&binaries.store_gc, fixture, &socket, &["--dry-run"]))?.wall;
    let phases: serde_json::Value = serde_json::from_slice(&stdout_of(&mut user.store_gc(
        &binaries.store_gc,
        fixture,
        &socket,
        &["--dry-run", "--json"],
    ))?)
    .context("store-gc --json printed no JSON")?;

    // A real collection, against `nix-store --gc` on an identical store built again.
    let mut ours_gc = None;
    let mut ours_gc_note = String::new();
    let started = Instant::now();
    let collected = user
        .store_gc(&binaries.store_gc, fixture, &socket, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if collected.status.success() {
        ours_gc = Some(started.elapsed());
    } else {
        ours_gc_note = String::from_utf8_lossy(&collected.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
    }
    let (nix_gc, same_store_after) = if run_nix && ours_gc.is_some() {
        let twin = build_store(paths, seed)?;
        let started = Instant::now();
        stdout_of(twin.fixture.nix_command("nix-store").arg("--gc"))?;
        let nix_gc = started.elapsed();
        (
            Some(nix_gc),
            Some(store_names(fixture)? == store_names(&twin.fixture)?),
        )
    } else {
        (None, None)
    };
    drop(tracker);
    Ok(Row {
        paths,
        references: synthetic.references,
        roots: synthetic.roots,
        dead,
        tracker_query,
        scan,
        nix_roots,
        ours_dry_warm,
        ours_dry_cold,
        ours_dry_rss_kib,
        nix_dry,
        nix_dry_rss_kib,
        phases,
        ours_gc,
        ours_gc_note,
        nix_gc,
        same_store_after,
    })
}

struct Binaries {
    tracker: PathBuf,
    store_gc: PathBuf,
}

pub fn gc(quick: bool, chosen_sizes: &[usize]) -> anyhow::Result<()> {
    let env = setup_and_report()?;
    run(cargo(&env).args(["build", "--release", "-p", "root-tracker", "-p", "daemon"]))?;
    let binaries = Binaries {
        tracker: workspace_root().join("target/release/root-tracker"),
        store_gc: workspace_root().join("target/release/store-gc"),
    };
    let sizes: &[usize] = if !chosen_sizes.is_empty() {
        chosen_sizes
    } else if quick {
        &[5_000]
    } else {
        &[20_000, 100_000, 1_000_000]
    };
    let runs = if quick { 1 } else { 3 };
    let user = StoreOwner::create("rtbench")?;
    let mut rows = Vec::new();
    for &paths in sizes {
        rows.push(bench_size(paths, &user, &binaries, runs)?);
    }
    let mut command = "cargo xtask bench gc".to_owned();
    if quick {
        command.push_str(" --quick");
    }
    if !chosen_sizes.is_empty() {
        let sizes: Vec<String> = chosen_sizes.iter().map(ToString::to_string).collect();
        command.push_str(&format!(" --sizes {}", sizes.join(",")));
    }
    let body = render(&rows, &command);
    print!("{body}");
    write_section(&workspace_root().join("BENCHMARKS.md"), "gc", &body)
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1e3)
}

fn ratio(nix: Option<Duration>, ours: Duration) -> String {
    nix.map_or_else(
        || "–".to_owned(),
        |nix| {
            let ratio = nix.as_secs_f64() / ours.as_secs_f64().max(1e-9);
            if ratio < 10.0 {
                format!("{ratio:.1}×")
            } else {
                format!("{ratio:.0}×")
            }
        },
    )
}

fn optional_ms(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "not run".to_owned(), ms)
}

fn render(rows: &[Row], command: &str) -> String {
    let mut out = format!(
        "## Garbage collection: `store-gc` vs `nix-store --gc`\n\n`{command}`. {}. Synthetic \
         stores registered with `nix-store --register-validity` (closures of {CLOSURE} paths over \
         a shared base, {LIVE_CLOSURES_PERCENT}% of closures rooted by a direct root and indirect \
         roots in homes). `store-gc` runs unprivileged with the eBPF tracker; `nix-store` as root. \
         Warm runs are medians; `--print-dead` outputs were compared byte for byte where Nix ran \
         (nix-store is not run above {NIX_MAX_PATHS} paths).\n\n",
        machine_description()
    );
    out.push_str(
        "| paths | refs | roots | dead | roots: tracker query | roots: `root-tracker scan` | roots: nix `--print-roots` | dry run: store-gc warm | cold | peak RSS | dry run: nix `--print-dead` | nix RSS | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} MiB | {} | {} | {} |\n",
            row.paths,
            row.references,
            row.roots,
            row.dead,
            ms(row.tracker_query),
            ms(row.scan),
            optional_ms(row.nix_roots),
            ms(row.ours_dry_warm),
            ms(row.ours_dry_cold),
            row.ours_dry_rss_kib as f64 / 1024.0,
            optional_ms(row.nix_dry),
            row.nix_dry_rss_kib.map_or_else(
                || "–".to_owned(),
                |kib| format!("{:.0} MiB", kib as f64 / 1024.0)
            ),
            ratio(row.nix_dry, row.ours_dry_warm),
        ));
    }
    out.push_str("\nReal collection (deletes; Nix on an identical store built again):\n\n| paths | store-gc | nix-store --gc | ratio | same store after |\n|---|---|---|---|---|\n");
    for row in rows {
        let ours = row.ours_gc.map_or_else(
            || format!("refused: {}", row.ours_gc_note.replace('|', "/")),
            ms,
        );
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.paths,
            ours,
            optional_ms(row.nix_gc),
            row.ours_gc
                .map_or_else(|| "–".to_owned(), |ours| ratio(row.nix_gc, ours)),
            row.same_store_after
                .map_or_else(|| "–".to_owned(), |same| same.to_string()),
        ));
    }
    out.push_str("\nstore-gc phases of one warm dry run (`--json`):\n\n");
    for row in rows {
        out.push_str(&format!("- {} paths: `{}`\n", row.paths, row.phases));
    }
    out
}
