//! Types shared by the eBPF programs (kernel side) and the tracker (user side).
//!
//! Every record that crosses the ring buffer is defined here once, `#[repr(C)]`, so both sides
//! agree on its layout; user space reads records with a length check and `read_unaligned`.
//! Every record starts with an [`EventHeader`] whose `kind` says which struct it is.
//! Paths are raw bytes as the process passed them: never assume UTF-8.
#![no_std]

/// Bytes kept of one path in a [`PathEvent`]. A longer path is sent as its last `PATH_BYTES`
/// bytes with [`flags::path_truncated`] set: its last component (at most 255 bytes) is still
/// there, so user space can still name the entry by basename.
pub const PATH_BYTES: usize = 512;

/// The kernel refuses path arguments of `PATH_MAX` (4096) bytes or more; the programs read a
/// long path whole into a per-CPU scratch buffer of this size to learn its length.
pub const LONG_PATH_BYTES: usize = 4096;

/// Longest store dir prefix (store dir plus the trailing `/`) the kernel-side filter accepts.
/// Kept small because the filter compares it byte by byte in a bounded loop.
pub const STORE_PREFIX_MAX: usize = 256;

/// Default size of the `EVENTS` ring buffer. A power-of-two multiple of the page size, as the
/// kernel requires; at about 1 KiB per path event this holds a burst of ~4000 operations.
/// User space may choose another size at load time.
pub const RING_BUF_BYTES: u32 = 4 * 1024 * 1024;

/// Entries of `IN_FLIGHT`: threads inside a watched syscall (relevant or not, see
/// [`InFlight`]) at the same time.
pub const IN_FLIGHT_MAX: u32 = 32 * 1024;
/// Entries of `WATCHED_BASENAMES`.
pub const WATCHED_BASENAMES_MAX: u32 = 64 * 1024;

/// Name of the ring buffer map carrying every record.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the one-entry array map holding the [`StorePrefix`] filter.
pub const MAP_STORE_PREFIX: &str = "STORE_PREFIX";
/// Name of the one-entry array map holding the [`Config`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the per-CPU array map of `u64` counters indexed by `COUNTER_*`.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the hash map `u64` ([`name_hash`] of a watched basename) → `u8` (unused, 1).
pub const MAP_WATCHED_BASENAMES: &str = "WATCHED_BASENAMES";
/// Name of the one-entry array map holding the [`BasenameFilter`] in front of
/// `WATCHED_BASENAMES`.
pub const MAP_BASENAME_FILTER: &str = "BASENAME_FILTER";
/// Name of the hash map `pid_tgid` → [`InFlight`]: threads inside a watched syscall.
pub const MAP_IN_FLIGHT: &str = "IN_FLIGHT";
/// Name of the array map `tid` → `u32`: the interest sequence plus one (0: none) under which
/// the thread's current syscall (or path worker call) was judged unwatched. An array indexed
/// by thread id costs no lock, unlike a hash map; user space sizes it to the kernel's
/// `pid_max` at load, and a thread id past its end falls back to `IN_FLIGHT`.
pub const MAP_UNWATCHED_IN_FLIGHT: &str = "UNWATCHED_IN_FLIGHT";
/// Default (and, before user space sizes it, only) size of [`MAP_UNWATCHED_IN_FLIGHT`]: the
/// kernel's default `pid_max`.
pub const UNWATCHED_IN_FLIGHT_DEFAULT: u32 = 32 * 1024;
/// Name of the one-entry array map holding the interest sequence (`u64`): user space raises
/// it after each addition to `WATCHED_BASENAMES`, once the filter holds the new names. An
/// operation judged unwatched under an older sequence that succeeds under a newer one is
/// reported ([`kind::UNJUDGED`]): it may have changed a name that became watched while it
/// ran, after the entry program had looked.
pub const MAP_INTEREST_SEQ: &str = "INTEREST_SEQ";
/// Name of the one-entry array map holding the [`BaseDirOffsets`].
pub const MAP_BASE_DIR_OFFSETS: &str = "BASE_DIR_OFFSETS";
/// Name of the one-entry array map holding the [`IoUringOffsets`].
pub const MAP_IO_URING_OFFSETS: &str = "IO_URING_OFFSETS";

/// The syscall tracepoints (category `syscalls`) as (entry, exit) pairs; each program is named
/// after its tracepoint. User space attaches every exit before any entry, so that every
/// thread recorded at entry has its exit seen. `umount2` traces as `umount`.
pub const SYSCALL_PROGRAMS: [(&str, &str); 13] = [
    ("sys_enter_symlink", "sys_exit_symlink"),
    ("sys_enter_symlinkat", "sys_exit_symlinkat"),
    ("sys_enter_unlink", "sys_exit_unlink"),
    ("sys_enter_unlinkat", "sys_exit_unlinkat"),
    ("sys_enter_rmdir", "sys_exit_rmdir"),
    ("sys_enter_rename", "sys_exit_rename"),
    ("sys_enter_renameat", "sys_exit_renameat"),
    ("sys_enter_renameat2", "sys_exit_renameat2"),
    ("sys_enter_link", "sys_exit_link"),
    ("sys_enter_linkat", "sys_exit_linkat"),
    ("sys_enter_mount", "sys_exit_mount"),
    ("sys_enter_umount", "sys_exit_umount"),
    ("sys_enter_move_mount", "sys_exit_move_mount"),
];
/// Tracepoint category of [`SYSCALL_PROGRAMS`].
pub const SYSCALLS_CATEGORY: &str = "syscalls";

/// A kernel function hooked by an fentry program (the entry) and an fexit program (the exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FentryHook {
    /// The kernel function (in the kernel's BTF).
    pub function: &'static str,
    /// Program run on entry: judges the call and sends `ENTER`, like a `sys_enter_*` program.
    pub entry: &'static str,
    /// Program run on return: sends `EXIT`, like a `sys_exit_*` program.
    pub exit: &'static str,
}

/// The path workers that the path syscalls and io_uring's path operations all call (Linux 6.1
/// to 6.18 at least). Where every one of these attaches, it replaces [`SYSCALL_PROGRAMS`] and
/// the io_uring programs; user space attaches every exit before any entry, as for those.
/// Mount operations are left to user space's poll of its mount table.
pub const FENTRY_PROGRAMS: [FentryHook; 5] = [
    FentryHook {
        function: "do_unlinkat",
        entry: "fentry_do_unlinkat",
        exit: "fexit_do_unlinkat",
    },
    FentryHook {
        function: "do_rmdir",
        entry: "fentry_do_rmdir",
        exit: "fexit_do_rmdir",
    },
    FentryHook {
        function: "do_renameat2",
        entry: "fentry_do_renameat2",
        exit: "fexit_do_renameat2",
    },
    FentryHook {
        function: "do_symlinkat",
        entry: "fentry_do_symlinkat",
        exit: "fexit_do_symlinkat",
    },
    FentryHook {
        function: "do_linkat",
        entry: "fentry_do_linkat",
        exit: "fexit_do_linkat",
    },
];

/// [`PathEvent::syscall_nr`] of an fentry program that could not learn the syscall number:
/// user space then takes the thread as inside the call until it is seen outside any syscall.
pub const SYSCALL_NR_UNKNOWN: i32 = i32::MIN;

/// Offset of the syscall number (`orig_ax`) in the kernel's `struct pt_regs` on x86-64; user
/// space configures it as [`Config::syscall_nr_regs_offset`] (0 elsewhere: unknown).
pub const X86_64_PT_REGS_ORIG_AX: u32 = 15 * 8;
/// Program attached to `io_uring/io_uring_submit_req`.
pub const PROG_IO_URING_SUBMIT_REQ: &str = "io_uring_submit_req";
/// Program attached to `io_uring/io_uring_complete`.
pub const PROG_IO_URING_COMPLETE: &str = "io_uring_complete";
/// Hash map of io_uring path requests (`req` pointer → [`InFlight`], `op` the io_uring opcode)
/// submitted but not yet completed: those reported by [`kind::IO_URING`] or
/// [`kind::IO_URING_ENTER`], and those judged unwatched.
pub const MAP_IO_URING_IN_FLIGHT: &str = "IO_URING_IN_FLIGHT";
/// Capacity of [`MAP_IO_URING_IN_FLIGHT`]; a full map counts as untracked (lost hints).
pub const IO_URING_IN_FLIGHT_MAX: u32 = 4096;
/// Tracepoint category of [`PROG_IO_URING_SUBMIT_REQ`].
pub const IO_URING_CATEGORY: &str = "io_uring";

/// Counter index: records written to the ring buffer.
pub const COUNTER_SENT: u32 = 0;
/// Counter index: relevant records that could not be written (ring buffer full).
/// An increase means hints were lost; the tracker must treat its index as unsettled.
pub const COUNTER_DROPPED: u32 = 1;
/// Counter index: operations whose relevance or entry could not be told: a path or symlink
/// target that could not be read (a page fault at syscall entry, which cannot be served there),
/// or a truncated path whose last component is not whole. An increase means lost hints.
pub const COUNTER_UNREADABLE: u32 = 2;
/// Counter index: paths longer than [`PATH_BYTES`], sent as their tail. Informational: the
/// event still names the entry by basename.
pub const COUNTER_TRUNCATED: u32 = 3;
/// Counter index: relevant operations that could not be tracked because `IN_FLIGHT` was
/// full; their exit is never reported. An increase means lost hints.
pub const COUNTER_UNTRACKED: u32 = 4;
/// Counter index: entry judgements run again because the task left the CPU during the last
/// run (see [`Config::task_switch_counts_offset`]). Informational: an undisturbed run decides.
pub const COUNTER_RETRIED: u32 = 5;
/// Counter index: entry judgements whose task left the CPU during every run, so this CPU's
/// scratch memory may have been rewritten under them by another task's program: the operation
/// may be misjudged or misnamed. An increase means lost hints.
pub const COUNTER_PREEMPTED: u32 = 6;
/// Number of counters in `COUNTERS`.
pub const COUNTER_COUNT: u32 = 7;

/// `dirfd` value meaning "relative to the working directory" (Linux `AT_FDCWD`); also used for
/// syscalls without a dirfd argument (`symlink`, `unlink`, `rename`, …).
pub const AT_FDCWD: i32 = -100;

/// Values of [`EventHeader::kind`].
pub mod kind {
    /// A [`crate::PathEvent`]: a relevant syscall (or path worker, for fentry) was entered.
    pub const ENTER: u32 = 1;
    /// An [`crate::ExitEvent`]: a syscall whose `ENTER` was sent returned.
    pub const EXIT: u32 = 2;
    /// An [`crate::EventHeader`] alone, `op` holding an io_uring opcode from [`crate::io_uring`]:
    /// a path operation was submitted to io_uring, and the program could not read its names
    /// (no [`crate::IoUringOffsets`] for this kernel), so it cannot tell what changes.
    pub const IO_URING: u32 = 3;
    /// An [`crate::IoUringDoneEvent`]: an io_uring path operation reported by `IO_URING` or
    /// `IO_URING_ENTER` completed (its request was seen submitted and now completing). Until
    /// then the change may not be on disk, so user space waits for these in a fence.
    pub const IO_URING_DONE: u32 = 4;
    /// A [`crate::PathEvent`] for a relevant io_uring path operation, judged at submission
    /// from the kernel's copies of its names, `op` one of the [`crate::op`] `*AT` constants
    /// and [`crate::PathEvent::request`] the request that its `IO_URING_DONE` names.
    pub const IO_URING_ENTER: u32 = 5;
    /// An [`crate::UnjudgedEvent`]: an operation judged unwatched at entry (or io_uring
    /// submission) succeeded after user space had added names to `WATCHED_BASENAMES`. Its
    /// names were not kept; it may have changed one that is watched now.
    pub const UNJUDGED: u32 = 6;
}

/// Values of [`EventHeader::op`] for `ENTER` and `EXIT` records.
pub mod op {
    pub const SYMLINK: u32 = 1;
    pub const SYMLINKAT: u32 = 2;
    pub const UNLINK: u32 = 3;
    pub const UNLINKAT: u32 = 4;
    pub const RMDIR: u32 = 5;
    pub const RENAME: u32 = 6;
    pub const RENAMEAT: u32 = 7;
    pub const RENAMEAT2: u32 = 8;
    pub const LINK: u32 = 9;
    pub const LINKAT: u32 = 10;
    pub const MOUNT: u32 = 11;
    /// `umount2` (tracepoint `sys_enter_umount`).
    pub const UMOUNT: u32 = 12;
    pub const MOVE_MOUNT: u32 = 13;
}

/// io_uring opcodes (`IORING_OP_*` in `linux/io_uring.h`) of path operations.
pub mod io_uring {
    pub const RENAMEAT: u32 = 35;
    pub const UNLINKAT: u32 = 36;
    pub const MKDIRAT: u32 = 37;
    pub const SYMLINKAT: u32 = 38;
    pub const LINKAT: u32 = 39;
    /// Lowest and highest opcode the program reports.
    pub const FIRST: u32 = RENAMEAT;
    pub const LAST: u32 = LINKAT;
}

/// Bits of [`PathEvent::flags`].
pub mod flags {
    /// Path `index` (0 or 1) could not be read, or was truncated without a whole last
    /// component: the event cannot name the entry.
    pub const fn path_unreadable(index: usize) -> u32 {
        1 << (2 * index)
    }
    /// Path `index` was longer than [`crate::PATH_BYTES`]; the buffer holds its tail.
    pub const fn path_truncated(index: usize) -> u32 {
        1 << (2 * index + 1)
    }
    /// The symlink target could not be read, so the filter could not judge it.
    pub const TARGET_UNREADABLE: u32 = 1 << 4;
}

/// First part of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the [`kind`] constants.
    pub kind: u32,
    /// One of the [`op`] constants, or an io_uring opcode for [`kind::IO_URING`].
    pub op: u32,
    /// Thread group id (the process id user space sees).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// When the record was made, `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`): user
    /// space measures its lag from the syscall to the index with it.
    pub ktime_ns: u64,
}

/// A relevant syscall entered ([`kind::ENTER`]). Mount operations carry no paths.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathEvent {
    pub header: EventHeader,
    /// The syscall number (`__syscall_nr` of the tracepoint, or the saved registers' for
    /// fentry; [`SYSCALL_NR_UNKNOWN`]), to recognise the thread in
    /// `/proc/<pid>/task/<tid>/syscall` while it is still inside the call.
    pub syscall_nr: i32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// Directory fd each path is relative to; [`AT_FDCWD`] where the syscall has none.
    pub dirfd: [i32; 2],
    /// Bytes of each path in use (no NUL counted); 0 for an absent path.
    pub path_len: [u32; 2],
    /// Inode number of the directory each relative path was resolved against (its `dirfd`'s
    /// file, or the working directory), read at syscall entry; 0 when not recorded (an
    /// absolute path, no [`BaseDirOffsets`], or a read that failed). User space compares it
    /// with the directory it finds through `/proc` later, which may have changed meanwhile.
    pub base_ino: [u64; 2],
    /// That directory's device, as the kernel encodes it (`MAJOR << 20 | MINOR`, see
    /// [`kernel_dev_major_minor`]); meaningful only where `base_ino` is not 0.
    pub base_dev: [u32; 2],
    /// The task's context-switch count (voluntary plus involuntary) when the judgement that
    /// sent this record began; 0 when unknown (no [`Config::task_switch_counts_offset`]).
    /// The programs compare it with the count after sending; user space's tests check it
    /// against `/proc`, which proves the programs read the right field.
    pub task_switches: u64,
    /// The io_uring request (`struct io_kiocb *`) of an [`kind::IO_URING_ENTER`] record, which
    /// its [`IoUringDoneEvent`] names again; 0 in other records.
    pub request: u64,
    /// The paths as passed: the created, removed or old entry first, the new one of a rename
    /// or link second.
    pub path: [[u8; PATH_BYTES]; 2],
}

/// A syscall whose `ENTER` record was sent returned ([`kind::EXIT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// The syscall's return value: 0 on success, `-errno` on failure.
    pub ret: i64,
}

/// An io_uring request reported at submission completed ([`kind::IO_URING_DONE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoUringDoneEvent {
    /// `op` is the request's io_uring opcode (0 if it was unknown at submission).
    pub header: EventHeader,
    /// The request, as [`PathEvent::request`] named it.
    pub request: u64,
    /// The operation's result (`res` of the completion): 0 on success, `-errno` on failure;
    /// 0 when [`Config::io_uring_complete_res_offset`] is unknown (taken as success, so its
    /// hints are applied: an extra re-read, never a lost one).
    pub res: i64,
}

/// An operation judged unwatched that succeeded under a newer interest sequence
/// ([`kind::UNJUDGED`]); `header.op` is an io_uring opcode when `request` is not 0, an [`op`]
/// constant or 0 (not kept: a thread's `UNWATCHED_IN_FLIGHT` slot keeps only the sequence)
/// otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnjudgedEvent {
    pub header: EventHeader,
    /// The interest sequence (`INTEREST_SEQ`) the operation was judged under: names added
    /// after it were not looked for. From a slot, its low 32 bits (user space keeps the
    /// sequence below 2^32).
    pub interest_seq: u64,
    /// The io_uring request, 0 for a syscall or path worker.
    pub request: u64,
}

/// What the kernel side remembers about an operation between its judgement (syscall entry,
/// path worker entry, io_uring submission) and its end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// One of the [`op`] constants (an io_uring opcode in `IO_URING_IN_FLIGHT`).
    pub op: u32,
    /// 0: relevant, its `ENTER` (or `IO_URING`/`IO_URING_ENTER`) record was sent and its end
    /// is reported as `EXIT` (`IO_URING_DONE`). [`IN_FLIGHT_UNWATCHED`]: judged unwatched (an
    /// io_uring request, or a thread past the end of `UNWATCHED_IN_FLIGHT`); its end is
    /// reported only as [`kind::UNJUDGED`], and only if it succeeded and `interest_seq` is no
    /// longer current.
    pub judged: u32,
    /// `INTEREST_SEQ` when the judgement began.
    pub interest_seq: u64,
}

/// [`InFlight::judged`] of an operation judged unwatched.
pub const IN_FLIGHT_UNWATCHED: u32 = 1;

/// Byte offsets of the kernel struct members the programs follow from the current task to the
/// inode of a relative path's base directory:
/// `task->files->fdt->fd[dirfd]->f_inode` for a directory fd, `task->fs->pwd.dentry->d_inode`
/// for the working directory, then `inode->i_ino` and `inode->i_sb->s_dev`. aya's programs
/// have no CO-RE relocations, so user space computes these from the running kernel's BTF.
/// `valid == 0`: unknown, the programs record no identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaseDirOffsets {
    /// Non-zero when every offset below was found.
    pub valid: u32,
    /// `task_struct.files` (`struct files_struct *`).
    pub task_files: u32,
    /// `task_struct.fs` (`struct fs_struct *`).
    pub task_fs: u32,
    /// `files_struct.fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (`unsigned int`).
    pub fdtable_max_fds: u32,
    /// `fdtable.fd` (`struct file **`).
    pub fdtable_fd: u32,
    /// `file.f_inode` (`struct inode *`).
    pub file_inode: u32,
    /// `fs_struct.pwd` plus `path.dentry` (`struct dentry *`).
    pub fs_pwd_dentry: u32,
    /// `dentry.d_inode` (`struct inode *`).
    pub dentry_inode: u32,
    /// `inode.i_ino` (`unsigned long`, 8 bytes).
    pub inode_ino: u32,
    /// `inode.i_sb` (`struct super_block *`).
    pub inode_sb: u32,
    /// `super_block.s_dev` (`dev_t`, 4 bytes).
    pub super_block_dev: u32,
}

/// Byte offsets of the kernel struct members the io_uring submission program reads to judge a
/// path operation by name, as [`BaseDirOffsets`] are for directories. At the submission
/// tracepoint the request is prepared: the opcode's prep function copied each name into a
/// `struct filename` (`getname`), kept in the op's command struct inside the request
/// (`io_kiocb.cmd`: `struct io_unlink`, `io_rename`, or `io_link` for `LINKAT` and
/// `SYMLINKAT`). Each field below is the offset from the start of `struct io_kiocb` (the
/// `cmd` member plus the command struct's member). `valid == 0`: unknown, every io_uring path
/// operation is reported as [`kind::IO_URING`] (lost hints), as before names were read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoUringOffsets {
    /// Non-zero when every offset below was found.
    pub valid: u32,
    /// `filename.name` (`const char *`): the kernel's copy of the string.
    pub filename_name: u32,
    /// `io_unlink.dfd` (`int`) and `io_unlink.filename` (`struct filename *`).
    pub unlink: [u32; 2],
    /// `io_rename.{old_dfd, oldpath, new_dfd, newpath}`.
    pub rename: [u32; 4],
    /// `io_link.{old_dfd, oldpath, new_dfd, newpath}`; for `SYMLINKAT`, `oldpath` is the
    /// symlink's target and `old_dfd` unused.
    pub link: [u32; 4],
}

/// Major and minor number of a kernel-internal `dev_t` (`MAJOR << 20 | MINOR`, `MINORBITS` 20
/// in `linux/kdev_t.h`), which differs from the `st_dev` encoding user space sees.
pub const fn kernel_dev_major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & ((1 << 20) - 1))
}

/// Load-time settings user space writes before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Offset of the `u8 opcode` field in the `io_uring/io_uring_submit_req` tracepoint record,
    /// read from its `format` file (it differs between kernel versions). 0: not configured,
    /// every submission is reported as if it were a path operation (fail closed).
    pub io_uring_opcode_offset: u32,
    /// Offset of the `void *req` field in `io_uring/io_uring_submit_req` records; 0: unknown.
    pub io_uring_submit_req_offset: u32,
    /// Offset of the `void *req` field in `io_uring/io_uring_complete` records; 0: unknown.
    pub io_uring_complete_req_offset: u32,
    /// Offset of the `int res` field in `io_uring/io_uring_complete` records; 0: unknown
    /// ([`IoUringDoneEvent::res`] is then 0).
    pub io_uring_complete_res_offset: u32,
    /// Offset of the syscall number in `struct pt_regs`, which fentry programs read to fill
    /// [`PathEvent::syscall_nr`]; 0: unknown ([`SYSCALL_NR_UNKNOWN`]).
    pub syscall_nr_regs_offset: u32,
    /// Offset of `task_struct.nvcsw`, followed by `nivcsw`: the current task's context-switch
    /// counts. An entry program reads their sum before it touches this CPU's scratch memory
    /// and again after it is done; a change means the task left the CPU in between, when
    /// another task's program may have rewritten the scratch (kernels that run these programs
    /// preemptibly: fentry on a preemptible kernel, syscall tracepoints on kernels whose
    /// syscall tracepoints may fault), and the judgement is run again. 0: unknown, no check.
    pub task_switch_counts_offset: u32,
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

/// Words of [`BasenameFilter`]: 2^16 bits, 8 KiB, small enough to stay in the CPU's cache.
pub const BASENAME_FILTER_WORDS: usize = 1024;

/// One bit per [`name_hash`] bucket (the hash's top 16 bits), set for every watched basename:
/// a clear bit proves a name unwatched without a lookup in `WATCHED_BASENAMES`, whose buckets
/// span a megabyte and cost a cache miss per lookup (measured on 6.18: about 300 ns of the
/// unlink program's 800). A set bit only sends the name on to that map, so a bit shared by an
/// unwatched name costs a lookup, never a lost hint.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BasenameFilter {
    pub words: [u64; BASENAME_FILTER_WORDS],
}

impl BasenameFilter {
    pub const EMPTY: Self = Self {
        words: [0; BASENAME_FILTER_WORDS],
    };

    /// The word index and bit mask of `hash`.
    #[inline(always)]
    pub const fn slot(hash: u64) -> (usize, u64) {
        let bit = (hash >> 48) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    pub fn insert(&mut self, hash: u64) {
        let (word, mask) = Self::slot(hash);
        self.words[word] |= mask;
    }

    pub fn may_contain(&self, hash: u64) -> bool {
        let (word, mask) = Self::slot(hash);
        self.words[word] & mask != 0
    }
}

/// Start value of [`name_hash`] (64-bit FNV-1a offset basis).
pub const NAME_HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of [`name_hash`]: FNV-1a with the 64-bit prime.
#[inline(always)]
pub const fn name_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The key of a basename in `WATCHED_BASENAMES`: FNV-1a of its bytes taken last to first.
/// The kernel side hashes the last component of a path walking back from its end, so it
/// touches only the name's bytes (a byte-keyed map would need variable offsets into the
/// path). A collision only makes an unwatched name look watched: an extra hint, which is
/// harmless.
pub const fn name_hash(name: &[u8]) -> u64 {
    let mut hash = NAME_HASH_START;
    let mut i = name.len();
    while i > 0 {
        i -= 1;
        hash = name_hash_step(hash, name[i]);
    }
    hash
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls below): each type is `#[repr(C)]`, `Copy`, made only of integers and
    // integer arrays, and has no padding (explicit `reserved` fields fill the gaps; the
    // layout test checks the sizes).
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StorePrefix {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::InFlight {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BasenameFilter {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BaseDirOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::IoUringOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<EventHeader>(), 24);
        assert_eq!(core::mem::size_of::<PathEvent>(), 88 + 2 * PATH_BYTES);
        assert_eq!(core::mem::size_of::<BaseDirOffsets>(), 48);
        assert_eq!(core::mem::size_of::<IoUringOffsets>(), 48);
        assert_eq!(core::mem::size_of::<ExitEvent>(), 32);
        assert_eq!(core::mem::size_of::<IoUringDoneEvent>(), 40);
        assert_eq!(core::mem::size_of::<InFlight>(), 16);
        assert_eq!(core::mem::size_of::<UnjudgedEvent>(), 40);
        assert_eq!(core::mem::size_of::<Config>(), 24);
        assert_eq!(core::mem::size_of::<StorePrefix>(), 4 + STORE_PREFIX_MAX);
    }

    #[test]
    fn kernel_dev_splits_at_twenty_bits() {
        // 254:0 (a device-mapper disk) and 0:37 (an anonymous device, tmpfs).
        assert_eq!(kernel_dev_major_minor(254 << 20), (254, 0));
        assert_eq!(kernel_dev_major_minor(37), (0, 37));
        assert_eq!(kernel_dev_major_minor((8 << 20) | 0x12345), (8, 0x12345));
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

    #[test]
    fn basename_filter_has_no_false_negatives() {
        let mut filter = BasenameFilter::EMPTY;
        let names: [&[u8]; 4] = [b"result", b"home", b"alice", b"profile-1-link"];
        for name in names {
            filter.insert(name_hash(name));
        }
        for name in names {
            assert!(filter.may_contain(name_hash(name)));
        }
        assert!(!BasenameFilter::EMPTY.may_contain(name_hash(b"result")));
        let (word, mask) = BasenameFilter::slot(u64::MAX);
        assert_eq!((word, mask), (BASENAME_FILTER_WORDS - 1, 1 << 63));
    }

    #[test]
    fn name_hash_is_fnv1a_of_the_reversed_name() {
        assert_eq!(name_hash(b""), NAME_HASH_START);
        // Reference values of 64-bit FNV-1a for "a" and for "ba" (= "ab" reversed).
        assert_eq!(name_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(name_hash(b"ab"), 0x08a6_3307_b54d_d00c);
        assert_ne!(name_hash(b"result"), name_hash(b"resulu"));
    }
}
