//! The live tracker when things go wrong, for each backend: kernel queues that overflow
//! (a one-page eBPF ring buffer; a fanotify queue of 64 events) must make the index unsettled
//! and queries refuse until a rescan, after which the answer is right; and a tracker killed
//! with SIGKILL in the middle of a workload must answer right after a restart.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};
use tests::{HermeticStore, TrackerProcess, index_part, require_root};

/// Sets a sysctl and restores its old value in `Drop`.
struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    fn set(path: &str, value: &str) -> Self {
        let old = fs::read_to_string(path).unwrap();
        fs::write(path, value).unwrap();
        Self {
            path: PathBuf::from(path),
            old,
        }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.old);
    }
}

struct Setup {
    store: HermeticStore,
    layout: StoreLayout,
    targets: Vec<PathBuf>,
    home: PathBuf,
}

fn setup() -> Setup {
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("loss", 5);
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    let home = store.path("home/user");
    fs::create_dir_all(home.join("proj")).unwrap();
    fs::create_dir_all(layout.auto_dir()).unwrap();
    symlink(&targets[0], home.join("proj/result")).unwrap();
    symlink(home.join("proj/result"), layout.auto_dir().join("a")).unwrap();
    Setup {
        store,
        layout,
        targets,
        home,
    }
}

fn truth(layout: &StoreLayout) -> serde_json::Value {
    let options = ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    };
    index_part(&scan(layout, &options).unwrap().to_json())
}

/// Symlinks into the store: relevant to every backend, so each one is queued.
fn burst(dir: &Path, target: &Path, count: usize) {
    fs::create_dir_all(dir).unwrap();
    for index in 0..count {
        symlink(target, dir.join(format!("l{index}"))).unwrap();
    }
}

fn overflow_is_detected(tracker: &TrackerProcess, setup: &Setup) {
    assert_eq!(index_part(&tracker.query()), truth(&setup.layout));
    // A real change drowned in a burst that the stopped tracker cannot read in time.
    tracker.pause();
    fs::remove_file(setup.home.join("proj/result")).unwrap();
    burst(&setup.home.join("burst"), &setup.targets[1], 3000);
    tracker.resume();

    let refused = tracker
        .request(br#"{"request":"query","wait_ms":0}"#)
        .unwrap();
    assert_eq!(refused["response"], "error", "{refused}");
    assert_eq!(refused["error"], "unsettled", "{refused}");
    let status = tracker.status();
    assert_eq!(status["settled"]["state"], "unsettled", "{status:#}");
    assert!(
        status["source"]["dropped"].as_u64().unwrap() > 0,
        "{status:#}"
    );

    // Waiting lets the tracker rescan; the answer is then right. (Whether it stays settled
    // afterwards depends on the rest of the machine: tests running in parallel touch watched
    // names too, and a one-page buffer overflows easily.)
    assert_eq!(index_part(&tracker.query()), truth(&setup.layout));
}

#[test]
fn ebpf_ring_buffer_overflow() {
    let setup = setup();
    let tracker = TrackerProcess::start(
        &setup.store,
        "ebpf",
        &[
            "--ebpf-ring-buffer-bytes",
            "4096",
            "--rescan-delay-ms",
            "600000",
        ],
    );
    overflow_is_detected(&tracker, &setup);
}

#[test]
fn fanotify_queue_overflow() {
    let setup = setup();
    let tracker = {
        // The limit applies to fanotify groups created while it is set.
        let _limit = Sysctl::set("/proc/sys/fs/fanotify/max_queued_events", "64");
        TrackerProcess::start(&setup.store, "fanotify", &["--rescan-delay-ms", "600000"])
    };
    overflow_is_detected(&tracker, &setup);
}

/// SIGKILL while a workload runs, restart on the same index database, right answer.
fn crash_mid_workload(backend: &str) {
    let setup = setup();
    let mut tracker = TrackerProcess::start(&setup.store, backend, &[]);
    let (killed, kill_done) = std::sync::mpsc::channel::<()>();
    let (halfway, at_halfway) = std::sync::mpsc::channel::<()>();
    let home = setup.home.clone();
    let auto = setup.layout.auto_dir();
    let targets = setup.targets.clone();
    let workload = std::thread::spawn(move || {
        for index in 0..2000usize {
            if index == 1000 {
                halfway.send(()).unwrap();
                kill_done.recv().unwrap();
            }
            let dir = home.join(format!("d{}", index % 7));
            let _ = fs::create_dir_all(&dir);
            let result = dir.join("result");
            let _ = fs::remove_file(&result);
            if index % 5 != 0 {
                symlink(&targets[index % targets.len()], &result).unwrap();
            }
            let link = auto.join(format!("a{}", index % 11));
            let _ = fs::remove_file(&link);
            if index % 3 != 0 {
                symlink(&result, &link).unwrap();
            }
            if index % 97 == 0 {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    });
    at_halfway.recv().unwrap();
    tracker.crash_and_restart();
    killed.send(()).unwrap();
    workload.join().unwrap();
    assert_eq!(index_part(&tracker.query()), truth(&setup.layout));
    let status = tracker.status();
    assert_eq!(status["settled"]["state"], "settled", "{status:#}");
}

#[test]
fn ebpf_crash_and_restart() {
    crash_mid_workload("ebpf");
}

#[test]
fn fanotify_crash_and_restart() {
    crash_mid_workload("fanotify");
}
