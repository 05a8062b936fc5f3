//! An operation that started before its names became interesting, for `tracker_interest_race`
//! (each backend, on the host) and `vm-check`'s `interest-race` step (fentry mode on 6.1).
//!
//! The eBPF programs judge an operation when it starts; the tracker adds names to the kernel's
//! filter when an auto link appears, then reads the link's target. An operation on names not
//! watched yet, started before they were added and making its change after that read, would
//! be seen by nobody, and the index would keep the old state (CI's live_random, ebpf seed 53).
//! Here `ln -sfn`'s rename of a temporary link over `result` is held between its start and its
//! change ([`DirLock`] holds the directory) while the auto link to `result` appears and a
//! fenced query shows the old `result`; once the rename is released, the next fenced query
//! must show the new one. A backend that reports changes after they are made (fanotify) passes
//! the same way.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};

use crate::dirlock::{DirLock, wait_blocked_in_syscall, wait_io_worker_blocked};
use crate::{index_part, uring};

/// How the held rename is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rename {
    /// `rename(2)`: judged at the syscall's entry (or `do_renameat2`'s, in fentry mode).
    Syscall,
    /// An io_uring `RENAMEAT`: judged at submission (or at `do_renameat2` in its io-wq
    /// worker, in fentry mode).
    IoUring,
}

/// What a scan of the store finds now, in the form a query's index part is compared in.
pub fn truth(layout: &StoreLayout) -> Result<serde_json::Value, String> {
    let options = ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    };
    let report = scan(layout, &options).map_err(|e| format!("scan: {e}"))?;
    Ok(index_part(&report.to_json()))
}

/// Runs the scenario in `home` (a directory no auto link mentions yet) of the store `layout`
/// describes; `registered` and `unregistered` are store paths, valid and not. `query` makes a
/// fenced query and returns its report. On success, says what it saw.
pub fn rename_started_before_its_name_was_watched(
    layout: &StoreLayout,
    home: &Path,
    registered: &Path,
    unregistered: &Path,
    how: Rename,
    mut query: impl FnMut() -> Result<serde_json::Value, String>,
) -> Result<String, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // Names of their own per kind, so that running both against one tracker does not find
    // the second's names watched already.
    let tag = match how {
        Rename::Syscall => "",
        Rename::IoUring => "-io-uring",
    };
    let dir = home.join(format!("race{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| io("mkdir", e))?;
    // `result` exists (so the tracker's lookup of it finds a cached dentry and needs no
    // directory lock) and leads to a store path that is not valid: the query lists it as
    // unregistered once the tracker has read the auto link. Symlinks into the store are
    // reported whatever their names, so both are in the index before the lock is taken.
    let link = dir.join(format!("result{tag}"));
    symlink(unregistered, &link).map_err(|e| io("symlink result", e))?;
    let temporary = dir.join(format!(".tmp-result{tag}"));
    symlink(registered, &temporary).map_err(|e| io("symlink .tmp-result", e))?;
    let initial = index_part(&query()?);
    if initial != truth(layout)? {
        return Err(format!("the first query differs from a scan: {initial}"));
    }

    let lock = DirLock::hold(&dir);
    let (tid_sender, tid_receiver) = std::sync::mpsc::channel();
    let renamer = {
        let (temporary, link) = (temporary.clone(), link.clone());
        std::thread::spawn(move || {
            let _ = tid_sender.send(nix::unistd::gettid().as_raw());
            match how {
                Rename::Syscall => std::fs::rename(temporary, link),
                Rename::IoUring => {
                    match uring::renameat(libc::AT_FDCWD, &temporary, libc::AT_FDCWD, &link) {
                        0 => Ok(()),
                        res => Err(std::io::Error::from_raw_os_error(-res)),
                    }
                }
            }
        })
    };
    let tid = tid_receiver
        .recv()
        .map_err(|e| format!("renamer thread: {e}"))?;
    // Past its judgement (no auto link names `result` yet), waiting for the directory's lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    match how {
        Rename::Syscall => wait_blocked_in_syscall(
            tid,
            &[libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2],
            deadline,
        ),
        Rename::IoUring => wait_io_worker_blocked(deadline),
    }

    let auto = layout.auto_dir().join(format!("race{tag}"));
    symlink(&link, &auto).map_err(|e| io("symlink the auto link", e))?;
    let before = index_part(&query()?);
    let expected = truth(layout)?;
    let names_auto = |list: &serde_json::Value| {
        list.as_array().is_some_and(|entries| {
            entries
                .iter()
                .any(|entry| entry["link"].as_str() == auto.to_str())
        })
    };
    if before != expected || !names_auto(&before["unregistered"]) {
        return Err(format!(
            "while the rename waits, the query should list the auto link's target as \
             unregistered: query {before}; scan {expected}"
        ));
    }

    let read = lock.release();
    if read <= 0 {
        return Err(format!("the lock's getdents64 returned {read}"));
    }
    renamer
        .join()
        .map_err(|_| "the renamer panicked".to_owned())?
        .map_err(|e| io("rename", e))?;
    let after = index_part(&query()?);
    let expected = truth(layout)?;
    if !names_auto(&expected["roots"]) {
        return Err(format!(
            "the scan should find the auto link's root: {expected}"
        ));
    }
    if after != expected {
        return Err(format!(
            "the change of the held rename is missing: query {after}; scan {expected}"
        ));
    }
    Ok(format!(
        "a rename ({how:?}) over `result` held across the auto link's appearance: its \
         target unregistered before, a root after"
    ))
}
