//! What a running tracker's `status` says about its own lag, for each backend: after a change
//! and a fenced query, the lag from the hint's receipt to the index is reported, and for eBPF
//! also the lag from the syscall's completion (the kernel's own timestamp); fanotify events
//! carry no time, so it reports none rather than a made-up one.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::symlink;

use tests::{HermeticStore, TrackerProcess, require_root};

/// A bound that only a clock mix-up (boot time vs monotonic, ms vs ns) could exceed: the
/// change below completes well within the test.
const SANE_LAG_MS: f64 = 600_000.0;

fn lag_is_reported(backend: &str) {
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("lag", 2);
    let home = store.path("home/user/proj");
    fs::create_dir_all(&home).unwrap();
    store.add_indirect_root(&home.join("result"), &targets[0]);
    let tracker = TrackerProcess::start(&store, backend, &[]);
    let before = tracker.status();
    // Retarget the user link (a change only the kernel source can see), then fence it.
    let next = home.join("result.next");
    symlink(&targets[1], &next).unwrap();
    fs::rename(&next, home.join("result")).unwrap();
    let report = tracker.query();
    assert!(
        report["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|root| root["target"] == targets[1].to_str().unwrap()),
        "{report}"
    );
    let status = tracker.status();
    let lag = &status["lag"];
    eprintln!("{backend} lag: {lag}");
    let samples = |status: &serde_json::Value, clock: &str| {
        status["lag"][clock]["samples"].as_u64().unwrap_or(0)
    };
    assert!(
        samples(&status, "from_receipt") > samples(&before, "from_receipt"),
        "{backend}: no new receipt-to-index sample: {lag}"
    );
    let check = |window: &serde_json::Value| {
        let last = window["last_ms"].as_f64().unwrap();
        let p50 = window["p50_ms"].as_f64().unwrap();
        let p99 = window["p99_ms"].as_f64().unwrap();
        let max = window["max_ms"].as_f64().unwrap();
        assert!(
            (0.0..SANE_LAG_MS).contains(&last) && p50 <= p99 && p99 <= max && last <= max,
            "{backend}: inconsistent lag {window}"
        );
    };
    check(&lag["from_receipt"]);
    match backend {
        "ebpf" => {
            assert!(
                samples(&status, "from_kernel_event") > samples(&before, "from_kernel_event"),
                "ebpf: the syscall's completion time was not used: {lag}"
            );
            check(&lag["from_kernel_event"]);
        }
        _ => assert!(
            lag["from_kernel_event"].is_null(),
            "{backend}: claims kernel event times it does not have: {lag}"
        ),
    }
}

#[test]
fn ebpf_lag_is_measured_from_the_syscall() {
    lag_is_reported("ebpf");
}

#[test]
fn fanotify_lag_is_measured_from_receipt() {
    lag_is_reported("fanotify");
}
