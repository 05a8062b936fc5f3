//! Holding a directory's inode lock from user space, to stop a path operation between its
//! start (where the eBPF programs judge it) and its change to the directory.
//!
//! A thread reads the directory (`getdents64`) into a buffer whose page is registered with a
//! userfaultfd and missing: the kernel's readdir copies the first entry while it holds the
//! directory's `i_rwsem` (shared), faults, and waits until the fault is resolved. Until then,
//! every operation that changes the directory (a `symlink` into it takes the lock exclusively)
//! waits too — after its syscall entry has run. Lookups that find a cached dentry do not wait
//! (RCU walk); a lookup that must ask the filesystem does, behind the waiting writer.
//!
//! Needs root (the kernel-mode fault needs `CAP_SYS_PTRACE` with
//! `vm.unprivileged_userfaultfd = 0`) and `CONFIG_USERFAULTFD`.

#![expect(
    clippy::unwrap_used,
    reason = "a test harness panics on failure, as aya's test README recommends"
)]

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::thread::JoinHandle;

/// `UFFD_API` and the ioctls of `linux/userfaultfd.h` (`_IOWR(0xAA, nr, size)`).
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    address: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory; only its address crosses threads.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `address`/`len` are exactly what `mmap` returned, unmapped once.
        unsafe { libc::munmap(self.address, self.len) };
    }
}

/// A directory's inode lock, held (shared) by a thread blocked inside `getdents64` until
/// [`DirLock::release`] or drop.
pub struct DirLock {
    uffd: OwnedFd,
    page: u64,
    page_len: u64,
    reader: Option<JoinHandle<libc::c_long>>,
}

impl DirLock {
    /// Returns once the reading thread is blocked in the kernel's copy with `dir`'s lock held
    /// (the userfaultfd has reported its page fault).
    pub fn hold(dir: &Path) -> Self {
        // SAFETY: plain syscalls on values owned here; each result is checked.
        let uffd = unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC);
            assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd as i32)
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: the ioctl reads and writes `api`, which outlives the call.
        let done = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &raw mut api) };
        assert_eq!(done, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());

        // SAFETY: `sysconf` has no preconditions.
        let page_len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED, "mmap");
        let mapping = Mapping {
            address,
            len: page_len,
        };
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: address as u64,
                len: page_len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: as for UFFDIO_API; the range is the mapping above, never touched yet.
        let done = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &raw mut register) };
        assert_eq!(
            done,
            0,
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        );

        let directory = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .unwrap();
        let reader = std::thread::spawn(move || {
            // The mapping lives until the call has returned.
            let mapping = mapping;
            // SAFETY: the buffer is the mapping, `len` bytes; the kernel faults on it and
            // waits for the userfaultfd, then fills it.
            unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    directory.as_raw_fd(),
                    mapping.address,
                    mapping.len,
                )
            }
        });
        // The fault message: the reader is inside the copy, the lock taken.
        let mut message = [0u8; 32];
        File::from(uffd.try_clone().unwrap())
            .read_exact(&mut message)
            .unwrap();
        assert_eq!(
            message[0], UFFD_EVENT_PAGEFAULT,
            "userfaultfd message {message:?}"
        );
        Self {
            uffd,
            page: address as u64,
            page_len: page_len as u64,
            reader: Some(reader),
        }
    }

    /// Resolves the fault with a zero page and waits for the reader; returns what its
    /// `getdents64` returned (bytes read).
    pub fn release(mut self) -> libc::c_long {
        self.unblock().unwrap()
    }

    /// Resolves the fault, then joins the reader; `Err` if either failed, `Ok(None)` if done
    /// already. Panics nowhere, as `drop` calls it while a test may be panicking.
    fn unblock(&mut self) -> Result<libc::c_long, String> {
        let Some(reader) = self.reader.take() else {
            return Err("released already".to_owned());
        };
        let mut zeropage = UffdioZeropage {
            range: UffdioRange {
                start: self.page,
                len: self.page_len,
            },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: as for UFFDIO_API; the range is the registered page.
        let done =
            unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &raw mut zeropage) };
        if done != 0 {
            return Err(format!(
                "UFFDIO_ZEROPAGE: {}",
                std::io::Error::last_os_error()
            ));
        }
        reader.join().map_err(|_| "the reader panicked".to_owned())
    }
}

impl Drop for DirLock {
    /// A failing test must not leave its reader (and the directory) blocked.
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.unblock();
        }
    }
}

/// Waits until thread `tid` of this process is blocked (state `D`) inside one of the syscalls
/// `numbers`, as `/proc/self/task/<tid>/{stat,syscall}` show it; panics after `deadline`.
pub fn wait_blocked_in_syscall(
    tid: libc::pid_t,
    numbers: &[libc::c_long],
    deadline: std::time::Instant,
) {
    let task = format!("/proc/self/task/{tid}");
    loop {
        let syscall = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        let in_call = syscall
            .split_whitespace()
            .next()
            .and_then(|nr| nr.parse::<libc::c_long>().ok())
            .is_some_and(|nr| numbers.contains(&nr));
        if in_call && state == Some('D') {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} never blocked in syscall {numbers:?}: syscall {syscall:?}, stat {stat:?}"
        );
        std::thread::yield_now();
    }
}

/// Waits until one of this process's io_uring workers (threads named `iou-wrk-*`) is blocked
/// (state `D`): a request it runs waits for a lock. Panics after `deadline`.
pub fn wait_io_worker_blocked(deadline: std::time::Instant) {
    loop {
        let blocked = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                stat.split_once(" (").is_some_and(|(_, rest)| {
                    rest.starts_with("iou-wrk")
                        && rest
                            .rsplit_once(") ")
                            .and_then(|(_, tail)| tail.chars().next())
                            == Some('D')
                })
            });
        if blocked {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no io_uring worker of this process ever blocked"
        );
        std::thread::yield_now();
    }
}
