//! Types shared by the eBPF programs (kernel side) and the tracker (user side).
//!
//! Every record that crosses the ring buffer is defined here once, `#[repr(C)]`, so both sides
//! agree on its layout; user space reads records with a length check and `read_unaligned`.
//! Paths are raw bytes as the process passed them: never assume UTF-8.
#![no_std]

/// Bytes reserved for one path in an event, NUL included. The kernel refuses path arguments of
/// `PATH_MAX` (4096) bytes or more, so a path the syscall accepts always fits.
pub const PATH_BYTES: usize = 4096;

/// Longest store dir prefix (store dir plus the trailing `/`) the kernel-side filter accepts.
/// Kept small because the filter compares it byte by byte in a bounded loop.
pub const STORE_PREFIX_MAX: usize = 256;

/// Size of the `SYMLINK_EVENTS` ring buffer. A power-of-two multiple of the page size, as the
/// kernel requires; at about 8 KiB per event this holds a burst of ~500 symlink creations.
pub const RING_BUF_BYTES: u32 = 4 * 1024 * 1024;

/// Name of the ring buffer map that carries [`SymlinkEvent`]s.
pub const MAP_SYMLINK_EVENTS: &str = "SYMLINK_EVENTS";
/// Name of the one-entry array map holding the [`StorePrefix`] filter.
pub const MAP_STORE_PREFIX: &str = "STORE_PREFIX";
/// Name of the per-CPU array map of `u64` counters indexed by `COUNTER_*`.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the scratch per-CPU map the programs build an event in before sending it.
pub const MAP_SCRATCH: &str = "SCRATCH";

/// Program attached to `syscalls/sys_enter_symlink`.
pub const PROG_SYS_ENTER_SYMLINK: &str = "sys_enter_symlink";
/// Program attached to `syscalls/sys_enter_symlinkat`.
pub const PROG_SYS_ENTER_SYMLINKAT: &str = "sys_enter_symlinkat";

/// Counter index: events written to the ring buffer.
pub const COUNTER_SENT: u32 = 0;
/// Counter index: events that matched the filter but could not be written (ring buffer full).
/// Non-zero means hints were lost; the tracker must treat its index as unsettled.
pub const COUNTER_DROPPED: u32 = 1;
/// Counter index: symlink requests whose target could not be read (a page fault at syscall
/// entry, which cannot be served there), so the filter could not tell whether it was a store link.
/// Non-zero means hints may have been lost, as for [`COUNTER_DROPPED`].
pub const COUNTER_TARGET_UNREADABLE: u32 = 2;
/// Number of counters in `COUNTERS`.
pub const COUNTER_COUNT: u32 = 3;

/// `dirfd` value for the plain `symlink` syscall, which resolves relative link paths against the
/// caller's working directory (Linux `AT_FDCWD`).
pub const AT_FDCWD: i32 = -100;

/// Which syscall produced a [`SymlinkEvent`] (`SymlinkEvent::syscall`).
pub mod syscall {
    /// `symlink(target, linkpath)`.
    pub const SYMLINK: u32 = 1;
    /// `symlinkat(target, newdirfd, linkpath)`.
    pub const SYMLINKAT: u32 = 2;
}

/// Bits of `SymlinkEvent::flags`.
pub mod flags {
    /// The link path could not be read (a fault in the caller's memory); `link_path_len` is 0.
    /// The event still says "a store symlink may have appeared", but not where.
    pub const LINK_PATH_UNREADABLE: u32 = 1 << 0;
    /// The link path filled the whole buffer and may have been cut short.
    pub const LINK_PATH_TRUNCATED: u32 = 1 << 1;
    /// The target filled the whole buffer and may have been cut short.
    pub const TARGET_TRUNCATED: u32 = 1 << 2;
}

/// One `symlink`/`symlinkat` request whose target starts with the store dir prefix.
///
/// Seen at syscall entry: the request, not its result. It is a hint; the reconciler re-reads the
/// link from the filesystem.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SymlinkEvent {
    /// Thread group id (the process id user space sees).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// One of the [`syscall`] constants.
    pub syscall: u32,
    /// Directory fd the link path is relative to; [`AT_FDCWD`] for `symlink`.
    pub dirfd: i32,
    /// Bytes of `target` in use, without the terminating NUL.
    pub target_len: u32,
    /// Bytes of `link_path` in use, without the terminating NUL.
    pub link_path_len: u32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// Explicit padding so the struct has no uninitialised bytes.
    pub reserved: u32,
    /// The symlink's target (`oldname`), NUL-terminated within `PATH_BYTES`.
    pub target: [u8; PATH_BYTES],
    /// The link's path (`newname`), NUL-terminated within `PATH_BYTES`.
    pub link_path: [u8; PATH_BYTES],
}

/// The store dir prefix the kernel-side filter matches targets against: the store dir followed
/// by `/`, e.g. `/nix/store/`. `len == 0` (not configured) matches nothing.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StorePrefix {
    /// Bytes of `bytes` in use, at most [`STORE_PREFIX_MAX`].
    pub len: u32,
    /// The prefix; bytes past `len` are ignored.
    pub bytes: [u8; STORE_PREFIX_MAX],
}

impl StorePrefix {
    /// A prefix that matches nothing.
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; STORE_PREFIX_MAX],
    };

    /// Builds the prefix for `store_dir` (without trailing `/`): `store_dir` + `/`.
    /// Returns `None` when it does not fit in [`STORE_PREFIX_MAX`] bytes.
    pub fn for_store_dir(store_dir: &[u8]) -> Option<Self> {
        let len = store_dir.len().checked_add(1)?;
        if len > STORE_PREFIX_MAX {
            return None;
        }
        let mut prefix = Self::EMPTY;
        prefix.bytes[..store_dir.len()].copy_from_slice(store_dir);
        prefix.bytes[store_dir.len()] = b'/';
        prefix.len = u32::try_from(len).ok()?;
        Some(prefix)
    }

    /// The prefix bytes in use.
    pub fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(STORE_PREFIX_MAX);
        &self.bytes[..len]
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `SymlinkEvent` is `#[repr(C)]`, `Copy`, made only of integers and byte arrays,
    // and has no implicit padding (`reserved` fills the gap before the arrays).
    unsafe impl aya::Pod for super::SymlinkEvent {}
    // SAFETY: `StorePrefix` is `#[repr(C)]`, `Copy`, a `u32` followed by a byte array whose
    // length is a multiple of 4, so it has no padding.
    unsafe impl aya::Pod for super::StorePrefix {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<SymlinkEvent>(), 32 + 2 * PATH_BYTES);
        assert_eq!(core::mem::size_of::<StorePrefix>(), 4 + STORE_PREFIX_MAX);
    }

    #[test]
    fn prefix_for_store_dir() {
        let prefix = StorePrefix::for_store_dir(b"/nix/store");
        assert_eq!(prefix.map(|p| p.len), Some(11));
        assert_eq!(
            prefix.as_ref().map(StorePrefix::as_bytes),
            Some(&b"/nix/store/"[..])
        );
        assert!(StorePrefix::for_store_dir(&[b'a'; STORE_PREFIX_MAX]).is_none());
        assert!(StorePrefix::for_store_dir(&[b'a'; STORE_PREFIX_MAX - 1]).is_some());
    }
}
