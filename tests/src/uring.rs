//! io_uring path operations, one request per ring, waited for: what the syscall tracepoints
//! never see. Each returns the completion's result (0, or `-errno`), so a test can tell a
//! failed operation (which changes nothing) from a done one. Directory fds are raw numbers
//! (`libc::AT_FDCWD` for the working directory), as the kernel takes them.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use io_uring::{opcode, squeue::Entry, types::Fd};

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL bytes")
}

/// Submits `entry` on a ring of its own and waits for its completion; its result.
///
/// # Safety
/// Every pointer in `entry` must stay valid until this returns (the request has completed
/// then).
unsafe fn submit(entry: &Entry) -> i32 {
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    // SAFETY: the caller keeps the entry's pointers alive until we return, after completion.
    unsafe { ring.submission().push(entry) }.expect("a free submission slot");
    // `io_uring_enter` submits, then waits; the wait may end early (a signal, or the kernel's
    // own task work: soak seen, no completion after it returned) and the call then reports
    // only the submission. Wait again until the completion is there.
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => panic!("io_uring_enter: {error}"),
        }
        if let Some(completion) = ring.completion().next() {
            return completion.result();
        }
    }
}

/// `unlinkat(dirfd, path, flags)` (`libc::AT_REMOVEDIR` removes a directory).
pub fn unlinkat(dirfd: i32, path: &Path, flags: i32) -> i32 {
    let path = c_path(path);
    let entry = opcode::UnlinkAt::new(Fd(dirfd), path.as_ptr())
        .flags(flags)
        .build();
    // SAFETY: `path` lives until `submit` returned.
    unsafe { submit(&entry) }
}

/// `renameat(old_dirfd, from, new_dirfd, to)`.
pub fn renameat(old_dirfd: i32, from: &Path, new_dirfd: i32, to: &Path) -> i32 {
    let (from, to) = (c_path(from), c_path(to));
    let entry =
        opcode::RenameAt::new(Fd(old_dirfd), from.as_ptr(), Fd(new_dirfd), to.as_ptr()).build();
    // SAFETY: `from` and `to` live until `submit` returned.
    unsafe { submit(&entry) }
}

/// `linkat(old_dirfd, from, new_dirfd, to, 0)`: a hard link (of a symlink itself).
pub fn linkat(old_dirfd: i32, from: &Path, new_dirfd: i32, to: &Path) -> i32 {
    let (from, to) = (c_path(from), c_path(to));
    let entry =
        opcode::LinkAt::new(Fd(old_dirfd), from.as_ptr(), Fd(new_dirfd), to.as_ptr()).build();
    // SAFETY: `from` and `to` live until `submit` returned.
    unsafe { submit(&entry) }
}

/// `symlinkat(target, dirfd, link)`.
pub fn symlinkat(target: &Path, dirfd: i32, link: &Path) -> i32 {
    let (target, link) = (c_path(target), c_path(link));
    let entry = opcode::SymlinkAt::new(Fd(dirfd), target.as_ptr(), link.as_ptr()).build();
    // SAFETY: `target` and `link` live until `submit` returned.
    unsafe { submit(&entry) }
}

/// `mkdirat(dirfd, path, 0o755)`.
pub fn mkdirat(dirfd: i32, path: &Path) -> i32 {
    let path = c_path(path);
    let entry = opcode::MkDirAt::new(Fd(dirfd), path.as_ptr())
        .mode(0o755)
        .build();
    // SAFETY: `path` lives until `submit` returned.
    unsafe { submit(&entry) }
}
