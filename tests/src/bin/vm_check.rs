//! What `cargo xtask vm` runs inside a qemu guest booted with the BPF LSM enabled: the verifier
//! must accept every program (fentry/fexit ones too), the eBPF source's probes must find fexit
//! and LSM programs loadable there (they are refused on the CI host), the tracepoint path
//! (forced) must still report a symlink into the store and judge io_uring operations by name
//! (an unwatched one sends nothing), a relative path must be checked against the directory the
//! kernel used (struct offsets from this kernel's BTF), the fentry path must report every kind
//! of path operation (io_uring's too) with no syscall tracepoint program loaded, and a tracker (`tracker-cli run --backend ebpf`,
//! in either mode) must answer fenced queries with roots that only the kernel source can have
//! seen. Prints `RT-VM-…` marker lines for the xtask to read (one `RT-VM-PASS`/`RT-VM-FAIL` per
//! step) and exits non-zero if a step failed.

#![expect(
    clippy::unwrap_used,
    reason = "a test program panics on failure, as aya's test README recommends"
)]

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::symlink, net::UnixStream},
    },
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use root_tracker::{
    hint::Hint,
    source::{
        Interest, Source as _,
        ebpf::{
            AttachMode, BaseDirCheck, EbpfOptions, EbpfSource, Faults, HookChoice, IoUringNames,
            Probe, SwitchCheck, Verification,
        },
    },
};
use tests::interest_race::{Rename, rename_started_before_its_name_was_watched};
use tests::{FakeStore, index_part, package_bin, uring, workload::Workload};

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
    let preempt = std::fs::read_to_string("/sys/kernel/debug/sched/preempt").unwrap_or_default();
    println!("RT-VM-PREEMPT: {}", preempt.trim());
    // A step runs even when an earlier one failed (each says something on its own), except
    // the tracker after a failed attach.
    let steps: [(&str, Step); 12] = [
        ("verifier", every_program_verifies),
        ("probes", fexit_and_lsm_probes),
        ("tracepoints", source_sees_symlink),
        ("relative", relative_paths_checked_against_kernel_dir),
        ("fentry", fentry_source_sees_every_operation),
        ("preempt", preempted_programs_judge_again),
        ("fallback", fentry_falls_back_to_tracepoints),
        ("tracker", || tracker_fenced_query(None, "fentry")),
        ("tracker-tracepoints", || {
            tracker_fenced_query(Some("tracepoints"), "tracepoints")
        }),
        ("random", tracker_random_workload),
        ("interest-race", tracker_interest_race),
        ("overhead", churn_overhead),
    ];
    // Steps named on the command line run alone (to try one on the host); none: all of them
    // but the slow measurement `overhead`, which runs only when named.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut failed = Vec::new();
    for (name, step) in steps {
        let wanted = if only.is_empty() {
            name != "overhead"
        } else {
            only.iter().any(|wanted| wanted == name)
        };
        if !wanted {
            continue;
        }
        // The source and the tracker load the same programs: where the verifier refused one,
        // they would only fail again, after another minute of emulated verifier time.
        if matches!(
            name,
            "tracepoints" | "relative" | "fentry" | "preempt" | "fallback"
        ) && failed.contains(&"verifier")
        {
            println!("RT-VM-FAIL: {name}: not run, the verifier refuses a program here");
            failed.push(name);
            continue;
        }
        let needs = match name {
            "tracker" | "random" => "fentry",
            _ => "tracepoints",
        };
        if (name.starts_with("tracker") || name == "random") && failed.contains(&needs) {
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

/// Every program (tracepoint, fentry and fexit) must pass this kernel's verifier; prints one
/// `RT-VM-VERIFIER` line per program with the instructions the verifier processed, so a
/// program creeping towards the 1,000,000 limit shows before it crosses it.
fn every_program_verifies() -> Result<String, String> {
    let verdicts = EbpfSource::verify_programs().map_err(|e| brief(&e))?;
    // Where fexit programs do not load at all (this step run on the CI host), the fentry set
    // is refused as a whole and the tracepoint set is what must verify.
    let (fexit, _) = EbpfSource::probe_fexit_and_lsm().map_err(|e| brief(&e))?;
    let fentry_names: Vec<&str> = root_tracker_ebpf::FENTRY_PROGRAMS
        .iter()
        .flat_map(|hook| [hook.entry, hook.exit])
        .collect();
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
            Verification::Rejected { .. }
                if fexit != Probe::Loadable && fentry_names.contains(&verdict.program) => {}
            Verification::Rejected { .. } => refused.push(verdict.program),
        }
    }
    if !refused.is_empty() {
        return Err(format!("refused: {}", refused.join(", ")));
    }
    let (program, insns) = most.unwrap_or(("none", 0));
    let accepted = verdicts
        .iter()
        .filter(|verdict| matches!(verdict.outcome, Verification::Accepted { .. }))
        .count();
    Ok(format!(
        "{accepted} of {} programs load (fexit here: {fexit:?}); most instructions processed: \
         {insns} ({program})",
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
/// io_uring tracepoint must be attached and read requests' names (struct offsets from this
/// kernel's BTF), a symlink into the store must come through a fence, an io_uring unlinkat of
/// an unwatched name must send nothing, and one of a watched name and an io_uring symlinkat
/// into the store must come through fences as paths (submission and completion).
fn source_sees_symlink() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: [b"vm-watched".to_vec()].into_iter().collect(),
        paths: vec![store.root.join("home")],
    };
    let started = Instant::now();
    let options = EbpfOptions {
        hooks: HookChoice::Tracepoints,
        ..EbpfOptions::default()
    };
    let mut source = EbpfSource::attach_with(&interest, &options).map_err(|e| brief(&e))?;
    let attach_ms = started.elapsed().as_millis();
    let checks = source.checks().clone();
    println!(
        "RT-VM-ATTACH-CHECKS: {}",
        serde_json::to_string(&checks).unwrap()
    );
    if checks.fexit != Probe::Loadable
        || checks.lsm != Probe::Loadable
        || checks.io_uring_submit != Probe::Attached
        || checks.io_uring_names != IoUringNames::Read
        || !matches!(checks.attach_mode, AttachMode::Tracepoints { .. })
    {
        return Err(format!("unexpected checks after attach: {checks:?}"));
    }
    let loaded = LoadedPrograms::now()?;
    if loaded.tracepoint != SYSCALL_AND_IO_URING_PROGRAMS || loaded.tracing != 0 {
        return Err(format!(
            "forced tracepoints: expected {SYSCALL_AND_IO_URING_PROGRAMS} tracepoint programs \
             and no fentry/fexit program loaded, found {loaded:?}"
        ));
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
    // (`io_uring_submit_sqe` on 6.1), and so do the request structs the program reads the
    // names from. `vm-link` is no watched name: its unlinkat must send nothing at all.
    unlink_through_io_uring(&link)?;
    hints.clear();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .map_err(|e| brief(&e))?;
    if !hints.is_empty() {
        return Err(format!(
            "an io_uring unlinkat of an unwatched name sent hints: {hints:?}"
        ));
    }
    let watched = store.root.join("home/vm-watched");
    symlink("/elsewhere", &watched).map_err(|e| e.to_string())?;
    expect_hint(&mut source, "symlink of a watched name", &watched)?;
    unlink_through_io_uring(&watched)?;
    expect_hint(&mut source, "io_uring unlinkat of a watched name", &watched)?;
    let into_store = store.root.join("home/vm-uring-link");
    io_uring_done(
        "symlinkat",
        uring::symlinkat(
            &store.layout.store_dir().join(STORE_NAME),
            libc::AT_FDCWD,
            &into_store,
        ),
    )?;
    expect_hint(
        &mut source,
        "io_uring symlinkat into the store",
        &into_store,
    )?;
    Ok(format!(
        "forced tracepoints attached in {attach_ms} ms ({loaded:?}); a symlink into the store \
         came through a fence; an io_uring unlinkat of an unwatched name sent nothing, one of a \
         watched name and an io_uring symlinkat into the store came through fences as paths"
    ))
}

/// Tracepoint programs the tracepoint mode loads: every syscall pair and the two io_uring ones.
const SYSCALL_AND_IO_URING_PROGRAMS: usize = 2 * root_tracker_ebpf::SYSCALL_PROGRAMS.len() + 2;

/// BPF programs loaded in the kernel, by type. Nothing else in the guest loads any, so these
/// are the source's: a syscall tracepoint can only be attached with a loaded tracepoint
/// program, so none loaded proves none attached (and no syscall on the slow path).
#[derive(Debug)]
struct LoadedPrograms {
    tracepoint: usize,
    tracing: usize,
    other: usize,
}

impl LoadedPrograms {
    fn now() -> Result<Self, String> {
        // `bpf_prog_type` values (`include/uapi/linux/bpf.h`).
        const TRACEPOINT: u32 = 5;
        const TRACING: u32 = 26;
        let mut counts = Self {
            tracepoint: 0,
            tracing: 0,
            other: 0,
        };
        for info in aya::programs::loaded_programs() {
            let info = info.map_err(|e| format!("cannot list loaded programs: {e}"))?;
            match info.program_type() as u32 {
                TRACEPOINT => counts.tracepoint += 1,
                TRACING => counts.tracing += 1,
                _ => counts.other += 1,
            }
        }
        Ok(counts)
    }
}

/// Attaches the source in fentry mode (it must attach there) and requires a fenced hint for
/// each kind of path operation: a symlink into the store, unlink, rename over a watched name,
/// rmdir, link, an unlinkat relative to a directory fd, a linkat with `AT_EMPTY_PATH`, and
/// io_uring unlinkat and renameat
/// (which the fentry programs see as precise paths, not as lost hints). No tracepoint program
/// may be loaded meanwhile.
fn fentry_source_sees_every_operation() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let home = store.root.join("home");
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: ["result", "gone-dir", "hardlink"]
            .iter()
            .map(|name| name.as_bytes().to_vec())
            .collect(),
        paths: vec![home.clone()],
    };
    let options = EbpfOptions {
        hooks: HookChoice::Fentry,
        ..EbpfOptions::default()
    };
    let started = Instant::now();
    let mut source = EbpfSource::attach_with(&interest, &options).map_err(|e| brief(&e))?;
    let attach_ms = started.elapsed().as_millis();
    let checks = source.checks().clone();
    println!(
        "RT-VM-FENTRY-CHECKS: {}",
        serde_json::to_string(&checks).unwrap()
    );
    if checks.attach_mode != AttachMode::Fentry
        || checks.fexit != Probe::Attached
        || !matches!(checks.io_uring_submit, Probe::Unneeded { .. })
    {
        return Err(format!("unexpected checks after attach: {checks:?}"));
    }
    let loaded = LoadedPrograms::now()?;
    let fentry_programs = 2 * root_tracker_ebpf::FENTRY_PROGRAMS.len();
    if loaded.tracepoint != 0 || loaded.tracing != fentry_programs {
        return Err(format!(
            "fentry mode: expected no tracepoint program and {fentry_programs} fentry/fexit \
             programs loaded, found {loaded:?}"
        ));
    }

    let target = store.layout.store_dir().join(STORE_NAME);
    let result = home.join("result");
    let io = |e: std::io::Error| e.to_string();
    let mut seen = Vec::new();
    let mut check = |what: &str, wanted: &Path| -> Result<(), String> {
        expect_hint(&mut source, what, wanted)?;
        seen.push(what.to_owned());
        Ok(())
    };
    // Not a watched basename: reported only because its target is in the store.
    symlink(&target, home.join("vm-link")).map_err(io)?;
    check("symlink into the store", &home.join("vm-link"))?;
    symlink(&target, &result).map_err(io)?;
    check("symlink named result", &result)?;
    std::fs::remove_file(&result).map_err(io)?;
    check("unlink", &result)?;
    symlink(&target, &result).map_err(io)?;
    check("symlink named result again", &result)?;
    symlink(&target, home.join("next")).map_err(io)?;
    check("symlink to rename", &home.join("next"))?;
    std::fs::rename(home.join("next"), &result).map_err(io)?;
    check("rename over result", &result)?;
    std::fs::create_dir(home.join("gone-dir")).map_err(io)?;
    std::fs::remove_dir(home.join("gone-dir")).map_err(io)?;
    check("rmdir", &home.join("gone-dir"))?;
    std::fs::write(home.join("file"), b"").map_err(io)?;
    std::fs::hard_link(home.join("file"), home.join("hardlink")).map_err(io)?;
    check("link", &home.join("hardlink"))?;
    // Relative to a directory fd: named through /proc/<pid>/task/<tid>/fd while it is open.
    let dir = std::fs::File::open(&home).map_err(io)?;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c"hardlink".as_ptr(), 0) } != 0 {
        return Err(format!("unlinkat: {}", std::io::Error::last_os_error()));
    }
    check(
        "unlinkat relative to a directory fd",
        &home.join("hardlink"),
    )?;
    // A new name for an open file: the old path is empty (AT_EMPTY_PATH).
    let file = std::fs::File::open(home.join("file")).map_err(io)?;
    // SAFETY: valid fds and NUL-terminated names.
    let linked = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            c"hardlink".as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if linked != 0 {
        return Err(format!(
            "linkat AT_EMPTY_PATH: {}",
            std::io::Error::last_os_error()
        ));
    }
    check(
        "linkat of an open file (AT_EMPTY_PATH)",
        &home.join("hardlink"),
    )?;
    drop((file, dir));
    unlink_through_io_uring(&result)?;
    check("io_uring unlinkat", &result)?;
    rename_through_io_uring(&home.join("vm-link"), &result)?;
    check("io_uring renameat", &result)?;

    // No mount program in this mode: the mount table's poll must report mount changes.
    let point = home.join("mnt");
    std::fs::create_dir(&point).map_err(io)?;
    let mounted = TmpfsMount::new(&point)?;
    expect_mounts_changed(&mut source, "mount")?;
    drop(mounted);
    expect_mounts_changed(&mut source, "umount")?;
    seen.extend(["mount".to_owned(), "umount".to_owned()]);

    let counters = source.counters().map_err(|e| brief(&e))?;
    if counters.lost_hints() {
        return Err(format!("hints were lost: {counters:?}"));
    }
    Ok(format!(
        "attached in {attach_ms} ms ({loaded:?}); fenced hints for: {}; counters {counters:?}",
        seen.join(", ")
    ))
}

/// Where this `PREEMPT_DYNAMIC` kernel shows and switches its preemption model.
const PREEMPT_MODEL: &str = "/sys/kernel/debug/sched/preempt";

/// The current preemption model of this `PREEMPT_DYNAMIC` kernel (`none`, `voluntary`, `full`).
fn current_preempt_model() -> Result<String, String> {
    let models = std::fs::read_to_string(PREEMPT_MODEL)
        .map_err(|e| format!("cannot read {PREEMPT_MODEL}: {e}"))?;
    models
        .split_whitespace()
        .find_map(|word| word.strip_prefix('(')?.strip_suffix(')'))
        .map(str::to_owned)
        .ok_or_else(|| format!("no current model in {models:?}"))
}

/// Operations of [`preempted_programs_judge_again`]'s worker, in batches.
const PREEMPT_ROUNDS: u32 = 20_000;
const PREEMPT_BATCHES: u32 = 200;
/// Period of the preempting real-time thread: a fentry program runs for about a microsecond,
/// so one in some tens of runs is interrupted.
const PREEMPT_PERIOD: Duration = Duration::from_micros(20);

/// On a fully preemptible kernel the fentry programs run preemptibly (migration disabled, but
/// not preemption): another task's program may then rewrite the CPU's scratch memory under
/// them. They are used anyway, because each judgement checks the task's context-switch count
/// and is redone when the task left the CPU. Here a real-time thread pinned to the worker's
/// CPU wakes every [`PREEMPT_PERIOD`] while the worker unlinks a watched name over and over:
/// the redone judgements must show in the counters (the check sees real preemptions), and the
/// fence must still name the entry, or report lost hints — never stay silent.
fn preempted_programs_judge_again() -> Result<String, String> {
    let current = current_preempt_model()?;
    let _restore = PreemptModel::set("full", &current)?;
    let store = FakeStore::new(&[]);
    let dir = store.root.join("home");
    let victim = dir.join("victim");
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: [b"victim".to_vec()].into_iter().collect(),
        paths: vec![dir.clone()],
    };
    let mut source = EbpfSource::attach(&interest).map_err(|e| brief(&e))?;
    let checks = source.checks().clone();
    println!(
        "RT-VM-PREEMPT-CHECKS: {}",
        serde_json::to_string(&checks).unwrap()
    );
    if checks.attach_mode != AttachMode::Fentry || checks.switch_check != SwitchCheck::Active {
        return Err(format!(
            "expected fentry with the switch check on a preemptible kernel: {checks:?}"
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stops the real-time thread on every return, early ones too.
    let _stop_on_return = StopOnDrop(std::sync::Arc::clone(&stop));
    let preempter = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || -> Result<(), String> {
            pin_to_cpu(0)?;
            let param = libc::sched_param { sched_priority: 50 };
            // SAFETY: `param` is a valid `sched_param` for the call; 0 is this thread.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                return Err(format!("SCHED_FIFO: {}", std::io::Error::last_os_error()));
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(PREEMPT_PERIOD);
            }
            Ok(())
        })
    };
    // Batches, each drained by a fence, so the ring buffer never overflows: every loss the
    // fences report is then the switch check's.
    let mut took = Duration::ZERO;
    let mut named = 0;
    let mut lost = 0;
    let mut last = source.counters().map_err(|e| brief(&e))?;
    for _ in 0..PREEMPT_BATCHES {
        let worker = {
            let victim = victim.clone();
            std::thread::spawn(move || -> Result<Duration, String> {
                pin_to_cpu(0)?;
                let started = Instant::now();
                for _ in 0..PREEMPT_ROUNDS / PREEMPT_BATCHES {
                    std::fs::write(&victim, b"").map_err(|e| format!("create: {e}"))?;
                    std::fs::remove_file(&victim).map_err(|e| format!("unlink: {e}"))?;
                }
                Ok(started.elapsed())
            })
        };
        took += worker
            .join()
            .map_err(|_| "the worker panicked".to_owned())??;
        let mut hints = Vec::new();
        source
            .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
            .map_err(|e| brief(&e))?;
        let now = source.counters().map_err(|e| brief(&e))?;
        let batch_lost = hints.iter().any(|hint| matches!(hint, Hint::Lost { .. }));
        if now.dropped != last.dropped || now.untracked != last.untracked {
            return Err(format!(
                "the batch overflowed the kernel's buffers: {now:?}"
            ));
        }
        if (now.preempted > last.preempted) != batch_lost {
            return Err(format!(
                "a fence's loss report does not match the disturbed judgements: {last:?} -> \
                 {now:?}, hints {hints:?}"
            ));
        }
        if !batch_lost && !hints.contains(&Hint::Path(victim.clone())) {
            return Err(format!(
                "no hint for {} and no loss after a fence: {hints:?}",
                victim.display()
            ));
        }
        named += usize::from(!batch_lost);
        lost += usize::from(batch_lost);
        last = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    preempter
        .join()
        .map_err(|_| "the preempter panicked".to_owned())??;
    let counters = last;
    if counters.retried == 0 {
        return Err(format!(
            "no judgement was redone in {PREEMPT_ROUNDS} unlinks under a preempting thread: \
             the switch check sees nothing ({counters:?})"
        ));
    }
    Ok(format!(
        "preempt=full (was {current}): fentry attached; {PREEMPT_ROUNDS} create+unlink in \
         {} ms under a SCHED_FIFO thread waking every {} us on the same CPU: {} judgements \
         redone, {} disturbed in every run (lost), {} records sent; of {PREEMPT_BATCHES} \
         fenced batches {named} named the entry, {lost} reported the loss",
        took.as_millis(),
        PREEMPT_PERIOD.as_micros(),
        counters.retried,
        counters.preempted,
        counters.sent
    ))
}

/// Sets its flag when dropped.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu set: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

/// Where fentry/fexit cannot be used whole, the source attaches the tracepoint set and
/// nothing else: (1) one fentry program failing after others attached (injected: this kernel
/// accepts them all) leaves no tracing program loaded, and the tracepoints report a symlink
/// into the store; (2) without the switch check (injected: no `nvcsw` offsets), a fully
/// preemptible kernel gets the tracepoints, and `--ebpf-hooks fentry` is refused.
fn fentry_falls_back_to_tracepoints() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let home = store.root.join("home");
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: BTreeSet::new(),
        paths: vec![home.clone()],
    };
    // The last program attached: nine are in place when it fails.
    let last =
        root_tracker_ebpf::FENTRY_PROGRAMS[root_tracker_ebpf::FENTRY_PROGRAMS.len() - 1].entry;
    let options = EbpfOptions {
        faults: Faults {
            fail_attach: Some(last),
            ..Faults::default()
        },
        ..EbpfOptions::default()
    };
    let mut source = EbpfSource::attach_with(&interest, &options).map_err(|e| brief(&e))?;
    let checks = source.checks().clone();
    let AttachMode::Tracepoints { reason } = &checks.attach_mode else {
        return Err(format!("fentry kept after {last} failed: {checks:?}"));
    };
    if !reason.contains(last) {
        return Err(format!("the reason does not name {last}: {reason:?}"));
    }
    let loaded = LoadedPrograms::now()?;
    if loaded.tracepoint != SYSCALL_AND_IO_URING_PROGRAMS || loaded.tracing != 0 {
        return Err(format!(
            "after a partial fentry attach: not the whole tracepoint set alone: {loaded:?}"
        ));
    }
    let link = home.join("partial-result");
    symlink(store.layout.store_dir().join(STORE_NAME), &link).map_err(|e| e.to_string())?;
    expect_hint(&mut source, "symlink after a partial fentry attach", &link)?;
    drop(source);

    let current = current_preempt_model()?;
    let _restore = PreemptModel::set("full", &current)?;
    let unchecked = EbpfOptions {
        faults: Faults {
            no_switch_check: true,
            ..Faults::default()
        },
        ..EbpfOptions::default()
    };
    let source = EbpfSource::attach_with(&interest, &unchecked).map_err(|e| brief(&e))?;
    let checks = source.checks().clone();
    let AttachMode::Tracepoints {
        reason: preempt_reason,
    } = &checks.attach_mode
    else {
        return Err(format!(
            "fentry attached on a preemptible kernel without the switch check: {checks:?}"
        ));
    };
    if !preempt_reason.contains("full") || checks.io_uring_submit != Probe::Attached {
        return Err(format!("unexpected checks: {checks:?}"));
    }
    drop(source);
    let fentry_only = EbpfOptions {
        hooks: HookChoice::Fentry,
        ..unchecked
    };
    match EbpfSource::attach_with(&interest, &fentry_only) {
        Err(root_tracker::source::ebpf::EbpfError::FentryUnavailable { .. }) => {}
        Err(other) => {
            return Err(format!(
                "--ebpf-hooks fentry: unexpected error {}",
                brief(&other)
            ));
        }
        Ok(_) => {
            return Err(
                "--ebpf-hooks fentry attached on a preemptible kernel without the switch check"
                    .to_owned(),
            );
        }
    }
    Ok(format!(
        "{last} failing after nine attached: tracepoint set alone ({loaded:?}), a symlink came \
         through; without the switch check on preempt=full (was {current}): tracepoints \
         because {preempt_reason:?}, fentry alone refused"
    ))
}

/// The kernel's preemption model, set back to what it was when dropped.
struct PreemptModel(String);

impl PreemptModel {
    fn set(model: &str, previous: &str) -> Result<Self, String> {
        std::fs::write(PREEMPT_MODEL, model)
            .map_err(|e| format!("cannot set {PREEMPT_MODEL} to {model}: {e}"))?;
        Ok(Self(previous.to_owned()))
    }
}

impl Drop for PreemptModel {
    fn drop(&mut self) {
        let _ = std::fs::write(PREEMPT_MODEL, &self.0);
    }
}

/// A tmpfs mounted for a check, unmounted when dropped (also on an early return).
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(point: &Path) -> Result<Self, String> {
        nix::mount::mount(
            Some("tmpfs"),
            point,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mount tmpfs on {}: {e}", point.display()))?;
        Ok(Self(point.to_owned()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fences the source and requires [`Hint::MountsChanged`].
fn expect_mounts_changed(source: &mut EbpfSource, what: &str) -> Result<(), String> {
    let mut hints = Vec::new();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .map_err(|e| brief(&e))?;
    if !hints.contains(&Hint::MountsChanged) {
        return Err(format!("{what}: no MountsChanged after a fence: {hints:?}"));
    }
    Ok(())
}

/// Fences the source and requires a [`Hint::Path`] for `wanted` and no lost hint.
fn expect_hint(source: &mut EbpfSource, what: &str, wanted: &Path) -> Result<(), String> {
    let mut hints = Vec::new();
    source
        .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
        .map_err(|e| brief(&e))?;
    if hints.iter().any(|hint| matches!(hint, Hint::Lost { .. })) {
        return Err(format!("{what}: a lost hint after a fence: {hints:?}"));
    }
    if !hints.contains(&Hint::Path(wanted.to_owned())) {
        return Err(format!(
            "{what}: no hint for {} after a fence: {hints:?}",
            wanted.display()
        ));
    }
    Ok(())
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

/// Fails unless an io_uring operation succeeded (`result`: its completion's).
fn io_uring_done(what: &str, result: i32) -> Result<(), String> {
    if result == 0 {
        Ok(())
    } else {
        Err(format!("io_uring {what} failed: {result}"))
    }
}

/// Removes `path` with an io_uring `unlinkat`, which no syscall tracepoint sees.
fn unlink_through_io_uring(path: &Path) -> Result<(), String> {
    io_uring_done("unlinkat", uring::unlinkat(libc::AT_FDCWD, path, 0))
}

/// Renames `from` to `to` with an io_uring `renameat`.
fn rename_through_io_uring(from: &Path, to: &Path) -> Result<(), String> {
    let cwd = libc::AT_FDCWD;
    io_uring_done("renameat", uring::renameat(cwd, from, cwd, to))
}

/// Runs the tracker with the eBPF backend (`--ebpf-hooks hooks` if given), requires its status
/// to show attach mode `mode`, creates an indirect root's user link while it runs, and
/// requires the next (fenced) query to list it.
fn tracker_fenced_query(hooks: Option<&str>, mode: &str) -> Result<String, String> {
    let store = FakeStore::new(&[STORE_NAME]);
    let run_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_tracker, socket, status) = start_tracker(&store, run_dir.path(), hooks, mode)?;

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

/// Starts `tracker-cli run --backend ebpf` (`--ebpf-hooks hooks` if given) on `store`, its
/// socket, database and log in `run_dir`; waits until it answers and requires its status to
/// show attach mode `mode`. The tracker is killed when the returned guard drops.
fn start_tracker(
    store: &FakeStore,
    run_dir: &Path,
    hooks: Option<&str>,
    mode: &str,
) -> Result<(Tracker, std::path::PathBuf, serde_json::Value), String> {
    let socket = run_dir.join("socket");
    let log = run_dir.join("tracker.log");
    let mut tracker = Tracker(
        Command::new(package_bin("tracker-cli"))
            .args(["run", "--backend", "ebpf", "--verify-interval-secs", "0"])
            .args(hooks.iter().flat_map(|hooks| ["--ebpf-hooks", hooks]))
            .arg("--socket")
            .arg(&socket)
            .arg("--db")
            .arg(run_dir.join("index.sqlite"))
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
    if status["source_checks"]["attach_mode"]["mode"] != mode {
        return Err(format!("attach mode is not {mode}: {status}"));
    }
    Ok((tracker, socket, status))
}

/// Files created and removed per churn run of [`churn_overhead`].
const CHURN_FILES: usize = 20_000;
/// Interleaved rounds of [`churn_overhead`]; each mode's minimum and median are reported.
const CHURN_ROUNDS: usize = 7;

/// Unrelated file churn (create and unlink of regular files whose names are not watched) with
/// no eBPF source, with the tracepoint set and with the fentry set, interleaved; prints each
/// mode's minimum and median and their ratios to no source. Software emulation makes absolute times meaningless; the ratios
/// show what each mode costs every other process.
fn churn_overhead() -> Result<String, String> {
    let store = FakeStore::new(&[]);
    let interest = Interest {
        store_dir: store.layout.store_dir().to_owned(),
        basenames: BTreeSet::from([b"result".to_vec()]),
        paths: vec![store.root.join("home")],
    };
    let churn_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let modes: [(&str, Option<HookChoice>); 3] = [
        ("none", None),
        ("tracepoints", Some(HookChoice::Tracepoints)),
        ("fentry", Some(HookChoice::Fentry)),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    for round in 0..CHURN_ROUNDS {
        for (index, (mode, hooks)) in modes.iter().enumerate() {
            let source = match hooks {
                Some(hooks) => Some(
                    EbpfSource::attach_with(
                        &interest,
                        &EbpfOptions {
                            hooks: *hooks,
                            ..EbpfOptions::default()
                        },
                    )
                    .map_err(|e| brief(&e))?,
                ),
                None => None,
            };
            let elapsed = churn(churn_dir.path())?;
            drop(source);
            println!(
                "RT-VM-OVERHEAD: round {round} {mode}: {CHURN_FILES} create+unlink in {:.3} s",
                elapsed.as_secs_f64()
            );
            times[index].push(elapsed);
        }
    }
    // The minimum is what a mode costs without interference from the emulating host (noise
    // only ever adds time); the median is shown beside it.
    let summary: Vec<(f64, f64)> = times
        .iter_mut()
        .map(|runs| {
            runs.sort();
            (runs[0].as_secs_f64(), runs[runs.len() / 2].as_secs_f64())
        })
        .collect();
    let (none_min, none_median) = summary[0];
    let described: Vec<String> = modes
        .iter()
        .zip(&summary)
        .map(|((mode, _), (min, median))| {
            format!(
                "{mode} min {min:.3} s ({:.2}x), median {median:.3} s ({:.2}x)",
                min / none_min,
                median / none_median
            )
        })
        .collect();
    Ok(format!(
        "{CHURN_ROUNDS} interleaved rounds of {CHURN_FILES} create+unlink: {}",
        described.join("; ")
    ))
}

/// Creates and unlinks [`CHURN_FILES`] regular files in `dir`; how long it took.
fn churn(dir: &Path) -> Result<Duration, String> {
    let path = dir.join("churn-file");
    let started = Instant::now();
    for _ in 0..CHURN_FILES {
        std::fs::File::create(&path).map_err(|e| e.to_string())?;
        std::fs::remove_file(&path).map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}

/// Seeds of the `random` step, each a fresh tree, and operations per seed.
const RANDOM_SEEDS: u64 = 4;
const RANDOM_OPS: usize = 100;

/// `tests::interest_race` against a tracker in fentry mode: a rename judged at `do_renameat2`'s
/// entry before its names were watched, and done after the tracker read the new auto link.
fn tracker_interest_race() -> Result<String, String> {
    let store = FakeStore::new(&[STORE_NAME]);
    let run_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_tracker, socket, _) = start_tracker(&store, run_dir.path(), None, "fentry")?;
    let store_dir = store.layout.store_dir();
    let query = || {
        let response = request(&socket, r#"{"request":"query","wait_ms":60000}"#)
            .map_err(|e| format!("query failed: {e}"))?;
        if response["response"] != "roots" {
            return Err(format!("query refused: {response}"));
        }
        Ok(response["report"].clone())
    };
    let mut seen = Vec::new();
    for how in [Rename::Syscall, Rename::IoUring] {
        seen.push(rename_started_before_its_name_was_watched(
            &store.layout,
            &store.root.join("home/u"),
            &store_dir.join(STORE_NAME),
            &store_dir.join("0123456789abcdfghijklmnpqrsvwx99-unregistered"),
            how,
            &query,
        )?);
    }
    let status = request(&socket, r#"{"request":"status"}"#).map_err(|e| e.to_string())?;
    let unjudged = &status["status"]["source"]["unjudged"];
    if unjudged.as_u64().is_none_or(|count| count < 2) {
        return Err(format!(
            "the renames' ends were not reported as judged before the names were added: {status}"
        ));
    }
    Ok(format!("{}; unjudged {unjudged}", seen.join("; ")))
}

/// `live_random`'s seeded workload ([`Workload`]: link, directory, mount, cross-filesystem and
/// io_uring operations), smaller and on a store without Nix, against a tracker in fentry
/// mode: after every batch the fenced query must equal a fresh scan.
fn tracker_random_workload() -> Result<String, String> {
    let names: Vec<String> = (0..4)
        .map(|i| format!("0123456789abcdfghijklmnpqrsvwx{i:02}-live"))
        .collect();
    let store = FakeStore::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let run_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_tracker, socket, _) = start_tracker(&store, run_dir.path(), None, "fentry")?;
    let mut targets: Vec<_> = names
        .iter()
        .map(|name| store.layout.store_dir().join(name))
        .collect();
    targets.push(
        store
            .layout
            .store_dir()
            .join("0123456789abcdfghijklmnpqrsvwx99-unregistered"),
    );
    // User links on two filesystems, as in `live_random`; the tmpfs goes after the workload.
    let homes = [store.root.join("home/live"), store.root.join("home/other")];
    std::fs::create_dir_all(&homes[0]).map_err(|e| e.to_string())?;
    let _second_fs = tests::TmpfsMount::new(&homes[1]);
    let mut workload = Workload::new(store.layout.clone(), targets, homes);
    let mut batches = 0;
    for seed in 0..RANDOM_SEEDS {
        workload.run_seed(seed, RANDOM_OPS, |workload, done| {
            batches += 1;
            let response = request(&socket, r#"{"request":"query","wait_ms":60000}"#)
                .map_err(|e| format!("query failed: {e}"))?;
            if response["response"] != "roots" {
                return Err(format!("seed {seed}: query refused: {response}"));
            }
            let answer = index_part(&response["report"]);
            let truth = workload.truth();
            if answer != truth {
                return Err(format!(
                    "seed {seed}, after {done} operations: the fenced query differs from a \
                     scan: query {answer}; scan {truth}; operations of this seed:\n{}",
                    workload.journal()
                ));
            }
            Ok(())
        })?;
    }
    let status = request(&socket, r#"{"request":"status"}"#).map_err(|e| e.to_string())?;
    let reconciler = &status["status"]["reconciler"];
    if reconciler["drift"] != 0 {
        return Err(format!("the reconciler found drift: {status}"));
    }
    Ok(format!(
        "{RANDOM_SEEDS} seeds x {RANDOM_OPS} operations: {batches} fenced queries equal a scan; \
         reconciler {reconciler}"
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
