//! The live index against the kernel, for each backend: a seeded random workload of link,
//! directory, mount and io_uring operations runs against a hermetic store while
//! `root-tracker run` watches; after every batch a fenced query must equal a fresh scan.
//!
//! Replay one seed: `RT_SEED=<seed> cargo test -p tests --test live_random -- <backend>`.
//! More: `RT_LIVE_SEEDS=<n> RT_LIVE_OPS=<n>` (`cargo xtask soak` sets them).

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use root_tracker::layout::StoreLayout;
use tests::workload::Workload;
use tests::{HermeticStore, TmpfsMount, TrackerProcess, index_part, require_root};

/// Fields drop in order: the workload (its overlay tmpfs), then the second filesystem, then
/// the store's temp dir.
struct LiveStore {
    workload: Workload,
    _second_fs: TmpfsMount,
    store: HermeticStore,
}

impl LiveStore {
    fn new() -> Self {
        require_root();
        let store = HermeticStore::new();
        let mut targets = store.register_empty_paths("live", 5);
        targets.push(store.unregistered_path("unregistered"));
        // Two filesystems for user links: the store's own, and a tmpfs.
        let homes = [store.path("home/live"), store.path("home/other")];
        std::fs::create_dir_all(&homes[0]).unwrap();
        let second_fs = TmpfsMount::new(&homes[1]);
        let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
        Self {
            workload: Workload::new(layout, targets, homes),
            _second_fs: second_fs,
            store,
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn live_random(backend: &str) {
    let mut live = LiveStore::new();
    let tracker = TrackerProcess::start(&live.store, backend, &[]);
    let workload = &mut live.workload;
    let seeds: Vec<u64> = match std::env::var("RT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..env_number("RT_LIVE_SEEDS", 200)).collect(),
    };
    let operations = env_number("RT_LIVE_OPS", 200) as usize;
    for seed in seeds {
        let checked = workload.run_seed(seed, operations, |workload, done| {
            let answer = index_part(&tracker.query());
            let truth = workload.truth();
            if answer == truth {
                return Ok(());
            }
            Err(format!(
                "backend {backend}, seed {seed}: the fenced query differs from a scan after {done} operations.\n\
                 replay: RT_SEED={seed} cargo test -p tests --test live_random -- {backend}\n\
                 operations of this seed:\n{}\nquery: {answer:#}\nscan: {truth:#}\ntracker log:\n{}",
                workload.journal(),
                tracker.log()
            ))
        });
        if let Err(message) = checked {
            // Straight to the process's stderr, which the test harness does not capture:
            // in a long soak the other backend may run for many minutes more.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
            panic!("{message}");
        }
    }
    let status = tracker.status();
    assert_eq!(status["reconciler"]["drift"], 0, "{status:#}");
}

#[test]
fn ebpf() {
    live_random("ebpf");
}

#[test]
fn fanotify() {
    live_random("fanotify");
}
