//! Mount changes under a running tracker, for each backend: a tmpfs mounted over a directory
//! that holds (or will hold) an indirect root's user link is re-checked where it changed, not
//! by a rescan; the new filesystem is watched from then on (fanotify must mark it: a link
//! removed inside it must leave the answer); unmounting brings back what was beneath; a mount
//! elsewhere costs nothing. Every answer is fenced and compared with a scan.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::Path;

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};
use tests::{HermeticStore, TmpfsMount, TrackerProcess, index_part, require_root};

fn rooted(report: &serde_json::Value, target: &Path) -> bool {
    report["roots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|root| root["target"] == target.to_str().unwrap())
}

fn mounts_are_rechecked_where_they_change(backend: &str) {
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("mnt", 2);
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    let (covered, kept, elsewhere) = (
        store.path("home/user/covered"),
        store.path("home/user/kept"),
        store.path("home/user/elsewhere"),
    );
    for dir in [&covered, &kept, &elsewhere] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::create_dir_all(layout.auto_dir()).unwrap();
    // a0 is stale until `covered/result` exists; a1 roots targets[1] throughout.
    symlink(covered.join("result"), layout.auto_dir().join("a0")).unwrap();
    store.add_indirect_root(&kept.join("result"), &targets[1]);
    let tracker = TrackerProcess::start(&store, backend, &[]);
    let options = ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    };
    let check = |what: &str, expect_rooted: bool| {
        let report = tracker.query();
        let truth = index_part(&scan(&layout, &options).unwrap().to_json());
        assert_eq!(
            index_part(&report),
            truth,
            "{backend}, {what}: the fenced query differs from a scan\ntracker log:\n{}",
            tracker.log()
        );
        assert_eq!(rooted(&report, &targets[0]), expect_rooted, "{what}");
        assert!(rooted(&report, &targets[1]), "{what}");
    };
    check("before any mount", false);

    let mut over = TmpfsMount::new(&covered);
    symlink(&targets[0], covered.join("result")).unwrap();
    check("a link created in a tmpfs mounted over its directory", true);
    fs::remove_file(covered.join("result")).unwrap();
    check("that link removed inside the tmpfs", false);
    symlink(&targets[0], covered.join("result")).unwrap();
    check("created again inside the tmpfs", true);
    over.unmount();
    check("the tmpfs unmounted: the empty directory beneath", false);
    symlink(&targets[0], covered.join("result")).unwrap();
    check("a link created in the directory beneath", true);
    let mut hiding = TmpfsMount::new(&covered);
    check("an empty tmpfs over it hides it", false);
    hiding.unmount();
    check("and unmounting it shows it again", true);
    // One tmpfs replaced by another while the tracker is stopped, so that it sees only the
    // net change: the new one usually gets the old one's device number (the kernel reuses
    // anonymous ones), and must be watched all the same.
    let mut first = TmpfsMount::new(&covered);
    check("a tmpfs over the link's directory", false);
    let dev = |path: &Path| fs::metadata(path).unwrap().dev();
    let first_dev = dev(&covered);
    tracker.pause();
    first.unmount();
    let mut second = TmpfsMount::new(&covered);
    let reused = dev(&covered) == first_dev;
    tracker.resume();
    eprintln!("{backend}: device number reused by the second tmpfs: {reused}");
    symlink(&targets[0], covered.join("result")).unwrap();
    check("a link made in a tmpfs that replaced another", true);
    fs::remove_file(covered.join("result")).unwrap();
    check("and removed inside it", false);
    second.unmount();
    check("the directory beneath again", true);

    let mut unrelated = TmpfsMount::new(&elsewhere);
    check("a mount where no root is", true);
    unrelated.unmount();
    check("unmounted again", true);

    // Not counted as rescans: the eBPF source also sees other processes' io_uring path
    // operations, which unsettle the index whatever this test does.
    let log = tracker.log();
    let mount_unsettles: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("index unsettled") && line.contains("mount"))
        .collect();
    let comparable = root_tracker::mounts::MountTable::read()
        .unwrap()
        .has_unique_ids();
    assert!(
        mount_unsettles.is_empty() || !comparable,
        "{backend}: a mount below the state trees should be re-checked where it changed, not unsettle the index:\n{}",
        mount_unsettles.join("\n")
    );
    let status = tracker.status();
    assert_eq!(status["reconciler"]["drift"], 0, "{status:#}");
}

#[test]
fn ebpf_rechecks_mounts_where_they_change() {
    mounts_are_rechecked_where_they_change("ebpf");
}

#[test]
fn fanotify_rechecks_mounts_where_they_change() {
    mounts_are_rechecked_where_they_change("fanotify");
}
