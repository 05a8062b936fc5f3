//! What `cargo xtask vm` runs inside a qemu guest booted with the BPF LSM enabled: the eBPF
//! source's probes must find fexit and LSM programs loadable there (they are refused on the
//! CI host), the tracepoint path must still report a symlink into the store, and a tracker
//! (`tracker-cli run --backend ebpf`) must answer a fenced query with a root that only the
//! kernel source can have seen. Prints `RT-VM-…` marker lines for the xtask to read; exits
//! non-zero (by panic) on the first failed expectation.

#![expect(
    clippy::unwrap_used,
    reason = "a test program panics on failure, as aya's test README recommends"
)]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::symlink, net::UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use root_tracker::{
    hint::Hint,
    source::{
        Interest, Source as _,
        ebpf::{EbpfSource, Probe},
    },
};
use tests::{FakeStore, package_bin};

/// A store path name registered in the fake store's database.
const STORE_NAME: &str = "0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-vm-check";
/// Software emulation is slow; a fence normally returns in milliseconds.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the tracker's start-up (attach + bootstrap scan of an almost empty store).
const TRACKER_START_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("RT-VM-KERNEL: {}", kernel.trim());
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    println!("RT-VM-LSMS: {}", lsms.trim());
    source_probes_and_symlink_hint();
    tracker_fenced_query();
}

/// Attaches the source directly: prints its checks, requires fexit and LSM to be loadable and
/// the io_uring tracepoint attached, and sees a symlink into the store through a fence.
fn source_probes_and_symlink_hint() {
    let store = FakeStore::new(&[]);
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: BTreeSet::new(),
        paths: vec![store.root.join("home")],
    };
    let started = Instant::now();
    let mut source = EbpfSource::attach(&interest).unwrap();
    println!(
        "RT-VM-STEP: eBPF source attached in {} ms",
        started.elapsed().as_millis()
    );
    let checks = source.checks().clone();
    println!("RT-VM-CHECKS: {}", serde_json::to_string(&checks).unwrap());
    assert_eq!(checks.fexit, Probe::Loadable, "fexit probe: {checks:?}");
    assert_eq!(checks.lsm, Probe::Loadable, "LSM probe: {checks:?}");
    assert_eq!(
        checks.io_uring_submit,
        Probe::Attached,
        "io_uring: {checks:?}"
    );

    // Not a watched basename: reported only because its target is in the store.
    let link = store.root.join("home/vm-link");
    symlink(store.layout.store_dir().join(STORE_NAME), &link).unwrap();
    let mut hints = Vec::new();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .unwrap();
    assert!(
        hints.contains(&Hint::Path(link.clone())),
        "no hint for {} after a fence: {hints:?}",
        link.display()
    );
    println!("RT-VM-STEP: symlink into the store seen through the syscall tracepoints");
}

/// Runs the tracker with the eBPF backend, creates an indirect root's user link while it runs,
/// and requires the next (fenced) query to list it.
fn tracker_fenced_query() {
    let store = FakeStore::new(&[STORE_NAME]);
    let run_dir = tempfile::tempdir().unwrap();
    let socket = run_dir.path().join("socket");
    let mut tracker = Tracker(
        Command::new(package_bin("tracker-cli"))
            .args(["run", "--backend", "ebpf", "--verify-interval-secs", "0"])
            .arg("--socket")
            .arg(&socket)
            .arg("--db")
            .arg(run_dir.path().join("index.sqlite"))
            .arg("--store-dir")
            .arg(store.layout.store_dir())
            .arg("--state-dir")
            .arg(store.layout.state_dir())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_ready(&mut tracker, &socket);
    println!(
        "RT-VM-STATUS: backend={} source_checks={}",
        status["backend"], status["source_checks"]
    );
    assert_eq!(status["backend"], "ebpf", "{status}");

    // The auto link first, so the tracker watches the basename `result`; the user link is then
    // made where only the kernel source can see it.
    let project = store.root.join("home/alice/proj");
    std::fs::create_dir_all(&project).unwrap();
    let user_link = project.join("result");
    symlink(
        &user_link,
        store
            .layout
            .state_dir()
            .join("gcroots/auto/vm-check-result"),
    )
    .unwrap();
    symlink(store.layout.store_dir().join(STORE_NAME), &user_link).unwrap();
    let response = request(&socket, r#"{"request":"query","wait_ms":60000}"#).unwrap();
    assert_eq!(response["response"], "roots", "{response}");
    let roots = response["report"]["roots"].as_array().unwrap();
    let user_link = user_link.to_str().unwrap();
    assert!(
        roots
            .iter()
            .any(|root| root["retainer"] == user_link && root["kind"] == "indirect"),
        "the fenced query lacks the indirect root {user_link}: {response}"
    );
    println!("RT-VM-STEP: fenced query lists the indirect root made while the tracker ran");
}

/// The tracker process, killed and reaped when dropped (also on panic).
struct Tracker(Child);

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the tracker answers a status request (served only after its bootstrap scan).
fn wait_ready(tracker: &mut Tracker, socket: &Path) -> serde_json::Value {
    let deadline = Instant::now() + TRACKER_START_TIMEOUT;
    loop {
        if let Some(status) = tracker.0.try_wait().unwrap() {
            panic!("the tracker exited with {status} while starting");
        }
        if let Ok(response) = request(socket, r#"{"request":"status"}"#) {
            if response["response"] == "status" {
                return response["status"].clone();
            }
        }
        assert!(Instant::now() < deadline, "the tracker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request line on the tracker's socket, one parsed response.
fn request(socket: &Path, line: &str) -> std::io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut response = Vec::new();
    BufReader::new(&stream).read_until(b'\n', &mut response)?;
    serde_json::from_slice(&response).map_err(std::io::Error::other)
}
