//! The eBPF symlink source against the real kernel: store-target symlinks made with `symlink`
//! and `symlinkat` arrive with their raw bytes and our pid, other symlinks are filtered in the
//! kernel, and the per-CPU sent counter moves. Needs root (CI runs as root).
//!
//! Every test uses its own temporary store dir, so tests running in parallel (each with its own
//! attached programs and maps) only ever see their own events.

#![expect(
    clippy::unwrap_used,
    reason = "privileged tests panic on failure, as aya's test README recommends"
)]

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    fcntl::{OFlag, open},
    sys::stat::Mode,
    unistd::symlinkat,
};
use root_tracker::source::ebpf::{SymlinkRequest, SymlinkSyscall, SymlinkWatch};
use std::os::fd::AsRawFd as _;
use tempfile::TempDir;

/// Generous: an event normally arrives within microseconds; this bounds a broken run.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A hermetic store dir with the programs attached to it. Field order is drop order: the
/// programs are detached before the directories are removed, also when a test panics.
struct AttachedStore {
    watch: SymlinkWatch,
    store: PathBuf,
    links: PathBuf,
    _dir: TempDir,
}

impl AttachedStore {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the eBPF tests load BPF programs and must run as root (CI does); \
             run them with `sudo -E cargo test -p tests --test ebpf_symlink`"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let links = dir.path().join("links");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&links).unwrap();
        let watch = SymlinkWatch::attach(&store).unwrap();
        Self {
            watch,
            store,
            links,
            _dir: dir,
        }
    }

    fn next(&mut self) -> SymlinkRequest {
        self.watch
            .next_request(EVENT_TIMEOUT)
            .unwrap()
            .expect("no symlink event within the timeout")
    }

    /// Asserts nothing is queued. Only meaningful right after a store link was received that was
    /// created after every link that could have produced an unwanted event (FIFO per thread).
    fn assert_drained(&mut self) {
        let extra = self.watch.next_request(Duration::ZERO).unwrap();
        assert!(extra.is_none(), "unexpected event: {extra:?}");
    }
}

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

#[test]
fn symlink_into_store_arrives_and_other_targets_are_filtered() {
    let mut fixture = AttachedStore::new();
    let store_bytes = bytes(&fixture.store).to_vec();

    // Targets the kernel must filter out: outside the store, a sibling that shares the store
    // dir's name as a prefix but not its `/`, the store dir itself, and relative link text
    // (never in the store, as in Nix).
    let mut sibling = store_bytes.clone();
    sibling.extend_from_slice(b"x/abc-foo");
    let outside = [
        b"/elsewhere/abc-foo".to_vec(),
        sibling,
        store_bytes.clone(),
        b"../store/abc-foo".to_vec(),
    ];
    for (i, target) in outside.iter().enumerate() {
        symlink(
            OsStr::from_bytes(target),
            fixture.links.join(format!("outside-{i}")),
        )
        .unwrap();
    }

    // Created after all of those by the same thread, so it is the first event if they were
    // filtered.
    let target = fixture.store.join("0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-foo");
    let link = fixture.links.join("result");
    symlink(&target, &link).unwrap();

    let request = fixture.next();
    assert_eq!(request.target.as_bytes(), bytes(&target));
    assert_eq!(bytes(&request.link_path), bytes(&link));
    assert_eq!(request.pid, std::process::id());
    assert_eq!(request.syscall, SymlinkSyscall::Symlink);
    assert_eq!(request.dirfd, libc::AT_FDCWD);
    assert!(!request.truncated && !request.link_path_unreadable);
    fixture.assert_drained();

    let counters = fixture.watch.counters().unwrap();
    assert_eq!(counters.sent, 1, "{counters:?}");
    assert!(!counters.lost_hints(), "{counters:?}");
}

#[test]
fn symlinkat_keeps_dirfd_and_raw_link_name_bytes() {
    let mut fixture = AttachedStore::new();
    let dir = open(
        &fixture.links,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();

    // A subpath of a store path roots the store path; the link name holds a newline, a tab and
    // bytes that are not UTF-8.
    let target = fixture
        .store
        .join("0a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-pkg/bin/tool");
    let name: &[u8] = b"res\nult\t\xff\xfe";
    symlinkat(&target, &dir, OsStr::from_bytes(name)).unwrap();
    assert!(fixture.links.join(OsStr::from_bytes(name)).is_symlink());

    let request = fixture.next();
    assert_eq!(request.syscall, SymlinkSyscall::Symlinkat);
    assert_eq!(request.dirfd, dir.as_raw_fd());
    assert_eq!(request.target.as_bytes(), bytes(&target));
    assert_eq!(bytes(&request.link_path), name);
    assert_eq!(request.pid, std::process::id());

    // symlinkat with AT_FDCWD and an absolute link path is reported too.
    let second_target = fixture.store.join("1a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p-bar");
    let second_link = fixture.links.join("second");
    symlinkat(&second_target, nix::fcntl::AT_FDCWD, &second_link).unwrap();
    let request = fixture.next();
    assert_eq!(request.dirfd, libc::AT_FDCWD);
    assert_eq!(request.target.as_bytes(), bytes(&second_target));
    assert_eq!(bytes(&request.link_path), bytes(&second_link));
    fixture.assert_drained();

    let counters = fixture.watch.counters().unwrap();
    assert_eq!(counters.sent, 2, "{counters:?}");
    assert!(!counters.lost_hints(), "{counters:?}");
}

#[test]
fn each_watch_sees_only_its_own_store() {
    let mut first = AttachedStore::new();
    let mut second = AttachedStore::new();

    // Into the second store first, then the first: the first watch must see only its own link.
    symlink(second.store.join("abc-two"), second.links.join("two")).unwrap();
    symlink(first.store.join("abc-one"), first.links.join("one")).unwrap();

    assert_eq!(
        first.next().target.as_bytes(),
        bytes(&first.store.join("abc-one"))
    );
    first.assert_drained();
    assert_eq!(
        second.next().target.as_bytes(),
        bytes(&second.store.join("abc-two"))
    );
    second.assert_drained();
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
    let attached = AttachedStore::new();
    assert_eq!(tracefs_mounts(), before, "attach changed the host's mounts");
    drop(attached);
    assert_eq!(tracefs_mounts(), before);
}
