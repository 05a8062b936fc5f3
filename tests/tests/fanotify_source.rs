//! The fanotify source against the real kernel: creations, removals, renames and links of
//! watched names become path hints after a fence, unwatched names do not, store symlinks do
//! whatever their name, a full queue becomes `Hint::Lost`, and mounts are noticed. Needs root
//! (CI runs as root).
//!
//! Every test works on its own tmpfs, so the filesystem-wide marks of tests running in parallel
//! do not see each other's operations. The ancestors of a tmpfs (`/`, `/tmp`) are marked too, so
//! hints are narrowed to the test's own tree before comparing; other tests' mounts show up as
//! `MountsChanged` and are ignored except where a test looks for them.

#![expect(
    clippy::unwrap_used,
    reason = "privileged tests panic on failure, as aya's test README recommends"
)]

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use root_tracker::{
    hint::Hint,
    source::{
        Interest, Source as _, SourceError,
        fanotify::{FanotifyError, FanotifySource, RenameEvents},
    },
};
use tempfile::TempDir;

/// Generous: a fence normally takes microseconds; this bounds a broken run.
const FENCE_DEADLINE: Duration = Duration::from_secs(10);

/// A tmpfs of its own, unmounted in `Drop` — also when a test panics — before the directory
/// it was mounted on is removed.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the fanotify tests mark filesystems and mount tmpfs, so they must run as root \
             (CI does): `sudo -E cargo test -p tests --test fanotify_source`"
        );
        let dir = tempfile::tempdir().unwrap();
        mount_tmpfs(dir.path());
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// A tmpfs mounted on a directory of another test filesystem; unmounted in `Drop`.
struct NestedTmpfs(PathBuf);

impl Drop for NestedTmpfs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

fn mount_tmpfs(at: &Path) {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

fn unmount(at: &Path) {
    if let Err(error) = umount2(at, MntFlags::MNT_DETACH) {
        eprintln!("cannot unmount {at:?}: {error}");
    }
}

fn interest(store_dir: &Path, basenames: &[&[u8]], paths: &[&Path]) -> Interest {
    Interest {
        store_dir: store_dir.to_path_buf(),
        basenames: basenames.iter().map(|name| name.to_vec()).collect(),
        paths: paths.iter().map(|path| path.to_path_buf()).collect(),
    }
}

fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Fences and returns every hint.
fn fence(source: &mut FanotifySource) -> Vec<Hint> {
    let mut hints = Vec::new();
    source
        .fence(Instant::now() + FENCE_DEADLINE, &mut hints)
        .unwrap();
    hints
}

/// Fences and returns the hints about `roots`: paths beneath them, and losses. Bare names are
/// left out: they may come from any process's work on the marked `/` (a deleted directory that
/// held a watched name), and carry no filesystem to tell them apart.
fn fence_under(source: &mut FanotifySource, roots: &[&Path]) -> BTreeSet<Hint> {
    fence(source)
        .into_iter()
        .filter(|hint| match hint {
            Hint::Path(path) => roots.iter().any(|root| path.starts_with(root)),
            Hint::Lost { .. } => true,
            Hint::Basename(_) | Hint::MountsChanged => false,
        })
        .collect()
}

fn paths(paths: &[&Path]) -> BTreeSet<Hint> {
    paths
        .iter()
        .map(|path| Hint::Path(path.to_path_buf()))
        .collect()
}

#[test]
fn symlink_creation_is_reported_for_watched_names_and_store_targets() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let store = root.join("store");
    let proj = root.join("proj");
    std::fs::create_dir(&proj).unwrap();
    let result = proj.join("result");
    let mut source =
        FanotifySource::new(&interest(&store, &[b"proj", b"result"], &[&result])).unwrap();

    // (link name, target, reported?)
    let cases: &[(&str, &str, bool)] = &[
        ("result", "/elsewhere", true),
        ("other", "/elsewhere", false),
        ("other-store", "STORE/abc-pkg", true),
        ("store-subpath", "STORE/abc-pkg/bin/tool", true),
        ("store-lookalike", "STORE-not/abc-pkg", false),
        ("relative-store", "../store/abc-pkg", false),
    ];
    for &(link, target, reported) in cases {
        let target = target.replace("STORE", store.to_str().unwrap());
        symlink(&target, proj.join(link)).unwrap();
        let expected = if reported {
            paths(&[&proj.join(link)])
        } else {
            BTreeSet::new()
        };
        assert_eq!(
            fence_under(&mut source, &[root]),
            expected,
            "symlink {link} -> {target}"
        );
    }

    // A regular file with a watched name is reported too (it may replace a link).
    std::fs::remove_file(&result).unwrap();
    std::fs::write(&result, b"").unwrap();
    assert_eq!(fence_under(&mut source, &[root]), paths(&[&result]));
    assert!(source.stats().events > 0);
    assert_eq!(source.stats().dropped, 0);
}

#[test]
fn unlink_rename_rmdir_and_link_are_reported() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let proj = root.join("proj");
    let old = root.join("old");
    let result = proj.join("result");
    let previous = proj.join("result.old");
    std::fs::create_dir(&proj).unwrap();
    std::fs::create_dir(&old).unwrap();
    symlink("/elsewhere", &result).unwrap();
    let watched: &[&[u8]] = &[b"proj", b"old", b"result", b"result.old"];
    let mut source =
        FanotifySource::new(&interest(&root.join("store"), watched, &[&result, &old])).unwrap();
    assert_eq!(
        source.rename_events(),
        RenameEvents::Rename,
        "this kernel (>= 5.17) takes FAN_RENAME"
    );

    std::fs::rename(&result, &previous).unwrap();
    assert_eq!(
        fence_under(&mut source, &[root]),
        paths(&[&result, &previous]),
        "rename: both ends"
    );

    std::fs::remove_file(&previous).unwrap();
    assert_eq!(
        fence_under(&mut source, &[root]),
        paths(&[&previous]),
        "unlink"
    );

    let unwatched = proj.join("tmp-link");
    symlink("/elsewhere", &unwatched).unwrap();
    std::fs::hard_link(&unwatched, &result).unwrap();
    assert_eq!(
        fence_under(&mut source, &[root]),
        paths(&[&result]),
        "link of a symlink to a watched name"
    );

    std::fs::rename(&unwatched, &previous).unwrap();
    assert_eq!(
        fence_under(&mut source, &[root]),
        paths(&[&previous]),
        "rename from an unwatched name onto a watched one"
    );

    std::fs::remove_dir(&old).unwrap();
    assert_eq!(fence_under(&mut source, &[root]), paths(&[&old]), "rmdir");

    let moved = root.join("proj-moved");
    std::fs::rename(&proj, &moved).unwrap();
    assert_eq!(
        fence_under(&mut source, &[root]),
        paths(&[&proj]),
        "directory rename: the watched old end"
    );
}

#[test]
fn a_move_between_filesystems_is_reported_on_both() {
    let from = Tmpfs::new();
    let to = Tmpfs::new();
    let (old, new) = (from.path().join("result"), to.path().join("result"));
    symlink("/elsewhere", &old).unwrap();
    let mut source = FanotifySource::new(&interest(
        Path::new("/nix/store"),
        &[b"result"],
        &[&old, &new],
    ))
    .unwrap();

    // What `mv` does when rename(2) refuses to cross filesystems: copy, then unlink.
    let error = std::fs::rename(&old, &new).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EXDEV));
    symlink("/elsewhere", &new).unwrap();
    std::fs::remove_file(&old).unwrap();

    assert_eq!(
        fence_under(&mut source, &[from.path(), to.path()]),
        paths(&[&old, &new])
    );
}

#[test]
fn entries_of_a_deleted_directory_are_still_reported() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let dir = root.join("d");
    let result = dir.join("result");
    let mut source = FanotifySource::new(&interest(
        &root.join("store"),
        &[b"d", b"result"],
        &[&result],
    ))
    .unwrap();

    std::fs::create_dir(&dir).unwrap();
    symlink("/elsewhere", &result).unwrap();
    std::fs::remove_file(&result).unwrap();
    std::fs::remove_dir(&dir).unwrap();

    let hints = fence(&mut source);
    assert!(
        hints.contains(&Hint::Path(dir.clone())),
        "the directory itself: {hints:?}"
    );
    assert!(
        hints.contains(&Hint::Basename("result".into())) || hints.contains(&Hint::Path(result)),
        "the link in the deleted directory: {hints:?}"
    );
}

#[test]
fn names_with_newlines_and_invalid_utf8_survive() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let store = root.join("store");
    let odd: &[u8] = b"res\nult\xff\t";
    let link = root.join(name(odd));
    let mut source = FanotifySource::new(&interest(&store, &[odd], &[&link])).unwrap();

    symlink("/elsewhere", &link).unwrap();
    assert_eq!(fence_under(&mut source, &[root]), paths(&[&link]));

    let odd_store_link = root.join(name(b"\xfe\nunwatched"));
    symlink(store.join(name(b"abc-\xff")), &odd_store_link).unwrap();
    assert_eq!(fence_under(&mut source, &[root]), paths(&[&odd_store_link]));
}

#[test]
fn poll_returns_once_a_hint_arrives() {
    let fs = Tmpfs::new();
    let result = fs.path().join("result");
    let mut source =
        FanotifySource::new(&interest(Path::new("/nix/store"), &[b"result"], &[&result])).unwrap();
    symlink("/elsewhere", &result).unwrap();

    let started = Instant::now();
    let mut hints = Vec::new();
    while !hints.contains(&Hint::Path(result.clone())) {
        assert!(started.elapsed() < FENCE_DEADLINE, "no hint: {hints:?}");
        source.poll(FENCE_DEADLINE, None, &mut hints).unwrap();
    }
}

/// The tracker loop's wake-up (a request to answer) ends a wait with no event to read.
#[test]
fn poll_returns_when_woken() {
    let fs = Tmpfs::new();
    let result = fs.path().join("result");
    let mut source =
        FanotifySource::new(&interest(Path::new("/nix/store"), &[b"result"], &[&result])).unwrap();
    tests::check_poll_returns_when_woken(&mut source);
}

#[test]
fn a_full_queue_is_reported_as_lost() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let mut source = FanotifySource::new(&interest(
        &root.join("store"),
        &[b"result"],
        &[&root.join("result")],
    ))
    .unwrap();

    // One event per distinct name (events with the same name would merge); nothing is read.
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for index in 0..queue + 1000 {
        symlink("x", root.join(format!("l{index}"))).unwrap();
    }

    let hints = fence_under(&mut source, &[root]);
    assert!(
        hints.contains(&Hint::Lost {
            reason: "fanotify queue overflow".to_owned()
        }),
        "{hints:?}"
    );
    assert!(source.stats().dropped > 0);
}

#[test]
fn a_mount_under_a_watched_path_is_reported_and_marked() {
    let fs = Tmpfs::new();
    let root = fs.path();
    let proj = root.join("proj");
    let result = proj.join("result");
    std::fs::create_dir(&proj).unwrap();
    let mut source = FanotifySource::new(&interest(
        &root.join("store"),
        &[b"proj", b"result"],
        &[&result],
    ))
    .unwrap();

    mount_tmpfs(&proj);
    let _nested = NestedTmpfs(proj.clone());
    let hints = fence(&mut source);
    assert!(hints.contains(&Hint::MountsChanged), "{hints:?}");

    // The new filesystem holds a watched path, so it is marked now.
    symlink("/elsewhere", &result).unwrap();
    assert_eq!(fence_under(&mut source, &[root]), paths(&[&result]));
}

#[test]
fn a_filesystem_that_cannot_be_marked_is_an_error() {
    // procfs encodes no file handles, so fanotify cannot report its directories: changes there
    // would go unseen, and the caller must hear about it rather than trust a quiet source.
    let error = FanotifySource::new(&interest(
        Path::new("/nix/store"),
        &[b"result"],
        &[Path::new("/proc/sys/result")],
    ))
    .unwrap_err();
    match error {
        SourceError::Fanotify(FanotifyError::Mark { path, .. }) => {
            assert!(path.starts_with("/proc"), "{path:?}");
        }
        other => panic!("expected a mark error, got {other:?}"),
    }
}
