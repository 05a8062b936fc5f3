//! io_uring path operations against a running tracker with the eBPF backend in tracepoint
//! mode (the only mode this machine kind loads): operations on names no root depends on must
//! leave the index settled (before, every io_uring operation of any process on the machine
//! unsettled it and forced a rescan), and operations on a root link, by absolute path or
//! relative to a directory fd, must come through a fenced query exactly, by their hints alone.
//!
//! A rescan would find every change whatever the hints, so the tests check in the tracker's
//! log that no io_uring operation unsettled the index; a rescan for another reason (another
//! process on the machine, a full ring buffer) is printed, since the hints then proved less.

#![expect(
    clippy::unwrap_used,
    reason = "privileged tests panic on failure, as aya's test README recommends"
)]

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::symlink},
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::{
    fcntl::{OFlag, open},
    sys::stat::Mode,
};
use tests::{HermeticStore, TrackerProcess, index_part, require_root, uring};

/// One tracker at a time: a tracker starting (its scan) is unrelated churn for the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `AT_FDCWD` as the io_uring helpers take it.
const AT: i32 = libc::AT_FDCWD;

/// A hermetic store with indirect roots under `home/user/proj` and a tracker watching it.
/// Field order is drop order: the tracker stops before the store goes.
struct Setup {
    tracker: TrackerProcess,
    store: HermeticStore,
    targets: Vec<PathBuf>,
    proj: PathBuf,
}

impl Setup {
    fn new() -> Self {
        require_root();
        let store = HermeticStore::new();
        let targets = store.register_empty_paths("uring", 3);
        let proj = store.path("home/user/proj");
        fs::create_dir_all(&proj).unwrap();
        // `result` is an indirect root; so is `spare`, which the tests link from.
        store.add_indirect_root(&proj.join("result"), &targets[0]);
        store.add_indirect_root(&proj.join("spare"), &targets[0]);
        let tracker = TrackerProcess::start(&store, "ebpf", &["--ebpf-hooks", "tracepoints"]);
        let status = tracker.status();
        assert_eq!(
            status["source_checks"]["io_uring_names"]["state"], "read",
            "{status:#}"
        );
        Self {
            tracker,
            store,
            targets,
            proj,
        }
    }

    fn rescans(&self) -> serde_json::Value {
        self.tracker.status()["reconciler"]["rescans"].clone()
    }

    /// A fenced query must equal a fresh scan; `what` names the step.
    fn query_equals_scan(&self, what: &str) -> serde_json::Value {
        let answer = index_part(&self.tracker.query());
        let truth = index_part(&self.store.scan_json().0);
        assert_eq!(
            answer,
            truth,
            "{what}: the fenced query differs from a scan\ntracker log:\n{}",
            self.tracker.log()
        );
        answer
    }

    /// Fails if the tracker's log shows an io_uring operation unsettling the index; reports a
    /// rescan since `rescans_before` for another reason.
    fn no_io_uring_unsettled(&self, rescans_before: &serde_json::Value) {
        let log = self.tracker.log();
        let unsettled: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("index unsettled"))
            .collect();
        assert!(
            !unsettled.iter().any(|line| line.contains("io_uring")),
            "an io_uring operation unsettled the index:\n{}",
            unsettled.join("\n")
        );
        if self.rescans() != *rescans_before {
            eprintln!(
                "the tracker rescanned for another reason; these hints proved less:\n{}",
                unsettled.join("\n")
            );
        }
    }
}

fn has_root(answer: &serde_json::Value, link: &Path, target: &Path) -> bool {
    answer["roots"].as_array().unwrap().iter().any(|root| {
        root["retainer"] == link.to_str().unwrap() && root["target"] == target.to_str().unwrap()
    })
}

#[test]
fn ebpf_io_uring_operations_on_unwatched_names_leave_the_index_settled() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = Setup::new();
    let scratch = setup.store.path("home/user/scratch");
    fs::create_dir_all(&scratch).unwrap();
    for name in ["a", "b"] {
        fs::write(scratch.join(name), b"data").unwrap();
    }
    setup.query_equals_scan("start");
    let rescans_before = setup.rescans();

    assert_eq!(uring::unlinkat(AT, &scratch.join("a"), 0), 0);
    assert_eq!(
        uring::renameat(AT, &scratch.join("b"), AT, &scratch.join("c")),
        0
    );
    setup.query_equals_scan("unwatched io_uring unlinkat and renameat");
    setup.no_io_uring_unsettled(&rescans_before);
}

#[test]
fn ebpf_io_uring_operations_on_a_root_link_come_through_a_fence() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = Setup::new();
    let (proj, targets) = (&setup.proj, &setup.targets);
    let result = proj.join("result");
    let start = setup.query_equals_scan("start");
    assert!(has_root(&start, &result, &targets[0]), "{start:#}");
    let rescans_before = setup.rescans();
    let dir = open(
        proj.as_path(),
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let fd = dir.as_raw_fd();

    // Each operation by absolute path, then relative to a dirfd.
    for (dirfd, name) in [(AT, result.clone()), (fd, PathBuf::from("result"))] {
        let how = if dirfd == AT { "absolute" } else { "dirfd" };
        let in_proj = |entry: &str| {
            if dirfd == AT {
                proj.join(entry)
            } else {
                PathBuf::from(entry)
            }
        };

        assert_eq!(uring::unlinkat(dirfd, &name, 0), 0);
        let answer = setup.query_equals_scan(&format!("{how} unlinkat"));
        assert!(!has_root(&answer, &result, &targets[0]), "{answer:#}");

        assert_eq!(uring::symlinkat(&targets[1], dirfd, &name), 0);
        let answer = setup.query_equals_scan(&format!("{how} symlinkat"));
        assert!(has_root(&answer, &result, &targets[1]), "{answer:#}");

        // `next` is no root's name; its target is in the store, so its creation is seen.
        symlink(&targets[2], proj.join("next")).unwrap();
        assert_eq!(uring::renameat(dirfd, &in_proj("next"), dirfd, &name), 0);
        let answer = setup.query_equals_scan(&format!("{how} renameat over the link"));
        assert!(has_root(&answer, &result, &targets[2]), "{answer:#}");

        assert_eq!(uring::unlinkat(dirfd, &name, 0), 0);
        assert_eq!(uring::linkat(dirfd, &in_proj("spare"), dirfd, &name), 0);
        let answer = setup.query_equals_scan(&format!("{how} unlinkat then linkat"));
        assert!(has_root(&answer, &result, &targets[0]), "{answer:#}");
    }
    setup.no_io_uring_unsettled(&rescans_before);
}
