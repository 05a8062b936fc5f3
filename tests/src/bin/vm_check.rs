//! What `cargo xtask vm` runs inside a qemu guest booted with the BPF LSM enabled: the verifier
//! must accept every program, the eBPF source's probes must find fexit and LSM programs
//! loadable there (they are refused on the CI host), the tracepoint path must still report a
//! symlink into the store and an io_uring unlinkat, a relative path must be checked against
//! the directory the kernel used (struct offsets from this kernel's BTF), and a tracker
//! (`tracker-cli run --backend ebpf`) must answer a fenced query with a root that only the
//! kernel source can have seen. Prints `RT-VM-…` marker lines for the xtask to read (one
//! `RT-VM-PASS`/`RT-VM-FAIL` per step) and exits non-zero if a step failed.

#![expect(
    clippy::unwrap_used,
    reason = "a test program panics on failure, as aya's test README recommends"
)]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{ffi::OsStrExt as _, fs::symlink, net::UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use root_tracker::{
    hint::Hint,
    source::{
        Interest, Source as _,
        ebpf::{BaseDirCheck, EbpfSource, Probe, Verification},
    },
};
use tests::{FakeStore, package_bin};

/// A store path name registered in the fake store's database (its hash part in Nix's
/// base-32 alphabet, which has no `e`, `o`, `u`, `t`: any other name is no store path).
const STORE_NAME: &str = "0123456789abcdfghijklmnpqrsvwx00-vm-check";
/// Software emulation is slow; a fence normally returns in milliseconds.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the tracker's start-up (attach + bootstrap scan of an almost empty store).
const TRACKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// One check: what it showed, or why it failed.
type Step = fn() -> Result<String, String>;

fn main() -> std::process::ExitCode {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("RT-VM-KERNEL: {}", kernel.trim());
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    println!("RT-VM-LSMS: {}", lsms.trim());
    // A step runs even when an earlier one failed (each says something on its own), except
    // the tracker after a failed attach.
    let steps: [(&str, Step); 5] = [
        ("verifier", every_program_verifies),
        ("probes", fexit_and_lsm_probes),
        ("tracepoints", source_sees_symlink),
        ("relative", relative_paths_checked_against_kernel_dir),
        ("tracker", tracker_fenced_query),
    ];
    // Steps named on the command line run alone (to try one on the host); none: all of them.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut failed = Vec::new();
    for (name, step) in steps {
        if !only.is_empty() && !only.iter().any(|wanted| wanted == name) {
            continue;
        }
        // The source and the tracker load the same programs: where the verifier refused one,
        // they would only fail again, after another minute of emulated verifier time.
        if matches!(name, "tracepoints" | "relative") && failed.contains(&"verifier") {
            println!("RT-VM-FAIL: {name}: not run, the verifier refuses a program here");
            failed.push(name);
            continue;
        }
        if name == "tracker" && failed.contains(&"tracepoints") {
            println!("RT-VM-FAIL: {name}: not run, the eBPF source does not attach here");
            continue;
        }
        match step() {
            Ok(detail) => println!("RT-VM-PASS: {name}: {detail}"),
            Err(reason) => {
                failed.push(name);
                println!("RT-VM-FAIL: {name}: {reason}");
            }
        }
    }
    if !failed.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Every tracepoint program must pass this kernel's verifier; prints one `RT-VM-VERIFIER` line
/// per program with the instructions the verifier processed, so a program creeping towards
/// the 1,000,000 limit shows before it crosses it.
fn every_program_verifies() -> Result<String, String> {
    let verdicts = EbpfSource::verify_programs().map_err(|e| brief(&e))?;
    let mut refused = Vec::new();
    let mut most: Option<(&str, u32)> = None;
    for verdict in &verdicts {
        println!(
            "RT-VM-VERIFIER: {}",
            serde_json::to_string(verdict).unwrap()
        );
        match &verdict.outcome {
            Verification::Accepted { verified_insns } => {
                let insns = verified_insns.unwrap_or(0);
                if most.is_none_or(|(_, most)| insns > most) {
                    most = Some((verdict.program, insns));
                }
            }
            Verification::Rejected { .. } => refused.push(verdict.program),
        }
    }
    if !refused.is_empty() {
        return Err(format!("refused: {}", refused.join(", ")));
    }
    let (program, insns) = most.unwrap_or(("none", 0));
    Ok(format!(
        "{} programs load; most instructions processed: {insns} ({program})",
        verdicts.len()
    ))
}

/// The probes alone (nothing attached): fexit and LSM programs must load on this kernel.
fn fexit_and_lsm_probes() -> Result<String, String> {
    let (fexit, lsm) = EbpfSource::probe_fexit_and_lsm().map_err(|e| brief(&e))?;
    let json = serde_json::json!({ "fexit": fexit, "lsm": lsm });
    println!("RT-VM-CHECKS: {json}");
    if fexit != Probe::Loadable || lsm != Probe::Loadable {
        return Err(format!("fexit and LSM are not both loadable: {json}"));
    }
    Ok("fexit and LSM programs load".to_owned())
}

/// Attaches the source (every tracepoint program): its checks must agree with the probes, the
/// io_uring tracepoint must be attached, and a symlink into the store and an io_uring unlinkat
/// (submission and completion) must come through fences.
fn source_sees_symlink() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: BTreeSet::new(),
        paths: vec![store.root.join("home")],
    };
    let started = Instant::now();
    let mut source = EbpfSource::attach(&interest).map_err(|e| brief(&e))?;
    let attach_ms = started.elapsed().as_millis();
    let checks = source.checks().clone();
    println!(
        "RT-VM-ATTACH-CHECKS: {}",
        serde_json::to_string(&checks).unwrap()
    );
    if checks.fexit != Probe::Loadable
        || checks.lsm != Probe::Loadable
        || checks.io_uring_submit != Probe::Attached
    {
        return Err(format!("unexpected checks after attach: {checks:?}"));
    }
    // Not a watched basename: reported only because its target is in the store.
    let link = store.root.join("home/vm-link");
    symlink(store.layout.store_dir().join(STORE_NAME), &link).map_err(|e| e.to_string())?;
    let mut hints = Vec::new();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .map_err(|e| brief(&e))?;
    if !hints.contains(&Hint::Path(link.clone())) {
        return Err(format!(
            "no hint for {} after a fence: {hints:?}",
            link.display()
        ));
    }

    // io_uring: the submission tracepoint's name and record layout differ between kernels
    // (`io_uring_submit_sqe` on 6.1); its opcode and the completion must still come through.
    unlink_through_io_uring(&link)?;
    hints.clear();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .map_err(|e| brief(&e))?;
    for wanted in ["io_uring unlinkat", "io_uring unlinkat completed"] {
        if !hints
            .iter()
            .any(|hint| matches!(hint, Hint::Lost { reason } if reason == wanted))
        {
            return Err(format!("no `{wanted}` hint after a fence: {hints:?}"));
        }
    }
    Ok(format!(
        "attached in {attach_ms} ms; a symlink into the store and an io_uring unlinkat came \
         through fences"
    ))
}

/// The kernel struct offsets found in this kernel's BTF lead the programs to the directory a
/// relative path was resolved against: a `symlinkat` through a directory fd is named through
/// that directory, and once the fd's number is reused for another directory before the record
/// is read, by its basename instead of through the other directory.
fn relative_paths_checked_against_kernel_dir() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let home = std::fs::canonicalize(store.root.join("home")).map_err(|e| e.to_string())?;
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: [b"result".to_vec()].into_iter().collect(),
        paths: vec![home.clone()],
    };
    let mut source = EbpfSource::attach(&interest).map_err(|e| brief(&e))?;
    if source.checks().base_dir != BaseDirCheck::Verified {
        return Err(format!(
            "base_dir not verified: {:?}",
            source.checks().base_dir
        ));
    }
    let (dir_d, dir_e) = (home.join("d"), home.join("e"));
    for dir in [&dir_d, &dir_e] {
        std::fs::create_dir(dir).map_err(|e| e.to_string())?;
    }
    let target = store.layout.store_dir().join(STORE_NAME);
    let fence = |source: &mut EbpfSource| {
        let mut hints = Vec::new();
        source
            .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
            .map(|()| hints)
            .map_err(|e| brief(&e))
    };
    fence(&mut source)?;
    let open_dir = |dir: &Path| {
        nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| e.to_string())
    };
    let mut fd_d = open_dir(&dir_d)?;
    let fd_e = open_dir(&dir_e)?;
    nix::unistd::symlinkat(&target, &fd_d, "result").map_err(|e| e.to_string())?;
    let hints = fence(&mut source)?;
    if !hints.contains(&Hint::Path(dir_d.join("result"))) {
        return Err(format!(
            "symlinkat through a dirfd not named by its directory: {hints:?}"
        ));
    }
    std::fs::remove_file(dir_d.join("result")).map_err(|e| e.to_string())?;
    fence(&mut source)?;
    // The record is read at the next fence, after the fd's number names E.
    nix::unistd::symlinkat(&target, &fd_d, "result").map_err(|e| e.to_string())?;
    nix::unistd::dup2(&fd_e, &mut fd_d).map_err(|e| e.to_string())?;
    let hints = fence(&mut source)?;
    if hints.contains(&Hint::Path(dir_e.join("result")))
        || !hints.contains(&Hint::Basename("result".into()))
    {
        return Err(format!("a reused dirfd was trusted: {hints:?}"));
    }
    Ok("a dirfd-relative symlinkat is named through the kernel's directory, and by basename once the fd is reused".to_owned())
}

/// Removes `path` with an io_uring `unlinkat`, which no syscall tracepoint sees.
fn unlink_through_io_uring(path: &Path) -> Result<(), String> {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut ring = io_uring::IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let unlink =
        io_uring::opcode::UnlinkAt::new(io_uring::types::Fd(libc::AT_FDCWD), name.as_ptr())
            .build()
            .user_data(1);
    // SAFETY: `name` outlives the submission: its completion is awaited below.
    unsafe { ring.submission().push(&unlink) }.map_err(|e| e.to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let completion = ring
        .completion()
        .next()
        .ok_or("io_uring gave no completion")?;
    if completion.result() != 0 {
        return Err(format!("io_uring unlinkat failed: {}", completion.result()));
    }
    Ok(())
}

/// Runs the tracker with the eBPF backend, creates an indirect root's user link while it runs,
/// and requires the next (fenced) query to list it.
fn tracker_fenced_query() -> Result<String, String> {
    let store = FakeStore::new(&[STORE_NAME]);
    let run_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socket = run_dir.path().join("socket");
    let log = run_dir.path().join("tracker.log");
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
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start tracker-cli: {e}"))?,
    );
    let tracker_log = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        last_lines(&text, 3)
    };
    let status =
        wait_ready(&mut tracker, &socket).map_err(|e| format!("{e}: {}", tracker_log()))?;
    if status["backend"] != "ebpf" {
        return Err(format!("backend is not ebpf: {status}"));
    }

    // The auto link first, so the tracker watches the basename `result`; the user link is then
    // made where only the kernel source can see it.
    let project = store.root.join("home/alice/proj");
    std::fs::create_dir_all(&project).map_err(|e| e.to_string())?;
    let user_link = project.join("result");
    symlink(
        &user_link,
        store
            .layout
            .state_dir()
            .join("gcroots/auto/vm-check-result"),
    )
    .map_err(|e| e.to_string())?;
    symlink(store.layout.store_dir().join(STORE_NAME), &user_link).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response = request(&socket, r#"{"request":"query","wait_ms":60000}"#)
        .map_err(|e| format!("query failed: {e}"))?;
    if response["response"] != "roots" {
        return Err(format!("query refused: {response}"));
    }
    let roots = response["report"]["roots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let user_link = user_link.to_str().unwrap();
    if !roots
        .iter()
        .any(|root| root["retainer"] == user_link && root["kind"] == "indirect")
    {
        return Err(format!(
            "the fenced query lacks the indirect root {user_link}: {response}"
        ));
    }
    Ok(format!(
        "the fenced query ({} ms) lists the indirect root made while the tracker ran; source_checks {}",
        started.elapsed().as_millis(),
        status["source_checks"]
    ))
}

/// An error's chain on one line, without the middle of a verifier log (thousands of lines that
/// would take minutes on an emulated serial console).
fn brief(error: &dyn std::error::Error) -> String {
    use root_tracker::source::ebpf::{brief_verifier_error, error_chain};
    brief_verifier_error(&error_chain(error))
}

/// The last `count` non-empty lines of `text`, joined with " | ".
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
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
fn wait_ready(tracker: &mut Tracker, socket: &Path) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + TRACKER_START_TIMEOUT;
    loop {
        if let Some(status) = tracker.0.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("the tracker exited with {status} while starting"));
        }
        if let Ok(response) = request(socket, r#"{"request":"status"}"#) {
            if response["response"] == "status" {
                return Ok(response["status"].clone());
            }
        }
        if Instant::now() >= deadline {
            return Err("the tracker did not start".to_owned());
        }
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
