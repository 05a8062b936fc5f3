//! eBPF source: loads the `root-tracker-ebpf` programs, attaches them — fentry/fexit on the
//! kernel's path workers where every one of those loads and attaches, else the syscall and
//! io_uring tracepoints, never a mixture — and turns their ring-buffer records into [`Hint`]s.
//!
//! Invariant: every relevant operation is either delivered (an `ENTER` record, then an `EXIT`
//! record once the syscall or path worker returned) or counted in [`DeliveryCounters`] (the
//! programs' counters, and the kernel's count of fentry/fexit runs it skipped); any increase
//! of a loss counter becomes a [`Hint::Lost`]. Hints are emitted at `EXIT`, when the change is
//! done, and [`Source::fence`] waits for every operation seen entering to exit. io_uring path
//! operations are judged at submission like syscalls (`IO_URING_ENTER`, keyed by request) and
//! their hints emitted at their completion (`IO_URING_DONE`); where the kernel's layout is
//! unknown, each is lost hints (`IO_URING`).
//!
//! Names added to the kernel's filter (a new auto link's target) are looked for only by
//! judgements that begin after: an operation already judged unwatched may still make its
//! change after the tracker has read the new path. Each addition raises the kernel's interest
//! sequence, and such an operation ends with an `UNJUDGED` record naming the sequence it was
//! judged under; the names added since are re-checked by basename ([`InterestLog`]).

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    ffi::OsString,
    io,
    mem::size_of,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
    ptr,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, Lsm, ProgramError, ProgramFd, TracePoint},
};
use root_tracker_ebpf::{
    AT_FDCWD, BaseDirOffsets, BasenameFilter, COUNTER_DROPPED, COUNTER_PREEMPTED, COUNTER_RETRIED,
    COUNTER_SENT, COUNTER_TRUNCATED, COUNTER_UNREADABLE, COUNTER_UNTRACKED, Config, EventHeader,
    ExitEvent, FENTRY_PROGRAMS, IO_URING_CATEGORY, InFlight, IoUringDoneEvent, IoUringOffsets,
    MAP_BASE_DIR_OFFSETS, MAP_BASENAME_FILTER, MAP_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_IN_FLIGHT,
    MAP_INTEREST_SEQ, MAP_IO_URING_IN_FLIGHT, MAP_IO_URING_OFFSETS, MAP_STORE_PREFIX,
    MAP_UNWATCHED_IN_FLIGHT, MAP_WATCHED_BASENAMES, PATH_BYTES, PROG_IO_URING_COMPLETE,
    PROG_IO_URING_SUBMIT_REQ, PathEvent, RING_BUF_BYTES, STORE_PREFIX_MAX, SYSCALL_NR_UNKNOWN,
    SYSCALL_PROGRAMS, SYSCALLS_CATEGORY, StorePrefix, UNWATCHED_IN_FLIGHT_DEFAULT, UnjudgedEvent,
    X86_64_PT_REGS_ORIG_AX, flags, io_uring, kernel_dev_major_minor, kind, name_hash, op,
};

use crate::{
    hint::Hint,
    mounts::{MountTable, MountWatch},
    proc_reader::ThreadSyscall,
    source::{Interest, Source, SourceError, SourceStats, kernel_layout},
};

/// The eBPF object built by `build.rs`. Empty when the build was skipped (`AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/root-tracker-ebpf"));

/// Where tracepoint ids are read from; mounted by [`EbpfSource::attach`] when absent.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Older systems mount tracefs only here (aya looks at both).
const TRACEFS_IN_DEBUGFS: &str = "/sys/kernel/debug/tracing";
/// The io_uring submission tracepoint's names, newest first: Linux 6.1 (Debian 12's kernel)
/// and older call it `io_uring_submit_sqe`, with the same `opcode` and `req` fields. The first
/// one tracefs has is attached ([`PROG_IO_URING_SUBMIT_REQ`] attaches to either).
const IO_URING_SUBMIT_TRACEPOINTS: [&str; 2] = ["io_uring_submit_req", "io_uring_submit_sqe"];
/// Probe programs (never attached).
const PROG_PROBE_FEXIT: &str = "probe_fexit";
const PROG_PROBE_LSM: &str = "probe_lsm";
/// The io_uring completion tracepoint's format file.
const IO_URING_COMPLETE_FORMAT: &str = "events/io_uring/io_uring_complete/format";

/// Longest single wait of [`Source::fence`] before it re-checks whether the operations it
/// waits for are still inside their syscalls.
const FENCE_RECHECK: Duration = Duration::from_millis(20);

/// Longest name a directory entry can have (Linux `NAME_MAX`): longer names cannot exist, so
/// they are never watched.
const NAME_MAX: usize = 255;
/// Names kept of recent additions to the basename filter, for `UNJUDGED` records: an
/// operation judged before older additions is left to a rescan.
const INTEREST_LOG_NAMES: usize = 4096;
/// Most names an `UNJUDGED` record is answered with basename hints for (each re-checks every
/// watched path); beyond that, a rescan.
const UNJUDGED_BASENAME_HINTS: usize = 64;

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
    /// The kernel wants a ring buffer size that is a power of two and a multiple of the page
    /// size.
    #[error("ring buffer size {bytes} is not a power of two multiple of the page size")]
    RingBufSize { bytes: u32 },
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
    #[error("eBPF program {name} could not be loaded or attached to {category}/{tracepoint}")]
    Program {
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// `--ebpf-hooks fentry` was asked for, but the fentry/fexit programs cannot be used here.
    #[error("the fentry/fexit programs cannot be used on this kernel: {reason}")]
    FentryUnavailable { reason: String },
    /// An attached program's fd could not be had, to read its statistics with.
    #[error("cannot keep the fds of the attached eBPF programs: {0}")]
    ProgramFds(String),
    /// The kernel's statistics of an attached program could not be read.
    #[error("cannot read the fdinfo of eBPF program {name}")]
    ProgramInfo {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// The mount table could not be opened or polled.
    #[error(
        "cannot open or poll {} to watch for mount changes",
        crate::mounts::MOUNTINFO
    )]
    Mountinfo(#[source] io::Error),
    /// Waiting for the ring buffer failed.
    #[error("polling the {MAP_EVENTS} ring buffer failed")]
    Poll(#[source] io::Error),
    /// A record does not have the shape this code expects: the object and this code disagree.
    #[error("malformed {MAP_EVENTS} record ({len} bytes): {reason}")]
    MalformedEvent { len: usize, reason: &'static str },
}

impl EbpfError {
    fn map(name: &'static str, source: MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(source),
        }
    }
}

/// Load-time choices for [`EbpfSource::attach_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfOptions {
    /// Size of the ring buffer in bytes: a power of two multiple of the page size. An `ENTER`
    /// record of a path operation takes about 1 KiB.
    pub ring_buf_bytes: u32,
    /// Which programs to attach.
    pub hooks: HookChoice,
    /// Failures to inject, for tests of the fallbacks; none by default.
    #[doc(hidden)]
    pub faults: Faults,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            ring_buf_bytes: RING_BUF_BYTES,
            hooks: HookChoice::Auto,
            faults: Faults::default(),
        }
    }
}

/// Failures a test injects to reach the fallbacks this kernel would not take by itself.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The fentry/fexit program of this name fails right after it attached, as if the
    /// kernel had refused it: the attached ones must all go, and the tracepoints come.
    pub fail_attach: Option<&'static str>,
    /// Behave as if the kernel's BTF had no `task_struct.nvcsw`/`nivcsw` (no switch check).
    pub no_switch_check: bool,
    /// Behave as if the kernel's BTF had no io_uring request layout (no names read).
    pub no_io_uring_names: bool,
    /// Discard every `IO_URING_DONE` record, as if the ring buffer had been full for each.
    pub drop_io_uring_done: bool,
}

/// Which set of programs the source attaches ([`EbpfOptions::hooks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookChoice {
    /// fentry/fexit where every one of them loads and attaches, else the tracepoints.
    #[default]
    Auto,
    /// The syscall and io_uring tracepoints, whatever the kernel accepts.
    Tracepoints,
    /// fentry/fexit, or fail ([`EbpfError::FentryUnavailable`]).
    Fentry,
}

/// Which set of programs is attached, and why; shown by `root-tracker status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AttachMode {
    /// fentry/fexit on the path workers ([`FENTRY_PROGRAMS`]); no syscall or io_uring
    /// tracepoint is attached, and mount changes come from the mount table's poll alone.
    Fentry,
    /// Every syscall tracepoint and the io_uring ones.
    Tracepoints { reason: String },
}

/// Whether an optional hook is in place, and why not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Probe {
    /// Loaded and attached.
    Attached,
    /// The kernel accepts it, but it is not used: the tracepoints cover the same operations.
    Loadable,
    /// The kernel has no such hook, so nothing can go unseen through it (e.g. no
    /// `io_uring/io_uring_submit_req` or `io_uring_submit_sqe` tracepoint: a kernel without
    /// io_uring).
    Absent { reason: String },
    /// Not attached: other attached programs see what it would.
    Unneeded { reason: String },
}

/// What the kernel supports, as found at attach time; shown by `root-tracker status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Checks {
    /// fentry/fexit or tracepoints, and why.
    pub attach_mode: AttachMode,
    /// Whether an fexit program loads (`vfs_symlink`): refused with EPERM on some hosts;
    /// `attached` when the fentry/fexit programs are in use.
    pub fexit: Probe,
    /// Whether a BPF LSM program loads (`path_symlink`) and `bpf` is an active LSM.
    pub lsm: Probe,
    /// The `io_uring_submit_req` program (attached to `io_uring/io_uring_submit_req`, or to
    /// `io_uring/io_uring_submit_sqe` on kernels that name it so).
    pub io_uring_submit: Probe,
    /// Offset of `opcode` in the io_uring tracepoint record, from its format file; `None`
    /// when unknown, in which case every io_uring submission is reported as lost hints.
    pub io_uring_opcode_offset: Option<u32>,
    /// Whether io_uring path operations are judged by their names (tracepoint mode).
    pub io_uring_names: IoUringNames,
    /// Whether a relative path's directory, found through `/proc` when its record is read,
    /// is checked against the one the kernel used.
    pub base_dir: BaseDirCheck,
    /// Whether the entry programs can tell that their task left the CPU while they used the
    /// CPU's scratch memory (kernels that run them preemptibly), and then judge again.
    pub switch_check: SwitchCheck,
}

/// The entry programs' check that nothing else wrote this CPU's scratch memory under them
/// ([`Config::task_switch_counts_offset`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SwitchCheck {
    /// The programs read the task's context-switch counts before and after each judgement,
    /// judge again once if they moved, and count a second move as lost hints.
    Active,
    /// The offsets are unknown: a preempted program could misjudge an operation unnoticed,
    /// so fentry programs are used only where the kernel does not preempt kernel code.
    Unavailable { reason: String },
}

/// How a relative path is turned into an absolute hint. User space reads the record after
/// the syscall, possibly after the process closed the directory fd and reused its number, or
/// changed its working directory: the directory `/proc` shows then may not be the one the
/// path was resolved against, and a hint naming the wrong directory would let the reconciler
/// miss a new root there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BaseDirCheck {
    /// The programs record the directory's inode and device at syscall entry; the path is
    /// named through the directory `/proc` shows only if it is that directory, else by its
    /// basename (every indexed root with that name is re-read).
    Verified,
    /// The struct offsets the programs need are unknown (no kernel BTF, or a layout this
    /// code does not recognise): relative paths are named through whatever directory `/proc`
    /// shows when the record is read, which a fast fd reuse or `chdir` can make wrong.
    Unverified { reason: String },
}

/// How the tracepoint mode learns what an io_uring path operation changes (the submission
/// tracepoint carries no names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IoUringNames {
    /// The submission program reads the prepared request's names (struct offsets from the
    /// kernel's BTF) and judges them as the syscall programs do: an unwatched operation
    /// sends nothing, a relevant one is named and its hints applied once it completed.
    Read,
    /// The layout is unknown: every io_uring path operation, of any process, is reported as
    /// lost hints at submission and again at completion, so the index is rescanned.
    Unread { reason: String },
}

/// What the verifier made of one program ([`EbpfSource::verify_programs`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProgramVerdict {
    pub program: &'static str,
    #[serde(flatten)]
    pub outcome: Verification,
}

/// The verifier's verdict on one program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verification {
    /// Loaded; `verified_insns` is the kernel's count of instructions it processed
    /// (`bpf_prog_info.verified_insns`, kernel 5.16 and later).
    Accepted { verified_insns: Option<u32> },
    /// Refused; `processed_insns` is from the verifier log's last line when it has one
    /// (1000001 means the complexity limit was hit).
    Rejected {
        processed_insns: Option<u64>,
        error: String,
    },
}

/// Per-CPU counters of the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounters {
    /// Records written to the ring buffer.
    pub sent: u64,
    /// Relevant records lost because the ring buffer was full.
    pub dropped: u64,
    /// Operations whose path or symlink target could not be read, so they could not be named.
    pub unreadable: u64,
    /// Paths longer than the event's buffer, sent as their tail (informational).
    pub truncated: u64,
    /// Relevant operations not tracked because the in-flight map was full.
    pub untracked: u64,
    /// Runs of the attached programs the kernel skipped (their `recursion_misses`): each may
    /// be an operation unseen, or its exit.
    pub missed: u64,
    /// Entry judgements redone because the task left the CPU during the first (informational).
    pub retried: u64,
    /// Entry judgements disturbed in every run: the operation may be misjudged.
    pub preempted: u64,
}

impl DeliveryCounters {
    /// Whether any hint may have been lost since attaching (the index must be rescanned).
    pub fn lost_hints(&self) -> bool {
        self.dropped != 0
            || self.unreadable != 0
            || self.untracked != 0
            || self.missed != 0
            || self.preempted != 0
    }

    /// A [`Hint::Lost`] for every loss counter that grew from `earlier` to `self`.
    fn losses_since(&self, earlier: &Self, out: &mut Vec<Hint>) {
        let grew = |now: u64, then: u64, what: &str| {
            (now > then).then(|| Hint::Lost {
                reason: format!("eBPF: {} {what}", now - then),
            })
        };
        out.extend(grew(
            self.dropped,
            earlier.dropped,
            "events dropped (ring buffer full)",
        ));
        out.extend(grew(
            self.unreadable,
            earlier.unreadable,
            "operations with an unreadable path",
        ));
        out.extend(grew(
            self.untracked,
            earlier.untracked,
            "operations untracked (in-flight map full)",
        ));
        out.extend(grew(
            self.missed,
            earlier.missed,
            "program runs skipped by the kernel",
        ));
        out.extend(grew(
            self.preempted,
            earlier.preempted,
            "operations judged while the task left the CPU in every run",
        ));
    }
}

/// A relevant operation seen entering and not yet seen exiting.
#[derive(Debug)]
struct InFlightOp {
    /// The syscall number, to recognise the thread in `/proc/<pid>/task/<tid>/syscall`.
    syscall_nr: i32,
    /// Which record entered it (`records_read` then): a thread's later operation replaces
    /// this one under the same key, and must not be forgotten in its place.
    entered_by: u64,
    /// What to report once it succeeded (resolved at entry, while the caller's fds and working
    /// directory are most likely still those it used).
    hints: Vec<Hint>,
}

/// One decoded ring-buffer record.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Enter(Enter),
    Exit {
        tgid: u32,
        tid: u32,
        ret: i64,
        /// When the syscall returned (`CLOCK_MONOTONIC` ns).
        ktime_ns: u64,
    },
    /// An operation judged unwatched succeeded after names were added to the filter.
    Unjudged {
        interest_seq: u64,
        /// When it ended (`CLOCK_MONOTONIC` ns).
        ktime_ns: u64,
    },
    /// An io_uring path operation whose names could not be read.
    IoUring {
        opcode: u32,
    },
    /// A relevant io_uring path operation, judged at submission.
    IoUringEnter {
        request: u64,
        enter: Enter,
    },
    IoUringDone {
        opcode: u32,
        request: u64,
        res: i64,
        /// When the request completed (`CLOCK_MONOTONIC` ns).
        ktime_ns: u64,
    },
}

/// A decoded `ENTER` record.
#[derive(Debug, PartialEq, Eq)]
struct Enter {
    op: u32,
    tgid: u32,
    tid: u32,
    syscall_nr: i32,
    flags: u32,
    /// The thread's context-switch count when the programs judged the call (0: unknown).
    task_switches: u64,
    paths: [Option<RawPath>; 2],
}

/// A path argument as the process passed it.
#[derive(Debug, PartialEq, Eq)]
struct RawPath {
    dirfd: i32,
    bytes: Vec<u8>,
    /// The directory the kernel resolved a relative path against, if the programs recorded
    /// it.
    base: Option<BaseDir>,
}

/// A directory's identity as the kernel saw it: inode number and the major and minor number
/// of its filesystem's `super_block.s_dev` (what `/proc/self/mountinfo` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BaseDir {
    ino: u64,
    major: u32,
    minor: u32,
}

/// What [`resolve`] checks a directory found through `/proc` against.
struct BaseDirVerifier<'a> {
    /// To match a mount's device where `stat` reports another one (btrfs subvolumes,
    /// overlayfs); `None` before the first read.
    mounts: Option<&'a MountTable>,
}

impl BaseDirVerifier<'_> {
    /// Whether `dir` is (still) the directory `base` identifies.
    fn is_base(&self, dir: &Path, base: BaseDir) -> bool {
        let Ok(name) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `statx` is plain old data, so all zeros is a valid value.
        let mut found: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is a NUL-terminated string and `found` a writable `statx`, both
        // alive for the call.
        let status = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                name.as_ptr(),
                0,
                libc::STATX_INO | libc::STATX_MNT_ID | STATX_MNT_ID_UNIQUE,
                &raw mut found,
            )
        };
        if status != 0 || found.stx_mask & libc::STATX_INO == 0 || found.stx_ino != base.ino {
            return false;
        }
        if (found.stx_dev_major, found.stx_dev_minor) == (base.major, base.minor) {
            return true;
        }
        // `stat` may report a device other than the superblock's (btrfs gives each subvolume
        // its own); the mount table shows the superblock's.
        // The table is keyed by unique mount IDs where the kernel has them (Linux 6.8), and
        // `statx` then answers with the unique ID too; else both use mountinfo's IDs.
        self.mounts.is_some_and(|mounts| {
            let unique = found.stx_mask & STATX_MNT_ID_UNIQUE != 0;
            let reusable = found.stx_mask & libc::STATX_MNT_ID != 0;
            let same_kind = if mounts.has_unique_ids() {
                unique
            } else {
                reusable && !unique
            };
            same_kind
                && mounts.device(found.stx_mnt_id)
                    == Some(format!("{}:{}", base.major, base.minor).as_bytes())
        })
    }
}

/// The interest sequence (the kernel's `INTEREST_SEQ`) and the names its recent raises added,
/// oldest first: an `UNJUDGED` record names the sequence its operation was judged under, and
/// these say which names it was not judged against.
#[derive(Debug, Default)]
struct InterestLog {
    seq: u64,
    /// At most [`INTEREST_LOG_NAMES`] names in all, except that the last raise is kept whole.
    raises: VecDeque<(u64, Vec<Vec<u8>>)>,
}

impl InterestLog {
    /// The sequence was raised by one for `added`.
    fn raised(&mut self, added: Vec<Vec<u8>>) {
        self.seq += 1;
        self.raises.push_back((self.seq, added));
        let mut kept: usize = self.raises.iter().map(|(_, names)| names.len()).sum();
        while kept > INTEREST_LOG_NAMES && self.raises.len() > 1 {
            if let Some((_, names)) = self.raises.pop_front() {
                kept -= names.len();
            }
        }
    }

    /// Hints for an operation judged unwatched under sequence `judged_under` that succeeded
    /// under a newer one: any name added since may be one it changed, so each is re-checked
    /// wherever it is watched. Many names, or names no longer logged, are left to a rescan.
    fn unjudged_hints(&self, judged_under: u64) -> Vec<Hint> {
        if judged_under >= self.seq {
            // Not raised since: every name was looked for.
            return Vec::new();
        }
        let covered = self
            .raises
            .front()
            .is_some_and(|(oldest, _)| *oldest <= judged_under + 1);
        let names: BTreeSet<&[u8]> = self
            .raises
            .iter()
            .filter(|(seq, _)| *seq > judged_under)
            .flat_map(|(_, names)| names.iter().map(Vec::as_slice))
            .collect();
        if !covered || names.len() > UNJUDGED_BASENAME_HINTS {
            let count = if covered {
                names.len().to_string()
            } else {
                "more".to_owned()
            };
            return vec![Hint::Lost {
                reason: format!(
                    "an operation judged before {count} names were added to the filter \
                     ended after: it may have changed any of them"
                ),
            }];
        }
        names
            .into_iter()
            .map(|name| Hint::Basename(OsString::from_vec(name.to_vec())))
            .collect()
    }
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): `stx_mnt_id` is the unique 64-bit mount ID.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// The eBPF programs, attached. Dropping it detaches the programs and frees the maps.
pub struct EbpfSource {
    events: RingBuf<MapData>,
    /// Mount changes that no mount syscall made (an automount expiring, propagation, a
    /// `pivot_root`): the mount programs see only the syscalls.
    mounts: MountWatch,
    counters: PerCpuArray<MapData, u64>,
    store_prefix: Array<MapData, StorePrefix>,
    watched_basenames: BpfHashMap<MapData, u64, u8>,
    /// The kernel's pre-filter of `WATCHED_BASENAMES`, rewritten whole with each change.
    basename_filter: Array<MapData, BasenameFilter>,
    /// Hashes currently in `WATCHED_BASENAMES`, to add and remove by difference.
    watched_hashes: BTreeSet<u64>,
    /// The kernel's `INTEREST_SEQ`, raised with each addition to `WATCHED_BASENAMES`.
    interest_seq_map: Array<MapData, u64>,
    /// What `interest_seq_map` holds, and the names each recent raise added.
    interest_log: InterestLog,
    /// Keyed by `pid_tgid` (tgid in the high half), as the kernel side keys its map.
    in_flight: HashMap<u64, InFlightOp>,
    /// Relevant io_uring requests (`IO_URING_ENTER`) not yet seen completed, by request, with
    /// their judgement, named once they succeeded.
    io_uring_requests: HashMap<u64, Enter>,
    /// io_uring path operations whose names could not be read (`IO_URING`) seen submitted and
    /// not yet seen completed.
    io_uring_in_flight: u64,
    /// The kernel's `IO_URING_IN_FLIGHT`: a request of `io_uring_requests` gone from it will
    /// send no completion any more (it was sent already, or dropped).
    io_uring_kernel_in_flight: BpfHashMap<MapData, u64, InFlight>,
    /// Counters as of the last check: an increase since is reported as lost hints.
    last_counters: DeliveryCounters,
    records_read: u64,
    /// `UNJUDGED` records read.
    unjudged: u64,
    /// When the earliest operation behind the hints handed out since the last
    /// [`Source::take_earliest_completion`] returned (`CLOCK_MONOTONIC` ns).
    earliest_completion: Option<u64>,
    checks: Checks,
    /// Every attached program, whose `recursion_misses` count runs the kernel skipped.
    program_fds: Vec<(&'static str, ProgramFd)>,
    /// When `last_counters.missed` was read: [`Self::poll`] reads it again only after
    /// [`MISSES_RECHECK`], a fence always.
    missed_at: Option<Instant>,
    /// Failures injected by tests.
    faults: Faults,
    /// Owns the programs and their tracepoint links; aya detaches the links when it drops.
    _ebpf: Ebpf,
}

impl EbpfSource {
    /// [`Self::attach_with`] default options.
    pub fn attach(interest: &Interest) -> Result<Self, EbpfError> {
        Self::attach_with(interest, &EbpfOptions::default())
    }

    /// Loads the programs, fills the filters from `interest` and attaches every exit program,
    /// then every entry program (so that each entry recorded has its exit seen): the
    /// fentry/fexit set where [`EbpfOptions::hooks`] allows it and it attaches whole, else
    /// the syscall tracepoints and then the io_uring programs.
    ///
    /// Needs root (`CAP_BPF` + `CAP_PERFMON`, or `CAP_SYS_ADMIN`; `CAP_SYS_PTRACE` to resolve
    /// relative paths through `/proc`). Where no tracefs is mounted, mounts one in a private
    /// mount namespace only for the attach (see `with_tracefs`). `RLIMIT_MEMLOCK` needs no
    /// care: aya raises it on kernels older than 5.11, and newer kernels charge BPF memory to
    /// the cgroup. Process ids in events are those of the initial pid namespace, so the tracker
    /// must run there.
    pub fn attach_with(interest: &Interest, options: &EbpfOptions) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let page = page_size();
        let bytes = options.ring_buf_bytes;
        if !bytes.is_power_of_two() || u64::from(bytes) % page != 0 {
            return Err(EbpfError::RingBufSize { bytes });
        }
        let prefix = store_prefix(&interest.store_dir)?;
        with_tracefs(|| Self::load_and_attach(interest, prefix, bytes, options))
    }

    fn load_and_attach(
        interest: &Interest,
        prefix: StorePrefix,
        ring_buf_bytes: u32,
        options: &EbpfOptions,
    ) -> Result<Self, EbpfError> {
        let hooks = options.hooks;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, ring_buf_bytes)
            .map_max_entries(MAP_UNWATCHED_IN_FLIGHT, unwatched_slots())
            .load(EBPF_OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;

        // Every filter is set before attaching, so no event is judged by an empty one.
        let io_uring_submit = io_uring_submit_tracepoint();
        let submit_field = |name, size| {
            io_uring_submit
                .as_ref()
                .and_then(|(_, format)| parse_field_offset(format, name, size))
        };
        let io_uring_opcode_offset = submit_field("opcode", 1);
        let btf = kernel_layout::running_kernel_btf();
        let switch_counts_offset = if options.faults.no_switch_check {
            Err("no switch check (injected fault)".to_owned())
        } else {
            from_btf(&btf, kernel_layout::Btf::task_switch_counts_offset)
        };
        let switch_check = match &switch_counts_offset {
            Ok(_) => SwitchCheck::Active,
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "eBPF: cannot tell when a program's task leaves the CPU; fentry programs only where the kernel does not preempt kernel code"
                );
                SwitchCheck::Unavailable {
                    reason: reason.clone(),
                }
            }
        };
        let mut config = Array::<_, Config>::try_from(take_map(&mut ebpf, MAP_CONFIG)?)
            .map_err(|e| EbpfError::map(MAP_CONFIG, e))?;
        let complete_format = tracefs_file(IO_URING_COMPLETE_FORMAT);
        let complete_field = |name, size| {
            complete_format
                .as_deref()
                .and_then(|format| parse_field_offset(format, name, size))
        };
        let config_value = Config {
            io_uring_opcode_offset: io_uring_opcode_offset.unwrap_or(0),
            io_uring_submit_req_offset: submit_field("req", 8).unwrap_or(0),
            io_uring_complete_req_offset: complete_field("req", 8).unwrap_or(0),
            io_uring_complete_res_offset: complete_field("res", 4).unwrap_or(0),
            syscall_nr_regs_offset: if cfg!(target_arch = "x86_64") {
                X86_64_PT_REGS_ORIG_AX
            } else {
                0
            },
            task_switch_counts_offset: switch_counts_offset.as_ref().map_or(0, |offset| *offset),
        };
        config
            .set(0, config_value, 0)
            .map_err(|e| EbpfError::map(MAP_CONFIG, e))?;
        let base_dir =
            set_base_dir_offsets(&mut ebpf, from_btf(&btf, |btf| btf.base_dir_offsets()))?;
        let io_uring_offsets = if options.faults.no_io_uring_names {
            Err("BTF has no struct io_kiocb (injected fault)".to_owned())
        } else {
            from_btf(&btf, kernel_layout::Btf::io_uring_offsets)
        };
        let io_uring_names = set_io_uring_offsets(&mut ebpf, io_uring_offsets)?;
        drop(btf);

        let mut store_prefix = Array::try_from(take_map(&mut ebpf, MAP_STORE_PREFIX)?)
            .map_err(|e| EbpfError::map(MAP_STORE_PREFIX, e))?;
        store_prefix
            .set(0, prefix, 0)
            .map_err(|e| EbpfError::map(MAP_STORE_PREFIX, e))?;
        let watched_basenames = BpfHashMap::try_from(take_map(&mut ebpf, MAP_WATCHED_BASENAMES)?)
            .map_err(|e| EbpfError::map(MAP_WATCHED_BASENAMES, e))?;
        let basename_filter = Array::try_from(take_map(&mut ebpf, MAP_BASENAME_FILTER)?)
            .map_err(|e| EbpfError::map(MAP_BASENAME_FILTER, e))?;
        let events = RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?)
            .map_err(|e| EbpfError::map(MAP_EVENTS, e))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(|e| EbpfError::map(MAP_COUNTERS, e))?;
        let io_uring_kernel_in_flight =
            BpfHashMap::try_from(take_map(&mut ebpf, MAP_IO_URING_IN_FLIGHT)?)
                .map_err(|e| EbpfError::map(MAP_IO_URING_IN_FLIGHT, e))?;
        let interest_seq_map = Array::try_from(take_map(&mut ebpf, MAP_INTEREST_SEQ)?)
            .map_err(|e| EbpfError::map(MAP_INTEREST_SEQ, e))?;

        let mounts = MountWatch::open().map_err(EbpfError::Mountinfo)?;
        let mut source = Self {
            events,
            mounts,
            counters,
            store_prefix,
            watched_basenames,
            basename_filter,
            watched_hashes: BTreeSet::new(),
            interest_seq_map,
            interest_log: InterestLog::default(),
            in_flight: HashMap::new(),
            io_uring_requests: HashMap::new(),
            io_uring_in_flight: 0,
            io_uring_kernel_in_flight,
            last_counters: DeliveryCounters::default(),
            records_read: 0,
            unjudged: 0,
            earliest_completion: None,
            checks: Checks {
                attach_mode: AttachMode::Tracepoints {
                    reason: "not attached yet".to_owned(),
                },
                fexit: Probe::Absent {
                    reason: "not probed".to_owned(),
                },
                lsm: Probe::Absent {
                    reason: "not probed".to_owned(),
                },
                io_uring_submit: Probe::Attached,
                io_uring_opcode_offset,
                io_uring_names,
                base_dir,
                switch_check,
            },
            program_fds: Vec::new(),
            missed_at: None,
            faults: options.faults,
            _ebpf: ebpf,
        };
        source.set_basenames(&interest.basenames)?;
        (source.checks.fexit, source.checks.lsm) = probe_fexit_and_lsm(&mut source._ebpf);

        let reason = match hooks {
            HookChoice::Tracepoints => "requested (--ebpf-hooks tracepoints)".to_owned(),
            HookChoice::Auto | HookChoice::Fentry => match source.attach_fentry(options.faults) {
                Ok(()) => {
                    tracing::info!(
                        programs = 2 * FENTRY_PROGRAMS.len(),
                        "eBPF source: fentry/fexit programs attached; no syscall tracepoint"
                    );
                    return Ok(source);
                }
                Err(reason) => reason,
            },
        };
        if hooks == HookChoice::Fentry {
            return Err(EbpfError::FentryUnavailable { reason });
        }
        tracing::info!(%reason, "eBPF source: attaching the syscall and io_uring tracepoints");
        source.checks.attach_mode = AttachMode::Tracepoints { reason };
        source.attach_tracepoints(io_uring_submit)?;
        Ok(source)
    }

    /// Attaches every fentry/fexit program, exits first; on any failure detaches and unloads
    /// all of them again and says why, so the caller attaches the complete tracepoint set
    /// instead: a mixture could miss an operation that only the missing program sees.
    fn attach_fentry(&mut self, faults: Faults) -> Result<(), String> {
        match &self.checks.fexit {
            Probe::Loadable => {}
            Probe::Absent { reason } => {
                return Err(format!("fexit programs do not load here: {reason}"));
            }
            other => return Err(format!("fexit probe: {other:?}")),
        }
        if let SwitchCheck::Unavailable { reason: why } = &self.checks.switch_check {
            preemption_off().map_err(|reason| {
                format!(
                    "{reason}: fentry programs run preemptibly there and share per-CPU \
                     scratch memory, which a preempting program would overwrite unnoticed \
                     ({why})"
                )
            })?;
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
        let attached = FENTRY_PROGRAMS
            .iter()
            .map(|hook| (hook.exit, hook.function))
            .chain(
                FENTRY_PROGRAMS
                    .iter()
                    .map(|hook| (hook.entry, hook.function)),
            )
            .try_for_each(|(name, function)| {
                attach_tracing(&mut self._ebpf, name, function, &btf)
                    .map_err(|e| format!("{name} on {function}: {}", error_chain(&e)))?;
                if faults.fail_attach == Some(name) {
                    return Err(format!("{name} on {function}: injected failure"));
                }
                Ok(())
            })
            .and_then(|()| {
                let names = FENTRY_PROGRAMS
                    .iter()
                    .flat_map(|hook| [hook.exit, hook.entry]);
                self.program_fds = names
                    .map(|name| Ok((name, program_fd(&self._ebpf, name)?)))
                    .collect::<Result<_, String>>()?;
                Ok(())
            });
        if let Err(reason) = attached {
            self.program_fds.clear();
            // Entries first, so that no entry recorded is left without its exit program.
            for hook in FENTRY_PROGRAMS {
                unload_tracing(&mut self._ebpf, hook.entry);
            }
            for hook in FENTRY_PROGRAMS {
                unload_tracing(&mut self._ebpf, hook.exit);
            }
            // A thread inside a path worker while they went leaves its record behind, which
            // would keep its next operation from being recorded.
            clear_in_flight(&mut self._ebpf);
            tracing::warn!(%reason, "eBPF source: fentry/fexit programs not usable");
            return Err(reason);
        }
        self.checks.attach_mode = AttachMode::Fentry;
        self.checks.fexit = Probe::Attached;
        self.checks.io_uring_submit = Probe::Unneeded {
            reason: "io_uring's path operations call the path workers the fentry programs hook"
                .to_owned(),
        };
        Ok(())
    }

    /// Attaches every syscall tracepoint program, exits first, then the io_uring programs
    /// (`io_uring_submit`: the submission tracepoint this kernel has, if any).
    fn attach_tracepoints(
        &mut self,
        io_uring_submit: Option<(&'static str, String)>,
    ) -> Result<(), EbpfError> {
        for (_, exit) in SYSCALL_PROGRAMS {
            attach_tracepoint(&mut self._ebpf, SYSCALLS_CATEGORY, exit)?;
        }
        for (enter, _) in SYSCALL_PROGRAMS {
            attach_tracepoint(&mut self._ebpf, SYSCALLS_CATEGORY, enter)?;
        }
        if let Some((submit, _)) = io_uring_submit {
            // Completion first, so no tracked submission can complete unseen.
            if tracefs_file(IO_URING_COMPLETE_FORMAT).is_some() {
                attach_tracepoint(&mut self._ebpf, IO_URING_CATEGORY, PROG_IO_URING_COMPLETE)?;
            }
            attach_program(
                &mut self._ebpf,
                PROG_IO_URING_SUBMIT_REQ,
                IO_URING_CATEGORY,
                submit,
            )?;
        } else {
            self.checks.io_uring_submit = Probe::Absent {
                reason: format!(
                    "no tracepoint {IO_URING_CATEGORY}/{}",
                    IO_URING_SUBMIT_TRACEPOINTS.join(" or ")
                ),
            };
        }
        let attached = SYSCALL_PROGRAMS
            .iter()
            .flat_map(|(enter, exit)| [*exit, *enter])
            .chain([PROG_IO_URING_COMPLETE, PROG_IO_URING_SUBMIT_REQ])
            .filter(|name| {
                self._ebpf
                    .program(name)
                    .and_then(|program| program.fd().ok())
                    .is_some()
            });
        self.program_fds = attached
            .map(|name| Ok((name, program_fd(&self._ebpf, name)?)))
            .collect::<Result<_, String>>()
            .map_err(EbpfError::ProgramFds)?;
        Ok(())
    }

    /// Whether the kernel accepts fexit and LSM programs, found as [`Self::attach`] finds it,
    /// but without loading or attaching anything else: for diagnosing kernels on which the
    /// attach itself fails (`cargo xtask vm`).
    pub fn probe_fexit_and_lsm() -> Result<(Probe, Probe), EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        Ok(probe_fexit_and_lsm(&mut ebpf))
    }

    /// Loads every program on its own (nothing is attached) and reports what the verifier
    /// made of each: how many instructions it processed to accept it, or why it refused. For
    /// `cargo xtask vm`, which must show how close a kernel's verifier limit (1,000,000
    /// processed instructions) the programs come, not only whether they load. The
    /// fentry/fexit programs come last; where the kernel refuses them (this host kind) they
    /// are `Rejected` like any other, so callers that need only the tracepoint programs
    /// judge the first `2 * SYSCALL_PROGRAMS.len() + 2` verdicts.
    pub fn verify_programs() -> Result<Vec<ProgramVerdict>, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        let tracepoints = SYSCALL_PROGRAMS
            .iter()
            .flat_map(|(enter, exit)| [*enter, *exit])
            .chain([PROG_IO_URING_SUBMIT_REQ, PROG_IO_URING_COMPLETE])
            .map(|name| (name, None));
        let fentry = FENTRY_PROGRAMS.iter().flat_map(|hook| {
            [
                (hook.entry, Some(hook.function)),
                (hook.exit, Some(hook.function)),
            ]
        });
        let btf = aya::Btf::from_sys_fs();
        tracepoints
            .chain(fentry)
            .map(|(name, function)| {
                let program = ebpf
                    .program_mut(name)
                    .ok_or(EbpfError::MissingProgram { name })?;
                let loaded = match function {
                    None => <&mut TracePoint>::try_from(program).and_then(|tracepoint| {
                        tracepoint.load()?;
                        let verified = verified_insns(tracepoint.info());
                        let _ = tracepoint.unload();
                        Ok(verified)
                    }),
                    Some(function) => match &btf {
                        Ok(btf) => load_tracing_alone(program, function, btf),
                        Err(error) => {
                            return Ok(ProgramVerdict {
                                program: name,
                                outcome: Verification::Rejected {
                                    processed_insns: None,
                                    error: format!("no kernel BTF: {error}"),
                                },
                            });
                        }
                    },
                };
                let outcome = match loaded {
                    Ok(verified_insns) => Verification::Accepted { verified_insns },
                    Err(error) => {
                        let error = error_chain(&error);
                        Verification::Rejected {
                            processed_insns: processed_insns(&error),
                            error: brief_verifier_error(&error),
                        }
                    }
                };
                Ok(ProgramVerdict {
                    program: name,
                    outcome,
                })
            })
            .collect()
    }

    /// What the kernel supports, as found at attach time.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// Sums the per-CPU counters over CPUs, and the programs' skipped runs.
    pub fn counters(&self) -> Result<DeliveryCounters, EbpfError> {
        Ok(DeliveryCounters {
            missed: self.program_misses()?,
            ..self.map_counters()?
        })
    }

    /// The per-CPU counters summed over CPUs (`missed` left 0).
    fn map_counters(&self) -> Result<DeliveryCounters, EbpfError> {
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
            unreadable: sum(COUNTER_UNREADABLE)?,
            truncated: sum(COUNTER_TRUNCATED)?,
            untracked: sum(COUNTER_UNTRACKED)?,
            missed: 0,
            retried: sum(COUNTER_RETRIED)?,
            preempted: sum(COUNTER_PREEMPTED)?,
        })
    }

    /// Runs of the attached programs the kernel skipped, summed. The kernel counts a run it
    /// skips because a BPF program, or a `bpf(2)` map operation, was already under way on the
    /// CPU (since Linux 6.7 for tracepoint programs; fentry earlier), e.g. one preempted on a
    /// preemptible kernel.
    fn program_misses(&self) -> Result<u64, EbpfError> {
        self.program_fds.iter().try_fold(0u64, |total, (name, fd)| {
            let misses =
                recursion_misses(fd).map_err(|source| EbpfError::ProgramInfo { name, source })?;
            Ok(total.wrapping_add(misses))
        })
    }

    /// Makes `WATCHED_BASENAMES` hold exactly the hashes of `basenames` (names that cannot
    /// be a directory entry are skipped: nothing can be created under them).
    fn set_basenames(&mut self, basenames: &BTreeSet<Vec<u8>>) -> Result<(), EbpfError> {
        let wanted: BTreeSet<u64> = basenames
            .iter()
            .filter(|name| is_entry_name(name))
            .map(|name| name_hash(name))
            .collect();
        for hash in wanted.difference(&self.watched_hashes) {
            self.watched_basenames
                .insert(hash, 1, 0)
                .map_err(|e| EbpfError::map(MAP_WATCHED_BASENAMES, e))?;
        }
        // After the additions, so a name whose bit is set is in the map; a program reading
        // the filter while it is rewritten sees each word old or new, and the bits of names
        // watched before and after are set in both.
        if wanted != self.watched_hashes {
            let mut filter = BasenameFilter::EMPTY;
            for &hash in &wanted {
                filter.insert(hash);
            }
            self.basename_filter
                .set(0, filter, 0)
                .map_err(|e| EbpfError::map(MAP_BASENAME_FILTER, e))?;
        }
        for hash in self.watched_hashes.difference(&wanted) {
            self.watched_basenames
                .remove(hash)
                .map_err(|e| EbpfError::map(MAP_WATCHED_BASENAMES, e))?;
        }
        let added: Vec<Vec<u8>> = basenames
            .iter()
            .filter(|name| is_entry_name(name) && !self.watched_hashes.contains(&name_hash(name)))
            .cloned()
            .collect();
        self.watched_hashes = wanted;
        if !added.is_empty() {
            self.raise_interest_seq(added)?;
        }
        Ok(())
    }

    /// Raises the kernel's interest sequence once `added` are in the filter. An operation
    /// judged before that and ending after it is reported (`UNJUDGED`); one that ends before
    /// it was done before the tracker reads the filesystem for the new names (which it does
    /// after setting the interest), so nothing falls between the two.
    fn raise_interest_seq(&mut self, added: Vec<Vec<u8>>) -> Result<(), EbpfError> {
        let seq = self.interest_log.seq + 1;
        self.interest_seq_map
            .set(0, seq, 0)
            .map_err(|e| EbpfError::map(MAP_INTEREST_SEQ, e))?;
        self.interest_log.raised(added);
        Ok(())
    }

    /// Reads every record available now; returns how many.
    fn drain(&mut self, out: &mut Vec<Hint>) -> Result<usize, EbpfError> {
        let mut read = 0;
        loop {
            let record = match self.events.next() {
                // Decoding copies the record, so it is consumed when `item` drops here.
                Some(item) => decode(&item)?,
                None => return Ok(read),
            };
            read += 1;
            self.records_read += 1;
            if self.faults.drop_io_uring_done && matches!(record, Record::IoUringDone { .. }) {
                continue;
            }
            self.handle(record, out);
        }
    }

    /// The hints `enter` yields once it succeeded (see [`hints_for`]).
    fn hints_for(&self, enter: &Enter) -> Vec<Hint> {
        let mounts = self.mounts.table();
        let verifier =
            (self.checks.base_dir == BaseDirCheck::Verified).then_some(BaseDirVerifier {
                mounts: mounts.as_deref(),
            });
        hints_for(enter, verifier.as_ref())
    }

    fn handle(&mut self, record: Record, out: &mut Vec<Hint>) {
        match record {
            Record::Enter(enter) => {
                let key = pid_tgid(enter.tgid, enter.tid);
                let op = InFlightOp {
                    syscall_nr: enter.syscall_nr,
                    entered_by: self.records_read,
                    hints: self.hints_for(&enter),
                };
                // A thread is in one syscall at a time: an older entry for it is stale (its
                // exit was dropped, which the counters report).
                self.in_flight.insert(key, op);
            }
            Record::Exit {
                tgid,
                tid,
                ret,
                ktime_ns,
            } => {
                if let Some(op) = self.in_flight.remove(&pid_tgid(tgid, tid)) {
                    self.completed(ret, op.hints, ktime_ns, out);
                }
            }
            Record::IoUringEnter { request, enter } => {
                // A request judged again (its task left the CPU meanwhile) replaces its record.
                self.io_uring_requests.insert(request, enter);
            }
            // Named only now, unlike a syscall: an io-wq worker resolves the names some time
            // after the submission, against the directory fds and working directory it shares
            // with the submitter, so a `chdir` or fd reuse between the two makes the kernel use
            // another directory than the recorded one. Read through `/proc` after the
            // operation, that directory then fails the recorded identity and the hint is a
            // basename; read before it (at submission), it could pass and name the wrong entry.
            Record::IoUringDone {
                request,
                res,
                ktime_ns,
                ..
            } if self.io_uring_requests.contains_key(&request) => {
                if let Some(enter) = self.io_uring_requests.remove(&request) {
                    // A failed operation changed nothing: no need to name anything.
                    let hints = if res >= 0 {
                        let mut hints = self.hints_for(&enter);
                        hints.extend(relative_basenames(&enter));
                        hints
                    } else {
                        Vec::new()
                    };
                    self.completed(res, hints, ktime_ns, out);
                }
            }
            Record::Unjudged {
                interest_seq,
                ktime_ns,
            } => {
                self.unjudged += 1;
                let hints = self.interest_log.unjudged_hints(interest_seq);
                self.completed(0, hints, ktime_ns, out);
            }
            Record::IoUring { opcode } => {
                self.io_uring_in_flight += 1;
                out.push(Hint::Lost {
                    reason: format!("io_uring {}", io_uring_name(opcode)),
                });
            }
            // The operation is done only now: a rescan prompted by its submission may have
            // read the old state, so it is reported again.
            Record::IoUringDone { opcode, .. } => {
                self.io_uring_in_flight = self.io_uring_in_flight.saturating_sub(1);
                out.push(Hint::Lost {
                    reason: format!("io_uring {} completed", io_uring_name(opcode)),
                });
            }
        }
    }

    /// Hands out `hints` of an operation that ended with `ret` at `ktime_ns`: a failed one
    /// (`ret < 0`) changed nothing.
    fn completed(&mut self, ret: i64, hints: Vec<Hint>, ktime_ns: u64, out: &mut Vec<Hint>) {
        if ret >= 0 && !hints.is_empty() {
            out.extend(hints);
            self.earliest_completion = Some(
                self.earliest_completion
                    .map_or(ktime_ns, |earliest| earliest.min(ktime_ns)),
            );
        }
    }

    /// Reports lost hints if a loss counter grew since the last check. The programs' skipped
    /// runs cost a read of an fdinfo file per program, so `Misses::IfDue` reads them only every
    /// [`MISSES_RECHECK`]; a fence reads them always.
    fn check_counters(&mut self, misses: Misses, out: &mut Vec<Hint>) -> Result<(), EbpfError> {
        let due = match (misses, self.missed_at) {
            (Misses::Now, _) | (Misses::IfDue, None) => true,
            (Misses::IfDue, Some(at)) => at.elapsed() >= MISSES_RECHECK,
        };
        let now = if due {
            self.missed_at = Some(Instant::now());
            self.counters()?
        } else {
            DeliveryCounters {
                missed: self.last_counters.missed,
                ..self.map_counters()?
            }
        };
        now.losses_since(&self.last_counters, out);
        self.last_counters = now;
        Ok(())
    }

    /// Forgets in-flight operations whose thread is provably no longer inside the syscall:
    /// their exit record was then either read already or dropped (and counted). Forgets
    /// io_uring requests that the kernel no longer holds as in flight too, with lost hints:
    /// their completion record was dropped, or is being sent just now (the completion program
    /// forgets the request first), or the submission's record was sent by a judgement that
    /// was run again and then dropped.
    fn forget_finished(&mut self, out: &mut Vec<Hint>) -> Result<(), EbpfError> {
        let completed: Vec<u64> = self
            .io_uring_requests
            .keys()
            .copied()
            .filter(|request| {
                matches!(
                    self.io_uring_kernel_in_flight.get(request, 0),
                    Err(MapError::KeyNotFound)
                )
            })
            .collect();
        // One batch: after the privilege drop each read is a round trip to the /proc reader.
        let threads: Vec<(u32, u32)> = self
            .in_flight
            .keys()
            .map(|key| ((key >> 32) as u32, *key as u32))
            .collect();
        let states = crate::proc_reader::thread_syscalls(&threads);
        let finished: Vec<(u64, u64)> = self
            .in_flight
            .iter()
            .zip(states)
            .filter(|((_, op), state)| !may_be_in_syscall(*state, op.syscall_nr))
            .map(|((key, op), _)| (*key, op.entered_by))
            .collect();
        if finished.is_empty() && completed.is_empty() {
            return Ok(());
        }
        // The exit record, if any, was committed before the thread left the syscall.
        self.drain(out)?;
        for (key, entered_by) in finished {
            // The drain may have read the thread's next operation, under the same key: that
            // one is in flight now, and forgetting it would lose its hints when it exits.
            if self
                .in_flight
                .get(&key)
                .is_some_and(|op| op.entered_by == entered_by)
            {
                self.in_flight.remove(&key);
            }
        }
        for request in completed {
            // Still here after the drain: its completion record is not coming, or not yet.
            if self.io_uring_requests.remove(&request).is_some() {
                out.push(Hint::Lost {
                    reason: "eBPF: an io_uring request's completion was not seen".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether an operation or io_uring request was seen starting and not yet ending.
    fn anything_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
            || !self.io_uring_requests.is_empty()
            || self.io_uring_in_flight > 0
    }

    /// Waits until the ring buffer has data, the mount table changes (reported as
    /// [`Hint::MountsChanged`]), `wake` is readable or `timeout` passes.
    fn wait_readable(
        &self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<Wait, EbpfError> {
        let seen = super::wait_for(self.events.as_fd(), &self.mounts, wake, timeout)
            .map_err(EbpfError::Poll)?;
        if seen.mounts_changed {
            out.push(Hint::MountsChanged);
        }
        Ok(if seen.timed_out {
            Wait::TimedOut
        } else if seen.woken {
            Wait::Woken
        } else {
            // Records, a mount change, or an interrupted wait: look again.
            Wait::Ready
        })
    }

    fn poll_inner(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<(), EbpfError> {
        let deadline = Instant::now() + timeout;
        let before = out.len();
        loop {
            self.drain(out)?;
            if out.len() > before {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let waited = if remaining.is_zero() {
                Wait::TimedOut
            } else {
                self.wait_readable(remaining, wake, out)?
            };
            if waited != Wait::Ready {
                // One last look: a record may have landed just as the wait ended.
                self.drain(out)?;
                break;
            }
        }
        self.check_counters(Misses::IfDue, out)
    }

    fn fence_inner(&mut self, deadline: Instant, out: &mut Vec<Hint>) -> Result<(), EbpfError> {
        // Every operation that completed before this call has its records in the buffer now:
        // the exit program runs before the syscall returns (`sys_exit_*`), or before the path
        // worker returns to the syscall or to io_uring, which posts the completion only then
        // (`fexit_do_*`). A mount change, however made, moved the table's event counter before
        // it completed: in fentry mode that poll is the only mount hook, and it suffices, since
        // only this mount namespace's table shapes what the index can see.
        if self.mounts.changed_now().map_err(EbpfError::Mountinfo)? {
            out.push(Hint::MountsChanged);
        }
        self.drain(out)?;
        while self.anything_in_flight() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                self.forget_finished(out)?;
                if self.anything_in_flight() {
                    out.push(Hint::Lost {
                        reason: format!(
                            "eBPF: {} operation(s) and {} io_uring request(s) still in flight",
                            self.in_flight.len(),
                            self.io_uring_requests.len() as u64 + self.io_uring_in_flight
                        ),
                    });
                }
                break;
            }
            if self.wait_readable(remaining.min(FENCE_RECHECK), None, out)? != Wait::TimedOut {
                self.drain(out)?;
            } else {
                self.forget_finished(out)?;
            }
        }
        self.check_counters(Misses::Now, out)
    }
}

impl EbpfSource {
    /// Reads the mount table after a mount change was seen (a mount syscall's record, or the
    /// mountinfo poll). The programs see every filesystem, so there is nothing to adjust: any
    /// table read after the change will do, and a later change is reported again.
    fn reread_mounts_if_changed(&mut self, hints: &[Hint]) {
        if hints.contains(&Hint::MountsChanged) {
            self.mounts.reread();
        }
    }
}

impl Source for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn set_interest(&mut self, interest: &Interest) -> Result<(), SourceError> {
        let prefix = store_prefix(&interest.store_dir)?;
        self.store_prefix
            .set(0, prefix, 0)
            .map_err(|e| EbpfError::map(MAP_STORE_PREFIX, e))?;
        self.set_basenames(&interest.basenames)?;
        Ok(())
    }

    fn poll(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<(), SourceError> {
        let before = out.len();
        let polled = self.poll_inner(timeout, wake, out);
        self.reread_mounts_if_changed(&out[before..]);
        Ok(polled?)
    }

    fn fence(&mut self, deadline: Instant, out: &mut Vec<Hint>) -> Result<(), SourceError> {
        let before = out.len();
        let fenced = self.fence_inner(deadline, out);
        self.reread_mounts_if_changed(&out[before..]);
        Ok(fenced?)
    }

    fn mount_table(&self) -> Option<std::sync::Arc<crate::mounts::MountTable>> {
        self.mounts.table()
    }

    fn mounts_changed_since_table(&mut self) -> bool {
        self.mounts.changed_since_table()
    }

    fn checks(&self) -> serde_json::Value {
        serde_json::to_value(&self.checks).unwrap_or_default()
    }

    fn take_earliest_completion(&mut self) -> Option<u64> {
        self.earliest_completion.take()
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            events: self.records_read,
            dropped: self.last_counters.dropped,
            unjudged: Some(self.unjudged),
        }
    }
}

/// How a wait for records ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    TimedOut,
    /// Records (or a mount change) may be there to read.
    Ready,
    /// The tracker loop was woken for a request.
    Woken,
}

fn pid_tgid(tgid: u32, tid: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(tid)
}

/// Whether a thread in `state` (from `/proc/<pid>/task/<tid>/syscall`) may still be inside
/// syscall `syscall_nr`: anything but a definite "elsewhere" or "gone" counts as still inside;
/// with [`SYSCALL_NR_UNKNOWN`] (an fentry program could not read it) only "outside any
/// syscall" (-1) is elsewhere.
fn may_be_in_syscall(state: ThreadSyscall, syscall_nr: i32) -> bool {
    match state {
        ThreadSyscall::Number(nr) if syscall_nr == SYSCALL_NR_UNKNOWN => nr != -1,
        ThreadSyscall::Number(nr) => nr == i64::from(syscall_nr),
        ThreadSyscall::Gone => false,
        ThreadSyscall::Unknown => true,
    }
}

/// The hints an operation yields once it succeeded. With a `verifier`, a relative path is
/// named through its directory only if that is the one the kernel used.
/// Basename hints for the relative names of an io_uring request. Its io-wq workers share the
/// submitter's working directory and fd table as they were when the workers started: a
/// submitter that later unshared them (`unshare(CLONE_FS | CLONE_FILES)`) and moved on leaves
/// the workers resolving against directories that neither the recorded identity nor `/proc`
/// shows, so the path named through `/proc` may be another entry than the one changed. A
/// relative name is therefore also re-checked by its basename (rare: io_uring path operations
/// on watched names, relative ones at that).
fn relative_basenames(enter: &Enter) -> Vec<Hint> {
    let first = usize::from(matches!(enter.op, op::LINK | op::LINKAT));
    enter
        .paths
        .iter()
        .enumerate()
        .skip(first)
        .filter_map(|(index, path)| {
            let path = path.as_ref()?;
            let unnamed = flags::path_unreadable(index) | flags::path_truncated(index);
            if enter.flags & unnamed != 0 || path.bytes.starts_with(b"/") {
                return None;
            }
            let name = last_component(&path.bytes)?;
            Some(Hint::Basename(OsString::from_vec(name.to_vec())))
        })
        .collect()
}

fn hints_for(enter: &Enter, verifier: Option<&BaseDirVerifier<'_>>) -> Vec<Hint> {
    match enter.op {
        op::MOUNT | op::UMOUNT | op::MOVE_MOUNT => return vec![Hint::MountsChanged],
        _ => {}
    }
    let mut hints = Vec::new();
    if enter.flags & flags::TARGET_UNREADABLE != 0 {
        hints.push(Hint::Lost {
            reason: format!("eBPF: {} target unreadable", op_name(enter.op)),
        });
    }
    // A hard link changes only its new name; the old entry stays as it was.
    let first = if matches!(enter.op, op::LINK | op::LINKAT) {
        1
    } else {
        0
    };
    for (index, path) in enter.paths.iter().enumerate().skip(first) {
        let Some(path) = path else { continue };
        if enter.flags & flags::path_unreadable(index) != 0 {
            hints.push(Hint::Lost {
                reason: format!("eBPF: {} path unreadable", op_name(enter.op)),
            });
        } else if enter.flags & flags::path_truncated(index) != 0 {
            // Only the tail is known; the kernel side checked it holds a whole last component.
            hints.push(match last_component(&path.bytes) {
                Some(name) => Hint::Basename(OsString::from_vec(name.to_vec())),
                None => Hint::Lost {
                    reason: format!("eBPF: {} path too long to name", op_name(enter.op)),
                },
            });
        } else {
            hints.push(resolve(enter.tgid, enter.tid, path, verifier));
        }
    }
    hints
}

/// Names a path argument: absolute as is; relative against the caller's directory fd or
/// working directory, read from `/proc`; or, if that is gone (or, with a `verifier`, is not
/// the directory the kernel recorded at entry), by its last component.
fn resolve(tgid: u32, tid: u32, path: &RawPath, verifier: Option<&BaseDirVerifier<'_>>) -> Hint {
    let bytes = trim_trailing_slashes(&path.bytes);
    if bytes.first() == Some(&b'/') {
        return Hint::Path(PathBuf::from(OsString::from_vec(bytes.to_vec())));
    }
    // `/proc/<tgid>/task/<tid>/{cwd,fd/<n>}`, through the /proc reader after the drop.
    let fd = (path.dirfd != AT_FDCWD).then_some(path.dirfd);
    match crate::proc_reader::task_dir(tgid, tid, fd) {
        // A removed directory reads as "<path> (deleted)", which names nothing reliably.
        Some(dir) if dir.is_absolute() && !dir.as_os_str().as_bytes().ends_with(b" (deleted)") => {
            if let Some(verifier) = verifier {
                // The fd or working directory may have been reused since the call: only the
                // directory the kernel used names the entry.
                if !path.base.is_some_and(|base| verifier.is_base(&dir, base)) {
                    tracing::debug!(
                        ?dir,
                        recorded = ?path.base,
                        "eBPF: a relative path's directory changed since the call; naming it by basename"
                    );
                    return by_basename(bytes);
                }
            }
            if bytes.is_empty() {
                Hint::Path(dir)
            } else {
                Hint::Path(dir.join(Path::new(std::ffi::OsStr::from_bytes(bytes))))
            }
        }
        _ => by_basename(bytes),
    }
}

/// The hint for a relative path whose directory cannot be named: its last component, or lost.
fn by_basename(path: &[u8]) -> Hint {
    match last_component(path) {
        Some(name) => Hint::Basename(OsString::from_vec(name.to_vec())),
        None => Hint::Lost {
            reason: "eBPF: relative path whose directory is gone or changed".to_owned(),
        },
    }
}

/// Writes the kernel struct offsets the programs need to record a relative path's directory,
/// found in the running kernel's BTF; without them the programs record nothing and the
/// returned check says why.
fn set_base_dir_offsets(
    ebpf: &mut Ebpf,
    offsets: Result<BaseDirOffsets, String>,
) -> Result<BaseDirCheck, EbpfError> {
    match offsets {
        Ok(offsets) => {
            set_only_value(ebpf, MAP_BASE_DIR_OFFSETS, offsets)?;
            tracing::debug!(?offsets, "eBPF: kernel struct offsets for relative paths");
            Ok(BaseDirCheck::Verified)
        }
        Err(reason) => {
            tracing::warn!(
                %reason,
                "eBPF: cannot check the directory of relative paths: they are named through /proc when their record is read, which an fd reuse or chdir right after the call can make wrong"
            );
            Ok(BaseDirCheck::Unverified { reason })
        }
    }
}

/// Writes the kernel struct offsets the io_uring submission program needs to read a request's
/// names, found in the running kernel's BTF; without them the program reports every io_uring
/// path operation as lost hints, as the returned check says.
fn set_io_uring_offsets(
    ebpf: &mut Ebpf,
    offsets: Result<IoUringOffsets, String>,
) -> Result<IoUringNames, EbpfError> {
    match offsets {
        Ok(offsets) => {
            set_only_value(ebpf, MAP_IO_URING_OFFSETS, offsets)?;
            tracing::debug!(?offsets, "eBPF: kernel struct offsets for io_uring names");
            Ok(IoUringNames::Read)
        }
        Err(reason) => {
            tracing::warn!(
                %reason,
                "eBPF: cannot read io_uring requests' names: every io_uring path operation (of any process) will unsettle the index"
            );
            Ok(IoUringNames::Unread { reason })
        }
    }
}

/// What `find` reads from the kernel's BTF, or why it cannot (no BTF, or a layout the reader
/// does not recognise), as the reason `status` shows.
fn from_btf<T>(
    btf: &Result<kernel_layout::Btf, kernel_layout::LayoutError>,
    find: impl FnOnce(&kernel_layout::Btf) -> Result<T, kernel_layout::LayoutError>,
) -> Result<T, String> {
    match btf {
        Ok(btf) => find(btf).map_err(|error| error_chain(&error)),
        Err(error) => Err(error_chain(error)),
    }
}

/// Sets the only entry of the one-entry array map `name`. The map is borrowed, not taken: it
/// must stay open (in `ebpf`) until the programs using it are loaded.
fn set_only_value<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    value: T,
) -> Result<(), EbpfError> {
    let map = ebpf.map_mut(name).ok_or(EbpfError::MissingMap { name })?;
    Array::<_, T>::try_from(map)
        .and_then(|mut map| map.set(0, value, 0))
        .map_err(|e| EbpfError::map(name, e))
}

/// `path` without trailing slashes, keeping a lone `/`.
fn trim_trailing_slashes(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b != b'/') {
        Some(last) => &path[..=last],
        None => &path[..path.len().min(1)],
    }
}

/// The last component of `path` (trailing slashes ignored); `None` for `/` or an empty path.
fn last_component(path: &[u8]) -> Option<&[u8]> {
    let path = trim_trailing_slashes(path);
    let name = match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    };
    (!name.is_empty()).then_some(name)
}

/// Whether `name` can be the name of a directory entry (so worth watching).
fn is_entry_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

fn op_name(op: u32) -> &'static str {
    match op {
        op::SYMLINK => "symlink",
        op::SYMLINKAT => "symlinkat",
        op::UNLINK => "unlink",
        op::UNLINKAT => "unlinkat",
        op::RMDIR => "rmdir",
        op::RENAME => "rename",
        op::RENAMEAT => "renameat",
        op::RENAMEAT2 => "renameat2",
        op::LINK => "link",
        op::LINKAT => "linkat",
        op::MOUNT => "mount",
        op::UMOUNT => "umount2",
        op::MOVE_MOUNT => "move_mount",
        _ => "unknown operation",
    }
}

fn io_uring_name(opcode: u32) -> String {
    match opcode {
        io_uring::RENAMEAT => "renameat".to_owned(),
        io_uring::UNLINKAT => "unlinkat".to_owned(),
        io_uring::MKDIRAT => "mkdirat".to_owned(),
        io_uring::SYMLINKAT => "symlinkat".to_owned(),
        io_uring::LINKAT => "linkat".to_owned(),
        // The opcode offset was unknown: any submission is reported.
        0 => "submission (opcode unknown)".to_owned(),
        other => format!("opcode {other}"),
    }
}

/// How many paths an operation's `ENTER` record carries.
fn path_count(op: u32) -> Option<usize> {
    match op {
        op::SYMLINK | op::SYMLINKAT | op::UNLINK | op::UNLINKAT | op::RMDIR => Some(1),
        op::RENAME | op::RENAMEAT | op::RENAMEAT2 | op::LINK | op::LINKAT => Some(2),
        op::MOUNT | op::UMOUNT | op::MOVE_MOUNT => Some(0),
        _ => None,
    }
}

/// Decodes one ring-buffer record, checking its size and the lengths inside it.
fn decode(record: &[u8]) -> Result<Record, EbpfError> {
    let malformed = |reason| EbpfError::MalformedEvent {
        len: record.len(),
        reason,
    };
    let header: EventHeader = read_record(record).ok_or_else(|| malformed("no header"))?;
    match header.kind {
        kind::ENTER | kind::IO_URING_ENTER => {
            let event: PathEvent =
                read_record(record).ok_or_else(|| malformed("shorter than a PathEvent"))?;
            let count = path_count(header.op).ok_or_else(|| malformed("unknown operation"))?;
            let mut paths = [None, None];
            for (index, slot) in paths.iter_mut().enumerate().take(count) {
                let len = usize::try_from(event.path_len[index])
                    .ok()
                    .filter(|&len| len <= PATH_BYTES)
                    .ok_or_else(|| malformed("path length exceeds its buffer"))?;
                let (major, minor) = kernel_dev_major_minor(event.base_dev[index]);
                *slot = Some(RawPath {
                    dirfd: event.dirfd[index],
                    bytes: event.path[index][..len].to_vec(),
                    base: (event.base_ino[index] != 0).then_some(BaseDir {
                        ino: event.base_ino[index],
                        major,
                        minor,
                    }),
                });
            }
            let enter = Enter {
                op: header.op,
                tgid: header.tgid,
                tid: header.tid,
                syscall_nr: event.syscall_nr,
                flags: event.flags,
                task_switches: event.task_switches,
                paths,
            };
            Ok(if header.kind == kind::ENTER {
                Record::Enter(enter)
            } else {
                Record::IoUringEnter {
                    request: event.request,
                    enter,
                }
            })
        }
        kind::EXIT => {
            let event: ExitEvent =
                read_record(record).ok_or_else(|| malformed("shorter than an ExitEvent"))?;
            Ok(Record::Exit {
                tgid: header.tgid,
                tid: header.tid,
                ret: event.ret,
                ktime_ns: header.ktime_ns,
            })
        }
        kind::IO_URING => Ok(Record::IoUring { opcode: header.op }),
        kind::UNJUDGED => {
            let event: UnjudgedEvent =
                read_record(record).ok_or_else(|| malformed("shorter than an UnjudgedEvent"))?;
            Ok(Record::Unjudged {
                interest_seq: event.interest_seq,
                ktime_ns: header.ktime_ns,
            })
        }
        kind::IO_URING_DONE => {
            let event: IoUringDoneEvent =
                read_record(record).ok_or_else(|| malformed("shorter than an IoUringDoneEvent"))?;
            Ok(Record::IoUringDone {
                opcode: header.op,
                request: event.request,
                res: event.res,
                ktime_ns: header.ktime_ns,
            })
        }
        _ => Err(malformed("unknown record kind")),
    }
}

/// Marker for the record types [`read_record`] may produce.
///
/// # Safety
/// Implementors are `#[repr(C)]` and made only of integers and integer arrays, so every bit
/// pattern is a valid value.
unsafe trait PlainRecord: Copy {}
// SAFETY: `#[repr(C)]`, four `u32`s.
unsafe impl PlainRecord for EventHeader {}
// SAFETY: `#[repr(C)]`, a header, integers and byte arrays.
unsafe impl PlainRecord for PathEvent {}
// SAFETY: `#[repr(C)]`, a header and an `i64`.
unsafe impl PlainRecord for ExitEvent {}
// SAFETY: `#[repr(C)]`, a header and two `u64`s.
unsafe impl PlainRecord for UnjudgedEvent {}
// SAFETY: `#[repr(C)]`, a header, a `u64` and an `i64`.
unsafe impl PlainRecord for IoUringDoneEvent {}

/// Copies a `T` from the start of `record` if it is long enough.
fn read_record<T: PlainRecord>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `record` holds at least `size_of::<T>()` bytes (checked above), the read does not
    // need alignment, and every bit pattern is a valid `T` (`PlainRecord`).
    Some(unsafe { ptr::read_unaligned(record.as_ptr().cast::<T>()) })
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

fn page_size() -> u64 {
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).unwrap_or(4096)
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })
}

/// Slots of `UNWATCHED_IN_FLIGHT`: one per possible thread id (`pid_max`, 4 bytes each: 16
/// MiB at Linux's limit of 2^22), so that no thread falls back to the slower hash map.
fn unwatched_slots() -> u32 {
    /// `PID_MAX_LIMIT` on 64-bit Linux.
    const PID_MAX_LIMIT: u32 = 1 << 22;
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or(UNWATCHED_IN_FLIGHT_DEFAULT, |pid_max| {
            pid_max.clamp(1, PID_MAX_LIMIT)
        })
}

/// Empties the kernel's `IN_FLIGHT`, once no program that writes it is attached.
fn clear_in_flight(ebpf: &mut Ebpf) {
    let Some(map) = ebpf.map_mut(MAP_IN_FLIGHT) else {
        return;
    };
    let Ok(mut in_flight) = BpfHashMap::<_, u64, InFlight>::try_from(map) else {
        return;
    };
    let keys: Vec<u64> = in_flight.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = in_flight.remove(&key);
    }
}

/// Loads program `name` (named after its tracepoint) and attaches it to `<category>/<name>`.
/// The link stays owned by the program inside `ebpf`, so dropping `ebpf` detaches it.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    category: &'static str,
    name: &'static str,
) -> Result<(), EbpfError> {
    attach_program(ebpf, name, category, name)
}

/// Loads program `name` and attaches it to `category/tracepoint`.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> Result<(), EbpfError> {
    let error = |source| EbpfError::Program {
        name,
        category,
        tracepoint,
        source: Box::new(source),
    };
    let program = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?;
    let program: &mut TracePoint = program.try_into().map_err(error)?;
    program.load().map_err(error)?;
    program.attach(category, tracepoint).map_err(error)?;
    Ok(())
}

/// Loads the fentry or fexit program `name` for kernel function `function` and attaches it.
/// The link stays owned by the program inside `ebpf`.
fn attach_tracing(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &'static str,
    btf: &aya::Btf,
) -> Result<(), ProgramError> {
    let Some(program) = ebpf.program_mut(name) else {
        return Err(ProgramError::UnexpectedProgramType);
    };
    if let Ok(entry) = <&mut FEntry>::try_from(&mut *program) {
        entry.load(function, btf)?;
        entry.attach()?;
        return Ok(());
    }
    let exit: &mut FExit = program.try_into()?;
    exit.load(function, btf)?;
    exit.attach()?;
    Ok(())
}

/// Loads an fentry or fexit program for `function` without attaching it, then unloads it:
/// the instructions the verifier processed.
fn load_tracing_alone(
    program: &mut aya::programs::Program,
    function: &str,
    btf: &aya::Btf,
) -> Result<Option<u32>, ProgramError> {
    if let Ok(entry) = <&mut FEntry>::try_from(&mut *program) {
        entry.load(function, btf)?;
        let verified = verified_insns(entry.info());
        let _ = entry.unload();
        return Ok(verified);
    }
    let exit: &mut FExit = program.try_into()?;
    exit.load(function, btf)?;
    let verified = verified_insns(exit.info());
    let _ = exit.unload();
    Ok(verified)
}

/// `bpf_prog_info.verified_insns` (kernel 5.16 and later) of a loaded program.
fn verified_insns(info: Result<aya::programs::ProgramInfo, ProgramError>) -> Option<u32> {
    info.ok().and_then(|info| info.verified_instruction_count())
}

/// Detaches and unloads the fentry or fexit program `name`, if it is loaded.
fn unload_tracing(ebpf: &mut Ebpf, name: &'static str) {
    let Some(program) = ebpf.program_mut(name) else {
        return;
    };
    let unloaded = match <&mut FEntry>::try_from(&mut *program) {
        Ok(entry) => entry.unload(),
        Err(_) => <&mut FExit>::try_from(program).and_then(FExit::unload),
    };
    if let Err(error) = unloaded {
        tracing::debug!(program = name, %error, "unloading an unused program failed");
    }
}

/// `Ok` when the running kernel does not preempt kernel code (preemption model `none` or
/// `voluntary`), else why not or why it is unknown. fentry programs run with migration
/// disabled but preemption enabled, unlike tracepoint programs; on a preemptible kernel two of
/// them could interleave on one CPU and overwrite each other's per-CPU scratch (an event, a
/// verdict), and the kernel would skip a program re-entered on the same CPU.
fn preemption_off() -> Result<(), String> {
    let version = std::fs::read_to_string("/proc/sys/kernel/version")
        .map_err(|e| format!("cannot read /proc/sys/kernel/version: {e}"))?;
    let words: Vec<&str> = version.split_whitespace().collect();
    let dynamic_mode = || {
        let debugfs = std::fs::read_to_string(DEBUGFS_PREEMPT).ok();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        preempt_dynamic_mode(debugfs.as_deref(), &cmdline)
    };
    preemption_verdict(&words, dynamic_mode)
}

/// Where a `PREEMPT_DYNAMIC` kernel shows its preemption model (`none (voluntary) full`, the
/// current one in parentheses).
const DEBUGFS_PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

/// [`preemption_off`] on the words of `/proc/sys/kernel/version` (`#1 SMP PREEMPT_DYNAMIC …`,
/// which names the preemption build option, as `uname -v` does) and, for a `PREEMPT_DYNAMIC`
/// kernel, the current model.
fn preemption_verdict(
    version: &[&str],
    dynamic_mode: impl FnOnce() -> Option<String>,
) -> Result<(), String> {
    let built = version
        .iter()
        .find(|word| word.starts_with("PREEMPT"))
        .copied();
    match built {
        None => Ok(()),
        Some("PREEMPT_DYNAMIC") => match dynamic_mode() {
            Some(mode) if mode == "none" || mode == "voluntary" => Ok(()),
            Some(mode) => Err(format!("the kernel's preemption model is {mode}")),
            None => Err(format!(
                "the preemption model of this PREEMPT_DYNAMIC kernel is unknown (no readable \
                 {DEBUGFS_PREEMPT}, no preempt= on its command line)"
            )),
        },
        Some(other) => Err(format!("the kernel is built {other}")),
    }
}

/// The current model of a `PREEMPT_DYNAMIC` kernel: the parenthesised word of debugfs's
/// `sched/preempt`, else the last `preempt=` of the kernel command line.
fn preempt_dynamic_mode(debugfs: Option<&str>, cmdline: &str) -> Option<String> {
    let from_debugfs = debugfs.and_then(|text| {
        text.split_whitespace().find_map(|word| {
            word.strip_prefix('(')
                .and_then(|word| word.strip_suffix(')'))
                .map(str::to_owned)
        })
    });
    from_debugfs.or_else(|| {
        cmdline
            .split_whitespace()
            .rev()
            .find_map(|word| word.strip_prefix("preempt="))
            .map(str::to_owned)
    })
}

/// How often [`EbpfSource::poll`] reads the programs' skipped runs (a fence always does).
const MISSES_RECHECK: Duration = Duration::from_secs(1);

/// Whether [`EbpfSource::check_counters`] reads the programs' skipped runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Misses {
    Now,
    IfDue,
}

/// A duplicate of program `name`'s fd, to read its statistics with.
fn program_fd(ebpf: &Ebpf, name: &str) -> Result<ProgramFd, String> {
    ebpf.program(name)
        .ok_or_else(|| format!("{name} is missing"))?
        .fd()
        .map_err(|e| format!("{name}: no program fd: {e}"))?
        .try_clone()
        .map_err(|e| format!("{name}: cannot duplicate its fd: {e}"))
}

/// The kernel's count of runs it skipped for the program behind `fd` (`recursion_misses` in
/// its fdinfo, Linux 5.12 and later; 0 where the field is absent).
fn recursion_misses(fd: &ProgramFd) -> io::Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    let text = std::fs::read_to_string(path)?;
    Ok(parse_fdinfo_field(&text, "recursion_misses").unwrap_or(0))
}

/// `N` of the line `<name>:\tN` in an fdinfo file.
fn parse_fdinfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// The contents of `relative` under whichever tracefs root is visible.
fn tracefs_file(relative: &str) -> Option<String> {
    [TRACEFS, TRACEFS_IN_DEBUGFS]
        .iter()
        .find_map(|root| std::fs::read_to_string(Path::new(root).join(relative)).ok())
}

/// Loads (never attaches) the probe programs, then unloads them: what the kernel accepts.
fn probe_fexit_and_lsm(ebpf: &mut Ebpf) -> (Probe, Probe) {
    let absent = |reason: String| Probe::Absent { reason };
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(error) => {
            let reason = format!("no kernel BTF: {error}");
            return (absent(reason.clone()), absent(reason));
        }
    };
    let fexit = match ebpf
        .program_mut(PROG_PROBE_FEXIT)
        .map(<&mut FExit>::try_from)
    {
        Some(Ok(program)) => match program.load("vfs_symlink", &btf) {
            Ok(()) => {
                let _ = program.unload();
                Probe::Loadable
            }
            Err(error) => absent(format!("load refused: {}", error_chain(&error))),
        },
        _ => absent("probe program missing".to_owned()),
    };
    let active_lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let lsm = match ebpf.program_mut(PROG_PROBE_LSM).map(<&mut Lsm>::try_from) {
        Some(Ok(program)) => match program.load("path_symlink", &btf) {
            Ok(()) => {
                let _ = program.unload();
                if active_lsms.split(',').any(|name| name.trim() == "bpf") {
                    Probe::Loadable
                } else {
                    absent(format!("bpf is not an active LSM ({})", active_lsms.trim()))
                }
            }
            Err(error) => absent(format!("load refused: {}", error_chain(&error))),
        },
        _ => absent("probe program missing".to_owned()),
    };
    (fexit, lsm)
}

/// `N` of the verifier log's summary line `processed N insns (limit …) …`.
fn processed_insns(log: &str) -> Option<u64> {
    let (_, rest) = log.rsplit_once("processed ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A verifier error without the middle of its log (thousands of lines): the first line and
/// the last three.
pub fn brief_verifier_error(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.len() <= 4 {
        return lines.join(" | ");
    }
    format!(
        "{} [...] {}",
        lines[0],
        lines[lines.len() - 3..].join(" | ")
    )
}

/// An error and its sources on one line, `: `-separated (`{:#}` of anyhow, for any error).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The io_uring submission tracepoint this kernel has, with its format file's contents: the
/// offsets of `opcode` and `req` differ between kernel versions, so they are read from it.
fn io_uring_submit_tracepoint() -> Option<(&'static str, String)> {
    IO_URING_SUBMIT_TRACEPOINTS.iter().find_map(|name| {
        let format = tracefs_file(&format!("events/{IO_URING_CATEGORY}/{name}/format"))?;
        Some((*name, format))
    })
}

/// Finds `field:<type> <name>;\toffset:N;\tsize:<size>;` in a tracepoint format file.
fn parse_field_offset(format: &str, name: &str, size: u32) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(' ').next()? != name {
            return None;
        }
        let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
        let field_size: u32 = parts.next()?.strip_prefix("size:")?.parse().ok()?;
        (field_size == size).then_some(offset)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T: PlainRecord>(value: &T) -> Vec<u8> {
        // SAFETY: `T` is plain old data without padding (the layout tests of the eBPF crate),
        // and the slice covers exactly the value borrowed for the slice's lifetime.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        };
        bytes.to_vec()
    }

    fn enter(op: u32, paths: &[(i32, &[u8])]) -> PathEvent {
        let mut event = PathEvent {
            header: EventHeader {
                kind: kind::ENTER,
                op,
                tgid: 7,
                tid: 8,
                ktime_ns: 5,
            },
            syscall_nr: 82,
            flags: 0,
            dirfd: [AT_FDCWD; 2],
            path_len: [0; 2],
            base_ino: [0; 2],
            base_dev: [0; 2],
            task_switches: 41,
            request: 0,
            path: [[0; PATH_BYTES]; 2],
        };
        for (index, (dirfd, path)) in paths.iter().enumerate() {
            event.dirfd[index] = *dirfd;
            event.path_len[index] = path.len() as u32;
            event.path[index][..path.len()].copy_from_slice(path);
        }
        event
    }

    #[test]
    fn verifier_summary_gives_processed_insns() {
        let log = "0: (bf) r6 = r1\n...\nBPF program is too large. \
                   Processed 1000001 insn\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 261 \
                   total_states 43378 peak_states 1026 mark_read 139\n";
        assert_eq!(processed_insns(log), Some(1_000_001));
        assert_eq!(processed_insns("permission denied"), None);
        assert_eq!(brief_verifier_error("a\nb\n\nc\nd\ne"), "a [...] c | d | e");
    }

    /// This thread's voluntary plus involuntary context switches, as `/proc` shows them.
    fn own_context_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .map(|field| {
                let line = status.lines().find(|line| line.starts_with(field)).unwrap();
                line[field.len()..].trim().parse::<u64>().unwrap()
            })
            .sum()
    }

    /// The programs' preemption check is only as good as the field it reads: the count an
    /// `ENTER` record carries must be this thread's switch count at the call, between the
    /// counts `/proc` shows before and after it (a wrong offset reads another field of the
    /// task: 0, a constant, or a pointer).
    #[test]
    fn entry_records_carry_the_threads_context_switch_count() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs and must run as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let name = "rt-switch-count-probe";
        let interest = Interest {
            store_dir: store,
            basenames: [name.as_bytes().to_vec()].into(),
            paths: vec![dir.path().to_owned()],
        };
        let mut source = EbpfSource::attach_with(&interest, &EbpfOptions::default()).unwrap();
        assert_eq!(source.checks().switch_check, SwitchCheck::Active);
        let doomed = dir.path().join(name);
        std::fs::write(&doomed, b"").unwrap();
        // A thread of its own, which has surely been switched out once (the sleep).
        let (tid, before, after) = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            let before = own_context_switches();
            std::fs::remove_file(&doomed).unwrap();
            let after = own_context_switches();
            (nix::unistd::gettid().as_raw() as u32, before, after)
        })
        .join()
        .unwrap();
        assert!(before > 0, "the thread slept, so it was switched out");
        let mut seen = Vec::new();
        while let Some(item) = source.events.next() {
            if let Record::Enter(enter) = decode(&item).unwrap() {
                if enter.tid == tid {
                    seen.push(enter.task_switches);
                }
            }
        }
        assert!(
            !seen.is_empty() && seen.iter().all(|&count| (before..=after).contains(&count)),
            "the unlink's ENTER record should carry a switch count in {before}..={after}, \
             got {seen:?}"
        );
    }

    #[test]
    fn decodes_unaligned_enter_with_raw_bytes() {
        let old = b"/a/li\nnk\xff";
        let mut record = vec![0u8; 1];
        record.extend(as_bytes(&enter(
            op::RENAMEAT2,
            &[(AT_FDCWD, old), (3, b"new")],
        )));
        let Record::Enter(decoded) = decode(&record[1..]).unwrap() else {
            panic!("not an enter record");
        };
        assert_eq!(
            (decoded.tgid, decoded.tid, decoded.op),
            (7, 8, op::RENAMEAT2)
        );
        assert_eq!((decoded.syscall_nr, decoded.task_switches), (82, 41));
        let paths: Vec<_> = decoded.paths.iter().flatten().collect();
        assert_eq!(paths[0].bytes, old);
        assert_eq!((paths[1].dirfd, &paths[1].bytes[..]), (3, &b"new"[..]));
    }

    fn names(hints: &[Hint]) -> Vec<String> {
        hints
            .iter()
            .map(|hint| match hint {
                Hint::Basename(name) => name.to_string_lossy().into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn unjudged_operation_rechecks_the_names_added_since_its_judgement() {
        let mut log = InterestLog::default();
        log.raised(vec![b"a".to_vec()]);
        log.raised(vec![b"b".to_vec(), b"a\nb\xff".to_vec()]);
        assert_eq!(log.seq, 2);
        assert_eq!(names(&log.unjudged_hints(0)), ["a", "a\nb\u{fffd}", "b"]);
        assert_eq!(names(&log.unjudged_hints(1)), ["a\nb\u{fffd}", "b"]);
        assert!(log.unjudged_hints(2).is_empty());
    }

    #[test]
    fn unjudged_operation_before_forgotten_or_many_names_needs_a_rescan() {
        let mut log = InterestLog::default();
        log.raised(
            (0..INTEREST_LOG_NAMES)
                .map(|n| n.to_string().into_bytes())
                .collect(),
        );
        log.raised(vec![b"x".to_vec()]);
        // The first raise is forgotten: what it added is unknown.
        assert!(matches!(&log.unjudged_hints(0)[..], [Hint::Lost { .. }]));
        assert_eq!(names(&log.unjudged_hints(1)), ["x"]);
        log.raised(
            (0..=UNJUDGED_BASENAME_HINTS)
                .map(|n| format!("y{n}").into_bytes())
                .collect(),
        );
        let hints = log.unjudged_hints(1);
        assert!(
            matches!(&hints[..], [Hint::Lost { reason }] if reason.contains("66 names")),
            "{hints:?}"
        );
    }

    #[test]
    fn decodes_unjudged() {
        let record = UnjudgedEvent {
            header: EventHeader {
                kind: kind::UNJUDGED,
                op: op::SYMLINKAT,
                tgid: 1,
                tid: 2,
                ktime_ns: 5,
            },
            interest_seq: 7,
            request: 0,
        };
        assert!(matches!(
            decode(&as_bytes(&record)).unwrap(),
            Record::Unjudged {
                interest_seq: 7,
                ktime_ns: 5
            }
        ));
    }

    #[test]
    fn decodes_exit_and_io_uring() {
        let exit = ExitEvent {
            header: EventHeader {
                kind: kind::EXIT,
                op: op::UNLINK,
                tgid: 1,
                tid: 2,
                ktime_ns: 6,
            },
            ret: -2,
        };
        assert_eq!(
            decode(&as_bytes(&exit)).unwrap(),
            Record::Exit {
                tgid: 1,
                tid: 2,
                ret: -2,
                ktime_ns: 6,
            }
        );
        let io = EventHeader {
            kind: kind::IO_URING,
            op: io_uring::UNLINKAT,
            tgid: 1,
            tid: 1,
            ktime_ns: 7,
        };
        assert_eq!(
            decode(&as_bytes(&io)).unwrap(),
            Record::IoUring {
                opcode: io_uring::UNLINKAT
            }
        );
        let mut named = enter(op::RENAMEAT, &[(AT_FDCWD, b"/a"), (4, b"b")]);
        named.header.kind = kind::IO_URING_ENTER;
        named.request = 0xffff_8880_1234_5678;
        match decode(&as_bytes(&named)).unwrap() {
            Record::IoUringEnter { request, enter } => {
                assert_eq!(request, 0xffff_8880_1234_5678);
                assert_eq!(enter.op, op::RENAMEAT);
                let [Some(old), Some(new)] = &enter.paths else {
                    panic!("{enter:?}")
                };
                assert_eq!((old.dirfd, &old.bytes[..]), (AT_FDCWD, &b"/a"[..]));
                assert_eq!((new.dirfd, &new.bytes[..]), (4, &b"b"[..]));
            }
            other => panic!("{other:?}"),
        }
        let done = IoUringDoneEvent {
            header: EventHeader {
                kind: kind::IO_URING_DONE,
                op: io_uring::RENAMEAT,
                tgid: 1,
                tid: 3,
                ktime_ns: 8,
            },
            request: 0xffff_8880_1234_5678,
            res: -17,
        };
        assert_eq!(
            decode(&as_bytes(&done)).unwrap(),
            Record::IoUringDone {
                opcode: io_uring::RENAMEAT,
                request: 0xffff_8880_1234_5678,
                res: -17,
                ktime_ns: 8,
            }
        );
        // A header alone is no longer a whole completion record.
        let mut short = as_bytes(&done);
        short.truncate(size_of::<EventHeader>());
        assert!(decode(&short).is_err());
    }

    #[test]
    fn rejects_short_records_and_bad_lengths() {
        let bytes = as_bytes(&enter(op::UNLINK, &[(AT_FDCWD, b"/x")]));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(EbpfError::MalformedEvent { .. })
        ));
        assert!(decode(&bytes[..3]).is_err());
        let mut bad = enter(op::UNLINK, &[(AT_FDCWD, b"/x")]);
        bad.path_len[0] = PATH_BYTES as u32 + 1;
        assert!(decode(&as_bytes(&bad)).is_err());
        let mut unknown = enter(op::UNLINK, &[]);
        unknown.header.kind = 99;
        assert!(decode(&as_bytes(&unknown)).is_err());
    }

    #[test]
    fn hints_are_named_by_path_basename_or_lost() {
        let decoded = |event: &PathEvent| match decode(&as_bytes(event)).unwrap() {
            Record::Enter(enter) => enter,
            other => panic!("{other:?}"),
        };
        // Absolute paths are taken as they are; a link reports only its new name.
        let link = decoded(&enter(
            op::LINK,
            &[(AT_FDCWD, b"/old"), (AT_FDCWD, b"/new/")],
        ));
        assert_eq!(hints_for(&link, None), vec![Hint::Path("/new".into())]);
        // A relative path of a process that is gone is named by its basename.
        let mut gone = decoded(&enter(op::UNLINKAT, &[(5, b"dir/name")]));
        gone.tgid = u32::MAX;
        gone.tid = u32::MAX;
        assert_eq!(hints_for(&gone, None), vec![Hint::Basename("name".into())]);
        // A cut path is named by its last component; an unreadable one is lost.
        let mut long = enter(op::UNLINK, &[(AT_FDCWD, b"ong/component/result")]);
        long.flags = flags::path_truncated(0);
        assert_eq!(
            hints_for(&decoded(&long), None),
            vec![Hint::Basename("result".into())]
        );
        let mut unreadable = enter(op::UNLINK, &[]);
        unreadable.flags = flags::path_unreadable(0);
        assert!(matches!(
            hints_for(&decoded(&unreadable), None)[..],
            [Hint::Lost { .. }]
        ));
        let mount = decoded(&enter(op::UMOUNT, &[]));
        assert_eq!(hints_for(&mount, None), vec![Hint::MountsChanged]);
    }

    #[test]
    fn io_uring_relative_names_are_also_rechecked_by_basename() {
        let mut rename = cwd_unlink(b"d/result", None);
        rename.op = op::RENAMEAT;
        rename.paths[1] = Some(RawPath {
            dirfd: AT_FDCWD,
            bytes: b"/abs/other".to_vec(),
            base: None,
        });
        assert_eq!(
            relative_basenames(&rename),
            vec![Hint::Basename("result".into())]
        );
        // A link's old name is not changed; absolute and unreadable names are not re-checked.
        rename.op = op::LINKAT;
        assert!(relative_basenames(&rename).is_empty());
        let mut unreadable = cwd_unlink(b"result", None);
        unreadable.flags = flags::path_unreadable(0);
        assert!(relative_basenames(&unreadable).is_empty());
    }

    /// An `unlink` of `path` relative to this thread's cwd, as this process made it.
    fn cwd_unlink(path: &[u8], base: Option<BaseDir>) -> Enter {
        Enter {
            op: op::UNLINK,
            tgid: std::process::id(),
            tid: std::process::id(),
            syscall_nr: 0,
            flags: 0,
            task_switches: 0,
            paths: [
                Some(RawPath {
                    dirfd: AT_FDCWD,
                    bytes: path.to_vec(),
                    base,
                }),
                None,
            ],
        }
    }

    #[test]
    fn relative_paths_resolve_against_our_cwd() {
        let enter = cwd_unlink(b"sub/na\nme", None);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            hints_for(&enter, None),
            vec![Hint::Path(cwd.join("sub/na\nme"))]
        );
    }

    #[test]
    fn relative_paths_name_their_directory_only_if_it_is_the_recorded_one() {
        use std::os::unix::fs::MetadataExt as _;
        let cwd = std::env::current_dir().unwrap();
        let meta = std::fs::metadata(&cwd).unwrap();
        let ours = BaseDir {
            ino: meta.ino(),
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
        };
        let enter_with = |base| cwd_unlink(b"sub/result", base);
        let verifier = BaseDirVerifier { mounts: None };
        let hints = |base| hints_for(&enter_with(base), Some(&verifier));
        assert_eq!(hints(Some(ours)), vec![Hint::Path(cwd.join("sub/result"))]);
        let basename = vec![Hint::Basename("result".into())];
        // Another inode, another device, or nothing recorded: the directory cannot be trusted.
        let other_ino = BaseDir {
            ino: ours.ino ^ 1,
            ..ours
        };
        assert_eq!(hints(Some(other_ino)), basename);
        let other_dev = BaseDir {
            minor: ours.minor ^ 1,
            ..ours
        };
        assert_eq!(hints(Some(other_dev)), basename);
        assert_eq!(hints(None), basename);
        // A superblock device that `stat` does not report (btrfs subvolumes) matches when the
        // mount table names it for the directory's mount.
        let name = std::ffi::CString::new(cwd.as_os_str().as_bytes()).unwrap();
        // SAFETY: as in `BaseDirVerifier::is_base`.
        let mut found: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: as in `BaseDirVerifier::is_base`.
        let status = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                name.as_ptr(),
                0,
                libc::STATX_MNT_ID | STATX_MNT_ID_UNIQUE,
                &raw mut found,
            )
        };
        assert_eq!(status, 0);
        let table =
            MountTable::parse(format!("{} 1 99:7 / / rw\n", found.stx_mnt_id).as_bytes()).unwrap();
        // Keyed as the kernel answers `statx`: by unique mount IDs where it has them.
        let table = if found.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
            table.with_unique_ids()
        } else {
            table
        };
        let superblock = BaseDir {
            major: 99,
            minor: 7,
            ..ours
        };
        assert_eq!(hints(Some(superblock)), basename);
        let verifier = BaseDirVerifier {
            mounts: Some(&table),
        };
        assert_eq!(
            hints_for(&enter_with(Some(superblock)), Some(&verifier)),
            vec![Hint::Path(cwd.join("sub/result"))]
        );
    }

    #[test]
    fn decode_keeps_the_recorded_directory() {
        let mut event = enter(op::UNLINKAT, &[(4, b"result")]);
        event.base_ino[0] = 1234;
        event.base_dev[0] = (254 << 20) | 3;
        let Record::Enter(decoded) = decode(&as_bytes(&event)).unwrap() else {
            panic!("not an enter record");
        };
        let base = decoded.paths[0].as_ref().unwrap().base;
        assert_eq!(
            base,
            Some(BaseDir {
                ino: 1234,
                major: 254,
                minor: 3,
            })
        );
        event.base_ino[0] = 0;
        let Record::Enter(decoded) = decode(&as_bytes(&event)).unwrap() else {
            panic!("not an enter record");
        };
        assert_eq!(decoded.paths[0].as_ref().unwrap().base, None);
    }

    #[test]
    fn names_and_components() {
        assert_eq!(last_component(b"/a/b//"), Some(&b"b"[..]));
        assert_eq!(last_component(b"b"), Some(&b"b"[..]));
        assert_eq!(last_component(b"///"), None);
        assert_eq!(last_component(b""), None);
        assert!(is_entry_name(b"result"));
        assert!(!is_entry_name(b".."));
        assert!(!is_entry_name(b"a/b"));
        assert!(!is_entry_name(&[b'a'; NAME_MAX + 1]));
    }

    #[test]
    fn io_uring_format_offset() {
        let format = "name: io_uring_submit_req\nformat:\n\
            \tfield:unsigned long long user_data;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(parse_field_offset(format, "opcode", 1), Some(32));
        assert_eq!(parse_field_offset(format, "opcode", 2), None);
        assert_eq!(parse_field_offset(format, "missing", 1), None);
    }

    #[test]
    fn counter_growth_is_lost() {
        let before = DeliveryCounters::default();
        let after = DeliveryCounters {
            dropped: 3,
            truncated: 9,
            missed: 1,
            retried: 4,
            preempted: 2,
            ..before
        };
        let mut out = Vec::new();
        after.losses_since(&before, &mut out);
        // Truncated paths and redone judgements are no loss; the rest are.
        assert!(matches!(
            &out[..],
            [Hint::Lost { reason }, Hint::Lost { reason: missed }, Hint::Lost { reason: twice }]
                if reason.contains("dropped") && missed.contains("skipped")
                    && twice.contains("left the CPU in every run")
        ));
        let retried_only = DeliveryCounters {
            retried: 1,
            ..before
        };
        assert!(!retried_only.lost_hints());
        out.clear();
        retried_only.losses_since(&before, &mut out);
        assert!(out.is_empty());
        out.clear();
        after.losses_since(&after, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn fentry_only_where_the_kernel_does_not_preempt_kernel_code() {
        let words = |text: &'static str| text.split_whitespace().collect::<Vec<_>>();
        let unknown = || None;
        assert!(preemption_verdict(&words("#1 SMP Debian 5.10.209-2"), unknown).is_ok());
        let dynamic = words("#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)");
        assert!(preemption_verdict(&dynamic, || Some("voluntary".to_owned())).is_ok());
        assert!(preemption_verdict(&dynamic, || Some("none".to_owned())).is_ok());
        let full = preemption_verdict(&dynamic, || Some("full".to_owned()));
        assert!(full.is_err_and(|reason| reason.contains("full")));
        assert!(preemption_verdict(&dynamic, unknown).is_err());
        for built in [
            "#1 SMP PREEMPT Fri",
            "#1 SMP PREEMPT_RT Fri",
            "#1 SMP PREEMPT_LAZY Fri",
        ] {
            assert!(
                preemption_verdict(&words(built), unknown).is_err(),
                "{built}"
            );
        }
    }

    #[test]
    fn preempt_dynamic_mode_from_debugfs_else_cmdline() {
        let debugfs = Some("none (voluntary) full\n");
        assert_eq!(
            preempt_dynamic_mode(debugfs, "preempt=full").as_deref(),
            Some("voluntary")
        );
        assert_eq!(
            preempt_dynamic_mode(None, "ro preempt=none quiet preempt=full").as_deref(),
            Some("full")
        );
        assert_eq!(preempt_dynamic_mode(None, "ro quiet"), None);
    }

    #[test]
    fn fdinfo_fields() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_cnt:\t0\n\
                    recursion_misses:\t3\nverified_insns:\t61\n";
        assert_eq!(parse_fdinfo_field(text, "recursion_misses"), Some(3));
        assert_eq!(parse_fdinfo_field(text, "verified_insns"), Some(61));
        assert_eq!(parse_fdinfo_field(text, "missing"), None);
    }

    #[test]
    fn unknown_syscall_number_is_inside_until_seen_outside() {
        // Known: only that number is inside. Unknown (fentry without the registers' offset):
        // any syscall may be it, only -1 (outside any syscall) is elsewhere.
        assert!(may_be_in_syscall(ThreadSyscall::Number(87), 87));
        assert!(!may_be_in_syscall(ThreadSyscall::Number(0), 87));
        assert!(may_be_in_syscall(
            ThreadSyscall::Number(0),
            SYSCALL_NR_UNKNOWN
        ));
        assert!(!may_be_in_syscall(
            ThreadSyscall::Number(-1),
            SYSCALL_NR_UNKNOWN
        ));
        assert!(!may_be_in_syscall(ThreadSyscall::Gone, SYSCALL_NR_UNKNOWN));
        assert!(may_be_in_syscall(ThreadSyscall::Unknown, 87));
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
