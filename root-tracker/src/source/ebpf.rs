//! eBPF source: loads the `root-tracker-ebpf` programs, attaches them to the syscall tracepoints
//! and reads their events from the ring buffer.
//!
//! Invariant: every symlink request whose target is in the store is either delivered or counted
//! in [`DeliveryCounters`] (`dropped`, `target_unreadable`); a caller that sees
//! [`DeliveryCounters::lost_hints`] must treat its index as unsettled. Events are hints taken at syscall entry (the request, not its result).

use std::{
    ffi::OsString,
    io,
    mem::size_of,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
    ptr,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use root_tracker_ebpf::{
    COUNTER_DROPPED, COUNTER_SENT, COUNTER_TARGET_UNREADABLE, MAP_COUNTERS, MAP_STORE_PREFIX,
    MAP_SYMLINK_EVENTS, PATH_BYTES, PROG_SYS_ENTER_SYMLINK, PROG_SYS_ENTER_SYMLINKAT,
    STORE_PREFIX_MAX, StorePrefix, SymlinkEvent, flags, syscall,
};

/// The eBPF object built by `build.rs`. Empty when the build was skipped (`AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/root-tracker-ebpf"));

/// Tracepoint category of the syscall entry tracepoints.
const SYSCALLS: &str = "syscalls";

/// Where tracepoint ids are read from; mounted by [`SymlinkWatch::attach`] when absent.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Older systems mount tracefs only here (aya looks at both).
const TRACEFS_IN_DEBUGFS: &str = "/sys/kernel/debug/tracing";

/// Why the eBPF source could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// `root-tracker` was compiled with `AYA_BUILD_SKIP=1`, so it carries no eBPF object.
    #[error("this root-tracker was built without its eBPF programs (AYA_BUILD_SKIP was set)")]
    NotBuilt,
    /// The kernel-side filter compares against `<store dir>/`, which must be absolute.
    #[error("store dir {store_dir:?} is not an absolute path")]
    StoreDirNotAbsolute { store_dir: PathBuf },
    /// The kernel-side filter holds at most `STORE_PREFIX_MAX` bytes of prefix.
    #[error("store dir {store_dir:?} is too long for the eBPF filter (at most {max} bytes)")]
    StoreDirTooLong { store_dir: PathBuf, max: usize },
    /// Tracepoints are found through tracefs; it was absent and could not be mounted.
    #[error("tracefs is not mounted and mounting it at {path:?} failed")]
    Tracefs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The kernel refused the object or one of its maps.
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a map this code expects (built from another version of the crate?).
    #[error("eBPF map {name} is missing from the object")]
    MissingMap { name: &'static str },
    /// A map exists but could not be opened or accessed as the expected type.
    #[error("eBPF map {name} could not be used")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// The object lacks a program this code expects.
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    /// The verifier rejected a program, or attaching it to its tracepoint failed.
    #[error("eBPF program {name} could not be loaded or attached to {SYSCALLS}/{name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Waiting for the ring buffer failed.
    #[error("polling the {MAP_SYMLINK_EVENTS} ring buffer failed")]
    Poll(#[source] io::Error),
    /// A record does not have the shape of a `SymlinkEvent`: the object and this code disagree.
    #[error("malformed {MAP_SYMLINK_EVENTS} record ({len} bytes): {reason}")]
    MalformedEvent { len: usize, reason: &'static str },
}

impl EbpfError {
    fn map(name: &'static str, source: MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(source),
        }
    }

    fn program(name: &'static str, source: ProgramError) -> Self {
        Self::Program {
            name,
            source: Box::new(source),
        }
    }
}

/// Which syscall made a [`SymlinkRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymlinkSyscall {
    /// `symlink(target, link_path)`: a relative link path is relative to the working directory.
    Symlink,
    /// `symlinkat(target, dirfd, link_path)`: a relative link path is relative to `dirfd`.
    Symlinkat,
}

/// One symlink creation request whose target starts with `<store dir>/`, as the process made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkRequest {
    /// Process id (thread group id) of the caller.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The syscall used.
    pub syscall: SymlinkSyscall,
    /// Directory fd (in the caller's fd table) a relative `link_path` is resolved against;
    /// `libc::AT_FDCWD` for `symlink`.
    pub dirfd: i32,
    /// The link text (symlink target), raw bytes.
    pub target: OsString,
    /// The path of the new link as passed, raw bytes; possibly relative (see `dirfd`).
    pub link_path: PathBuf,
    /// The link path could not be read from the caller's memory (`link_path` is empty): the
    /// event only says that some store symlink may have appeared.
    pub link_path_unreadable: bool,
    /// A path filled its whole buffer and may be cut short.
    pub truncated: bool,
}

/// Per-CPU counters of the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounters {
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Matching events lost because the ring buffer was full. Non-zero means lost hints.
    pub dropped: u64,
    /// Requests whose target could not be read at syscall entry (paged out), so the filter
    /// could not judge them. Non-zero means hints may have been lost.
    pub target_unreadable: u64,
}

impl DeliveryCounters {
    /// Whether any hint may have been lost since attaching (the index must be rescanned).
    pub fn lost_hints(&self) -> bool {
        self.dropped != 0 || self.target_unreadable != 0
    }
}

/// The symlink programs, attached. Dropping it detaches the programs and frees the maps.
pub struct SymlinkWatch {
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the programs and their tracepoint links; aya detaches the links when it drops.
    _ebpf: Ebpf,
}

impl SymlinkWatch {
    /// Loads the programs, sets the store prefix filter to `<store_dir>/` and attaches to
    /// `syscalls/sys_enter_symlink` and `syscalls/sys_enter_symlinkat`.
    ///
    /// Needs root (`CAP_BPF` + `CAP_PERFMON`, or `CAP_SYS_ADMIN`). Where no tracefs is
    /// mounted, mounts one in a private mount namespace only for the attach (see `with_tracefs`). `RLIMIT_MEMLOCK` needs no care: aya raises
    /// it on kernels older than 5.11, and newer kernels charge BPF memory to the cgroup.
    pub fn attach(store_dir: &Path) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let prefix = store_prefix(store_dir)?;
        with_tracefs(|| Self::load_and_attach(prefix))
    }

    fn load_and_attach(prefix: StorePrefix) -> Result<Self, EbpfError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| EbpfError::Load(Box::new(e)))?;

        // The filter is set before attaching, so no event is judged by an empty prefix.
        let prefix_map = ebpf
            .map_mut(MAP_STORE_PREFIX)
            .ok_or(EbpfError::MissingMap {
                name: MAP_STORE_PREFIX,
            })?;
        let mut prefix_array = Array::<_, StorePrefix>::try_from(prefix_map)
            .map_err(|e| EbpfError::map(MAP_STORE_PREFIX, e))?;
        prefix_array
            .set(0, prefix, 0)
            .map_err(|e| EbpfError::map(MAP_STORE_PREFIX, e))?;

        let events = take_map(&mut ebpf, MAP_SYMLINK_EVENTS)?;
        let events =
            RingBuf::try_from(events).map_err(|e| EbpfError::map(MAP_SYMLINK_EVENTS, e))?;
        let counters = take_map(&mut ebpf, MAP_COUNTERS)?;
        let counters = PerCpuArray::<_, u64>::try_from(counters)
            .map_err(|e| EbpfError::map(MAP_COUNTERS, e))?;

        for name in [PROG_SYS_ENTER_SYMLINK, PROG_SYS_ENTER_SYMLINKAT] {
            attach_tracepoint(&mut ebpf, name)?;
        }
        Ok(Self {
            events,
            counters,
            _ebpf: ebpf,
        })
    }

    /// Returns the next event, waiting up to `timeout` for one; `Ok(None)` on timeout.
    /// Events from one thread arrive in the order it made the requests.
    pub fn next_request(&mut self, timeout: Duration) -> Result<Option<SymlinkRequest>, EbpfError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.events.next() {
                // Decoding copies the record, so it is consumed when `record` drops here.
                return decode(&record).map(Some);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || !self.wait_readable(remaining)? {
                // One last look: a record may have landed just as the wait ended.
                return self.events.next().map(|record| decode(&record)).transpose();
            }
        }
    }

    /// Sums the per-CPU counters over CPUs.
    pub fn counters(&self) -> Result<DeliveryCounters, EbpfError> {
        let sum = |index: u32| -> Result<u64, EbpfError> {
            let per_cpu = self
                .counters
                .get(&index, 0)
                .map_err(|e| EbpfError::map(MAP_COUNTERS, e))?;
            Ok(per_cpu.iter().fold(0u64, |total, n| total.wrapping_add(*n)))
        };
        Ok(DeliveryCounters {
            sent: sum(COUNTER_SENT)?,
            dropped: sum(COUNTER_DROPPED)?,
            target_unreadable: sum(COUNTER_TARGET_UNREADABLE)?,
        })
    }

    /// Waits until the ring buffer has data or `timeout` passes; `true` if it became readable.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, EbpfError> {
        // Round up so a sub-millisecond remainder still waits instead of spinning.
        let millis = timeout.as_micros().div_ceil(1000);
        let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
        let mut pollfd = libc::pollfd {
            fd: self.events.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pollfd` is a valid, exclusively borrowed array of one element, and its fd is
        // owned by `self.events`, which outlives the call.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
        match ready {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    // Treated as "maybe readable": the caller re-checks and re-waits.
                    Ok(true)
                } else {
                    Err(EbpfError::Poll(error))
                }
            }
        }
    }
}

/// `<store_dir>/` as the kernel-side filter wants it.
fn store_prefix(store_dir: &Path) -> Result<StorePrefix, EbpfError> {
    if !store_dir.is_absolute() {
        return Err(EbpfError::StoreDirNotAbsolute {
            store_dir: store_dir.to_owned(),
        });
    }
    let bytes = store_dir.as_os_str().as_bytes();
    // `/nix/store/` and `/nix/store` name the same store; the filter adds the slash itself.
    let trimmed = match bytes.iter().rposition(|&b| b != b'/') {
        Some(last) => &bytes[..=last],
        None => &[][..],
    };
    StorePrefix::for_store_dir(trimmed).ok_or_else(|| EbpfError::StoreDirTooLong {
        store_dir: store_dir.to_owned(),
        max: STORE_PREFIX_MAX - 1,
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })
}

/// Loads program `name` (named after its tracepoint) and attaches it to `syscalls/<name>`.
/// The link stays owned by the program inside `ebpf`, so dropping `ebpf` detaches it.
fn attach_tracepoint(ebpf: &mut Ebpf, name: &'static str) -> Result<(), EbpfError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?;
    let tracepoint: &mut TracePoint = program
        .try_into()
        .map_err(|e| EbpfError::program(name, e))?;
    tracepoint.load().map_err(|e| EbpfError::program(name, e))?;
    tracepoint
        .attach(SYSCALLS, name)
        .map_err(|e| EbpfError::program(name, e))?;
    Ok(())
}

/// aya finds tracepoint ids through tracefs. Where no tracefs is visible (minimal systems and
/// containers often lack it), `attach` runs in a short-lived thread with a private mount
/// namespace holding its own tracefs mount: the attached programs outlive the thread, the mount
/// does not, and nothing is left mounted on the host even if we crash.
fn with_tracefs<T: Send>(
    attach: impl FnOnce() -> Result<T, EbpfError> + Send,
) -> Result<T, EbpfError> {
    let populated = |dir: &str| {
        std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    };
    if populated(TRACEFS) || populated(TRACEFS_IN_DEBUGFS) {
        return attach();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                private_tracefs()?;
                attach()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Gives the calling thread its own mount namespace, private all the way down so that nothing
/// propagates back to the host, and mounts tracefs there.
fn private_tracefs() -> Result<(), EbpfError> {
    use nix::mount::{MsFlags, mount};
    let tracefs_error = |source| EbpfError::Tracefs {
        path: PathBuf::from(TRACEFS),
        source,
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(tracefs_error)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(tracefs_error)?;
    mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(tracefs_error)
}

/// Decodes one ring-buffer record, checking its size and the lengths inside it.
fn decode(record: &[u8]) -> Result<SymlinkRequest, EbpfError> {
    let malformed = |reason| EbpfError::MalformedEvent {
        len: record.len(),
        reason,
    };
    if record.len() < size_of::<SymlinkEvent>() {
        return Err(malformed("shorter than a SymlinkEvent"));
    }
    // SAFETY: `record` holds at least `size_of::<SymlinkEvent>()` bytes (checked above), the
    // read does not need alignment, and every bit pattern is a valid `SymlinkEvent` (integers
    // and byte arrays only).
    let event = unsafe { ptr::read_unaligned(record.as_ptr().cast::<SymlinkEvent>()) };

    let syscall = match event.syscall {
        syscall::SYMLINK => SymlinkSyscall::Symlink,
        syscall::SYMLINKAT => SymlinkSyscall::Symlinkat,
        _ => return Err(malformed("unknown syscall kind")),
    };
    let target = bytes_prefix(&event.target, event.target_len)
        .ok_or_else(|| malformed("target length exceeds its buffer"))?;
    let link_path = bytes_prefix(&event.link_path, event.link_path_len)
        .ok_or_else(|| malformed("link path length exceeds its buffer"))?;
    Ok(SymlinkRequest {
        pid: event.tgid,
        tid: event.tid,
        syscall,
        dirfd: event.dirfd,
        target: OsString::from_vec(target.to_vec()),
        link_path: PathBuf::from(OsString::from_vec(link_path.to_vec())),
        link_path_unreadable: event.flags & flags::LINK_PATH_UNREADABLE != 0,
        truncated: event.flags & (flags::TARGET_TRUNCATED | flags::LINK_PATH_TRUNCATED) != 0,
    })
}

/// The first `len` bytes of `buffer`, if `len` fits.
fn bytes_prefix(buffer: &[u8; PATH_BYTES], len: u32) -> Option<&[u8]> {
    buffer.get(..usize::try_from(len).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_bytes(event: &SymlinkEvent) -> Vec<u8> {
        // SAFETY: `SymlinkEvent` is plain old data without padding, and the slice covers exactly
        // the value `event` borrows for the slice's lifetime.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(event).cast::<u8>(), size_of::<SymlinkEvent>())
        };
        bytes.to_vec()
    }

    fn event(target: &[u8], link: &[u8]) -> SymlinkEvent {
        let mut event = SymlinkEvent {
            tgid: 7,
            tid: 8,
            syscall: syscall::SYMLINKAT,
            dirfd: 3,
            target_len: target.len() as u32,
            link_path_len: link.len() as u32,
            flags: 0,
            reserved: 0,
            target: [0; PATH_BYTES],
            link_path: [0; PATH_BYTES],
        };
        event.target[..target.len()].copy_from_slice(target);
        event.link_path[..link.len()].copy_from_slice(link);
        event
    }

    #[test]
    fn decodes_unaligned_record_with_raw_bytes() {
        let link = b"dir/li\nnk\xff";
        let mut record = vec![0u8; 1];
        record.extend(event_bytes(&event(b"/nix/store/abc-foo", link)));
        let request = decode(&record[1..]).unwrap();
        assert_eq!(request.pid, 7);
        assert_eq!(request.syscall, SymlinkSyscall::Symlinkat);
        assert_eq!(request.dirfd, 3);
        assert_eq!(request.target.as_bytes(), b"/nix/store/abc-foo");
        assert_eq!(request.link_path.as_os_str().as_bytes(), link);
        assert!(!request.truncated && !request.link_path_unreadable);
    }

    #[test]
    fn rejects_short_records_and_bad_lengths() {
        let bytes = event_bytes(&event(b"/s/x", b"l"));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(EbpfError::MalformedEvent { .. })
        ));
        let mut bad = event(b"/s/x", b"l");
        bad.target_len = PATH_BYTES as u32 + 1;
        assert!(matches!(
            decode(&event_bytes(&bad)),
            Err(EbpfError::MalformedEvent { .. })
        ));
    }

    #[test]
    fn store_prefix_trims_slashes_and_checks_form() {
        let prefix = store_prefix(Path::new("/nix/store//")).unwrap();
        assert_eq!(prefix.as_bytes(), b"/nix/store/");
        assert_eq!(store_prefix(Path::new("/")).unwrap().as_bytes(), b"/");
        assert!(matches!(
            store_prefix(Path::new("nix/store")),
            Err(EbpfError::StoreDirNotAbsolute { .. })
        ));
        let long = PathBuf::from(format!("/{}", "a".repeat(STORE_PREFIX_MAX)));
        assert!(matches!(
            store_prefix(&long),
            Err(EbpfError::StoreDirTooLong { .. })
        ));
    }
}
