//! A link made by an operation that started before its name became interesting.
//!
//! The eBPF programs judge an operation when it starts; the tracker adds names to the kernel's
//! filter when an auto link appears, then reads the link's target. An operation on names not
//! watched yet, started before they were added and making its change after that read, would be
//! seen by nobody: the auto link would stay stale (CI's live_random, ebpf seed 53). Here
//! `ln -sfn`'s rename of a temporary link over `result` is held between its start and its
//! change (its directory's lock is held, see `tests::dirlock`) while the auto link appears and
//! a fenced query shows it stale; once released, the next fenced query must show the new root.
//! The fanotify backend reports changes after they are made, so it must pass the same way.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};
use tests::dirlock::{DirLock, wait_blocked_in_syscall};
use tests::{HermeticStore, TrackerProcess, index_part, require_root};

fn truth(store: &HermeticStore) -> serde_json::Value {
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    let options = ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    };
    index_part(&scan(&layout, &options).unwrap().to_json())
}

fn rename_started_before_its_name_was_watched(backend: &str) {
    require_root();
    let store = HermeticStore::new();
    let target = store.register_empty_paths("race", 1).remove(0);
    let dir = store.path("home/u/dir");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("result");
    // Made before: a symlink into the store is reported whatever its name.
    let temporary = dir.join(".tmp-result");
    symlink(&target, &temporary).unwrap();
    // A cached negative dentry: the tracker's lookup of the missing link then needs no lock
    // (on a filesystem that keeps them, as ext4 does), and does not queue behind the symlink.
    assert!(std::fs::symlink_metadata(&link).is_err());
    let tracker = TrackerProcess::start(&store, backend, &[]);
    assert_eq!(index_part(&tracker.query()), truth(&store));

    let lock = DirLock::hold(&dir);
    let (tid_sender, tid_receiver) = std::sync::mpsc::channel();
    let renamer = {
        let (temporary, link) = (temporary.clone(), link.clone());
        std::thread::spawn(move || {
            tid_sender.send(nix::unistd::gettid().as_raw()).unwrap();
            std::fs::rename(temporary, link)
        })
    };
    let tid = tid_receiver.recv().unwrap();
    // Past its syscall entry (judged there: no auto link names `result` yet), waiting for
    // the directory's lock.
    wait_blocked_in_syscall(
        tid,
        &[libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2],
        Instant::now() + Duration::from_secs(60),
    );

    let auto = store.gcroots().join("auto/race");
    std::fs::create_dir_all(auto.parent().unwrap()).unwrap();
    symlink(&link, &auto).unwrap();
    let before = index_part(&tracker.query());
    assert_eq!(
        before["stale_links"][0]["link"].as_str(),
        auto.to_str(),
        "the tracker has not read the new auto link while the symlink waits: {before:#}"
    );
    assert!(before["roots"].as_array().unwrap().is_empty(), "{before:#}");

    let read = lock.release();
    assert!(read > 0, "getdents64 returned {read}");
    renamer.join().unwrap().unwrap();
    let after = index_part(&tracker.query());
    let expected = truth(&store);
    assert_eq!(
        expected["roots"].as_array().map(Vec::len),
        Some(1),
        "{expected:#}"
    );
    assert_eq!(
        after,
        expected,
        "backend {backend}: the link the held rename made is missing\ntracker log:\n{}",
        tracker.log()
    );
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
    rename_started_before_its_name_was_watched("ebpf");
}

#[test]
fn fanotify() {
    rename_started_before_its_name_was_watched("fanotify");
}
