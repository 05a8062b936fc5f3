//! An operation that started before its names became interesting must still reach the index,
//! for each backend: see `tests::interest_race` for the scenario (a rename over `result` held
//! by its directory's lock while an auto link to `result` appears).

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use root_tracker::layout::StoreLayout;
use tests::interest_race::{Rename, rename_started_before_its_name_was_watched};
use tests::{HermeticStore, TrackerProcess, require_root};

fn held_rename(backend: &str, how: Rename) {
    require_root();
    let store = HermeticStore::new();
    let registered = store.register_empty_paths("race", 1).remove(0);
    let unregistered = store.unregistered_path("race");
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    std::fs::create_dir_all(layout.auto_dir()).unwrap();
    let tracker = TrackerProcess::start(&store, backend, &[]);
    let seen = rename_started_before_its_name_was_watched(
        &layout,
        &store.path("home/u"),
        &registered,
        &unregistered,
        how,
        || Ok(tracker.query()),
    );
    if let Err(message) = seen {
        panic!(
            "backend {backend}, {how:?}: {message}\ntracker log:\n{}",
            tracker.log()
        );
    }
    let status = tracker.status();
    assert_eq!(status["reconciler"]["drift"], 0, "{status:#}");
    if backend == "ebpf" {
        assert!(
            status["source"]["unjudged"].as_u64() >= Some(1),
            "the rename's end was not reported as judged before the names were added: {status:#}"
        );
    }
}

#[test]
fn ebpf() {
    held_rename("ebpf", Rename::Syscall);
}

#[test]
fn ebpf_io_uring() {
    held_rename("ebpf", Rename::IoUring);
}

#[test]
fn fanotify() {
    held_rename("fanotify", Rename::Syscall);
}

#[test]
fn fanotify_io_uring() {
    held_rename("fanotify", Rename::IoUring);
}
