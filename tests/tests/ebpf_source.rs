//! The eBPF source against the real kernel: every path operation on a watched basename yields
//! its `Hint::Path` by the time a fence returns, unwatched names yield nothing, mounts yield
//! `MountsChanged`, io_uring operations are judged by name like syscalls (or, where the
//! kernel's layout is unknown, yield `Hint::Lost`), and a full ring buffer yields `Hint::Lost`.
//! Needs root (CI runs as root).
//!
//! These tests attach the tracepoint set (`HookChoice::Tracepoints`) whatever the kernel
//! accepts: the fentry/fexit set, which this machine kind refuses, is checked under Linux 6.1
//! by `cargo xtask vm`; here only its refusal and the fallback are.
//!
//! Every test has its own home and store dir and its own attached programs. The programs see
//! the whole machine, so tests running in parallel may see each other's mounts and io_uring
//! submissions; assertions therefore look only at hints naming the test's own home.

#![expect(
    clippy::unwrap_used,
    reason = "privileged tests panic on failure, as aya's test README recommends"
)]

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::symlink},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    fcntl::{AtFlags, OFlag, RenameFlags, open, renameat, renameat2},
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::stat::Mode,
    unistd::{UnlinkatFlags, linkat, symlinkat, unlinkat},
};
use root_tracker::{
    hint::Hint,
    source::{
        Interest, Source as _,
        ebpf::{
            AttachMode, EbpfError, EbpfOptions, EbpfSource, Faults, HookChoice, IoUringNames, Probe,
        },
    },
};
use tempfile::TempDir;
use tests::uring;

/// `AT_FDCWD` as the io_uring helpers take it.
const AT: i32 = libc::AT_FDCWD;

/// Generous: a fence normally returns within microseconds; this bounds a broken run.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// A home and a store dir with the programs attached. Field order is drop order: the programs
/// are detached before the directories are removed, also when a test panics.
struct Fixture {
    source: EbpfSource,
    interest: Interest,
    store: PathBuf,
    home: PathBuf,
    _dir: TempDir,
}

impl Fixture {
    fn new(watched: &[&[u8]]) -> Self {
        Self::with_options(watched, &tracepoints())
    }

    fn with_options(watched: &[&[u8]], options: &EbpfOptions) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the eBPF tests load BPF programs and must run as root (CI does); \
             run them with `sudo -E cargo test -p tests --test ebpf_source`"
        );
        let dir = tempfile::tempdir().unwrap();
        // Canonical, as the kernel names directories in /proc.
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let store = root.join("store");
        let home = root.join("home");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&home).unwrap();
        let interest = Interest {
            store_dir: store.clone(),
            basenames: watched.iter().map(|name| name.to_vec()).collect(),
            paths: vec![home.clone()],
        };
        let source = EbpfSource::attach_with(&interest, options).unwrap();
        Self {
            source,
            interest,
            store,
            home,
            _dir: dir,
        }
    }

    /// Every hint for what happened before this call.
    fn fence(&mut self) -> Vec<Hint> {
        let mut hints = Vec::new();
        self.source
            .fence(Instant::now() + FENCE_TIMEOUT, &mut hints)
            .unwrap();
        hints
    }

    /// The hints of a fence that name an entry under this fixture's home. Basename hints are
    /// left out: they do not say where, and other processes on the machine (other tests,
    /// builds) may touch watched names too.
    fn fence_own(&mut self) -> BTreeSet<Hint> {
        let home = self.home.clone();
        self.fence()
            .into_iter()
            .filter(|hint| matches!(hint, Hint::Path(path) if path.starts_with(&home)))
            .collect()
    }

    fn path(&self, name: &[u8]) -> PathBuf {
        self.home.join(OsStr::from_bytes(name))
    }

    fn store_path(&self) -> PathBuf {
        self.store.join("0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-foo")
    }

    fn open_home(&self) -> OwnedFd {
        open_dir(&self.home)
    }
}

fn open_dir(path: &Path) -> OwnedFd {
    open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

fn paths(hints: &[&Path]) -> BTreeSet<Hint> {
    hints.iter().map(|p| Hint::Path(p.to_path_buf())).collect()
}

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

#[test]
fn symlink_and_symlinkat_are_reported_and_filtered() {
    let odd: &[u8] = b"res\nult\t\xff\xfe";
    let mut fixture = Fixture::new(&[b"result", odd]);
    let target = fixture.store_path();
    let home = fixture.open_home();

    // Reported: a watched name to anywhere; any name into the store (with dirfd and raw bytes).
    symlink("/elsewhere", fixture.path(b"result")).unwrap();
    symlinkat(&target, &home, os(b"into-store")).unwrap();
    symlinkat(&target, &home, os(odd)).unwrap();
    // Not reported: an unwatched name outside the store, or whose relative text is not in it.
    symlink("/elsewhere", fixture.path(b"other")).unwrap();
    symlinkat("../store/abc-foo", &home, os(b"relative")).unwrap();
    // Not reported: the prefix is compared to its last byte (`<store>/`), and a target as long
    // as the store dir is not inside it.
    let mut near = fixture.store.clone().into_os_string();
    near.push("-near/abc-foo");
    symlinkat(near.as_os_str(), &home, os(b"near-store")).unwrap();
    symlinkat(fixture.store.as_os_str(), &home, os(b"store-itself")).unwrap();

    let hints = fixture.fence_own();
    let expected = paths(&[
        &fixture.path(b"result"),
        &fixture.path(b"into-store"),
        &fixture.path(odd),
    ]);
    assert_eq!(hints, expected);
}

#[test]
fn unlink_unlinkat_and_rmdir_are_reported() {
    let mut fixture = Fixture::new(&[b"result", b"proj", b"gone"]);
    let home = fixture.open_home();
    for name in [&b"result"[..], b"other", b"twin"] {
        symlink("/x", fixture.path(name)).unwrap();
    }
    std::fs::create_dir(fixture.path(b"proj")).unwrap();
    std::fs::create_dir(fixture.path(b"gone")).unwrap();
    std::fs::create_dir(fixture.path(b"plain")).unwrap();
    fixture.fence();

    std::fs::remove_file(fixture.path(b"result")).unwrap();
    unlinkat(&home, "proj", UnlinkatFlags::RemoveDir).unwrap();
    std::fs::remove_dir(fixture.path(b"gone")).unwrap();
    // Unwatched: nothing.
    unlinkat(&home, "other", UnlinkatFlags::NoRemoveDir).unwrap();
    std::fs::remove_dir(fixture.path(b"plain")).unwrap();
    // Failed operations change nothing and are not reported.
    assert!(std::fs::remove_file(fixture.path(b"result")).is_err());

    let expected = paths(&[
        &fixture.path(b"result"),
        &fixture.path(b"proj"),
        &fixture.path(b"gone"),
    ]);
    assert_eq!(fixture.fence_own(), expected);
}

#[test]
fn rename_renameat_and_renameat2_report_both_names() {
    let mut fixture = Fixture::new(&[b"result"]);
    let home = fixture.open_home();
    for name in [&b"a"[..], b"b", b"c", b"d", b"x"] {
        symlink("/x", fixture.path(name)).unwrap();
    }
    fixture.fence();

    // Into a watched name, and out of it again.
    std::fs::rename(fixture.path(b"a"), fixture.path(b"result")).unwrap();
    renameat(&home, "result", &home, "a2").unwrap();
    assert_eq!(
        fixture.fence_own(),
        paths(&[
            &fixture.path(b"a"),
            &fixture.path(b"result"),
            &fixture.path(b"a2"),
        ])
    );

    // RENAME_NOREPLACE onto a free watched name, then RENAME_EXCHANGE with it.
    renameat2(&home, "b", &home, "result", RenameFlags::RENAME_NOREPLACE).unwrap();
    renameat2(&home, "c", &home, "result", RenameFlags::RENAME_EXCHANGE).unwrap();
    // Unwatched names on both sides: nothing.
    renameat2(&home, "d", &home, "x", RenameFlags::RENAME_EXCHANGE).unwrap();
    assert_eq!(
        fixture.fence_own(),
        paths(&[
            &fixture.path(b"b"),
            &fixture.path(b"c"),
            &fixture.path(b"result"),
        ])
    );
}

#[test]
fn link_and_linkat_of_a_symlink_report_the_new_name() {
    let mut fixture = Fixture::new(&[b"result", b"copy"]);
    let home = fixture.open_home();
    symlink(fixture.store_path(), fixture.path(b"result")).unwrap();
    symlink("/x", fixture.path(b"plain")).unwrap();
    fixture.fence();

    std::fs::hard_link(fixture.path(b"result"), fixture.path(b"backup")).unwrap();
    linkat(&home, "plain", &home, "copy", AtFlags::empty()).unwrap();
    // Unwatched on both sides: nothing.
    linkat(&home, "plain", &home, "plain2", AtFlags::empty()).unwrap();
    assert!(fixture.path(b"copy").is_symlink());

    assert_eq!(
        fixture.fence_own(),
        paths(&[&fixture.path(b"backup"), &fixture.path(b"copy")])
    );
}

/// A relative path is resolved against the caller's working directory (here a thread's own,
/// after `unshare(CLONE_FS)`) or its dirfd, read from /proc while the caller is alive.
#[test]
fn relative_paths_resolve_against_cwd_and_dirfd() {
    let mut fixture = Fixture::new(&[b"result"]);
    let sub = fixture.path(b"proj");
    std::fs::create_dir(&sub).unwrap();
    symlink("/x", sub.join("a")).unwrap();
    symlink("/x", sub.join("b")).unwrap();
    fixture.fence();

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let worker_dir = sub.clone();
    let worker = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
        std::env::set_current_dir(&worker_dir).unwrap();
        std::fs::rename("a", "result").unwrap();
        done_tx.send(()).unwrap();
        // Stay alive (with this cwd) until the fence has read our /proc entries.
        let _ = release_rx.recv();
    });
    done_rx.recv().unwrap();
    let from_cwd = fixture.fence_own();
    drop(release_tx);
    worker.join().unwrap();
    assert_eq!(from_cwd, paths(&[&sub.join("a"), &sub.join("result")]));

    // Relative to a dirfd, with a subdirectory in the relative part.
    let home = fixture.open_home();
    std::fs::remove_file(sub.join("result")).unwrap();
    fixture.fence();
    renameat(&home, "proj/b", &home, "proj/result").unwrap();
    assert_eq!(
        fixture.fence_own(),
        paths(&[&sub.join("b"), &sub.join("result")])
    );
}

/// A caller that is gone when its event is read cannot have its relative path resolved: the
/// hint names the basename.
#[test]
fn relative_path_of_an_exited_process_is_named_by_basename() {
    let mut fixture = Fixture::new(&[b"result"]);
    symlink("/x", fixture.path(b"result")).unwrap();
    fixture.fence();
    let status = std::process::Command::new("rm")
        .arg("result")
        .current_dir(&fixture.home)
        .status()
        .unwrap();
    assert!(status.success());
    let hints = fixture.fence();
    assert!(
        hints.contains(&Hint::Basename("result".into()))
            || hints.contains(&Hint::Path(fixture.path(b"result"))),
        "{hints:?}"
    );
}

/// The tracker loop's wake-up (a request to answer) ends a wait with no record to read.
#[test]
fn poll_returns_when_woken() {
    let mut fixture = Fixture::new(&[b"rt-wake-test-unused"]);
    tests::check_poll_returns_when_woken(&mut fixture.source);
}

#[test]
fn set_interest_adds_and_removes_basenames() {
    let mut fixture = Fixture::new(&[b"first"]);
    for name in [&b"first"[..], b"second"] {
        symlink("/x", fixture.path(name)).unwrap();
    }
    fixture.fence();
    let mut interest = fixture.interest.clone();
    interest.basenames = [b"second".to_vec()].into_iter().collect();
    fixture.source.set_interest(&interest).unwrap();

    std::fs::remove_file(fixture.path(b"first")).unwrap();
    std::fs::remove_file(fixture.path(b"second")).unwrap();
    assert_eq!(fixture.fence_own(), paths(&[&fixture.path(b"second")]));
}

/// A long path is sent as its tail; the hint then names its basename.
#[test]
fn long_path_is_named_by_basename() {
    let mut fixture = Fixture::new(&[b"result"]);
    let mut deep = fixture.home.clone();
    for _ in 0..6 {
        deep.push("d".repeat(100));
    }
    std::fs::create_dir_all(&deep).unwrap();
    symlink("/x", deep.join("result")).unwrap();
    assert!(fixture.fence().contains(&Hint::Basename("result".into())));
    std::fs::remove_file(deep.join("result")).unwrap();
    assert!(fixture.fence().contains(&Hint::Basename("result".into())));
}

/// Unmounts in `Drop`, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
fn mount_and_umount_report_mounts_changed() {
    let mut fixture = Fixture::new(&[]);
    let point = fixture.path(b"mnt");
    std::fs::create_dir(&point).unwrap();
    fixture.fence();

    mount(
        Some("tmpfs"),
        &point,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let mounted = Mounted(point.clone());
    assert!(fixture.fence().contains(&Hint::MountsChanged));

    drop(mounted);
    assert!(fixture.fence().contains(&Hint::MountsChanged));
}

/// Lost hints an io_uring operation caused (the reasons the source gives them).
fn io_uring_losses(hints: &[Hint]) -> Vec<&Hint> {
    hints
        .iter()
        .filter(|hint| matches!(hint, Hint::Lost { reason } if reason.contains("io_uring")))
        .collect()
}

/// On the tracepoint path the io_uring submission program reads a request's names (this
/// kernel's BTF gives their layout) and judges them like a syscall's: operations on names no
/// one watches send nothing, so they no longer unsettle the index.
#[test]
fn io_uring_operations_on_unwatched_names_send_nothing() {
    let mut fixture = Fixture::new(&[b"io-uring-watched"]);
    let checks = fixture.source.checks().clone();
    assert_eq!(
        checks.io_uring_submit,
        Probe::Attached,
        "this kernel has io_uring; its tracepoint must be attached"
    );
    assert_eq!(checks.io_uring_names, IoUringNames::Read, "{checks:?}");
    let home = fixture.open_home();
    let fd = home.as_raw_fd();
    for name in [&b"plain-a"[..], b"plain-b", b"plain-c"] {
        symlink("/x", fixture.path(name)).unwrap();
    }
    fixture.fence();

    assert_eq!(uring::unlinkat(AT, &fixture.path(b"plain-a"), 0), 0);
    assert_eq!(
        uring::renameat(fd, Path::new("plain-b"), fd, Path::new("plain-d")),
        0
    );
    assert_eq!(
        uring::linkat(fd, Path::new("plain-c"), fd, Path::new("plain-e")),
        0
    );
    assert_eq!(
        uring::symlinkat(Path::new("/x"), fd, Path::new("plain-f")),
        0
    );
    // A new directory, even with a watched name, neither creates nor removes a root.
    assert_eq!(uring::mkdirat(fd, Path::new("io-uring-watched")), 0);

    let hints = fixture.fence();
    assert!(io_uring_losses(&hints).is_empty(), "{hints:?}");
    let home = fixture.home.clone();
    assert!(
        !hints
            .iter()
            .any(|hint| matches!(hint, Hint::Path(path) if path.starts_with(&home))),
        "{hints:?}"
    );
}

/// Relevant io_uring operations come through a fence as exact paths, like syscalls: names
/// relative to a directory fd or to the submitting thread's working directory are resolved,
/// a symlink counts by its target, a hard link by its new name, and a failed operation
/// (its completion's result) changes nothing.
#[test]
fn io_uring_operations_on_watched_names_are_named() {
    let mut fixture = Fixture::new(&[b"result", b"copy"]);
    let home = fixture.open_home();
    let fd = home.as_raw_fd();
    for name in [&b"a"[..], b"plain"] {
        symlink("/x", fixture.path(name)).unwrap();
    }
    fixture.fence();

    // symlinkat: into the store (an unwatched name, relative to a dirfd), a watched name
    // (absolute); neither: nothing.
    let target = fixture.store_path();
    assert_eq!(uring::symlinkat(&target, fd, Path::new("into-store")), 0);
    let result = fixture.path(b"result");
    assert_eq!(uring::symlinkat(Path::new("/elsewhere"), AT, &result), 0);
    assert_eq!(
        uring::symlinkat(Path::new("/elsewhere"), fd, Path::new("other")),
        0
    );
    assert_eq!(
        fixture.fence_own(),
        paths(&[&fixture.path(b"into-store"), &result])
    );
    let hints = fixture.fence();
    assert!(io_uring_losses(&hints).is_empty(), "{hints:?}");

    // renameat over a watched name (dirfd-relative), linkat to one (absolute), unlinkat
    // (dirfd-relative), and an unlinkat that fails.
    assert_eq!(
        uring::renameat(fd, Path::new("a"), fd, Path::new("result")),
        0
    );
    assert_eq!(
        uring::linkat(AT, &fixture.path(b"plain"), AT, &fixture.path(b"copy")),
        0
    );
    assert!(fixture.path(b"copy").is_symlink());
    assert_eq!(uring::unlinkat(fd, Path::new("copy"), 0), 0);
    assert_eq!(
        uring::unlinkat(AT, &fixture.path(b"gone/result"), 0),
        -libc::ENOENT
    );
    let hints = fixture.fence();
    assert!(io_uring_losses(&hints).is_empty(), "{hints:?}");
    let home_dir = fixture.home.clone();
    let own: BTreeSet<Hint> = hints
        .into_iter()
        .filter(|hint| matches!(hint, Hint::Path(path) if path.starts_with(&home_dir)))
        .collect();
    assert_eq!(
        own,
        paths(&[&fixture.path(b"a"), &result, &fixture.path(b"copy")])
    );

    // Relative to the working directory of the thread that submitted (its own, after
    // `unshare(CLONE_FS)`), which stays alive until the fence has read the request.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let worker_dir = fixture.home.clone();
    let worker = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
        std::env::set_current_dir(&worker_dir).unwrap();
        done_tx
            .send(uring::unlinkat(AT, Path::new("result"), 0))
            .unwrap();
        let _ = release_rx.recv();
    });
    assert_eq!(done_rx.recv().unwrap(), 0);
    let from_cwd = fixture.fence_own();
    drop(release_tx);
    worker.join().unwrap();
    assert_eq!(from_cwd, paths(&[&result]));
}

/// An io_uring operation's names are resolved by an io-wq worker after the submission, against
/// the working directory it shares with the submitter: a `chdir` in between makes the kernel
/// use the new directory. Here the unlinkat waits, linked behind a read of an empty pipe,
/// until the thread has changed directory; its record is read before that. The hint must
/// not name the entry in the directory the submission saw (that entry is still there).
#[test]
fn io_uring_names_resolved_after_a_chdir_are_not_named_in_the_old_directory() {
    use io_uring::{opcode, squeue, types::Fd};
    let mut fixture = Fixture::new(&[b"result"]);
    let (dir_a, dir_b) = (fixture.path(b"a"), fixture.path(b"b"));
    for dir in [&dir_a, &dir_b] {
        std::fs::create_dir(dir).unwrap();
        symlink("/x", dir.join("result")).unwrap();
    }
    fixture.fence();

    let (submitted_tx, submitted_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<i32>>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (a, b) = (dir_a.clone(), dir_b.clone());
    let worker = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
        std::env::set_current_dir(&a).unwrap();
        let (pipe_read, pipe_write) = nix::unistd::pipe().unwrap();
        let mut ring = io_uring::IoUring::new(4).unwrap();
        let mut byte = [0u8; 1];
        let name = c"result";
        let read = opcode::Read::new(Fd(pipe_read.as_raw_fd()), byte.as_mut_ptr(), 1)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let unlink = opcode::UnlinkAt::new(Fd(AT), name.as_ptr())
            .build()
            .user_data(2);
        // SAFETY: the buffer and the name outlive both requests, which complete below.
        unsafe {
            ring.submission().push(&read).unwrap();
            ring.submission().push(&unlink).unwrap();
        }
        ring.submit().unwrap();
        submitted_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        std::env::set_current_dir(&b).unwrap();
        nix::unistd::write(&pipe_write, b"x").unwrap();
        ring.submit_and_wait(2).unwrap();
        let mut results: Vec<(u64, i32)> = ring
            .completion()
            .map(|entry| (entry.user_data(), entry.result()))
            .collect();
        results.sort_unstable();
        done_tx
            .send(results.into_iter().map(|(_, result)| result).collect())
            .unwrap();
        // Alive, in B, until the fence has named the request.
        let _ = release_rx.recv();
    });
    submitted_rx.recv().unwrap();
    // The submission's record is in the ring buffer once `io_uring_enter` returned: read it
    // now, while the thread is still in A.
    let mut early = Vec::new();
    fixture
        .source
        .poll(Duration::ZERO, None, &mut early)
        .unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(done_rx.recv().unwrap(), vec![1, 0]);
    let hints = fixture.fence();
    drop(release_tx);
    worker.join().unwrap();

    // What the kernel did: the unlinkat ran in B.
    assert!(dir_a.join("result").is_symlink());
    assert!(!dir_b.join("result").exists());
    assert!(
        !hints.contains(&Hint::Path(dir_a.join("result"))),
        "{hints:?}"
    );
    assert!(
        hints.contains(&Hint::Basename("result".into()))
            || hints.contains(&Hint::Path(dir_b.join("result"))),
        "{hints:?}"
    );
}

/// A relevant request whose completion record never arrives (dropped from a full ring buffer;
/// injected here) is given up, with lost hints, once the kernel no longer holds it as in
/// flight: a fence does not wait for it until its deadline, now or in any later fence.
#[test]
fn io_uring_request_whose_completion_is_lost_does_not_hold_fences() {
    let options = EbpfOptions {
        faults: Faults {
            drop_io_uring_done: true,
            ..Faults::default()
        },
        ..tracepoints()
    };
    let mut fixture = Fixture::with_options(&[b"result"], &options);
    symlink("/x", fixture.path(b"result")).unwrap();
    fixture.fence();

    assert_eq!(uring::unlinkat(AT, &fixture.path(b"result"), 0), 0);
    let hints = fixture.fence();
    assert!(
        hints.iter().any(|hint| matches!(
            hint,
            Hint::Lost { reason } if reason.contains("completion was not seen")
        )),
        "{hints:?}"
    );
    // Given up, not waited for: no request is left in flight.
    let hints = fixture.fence();
    assert!(io_uring_losses(&hints).is_empty(), "{hints:?}");
}

/// Where the kernel's layout is unknown (a fault injected here), an io_uring path operation
/// cannot be judged: it is lost hints at submission and again at completion, whatever its
/// names, so the index is rescanned.
#[test]
fn io_uring_operations_without_the_layout_are_lost() {
    let options = EbpfOptions {
        faults: Faults {
            no_io_uring_names: true,
            ..Faults::default()
        },
        ..tracepoints()
    };
    let mut fixture = Fixture::with_options(&[b"result"], &options);
    assert!(
        matches!(
            fixture.source.checks().io_uring_names,
            IoUringNames::Unread { .. }
        ),
        "{:?}",
        fixture.source.checks()
    );
    symlink("/x", fixture.path(b"plain")).unwrap();
    fixture.fence();

    // An unwatched name: still lost, since nothing can tell.
    assert_eq!(uring::unlinkat(AT, &fixture.path(b"plain"), 0), 0);
    assert!(!fixture.path(b"plain").exists());

    let hints = fixture.fence();
    for wanted in ["io_uring unlinkat", "io_uring unlinkat completed"] {
        assert!(
            hints
                .iter()
                .any(|hint| matches!(hint, Hint::Lost { reason } if reason == wanted)),
            "no `{wanted}` in {hints:?}"
        );
    }
}

#[test]
fn full_ring_buffer_is_reported_as_lost() {
    let page = u32::try_from(
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    // One page holds three path events: a burst of relevant operations must overflow it.
    let mut fixture = Fixture::with_options(
        &[],
        &EbpfOptions {
            ring_buf_bytes: page,
            ..tracepoints()
        },
    );
    let target = fixture.store_path();
    for i in 0..64 {
        let link = fixture.path(format!("link-{i}").as_bytes());
        symlink(&target, &link).unwrap();
    }
    let hints = fixture.fence();
    assert!(
        hints
            .iter()
            .any(|hint| matches!(hint, Hint::Lost { reason } if reason.contains("dropped"))),
        "{hints:?}"
    );
    let counters = fixture.source.counters().unwrap();
    assert!(
        counters.dropped > 0 && counters.lost_hints(),
        "{counters:?}"
    );
    // Reported once: the next fence has nothing new to say about drops.
    let again = fixture.fence();
    assert!(
        !again
            .iter()
            .any(|hint| matches!(hint, Hint::Lost { reason } if reason.contains("dropped"))),
        "{again:?}"
    );
}

#[test]
fn ring_buffer_size_must_be_a_power_of_two_pages() {
    let dir = tempfile::tempdir().unwrap();
    let interest = Interest {
        store_dir: dir.path().to_owned(),
        ..Interest::default()
    };
    let result = EbpfSource::attach_with(
        &interest,
        &EbpfOptions {
            ring_buf_bytes: 3 * 4096,
            ..tracepoints()
        },
    );
    assert!(result.is_err());
}

/// Attaching must leave the host's mounts as they were: where tracefs is missing, it is
/// mounted only inside a private mount namespace of the attaching thread.
#[test]
fn attach_leaves_no_mount_behind() {
    let tracefs_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|line| line.contains(" - tracefs "))
            .count()
    };
    let before = tracefs_mounts();
    let attached = Fixture::new(&[]);
    assert_eq!(tracefs_mounts(), before, "attach changed the host's mounts");
    drop(attached);
    assert_eq!(tracefs_mounts(), before);
}

/// fexit and LSM are probed at attach time and the outcome is reported, with the kernel's
/// reason when they are refused (as on this machine kind, where both fail with EPERM).
#[test]
fn fexit_and_lsm_are_probed_and_reported() {
    use root_tracker::source::ebpf::Probe;
    let fixture = Fixture::new(&[]);
    let checks = fixture.source.checks();
    for (name, probe) in [("fexit", &checks.fexit), ("lsm", &checks.lsm)] {
        match probe {
            Probe::Loadable => {}
            Probe::Absent { reason } => {
                assert!(!reason.contains("not probed"), "{name}: {reason}");
                assert!(!reason.is_empty());
            }
            Probe::Attached | Probe::Unneeded { .. } => {
                panic!("{name} must not be attached with forced tracepoints: {probe:?}")
            }
        }
    }
    eprintln!("fexit: {:?}\nlsm: {:?}", checks.fexit, checks.lsm);
}

/// The default choice takes fentry/fexit only where they attach, and otherwise says why it
/// took the tracepoints; where fexit is refused (this machine kind) the reason names that
/// refusal, every tracepoint program is in place (io_uring's too), and asking for fentry
/// alone fails with the same reason instead of attaching a part.
#[test]
fn attach_mode_is_reported_with_its_reason() {
    let auto = Fixture::with_options(&[], &EbpfOptions::default());
    let checks = auto.source.checks().clone();
    eprintln!("auto: {checks:?}");
    match &checks.attach_mode {
        AttachMode::Fentry => {
            assert_eq!(checks.fexit, Probe::Attached);
            assert!(matches!(checks.io_uring_submit, Probe::Unneeded { .. }));
            eprintln!("skipped: this kernel runs the fentry set; `cargo xtask vm` checks it");
        }
        AttachMode::Tracepoints { reason } => {
            assert_eq!(checks.io_uring_submit, Probe::Attached);
            if let Probe::Absent { reason: refused } = &checks.fexit {
                assert!(reason.contains(refused.as_str()), "{reason} / {refused}");
            }
            drop(auto);
            let dir = tempfile::tempdir().unwrap();
            let interest = Interest {
                store_dir: dir.path().to_owned(),
                ..Interest::default()
            };
            let options = EbpfOptions {
                hooks: HookChoice::Fentry,
                ..EbpfOptions::default()
            };
            match EbpfSource::attach_with(&interest, &options) {
                Err(EbpfError::FentryUnavailable { reason: why }) => assert_eq!(&why, reason),
                Err(other) => panic!("unexpected error: {other}"),
                Ok(_) => panic!("fentry attached although auto chose tracepoints: {reason}"),
            }
        }
    }
}

/// The tracepoint set, whatever the kernel accepts.
fn tracepoints() -> EbpfOptions {
    EbpfOptions {
        hooks: HookChoice::Tracepoints,
        ..EbpfOptions::default()
    }
}

/// A process may close a directory fd and reuse its number for another directory, or change
/// its working directory, right after a relative-path call, before the record is read: the
/// directory `/proc` shows then is not the one the kernel used, and the hint must not name it
/// (a basename hint, which re-reads every indexed entry of that name, is right).
#[test]
fn reused_dirfd_or_left_cwd_is_not_taken_for_the_base_directory() {
    #[derive(Clone, Copy, Debug)]
    enum Swap {
        ReusedDirfd,
        ChangedCwd,
    }
    for swap in [Swap::ReusedDirfd, Swap::ChangedCwd] {
        let mut fixture = Fixture::new(&[b"result"]);
        let (dir_d, dir_e) = (fixture.path(b"d"), fixture.path(b"e"));
        std::fs::create_dir(&dir_d).unwrap();
        std::fs::create_dir(&dir_e).unwrap();
        fixture.fence();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (d, e, target) = (dir_d.clone(), dir_e.clone(), fixture.store_path());
        // Its own fd table and working directory: the swap touches nothing else here.
        let worker = std::thread::spawn(move || {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_FILES | nix::sched::CloneFlags::CLONE_FS,
            )
            .unwrap();
            let mut fd_d = open_dir(&d);
            let fd_e = open_dir(&e);
            match swap {
                Swap::ReusedDirfd => {
                    symlinkat(&target, &fd_d, "result").unwrap();
                    // As a close of D's fd and an open of E that gets the same number.
                    nix::unistd::dup2(&fd_e, &mut fd_d).unwrap();
                }
                Swap::ChangedCwd => {
                    std::env::set_current_dir(&d).unwrap();
                    symlink(&target, "result").unwrap();
                    std::env::set_current_dir(&e).unwrap();
                }
            }
            done_tx.send(()).unwrap();
            // Alive, swapped, until the fence has read our /proc entries.
            let _ = release_rx.recv();
            drop((fd_d, fd_e));
        });
        done_rx.recv().unwrap();
        let hints = fixture.fence();
        drop(release_tx);
        worker.join().unwrap();
        assert!(
            !hints.contains(&Hint::Path(dir_e.join("result"))),
            "{swap:?}: named the directory the process moved to: {hints:?}"
        );
        assert!(
            hints.contains(&Hint::Basename("result".into()))
                || hints.contains(&Hint::Path(dir_d.join("result"))),
            "{swap:?}: the new link is not named: {hints:?}"
        );
    }
}
