//! The eBPF programs. Built for `bpfel-unknown-none` by `root-tracker`'s build script.
//!
//! `sys_enter_*` programs judge a path syscall at entry: relevant are symlink creations whose
//! target starts with the store dir prefix, and operations whose path argument ends in a
//! watched basename (`WATCHED_BASENAMES`); mount operations always are. A relevant entry is
//! recorded per thread in `IN_FLIGHT` and sent as an `ENTER` record; the matching `sys_exit_*`
//! program sends an `EXIT` record with the return value, so user space knows when the change is
//! done. `io_uring_submit_req` judges io_uring path operations, which no syscall tracepoint
//! sees, the same way from the kernel's copies of their names (where the kernel's BTF gave
//! their layout; else it reports every one as lost hints), keyed by request in
//! `IO_URING_IN_FLIGHT`; `io_uring_complete` reports their completion. Invariant: every
//! relevant operation is sent, or counted (dropped, unreadable, untracked), so lost hints are
//! always visible.
//!
//! The filter changes while operations run: a judgement at entry cannot look for a name user
//! space adds before the operation's change is made. So an operation judged unwatched is
//! remembered too, with the interest sequence (`INTEREST_SEQ`) it was judged under, and its
//! end reports it (`UNJUDGED`) if it succeeded and the sequence has been raised since; user
//! space then re-checks the names added meanwhile. An end under the same sequence needs
//! nothing: user space reads the filesystem for new names only after raising it.
//!
//! Where the kernel accepts them, `fentry_do_*`/`fexit_do_*` programs on the kernel's path
//! workers (`do_unlinkat`, `do_rmdir`, `do_renameat2`, `do_symlinkat`, `do_linkat`, which the
//! syscalls and io_uring both call) replace the syscall and io_uring tracepoints: the same
//! judgement at entry, read from the kernel's copy of each name (`struct filename`), and the
//! same `ENTER`/`EXIT` records, without putting every syscall on the kernel's slow path as an
//! attached syscall tracepoint does.
//!
//! The per-byte loops (basename hash, store prefix compare) are `bpf_loop` callbacks (Linux
//! 5.17 or later): the verifier checks a loop body once, where unrolled loops cost it up to
//! 340k instructions per program and, with two paths, passed the 1M limit on Linux 6.1.
//!
//! A judgement works in per-CPU scratch memory (an event is larger than the BPF stack). Where
//! the kernel may preempt a running program (fentry on a preemptible kernel; syscall
//! tracepoints on kernels after 6.19), another task's program could rewrite that memory
//! mid-judgement: `judge_enter` notices from the task's context-switch count and judges again,
//! and counts the call as lost if that keeps happening. Counters are added atomically.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

/// On the host this binary has nothing to do; it exists so `cargo build --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod kernel {
    use core::ffi::c_void;

    use aya_ebpf::{
        helpers::{
            bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
            bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
            bpf_probe_read_user_str_bytes, bpf_task_pt_regs,
        },
        macros::{fentry, fexit, lsm, map, tracepoint},
        maps::{Array, HashMap, PerCpuArray, RingBuf},
        programs::{FEntryContext, FExitContext, LsmContext, TracePointContext},
    };
    use root_tracker_ebpf::{
        AT_FDCWD, BaseDirOffsets, BasenameFilter, COUNTER_COUNT, COUNTER_DROPPED,
        COUNTER_PREEMPTED, COUNTER_RETRIED, COUNTER_SENT, COUNTER_TRUNCATED, COUNTER_UNREADABLE,
        COUNTER_UNTRACKED, Config, EventHeader, ExitEvent, IN_FLIGHT_MAX, IN_FLIGHT_UNWATCHED,
        IO_URING_IN_FLIGHT_MAX, InFlight, IoUringDoneEvent, IoUringOffsets, LONG_PATH_BYTES,
        NAME_HASH_START, PATH_BYTES, PathEvent, RING_BUF_BYTES, STORE_PREFIX_MAX,
        SYSCALL_NR_UNKNOWN, StorePrefix, UNWATCHED_IN_FLIGHT_DEFAULT, UnjudgedEvent,
        WATCHED_BASENAMES_MAX, flags, io_uring, kind, name_hash_step, op,
    };

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

    #[map]
    static STORE_PREFIX: Array<StorePrefix> = Array::with_max_entries(1, 0);

    #[map]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

    /// Where to find a relative path's base directory in kernel structs (see
    /// [`record_base_dir`]); all zero until user space found them in the kernel's BTF.
    #[map]
    static BASE_DIR_OFFSETS: Array<BaseDirOffsets> = Array::with_max_entries(1, 0);

    /// Where to find an io_uring request's names (see [`IoUringRequest`]); all zero until user
    /// space found them in the kernel's BTF.
    #[map]
    static IO_URING_OFFSETS: Array<IoUringOffsets> = Array::with_max_entries(1, 0);

    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

    #[map]
    static WATCHED_BASENAMES: HashMap<u64, u8> =
        HashMap::with_max_entries(WATCHED_BASENAMES_MAX, 0);

    /// In front of `WATCHED_BASENAMES`: a clear bit is a cheap "not watched".
    #[map]
    static BASENAME_FILTER: Array<BasenameFilter> = Array::with_max_entries(1, 0);

    /// Every thread inside a watched syscall (or path worker), relevant or not.
    #[map]
    static IN_FLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(IN_FLIGHT_MAX, 0);

    /// io_uring path operations submitted and not yet completed: `req` pointer → opcode and
    /// judgement.
    #[map]
    static IO_URING_IN_FLIGHT: HashMap<u64, InFlight> =
        HashMap::with_max_entries(IO_URING_IN_FLIGHT_MAX, 0);

    /// The interest sequence plus one under which each thread's current call was judged
    /// unwatched, by thread id (see `root_tracker_ebpf::MAP_UNWATCHED_IN_FLIGHT`).
    #[map]
    static UNWATCHED_IN_FLIGHT: Array<u32> =
        Array::with_max_entries(UNWATCHED_IN_FLIGHT_DEFAULT, 0);

    /// Raised by user space after each addition to `WATCHED_BASENAMES` (see
    /// `root_tracker_ebpf::MAP_INTEREST_SEQ`).
    #[map]
    static INTEREST_SEQ: Array<u64> = Array::with_max_entries(1, 0);

    /// `BPF_NOEXIST`: insert only if the key is absent.
    const BPF_NOEXIST: u64 = 1;
    /// `-EEXIST`, what a `BPF_NOEXIST` insert of a present key returns.
    const EEXIST: i32 = -17;

    /// The current interest sequence.
    #[inline(always)]
    fn interest_seq() -> u64 {
        INTEREST_SEQ.get(0).copied().unwrap_or(0)
    }

    /// Target bytes read for the store prefix check: enough to compare the longest prefix.
    const TARGET_BYTES: usize = STORE_PREFIX_MAX + 8;

    /// Per-CPU working memory: an event is over 1 KiB, past the 512-byte BPF stack, so it is
    /// built here and copied into the ring buffer only once the filter has matched.
    #[repr(C)]
    struct Scratch {
        event: PathEvent,
        long_path: [u8; LONG_PATH_BYTES],
        target: [u8; TARGET_BYTES],
        /// What the per-byte loops carry from one byte to the next (see [`walk_byte`]).
        walk: NameWalk,
        /// Set by [`compare_prefix_byte`] at the first byte that differs from the prefix.
        prefix_mismatch: u64,
    }

    /// The basename walk's state between bytes. The per-byte loops run in `bpf_loop`
    /// callbacks, so the verifier checks each loop body once instead of once per byte and per
    /// exit (two unrolled path loops in one program exceeded the 1,000,000-instruction limit
    /// on Linux 6.1). The state lives in map memory, whose contents the verifier never tracks:
    /// kept on the stack, 6.1 (which verifies a callback as if it ran once) would take the
    /// flags for constants after the loop and could drop the branches it thinks untaken.
    #[repr(C)]
    struct NameWalk {
        hash: u64,
        /// Non-zero once a byte of the last component was hashed (trailing slashes are not).
        in_name: u64,
        /// Non-zero when a `/` was found before the last component: it is whole even in a
        /// cut tail.
        whole: u64,
    }

    /// `bpf_loop` context of [`walk_byte`] (on the stack: the helper wants a stack pointer).
    #[repr(C)]
    struct WalkContext {
        path: *const [u8; PATH_BYTES],
        walk: *mut NameWalk,
        /// Bytes of the path in use; the walk goes from the last one backwards.
        len: u64,
    }

    /// `bpf_loop` context of [`compare_prefix_byte`].
    #[repr(C)]
    struct PrefixContext {
        target: *const [u8; TARGET_BYTES],
        prefix: *const [u8; STORE_PREFIX_MAX],
        mismatch: *mut u64,
    }

    /// `bpf_loop` callback return values.
    const LOOP_CONTINUE: i64 = 0;
    const LOOP_BREAK: i64 = 1;

    #[map]
    static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

    /// Byte offsets in the syscall tracepoint records
    /// (`/sys/kernel/tracing/events/syscalls/sys_{enter,exit}_*/format`): the syscall number
    /// after the 8-byte common header, then 8-byte argument slots (or the return value).
    const SYSCALL_NR: usize = 8;
    const fn arg(n: usize) -> usize {
        16 + 8 * n
    }
    const RET: usize = 16;

    /// One path argument: where its name is, and its directory fd if the call has one. A
    /// "slot" is a byte offset in a tracepoint record, or an argument index for fentry.
    #[derive(Clone, Copy)]
    struct PathArg {
        dirfd: Option<usize>,
        name: usize,
    }

    /// What an entry program reads.
    struct Spec {
        op: u32,
        /// Slot of the symlink target (symlink calls only).
        target: Option<usize>,
        paths: [Option<PathArg>; 2],
        /// Mount operations: relevant whatever their arguments.
        always: bool,
    }

    const fn plain(name: usize) -> Option<PathArg> {
        Some(PathArg { dirfd: None, name })
    }
    const fn at(dirfd: usize, name: usize) -> Option<PathArg> {
        Some(PathArg {
            dirfd: Some(dirfd),
            name,
        })
    }
    const fn spec(op: u32, paths: [Option<PathArg>; 2]) -> Spec {
        Spec {
            op,
            target: None,
            paths,
            always: false,
        }
    }
    const fn mount_spec(op: u32) -> Spec {
        Spec {
            op,
            target: None,
            paths: [None, None],
            always: true,
        }
    }

    /// A string argument, as an entry program finds it.
    #[derive(Clone, Copy)]
    enum Str {
        /// A user-space pointer, as the process passed it (syscall tracepoints): reading it
        /// may fault, which a tracepoint cannot serve.
        User(*const u8),
        /// The kernel's own copy (`struct filename::name`, fentry): always resident.
        Kernel(*const u8),
        /// No name (a null `struct filename *`, which newer kernels may pass for an empty
        /// path with `AT_EMPTY_PATH`): read as the empty string, as the syscall would see it.
        Empty,
        /// The call fails before it changes anything (`getname` failed: the worker got an
        /// error pointer), so it is irrelevant.
        Fails,
        /// The argument itself could not be read.
        Unreadable,
    }

    impl Str {
        /// Reads the NUL-terminated string into `buffer`; its length without the NUL.
        #[inline(always)]
        fn read(self, buffer: &mut [u8]) -> Option<usize> {
            // SAFETY: both helpers read at most `buffer.len()` bytes and fault safely.
            let read = match self {
                Self::User(pointer) => unsafe { bpf_probe_read_user_str_bytes(pointer, buffer) },
                Self::Kernel(pointer) => unsafe {
                    bpf_probe_read_kernel_str_bytes(pointer, buffer)
                },
                Self::Empty => return Some(0),
                Self::Fails | Self::Unreadable => return None,
            };
            read.ok().map(<[u8]>::len)
        }

        /// Reads `buffer.len()` bytes from `offset` bytes into the string.
        #[inline(always)]
        fn read_at(self, offset: usize, buffer: &mut [u8]) -> Option<()> {
            // SAFETY: both helpers read exactly `buffer.len()` bytes and fault safely.
            let read = match self {
                Self::User(pointer) => unsafe {
                    bpf_probe_read_user_buf(pointer.wrapping_add(offset), buffer)
                },
                Self::Kernel(pointer) => unsafe {
                    bpf_probe_read_kernel_buf(pointer.wrapping_add(offset), buffer)
                },
                Self::Empty | Self::Fails | Self::Unreadable => return None,
            };
            read.ok()
        }
    }

    /// The arguments of a hooked call, however the program type exposes them.
    trait Call {
        /// The `int` argument in `slot` (a directory fd).
        fn int(&self, slot: usize) -> Option<i32>;
        /// The string argument in `slot`.
        fn string(&self, slot: usize) -> Str;
        /// The number of the syscall the thread is in, for `/proc/<pid>/task/<tid>/syscall`.
        fn syscall_nr(&self) -> i32;
    }

    impl Call for TracePointContext {
        #[inline(always)]
        fn int(&self, slot: usize) -> Option<i32> {
            // The slot holds a sign-extended `int`; truncating keeps its value.
            // SAFETY: `slot` is the offset of an 8-byte argument slot in the record.
            unsafe { self.read_at::<u64>(slot) }
                .ok()
                .map(|fd| fd as i32)
        }

        #[inline(always)]
        fn string(&self, slot: usize) -> Str {
            // SAFETY: `slot` is the offset of a pointer-sized argument slot in the record.
            match unsafe { self.read_at::<u64>(slot) } {
                Ok(pointer) => Str::User(pointer as *const u8),
                Err(_) => Str::Unreadable,
            }
        }

        #[inline(always)]
        fn syscall_nr(&self) -> i32 {
            // SAFETY: `SYSCALL_NR` is the offset of the `int __syscall_nr` field in the record.
            unsafe { self.read_at::<i32>(SYSCALL_NR) }.unwrap_or(-1)
        }
    }

    /// Kernel error pointers (`IS_ERR_VALUE`): the top 4095 addresses.
    const MAX_ERRNO: u64 = 4095;

    impl Call for FEntryContext {
        #[inline(always)]
        fn int(&self, slot: usize) -> Option<i32> {
            Some(self.arg::<u64>(slot) as i32)
        }

        /// `slot` holds a `struct filename *`, whose first member (Linux 6.1 to 6.18, checked
        /// against both kernels' BTF) is `const char *name`, the kernel's copy of the string.
        #[inline(always)]
        fn string(&self, slot: usize) -> Str {
            filename_string(self.arg::<u64>(slot), 0)
        }

        /// The syscall number the thread's saved registers hold (`orig_ax` on x86-64, at the
        /// offset user space configured). io_uring workers run with a copy of the registers of
        /// the thread that made them, which `/proc` shows too, so the two agree.
        #[inline(always)]
        fn syscall_nr(&self) -> i32 {
            let offset = CONFIG
                .get(0)
                .map_or(0, |config| config.syscall_nr_regs_offset);
            if offset == 0 {
                return SYSCALL_NR_UNKNOWN;
            }
            // SAFETY: `bpf_get_current_task_btf` returns the running task, which the helper
            // `bpf_task_pt_regs` accepts; it returns that task's saved user registers.
            let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
            if regs == 0 {
                return SYSCALL_NR_UNKNOWN;
            }
            // SAFETY: a probe read of kernel memory inside `struct pt_regs`.
            unsafe { bpf_probe_read_kernel((regs + u64::from(offset)) as *const i64) }
                .map_or(SYSCALL_NR_UNKNOWN, |nr| nr as i32)
        }
    }

    /// The string a `struct filename *` holds: its member at `name_offset` (`name`) points to
    /// the kernel's copy. Null is the empty path, an error pointer a call that fails.
    #[inline(always)]
    fn filename_string(filename: u64, name_offset: u32) -> Str {
        if filename == 0 {
            return Str::Empty;
        }
        if filename > u64::MAX - MAX_ERRNO {
            return Str::Fails;
        }
        // SAFETY: a probe read of kernel memory, which faults safely.
        match unsafe { bpf_probe_read_kernel((filename + u64::from(name_offset)) as *const u64) } {
            Ok(name) if name != 0 => Str::Kernel(name as *const u8),
            _ => Str::Unreadable,
        }
    }

    /// A prepared io_uring path operation, read at its submission: the op's command struct in
    /// the request holds the directory fds and the names its prep function copied in
    /// (`getname`), so the names are the kernel's and always resident. A slot is one of the
    /// `IO_URING_*` indexes into `fields`.
    struct IoUringRequest {
        req: u64,
        /// Offsets from `req` of the old dfd, old name, new dfd and new name (0: none).
        fields: [u32; 4],
        filename_name: u32,
    }

    /// [`IoUringRequest`] slots: `io_rename`'s and `io_link`'s order; `io_unlink` has the first
    /// two only.
    const IO_URING_OLD_DFD: usize = 0;
    const IO_URING_OLD_NAME: usize = 1;
    const IO_URING_NEW_DFD: usize = 2;
    const IO_URING_NEW_NAME: usize = 3;

    impl IoUringRequest {
        /// The request `req` of io_uring opcode `opcode`; `None` where its names cannot be read
        /// (no offsets for this kernel, or an opcode outside io_uring's path operations).
        /// `MKDIRAT`'s has no fields: nothing of it is read.
        #[inline(always)]
        fn new(req: u64, opcode: u32) -> Option<Self> {
            let offsets = IO_URING_OFFSETS.get(0)?;
            if offsets.valid == 0 || req == 0 {
                return None;
            }
            let fields = match opcode {
                io_uring::UNLINKAT => [offsets.unlink[0], offsets.unlink[1], 0, 0],
                io_uring::RENAMEAT => offsets.rename,
                io_uring::LINKAT | io_uring::SYMLINKAT => offsets.link,
                io_uring::MKDIRAT => [0; 4],
                _ => return None,
            };
            Some(Self {
                req,
                fields,
                filename_name: offsets.filename_name,
            })
        }

        #[inline(always)]
        fn field(&self, slot: usize) -> Option<u64> {
            match self.fields.get(slot) {
                Some(&offset) if offset != 0 => Some(self.req + u64::from(offset)),
                _ => None,
            }
        }
    }

    impl Call for IoUringRequest {
        #[inline(always)]
        fn int(&self, slot: usize) -> Option<i32> {
            // SAFETY: a probe read of kernel memory inside the request, which faults safely.
            self.field(slot)
                .and_then(|at| unsafe { bpf_probe_read_kernel(at as *const i32) }.ok())
        }

        #[inline(always)]
        fn string(&self, slot: usize) -> Str {
            let Some(at) = self.field(slot) else {
                return Str::Unreadable;
            };
            // SAFETY: as in `int`; the member is a `struct filename *`.
            match unsafe { bpf_probe_read_kernel(at as *const u64) } {
                Ok(filename) => filename_string(filename, self.filename_name),
                Err(_) => Str::Unreadable,
            }
        }

        /// The submitter is inside `io_uring_enter` (or is the SQPOLL thread), not in the
        /// operation's syscall; user space waits for the request's completion instead.
        #[inline(always)]
        fn syscall_nr(&self) -> i32 {
            SYSCALL_NR_UNKNOWN
        }
    }

    macro_rules! programs {
        ($($enter:ident, $exit:ident => $spec:expr;)*) => {$(
            #[tracepoint]
            pub fn $enter(ctx: TracePointContext) -> u32 {
                judge_enter(&ctx, &$spec, Track::Thread);
                0
            }

            #[tracepoint]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                // SAFETY: `RET` is the offset of the `long ret` field of `sys_exit_*` records.
                // Unreadable (never seen) is reported as a failure code that user space cannot
                // take for success.
                report_exit(unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(i64::MIN));
                0
            }
        )*};
    }

    programs! {
        sys_enter_symlink, sys_exit_symlink => Spec {
            target: Some(arg(0)),
            ..spec(op::SYMLINK, [plain(arg(1)), None])
        };
        sys_enter_symlinkat, sys_exit_symlinkat => Spec {
            target: Some(arg(0)),
            ..spec(op::SYMLINKAT, [at(arg(1), arg(2)), None])
        };
        sys_enter_unlink, sys_exit_unlink => spec(op::UNLINK, [plain(arg(0)), None]);
        sys_enter_unlinkat, sys_exit_unlinkat => spec(op::UNLINKAT, [at(arg(0), arg(1)), None]);
        sys_enter_rmdir, sys_exit_rmdir => spec(op::RMDIR, [plain(arg(0)), None]);
        sys_enter_rename, sys_exit_rename =>
            spec(op::RENAME, [plain(arg(0)), plain(arg(1))]);
        sys_enter_renameat, sys_exit_renameat =>
            spec(op::RENAMEAT, [at(arg(0), arg(1)), at(arg(2), arg(3))]);
        sys_enter_renameat2, sys_exit_renameat2 =>
            spec(op::RENAMEAT2, [at(arg(0), arg(1)), at(arg(2), arg(3))]);
        sys_enter_link, sys_exit_link => spec(op::LINK, [plain(arg(0)), plain(arg(1))]);
        sys_enter_linkat, sys_exit_linkat =>
            spec(op::LINKAT, [at(arg(0), arg(1)), at(arg(2), arg(3))]);
        sys_enter_mount, sys_exit_mount => mount_spec(op::MOUNT);
        sys_enter_umount, sys_exit_umount => mount_spec(op::UMOUNT);
        sys_enter_move_mount, sys_exit_move_mount => mount_spec(op::MOVE_MOUNT);
    }

    /// fentry/fexit pairs on the path workers; `$args` is the worker's argument count (its
    /// return value follows the arguments in an fexit context). Signatures as in Linux 6.1
    /// and 6.18 (`fs/internal.h`): the ops are those of the `*at` syscalls, whose records
    /// user space already reads (`do_rmdir` takes a dirfd too).
    macro_rules! fentry_programs {
        ($($function:literal: $enter:ident, $exit:ident, $args:literal => $spec:expr;)*) => {$(
            #[fentry(function = $function)]
            pub fn $enter(ctx: FEntryContext) -> u32 {
                judge_enter(&ctx, &$spec, Track::Thread);
                0
            }

            #[fexit(function = $function)]
            pub fn $exit(ctx: FExitContext) -> u32 {
                // The workers return `int`; the slot holds the whole register.
                report_exit(i64::from(ctx.arg::<u64>($args) as i32));
                0
            }
        )*};
    }

    fentry_programs! {
        // int do_unlinkat(int dfd, struct filename *name)
        "do_unlinkat": fentry_do_unlinkat, fexit_do_unlinkat, 2 =>
            spec(op::UNLINKAT, [at(0, 1), None]);
        // int do_rmdir(int dfd, struct filename *name)
        "do_rmdir": fentry_do_rmdir, fexit_do_rmdir, 2 => spec(op::RMDIR, [at(0, 1), None]);
        // int do_renameat2(int olddfd, struct filename *from, int newdfd,
        //                  struct filename *to, unsigned int flags)
        "do_renameat2": fentry_do_renameat2, fexit_do_renameat2, 5 =>
            spec(op::RENAMEAT2, [at(0, 1), at(2, 3)]);
        // int do_symlinkat(struct filename *from, int newdfd, struct filename *to)
        "do_symlinkat": fentry_do_symlinkat, fexit_do_symlinkat, 3 => Spec {
            target: Some(0),
            ..spec(op::SYMLINKAT, [at(1, 2), None])
        };
        // int do_linkat(int olddfd, struct filename *old, int newdfd, struct filename *new,
        //               int flags)
        "do_linkat": fentry_do_linkat, fexit_do_linkat, 5 =>
            spec(op::LINKAT, [at(0, 1), at(2, 3)]);
    }

    /// How a path argument bears on relevance.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Verdict {
        Unwatched,
        Watched,
        /// Could not be read or its last component is cut: must be reported.
        Unknown,
        /// The call fails before changing anything: nothing to report.
        Fails,
    }

    /// The current task's context-switch count, as [`Config::task_switch_counts_offset`]
    /// describes.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Switches {
        /// No offset configured: the kernel's layout is unknown, there is no check.
        Unknown,
        Count(u64),
        /// The read failed: the check cannot pass.
        Unreadable,
    }

    #[inline(always)]
    fn task_switches() -> Switches {
        let offset = CONFIG
            .get(0)
            .map_or(0, |config| config.task_switch_counts_offset);
        if offset == 0 {
            return Switches::Unknown;
        }
        // SAFETY: a helper without arguments; the pointer it returns is only read through
        // `bpf_probe_read_kernel`, which faults safely.
        let task = unsafe { bpf_get_current_task() };
        // SAFETY: as above; `[u64; 2]` is plain data.
        match unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const [u64; 2]) } {
            Ok([voluntary, involuntary]) => Switches::Count(voluntary.wrapping_add(involuntary)),
            Err(_) => Switches::Unreadable,
        }
    }

    /// Runs [`report_enter`] and checks that the task kept the CPU meanwhile; if it did not,
    /// runs it again, up to three runs in all, and counts the call as lost if the task
    /// left the CPU during every one.
    ///
    /// Why: the judgement works in this CPU's slot of `SCRATCH`. Migration is disabled while
    /// a program runs, so only a program running on this CPU can touch the slot, and another
    /// task's program runs here only while this task is off the CPU, which the kernel counts
    /// in the task's `nvcsw`/`nivcsw`. Where the kernel runs these programs with preemption
    /// disabled (syscall tracepoints up to Linux 6.19; fentry on a kernel that does not
    /// preempt kernel code) the count never moves; elsewhere a preemption in the middle is
    /// rare, and one in each of three runs rarer still (a real-time thread preempting every
    /// 20 us on Linux 6.1 with `preempt=full` disturbed a quarter of the runs), and even then
    /// the loss is counted, never silent. A record sent by a disturbed run may misname the
    /// entry: an extra re-read, harmless; the next run's `ENTER` replaces it for the thread.
    #[inline(always)]
    fn judge_enter<C: Call>(ctx: &C, spec: &Spec, track: Track) {
        // Read before the filter is: a name added after this read is caught at the end.
        let interest_seq = interest_seq();
        let mut sent = false;
        // Written out, not a loop: Linux 6.1 refuses the loop LLVM keeps for three rounds.
        if !judged_undisturbed(ctx, spec, track, &mut sent) {
            count(COUNTER_RETRIED);
            if !judged_undisturbed(ctx, spec, track, &mut sent) {
                count(COUNTER_RETRIED);
                if !judged_undisturbed(ctx, spec, track, &mut sent) {
                    count(COUNTER_PREEMPTED);
                }
            }
        }
        // A call that any run sent (or counted as lost) has its end reported as relevant.
        if sent {
            track.forget_unwatched();
        } else {
            track.remember_unwatched(spec.op, interest_seq);
        }
    }

    /// One run of [`report_enter`], which sets `sent` if it sent the call's record (or
    /// counted it lost); whether the task kept the CPU meanwhile (also `true` when that
    /// cannot be known: no offsets configured).
    #[inline(always)]
    fn judged_undisturbed<C: Call>(ctx: &C, spec: &Spec, track: Track, sent: &mut bool) -> bool {
        let before = task_switches();
        let count_at_entry = match before {
            Switches::Count(count) => count,
            Switches::Unknown | Switches::Unreadable => 0,
        };
        if let Ok(true) = report_enter(ctx, spec, track, count_at_entry) {
            *sent = true;
        }
        match before {
            Switches::Unknown => true,
            Switches::Count(_) => task_switches() == before,
            Switches::Unreadable => false,
        }
    }

    /// Where a relevant operation is remembered until its end is reported, and which record
    /// announces it.
    #[derive(Clone, Copy)]
    enum Track {
        /// A syscall or path worker: `IN_FLIGHT[pid_tgid]`, ended by its exit program; `ENTER`.
        Thread,
        /// An io_uring request: `IO_URING_IN_FLIGHT[req]`, ended by `io_uring_complete`;
        /// `IO_URING_ENTER`.
        Request { req: u64, opcode: u32 },
    }

    impl Track {
        #[inline(always)]
        fn kind(self) -> u32 {
            match self {
                Self::Thread => kind::ENTER,
                Self::Request { .. } => kind::IO_URING_ENTER,
            }
        }

        #[inline(always)]
        fn request(self) -> u64 {
            match self {
                Self::Thread => 0,
                Self::Request { req, .. } => req,
            }
        }

        /// Records the relevant operation so its end is reported; `false` if the map is full.
        #[inline(always)]
        fn remember(self, pid_tgid: u64, op: u32) -> bool {
            match self {
                Self::Thread => {
                    let in_flight = InFlight {
                        op,
                        judged: 0,
                        interest_seq: 0,
                    };
                    IN_FLIGHT.insert(&pid_tgid, &in_flight, 0).is_ok()
                }
                Self::Request { req, opcode } => {
                    let in_flight = InFlight {
                        op: opcode,
                        judged: 0,
                        interest_seq: 0,
                    };
                    IO_URING_IN_FLIGHT.insert(&req, &in_flight, 0).is_ok()
                }
            }
        }

        /// Clears a thread's `UNWATCHED_IN_FLIGHT` slot, which its exit reads before
        /// `IN_FLIGHT`: one left set (by a call inside a path worker when the fentry programs
        /// were detached for the tracepoints) would hide this relevant call's `EXIT`.
        #[inline(always)]
        fn forget_unwatched(self) {
            if let Self::Thread = self {
                let tid = bpf_get_current_pid_tgid() as u32;
                if let Some(slot) = UNWATCHED_IN_FLIGHT.get_ptr_mut(tid) {
                    // SAFETY: as in `remember_unwatched`.
                    unsafe { *slot = 0 };
                }
            }
        }

        /// Records an operation judged unwatched under `interest_seq`, so that its end can
        /// tell whether names were added meanwhile: a thread in its `UNWATCHED_IN_FLIGHT`
        /// slot, else (a request, or a thread id past the array) in a hash map, where a
        /// record present is left alone (exits are attached before entries, so none is left
        /// over from another call). A full map counts as untracked (lost hints): the end
        /// could not be checked.
        #[inline(always)]
        fn remember_unwatched(self, op: u32, interest_seq: u64) {
            let pid_tgid = bpf_get_current_pid_tgid();
            let (map, key, op) = match self {
                Self::Thread => {
                    if let Some(slot) = UNWATCHED_IN_FLIGHT.get_ptr_mut(pid_tgid as u32) {
                        // SAFETY: the map's slot for this thread id, valid for the map's
                        // lifetime; only this thread writes it while it lives.
                        unsafe { *slot = (interest_seq as u32).wrapping_add(1) };
                        return;
                    }
                    (&IN_FLIGHT, pid_tgid, op)
                }
                Self::Request { req, opcode } => (&IO_URING_IN_FLIGHT, req, opcode),
            };
            let in_flight = InFlight {
                op,
                judged: IN_FLIGHT_UNWATCHED,
                interest_seq,
            };
            if let Err(code) = map.insert(&key, &in_flight, BPF_NOEXIST) {
                if code != EEXIST {
                    count(COUNTER_UNTRACKED);
                }
            }
        }

        #[inline(always)]
        fn forget(self, pid_tgid: u64) {
            let _ = match self {
                Self::Thread => IN_FLIGHT.remove(&pid_tgid),
                Self::Request { req, .. } => IO_URING_IN_FLIGHT.remove(&req),
            };
        }
    }

    /// Judges a call at entry and, if relevant, remembers it as `track` says and sends its
    /// record; `task_switches` goes into the record as it is. `Ok(true)`: relevant (sent, or
    /// counted as lost); `Ok(false)`: unwatched, or a call that fails.
    #[inline(always)]
    fn report_enter<C: Call>(
        ctx: &C,
        spec: &Spec,
        track: Track,
        task_switches: u64,
    ) -> Result<bool, i64> {
        let scratch_ptr = SCRATCH.get_ptr_mut(0).ok_or(0)?;
        // SAFETY: the map lookup returned a non-null pointer to this CPU's slot, which lives as
        // long as the map. Another program may write the slot meanwhile only if this task
        // leaves the CPU, which `judge_enter` detects; the data is plain bytes, so such a
        // write garbles the judgement, which is then redone, and is no memory-safety issue.
        let scratch = unsafe { &mut *scratch_ptr };
        let event = &mut scratch.event;
        event.flags = 0;
        event.dirfd = [AT_FDCWD; 2];
        event.path_len = [0; 2];
        event.task_switches = task_switches;

        let mut relevant = spec.always;
        if let Some(slot) = spec.target {
            match target_in_store(
                ctx.string(slot),
                &mut scratch.target,
                &mut scratch.prefix_mismatch,
            ) {
                Verdict::Watched => relevant = true,
                Verdict::Unknown => {
                    event.flags |= flags::TARGET_UNREADABLE;
                    count(COUNTER_UNREADABLE);
                    relevant = true;
                }
                Verdict::Fails => return Ok(false),
                Verdict::Unwatched => {}
            }
        }
        if let Some(arg) = spec.paths[0] {
            match read_path::<0, C>(ctx, arg, event, &mut scratch.long_path, &mut scratch.walk) {
                Verdict::Unwatched => {}
                Verdict::Fails => return Ok(false),
                Verdict::Watched | Verdict::Unknown => relevant = true,
            }
        }
        if let Some(arg) = spec.paths[1] {
            match read_path::<1, C>(ctx, arg, event, &mut scratch.long_path, &mut scratch.walk) {
                Verdict::Unwatched => {}
                Verdict::Fails => return Ok(false),
                Verdict::Watched | Verdict::Unknown => relevant = true,
            }
        }
        if !relevant {
            return Ok(false);
        }
        // Only now, so that unrelated operations do not pay for the kernel reads.
        record_base_dir::<0>(spec, event);
        record_base_dir::<1>(spec, event);

        let pid_tgid = bpf_get_current_pid_tgid();
        event.header = header(track.kind(), spec.op, pid_tgid);
        event.syscall_nr = ctx.syscall_nr();
        event.request = track.request();

        // Recorded before sending, so the exit program finds it whatever the interleaving.
        if !track.remember(pid_tgid, spec.op) {
            // Without the record no EXIT would come and user space would wait in vain:
            // count the operation as lost instead.
            count(COUNTER_UNTRACKED);
            return Ok(true);
        }
        match EVENTS.output::<PathEvent>(&*event, 0) {
            Ok(()) => count(COUNTER_SENT),
            Err(_) => {
                count(COUNTER_DROPPED);
                track.forget(pid_tgid);
            }
        }
        Ok(true)
    }

    /// Sends `EXIT` with the call's return value `ret` for a thread whose entry was relevant;
    /// for one judged unwatched, `UNJUDGED` if it succeeded under a newer interest.
    #[inline(always)]
    fn report_exit(ret: i64) {
        let pid_tgid = bpf_get_current_pid_tgid();
        // Most calls: judged unwatched, in the thread's slot.
        if let Some(slot) = UNWATCHED_IN_FLIGHT.get_ptr_mut(pid_tgid as u32) {
            // SAFETY: as in `Track::remember_unwatched`; only this thread writes its slot.
            let judged = unsafe { *slot };
            if judged != 0 {
                // SAFETY: as above.
                unsafe { *slot = 0 };
                let in_flight = InFlight {
                    op: 0,
                    judged: IN_FLIGHT_UNWATCHED,
                    interest_seq: u64::from(judged - 1),
                };
                report_unjudged(&in_flight, ret, pid_tgid, 0);
                return;
            }
        }
        // SAFETY: the value is copied out at once; a concurrent delete of this key can only
        // come from this thread, which is here.
        let Some(in_flight) = (unsafe { IN_FLIGHT.get(&pid_tgid) }).copied() else {
            return;
        };
        let _ = IN_FLIGHT.remove(&pid_tgid);
        if in_flight.judged == IN_FLIGHT_UNWATCHED {
            report_unjudged(&in_flight, ret, pid_tgid, 0);
            return;
        }
        let event = ExitEvent {
            header: header(kind::EXIT, in_flight.op, pid_tgid),
            ret,
        };
        send(&event);
    }

    /// The end of an operation judged unwatched: if it succeeded (`ret >= 0`; a failed one
    /// changed nothing) and names were added to the filter since its judgement began, it may
    /// have changed one of them unseen, and user space must look at them again.
    #[inline(always)]
    fn report_unjudged(in_flight: &InFlight, ret: i64, pid_tgid: u64, request: u64) {
        // Read after the operation's change: a sequence raised later belongs to names added
        // after the change, which user space reads the filesystem for itself.
        // A slot keeps the sequence's low 32 bits.
        if ret < 0 || in_flight.interest_seq as u32 == interest_seq() as u32 {
            return;
        }
        send(&UnjudgedEvent {
            header: header(kind::UNJUDGED, in_flight.op, pid_tgid),
            interest_seq: in_flight.interest_seq,
            request,
        });
    }

    /// io_uring's path operations, judged as the `*at` syscalls are (slots index
    /// [`IoUringRequest::fields`]). `IORING_OP_SYMLINKAT` uses `struct io_link`: `oldpath` is
    /// the target, `newpath` relative to `new_dfd` the link. `UNLINKAT` with `AT_REMOVEDIR` is
    /// an rmdir, judged the same way.
    const IO_URING_UNLINKAT: Spec = spec(
        op::UNLINKAT,
        [at(IO_URING_OLD_DFD, IO_URING_OLD_NAME), None],
    );
    const IO_URING_RENAMEAT: Spec = spec(
        op::RENAMEAT,
        [
            at(IO_URING_OLD_DFD, IO_URING_OLD_NAME),
            at(IO_URING_NEW_DFD, IO_URING_NEW_NAME),
        ],
    );
    const IO_URING_LINKAT: Spec = spec(
        op::LINKAT,
        [
            at(IO_URING_OLD_DFD, IO_URING_OLD_NAME),
            at(IO_URING_NEW_DFD, IO_URING_NEW_NAME),
        ],
    );
    const IO_URING_SYMLINKAT: Spec = Spec {
        target: Some(IO_URING_OLD_NAME),
        ..spec(
            op::SYMLINKAT,
            [at(IO_URING_NEW_DFD, IO_URING_NEW_NAME), None],
        )
    };

    /// A request submitted to io_uring, which no syscall tracepoint sees. Where this kernel's
    /// layout is known (`IO_URING_OFFSETS`), a path operation is judged by its names like a
    /// syscall and, if relevant, sent as `IO_URING_ENTER`; an unwatched one costs nothing
    /// more. Otherwise every path operation is sent as `IO_URING` (lost hints).
    ///
    /// The tracepoint fires in the submitting task (`io_uring_enter`), or in the ring's SQPOLL
    /// thread, which shares its creator's files and working directory (an io thread of that
    /// process, `/proc/<tgid>/task/<its tid>` in user space): either way the `current` whose
    /// fds and working directory `record_base_dir` reads is the task whose io-wq workers will
    /// resolve the names. They do so later, though, so a `chdir` or fd reuse right after the
    /// submission can make the kernel use another directory than the one recorded: user space
    /// names the request only after its completion, when such a change shows as a directory
    /// that is not the recorded one, and then names it by basename. A thread that unshares
    /// its fd table or working directory (`unshare(CLONE_FILES|CLONE_FS)`) after its io-wq
    /// workers started may leave them with the old ones, which neither the identity recorded
    /// here nor `/proc` shows: user space re-checks every relative name of a request by its
    /// basename as well (fentry mode reads the worker's own).
    #[tracepoint]
    pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
        let offset = CONFIG
            .get(0)
            .map_or(0, |config| config.io_uring_opcode_offset);
        let opcode = if offset == 0 {
            None
        } else {
            // SAFETY: the offset of the `u8 opcode` field, read from the tracepoint's format
            // file by user space; `read_at` faults safely (probe read) if it were wrong.
            unsafe { ctx.read_at::<u8>(offset as usize) }
                .ok()
                .map(u32::from)
        };
        // An opcode that cannot be read is reported (as 0): fail closed.
        if let Some(opcode) = opcode {
            if !(io_uring::FIRST..=io_uring::LAST).contains(&opcode) {
                return 0;
            }
        }
        // Remember the request so its completion can be reported: the change is only done
        // then, and a rescan prompted by the submission alone could run before it.
        let req_offset = CONFIG
            .get(0)
            .map_or(0, |config| config.io_uring_submit_req_offset);
        let req = if req_offset == 0 {
            None
        } else {
            // SAFETY: the offset of the `void *req` field, read from the format file.
            unsafe { ctx.read_at::<u64>(req_offset as usize) }.ok()
        };
        if let (Some(opcode), Some(req)) = (opcode, req) {
            if let Some(request) = IoUringRequest::new(req, opcode) {
                let track = Track::Request { req, opcode };
                match opcode {
                    io_uring::UNLINKAT => judge_enter(&request, &IO_URING_UNLINKAT, track),
                    io_uring::RENAMEAT => judge_enter(&request, &IO_URING_RENAMEAT, track),
                    io_uring::LINKAT => judge_enter(&request, &IO_URING_LINKAT, track),
                    io_uring::SYMLINKAT => judge_enter(&request, &IO_URING_SYMLINKAT, track),
                    // `MKDIRAT`: a new empty directory neither creates nor removes a root.
                    _ => {}
                }
                return 0;
            }
        }
        let tracked = req.is_some_and(|req| {
            let in_flight = InFlight {
                op: opcode.unwrap_or(0),
                judged: 0,
                interest_seq: 0,
            };
            IO_URING_IN_FLIGHT.insert(&req, &in_flight, 0).is_ok()
        });
        if !tracked {
            count(COUNTER_UNTRACKED);
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        send(&header(kind::IO_URING, opcode.unwrap_or(0), pid_tgid));
        0
    }

    /// Reports the completion of a request that `io_uring_submit_req` reported, with its
    /// result.
    #[tracepoint]
    pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
        let Some(config) = CONFIG.get(0) else {
            return 0;
        };
        let (req_offset, res_offset) = (
            config.io_uring_complete_req_offset,
            config.io_uring_complete_res_offset,
        );
        if req_offset == 0 {
            return 0;
        }
        // SAFETY: the offset of the `void *req` field, read from the format file.
        let Ok(req) = (unsafe { ctx.read_at::<u64>(req_offset as usize) }) else {
            return 0;
        };
        // SAFETY: the value is copied out before the entry is removed.
        let Some(in_flight) = (unsafe { IO_URING_IN_FLIGHT.get(&req) }).copied() else {
            return 0;
        };
        let _ = IO_URING_IN_FLIGHT.remove(&req);
        // Unknown or unreadable: 0, success, so the hints are applied (an extra re-read).
        let res = if res_offset == 0 {
            0
        } else {
            // SAFETY: the offset of the `int res` field, read from the format file.
            unsafe { ctx.read_at::<i32>(res_offset as usize) }.map_or(0, i64::from)
        };
        let pid_tgid = bpf_get_current_pid_tgid();
        if in_flight.judged == IN_FLIGHT_UNWATCHED {
            report_unjudged(&in_flight, res, pid_tgid, req);
            return 0;
        }
        send(&IoUringDoneEvent {
            header: header(kind::IO_URING_DONE, in_flight.op, pid_tgid),
            request: req,
            res,
        });
        0
    }

    /// A probe, never attached: user space loads it to learn whether this kernel accepts
    /// fexit programs (`status` reports it). The tracepoints are complete without it.
    #[fexit(function = "vfs_symlink")]
    pub fn probe_fexit(_ctx: FExitContext) -> i32 {
        0
    }

    /// A probe, never attached: whether this kernel accepts BPF LSM programs.
    #[lsm(hook = "path_symlink")]
    pub fn probe_lsm(_ctx: LsmContext) -> i32 {
        0
    }

    /// A record's header for the current task (`pid_tgid`), stamped now.
    #[inline(always)]
    fn header(kind: u32, op: u32, pid_tgid: u64) -> EventHeader {
        EventHeader {
            kind,
            op,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            // SAFETY: a helper without arguments, callable from every program type.
            ktime_ns: unsafe { bpf_ktime_get_ns() },
        }
    }

    /// Writes a small record to the ring buffer, counting it as sent or dropped.
    #[inline(always)]
    fn send<T>(record: &T) {
        match EVENTS.output::<T>(record, 0) {
            Ok(()) => count(COUNTER_SENT),
            Err(_) => count(COUNTER_DROPPED),
        }
    }

    /// Reads path argument `INDEX` into the event and judges its last component.
    #[inline(always)]
    fn read_path<const INDEX: usize, C: Call>(
        ctx: &C,
        arg: PathArg,
        event: &mut PathEvent,
        long_path: &mut [u8; LONG_PATH_BYTES],
        walk: &mut NameWalk,
    ) -> Verdict {
        if let Some(slot) = arg.dirfd {
            event.dirfd[INDEX] = ctx.int(slot).unwrap_or(AT_FDCWD);
        }
        let name = match ctx.string(arg.name) {
            Str::Fails => return Verdict::Fails,
            Str::Unreadable => return unknown::<INDEX>(event),
            name => name,
        };
        let buffer = &mut event.path[INDEX];
        let Some(mut len) = name.read(buffer) else {
            return unknown::<INDEX>(event);
        };
        let mut truncated = false;
        if len >= PATH_BYTES - 1 {
            // Possibly longer: learn the whole length, then keep the tail, which holds the
            // last component.
            let Some(full) = name.read(long_path) else {
                return unknown::<INDEX>(event);
            };
            if full > PATH_BYTES - 1 {
                // `start .. full` lies inside the string just read.
                if name.read_at(full - PATH_BYTES, buffer).is_none() {
                    return unknown::<INDEX>(event);
                }
                len = PATH_BYTES;
                truncated = true;
                event.flags |= flags::path_truncated(INDEX);
                count(COUNTER_TRUNCATED);
            }
        }
        event.path_len[INDEX] = len as u32;

        match last_component_hash(&event.path[INDEX], len, truncated, walk) {
            Some(hash) => {
                let (word, mask) = BasenameFilter::slot(hash);
                // No filter (cannot happen: array slots always exist) means ask the map.
                let filtered_out = BASENAME_FILTER
                    .get(0)
                    .and_then(|filter| filter.words.get(word))
                    .is_some_and(|bits| bits & mask == 0);
                // SAFETY: only presence is tested; the value is not read.
                if !filtered_out && unsafe { WATCHED_BASENAMES.get(&hash) }.is_some() {
                    Verdict::Watched
                } else {
                    Verdict::Unwatched
                }
            }
            None => unknown::<INDEX>(event),
        }
    }

    /// Records the inode and device of the directory that relative path `INDEX` is resolved
    /// against: user space names the path later, through `/proc`, when the process may have
    /// closed the fd and reused its number, or changed its working directory; it trusts what
    /// it finds there only if it is still this directory. Absolute, unreadable and cut paths
    /// are skipped (no directory is used, or the hint is a basename anyway).
    ///
    /// The pointers are read without the locks or RCU section the kernel would take, so a
    /// concurrent close can make a read fail or return another directory's identity: either
    /// way user space sees a mismatch and falls back to a basename hint, never to a wrong
    /// path.
    #[inline(always)]
    fn record_base_dir<const INDEX: usize>(spec: &Spec, event: &mut PathEvent) {
        event.base_ino[INDEX] = 0;
        event.base_dev[INDEX] = 0;
        let skip = flags::path_unreadable(INDEX) | flags::path_truncated(INDEX);
        if spec.paths[INDEX].is_none()
            || event.flags & skip != 0
            || (event.path_len[INDEX] > 0 && event.path[INDEX][0] == b'/')
        {
            return;
        }
        let Some(offsets) = BASE_DIR_OFFSETS.get(0) else {
            return;
        };
        if offsets.valid == 0 {
            return;
        }
        // SAFETY: a helper without arguments, callable from tracing programs; the pointer it
        // returns is only ever passed to `bpf_probe_read_kernel`.
        let task = unsafe { bpf_get_current_task() };
        let Some(inode) = base_dir_inode(task, event.dirfd[INDEX], offsets) else {
            return;
        };
        let Some(ino) = read_kernel::<u64>(inode, offsets.inode_ino) else {
            return;
        };
        let Some(dev) = read_kernel::<u64>(inode, offsets.inode_sb)
            .and_then(|super_block| read_kernel::<u32>(super_block, offsets.super_block_dev))
        else {
            return;
        };
        event.base_ino[INDEX] = ino;
        event.base_dev[INDEX] = dev;
    }

    /// `task->fs->pwd.dentry->d_inode` for `AT_FDCWD`, else
    /// `task->files->fdt->fd[dirfd]->f_inode` (within `fdt->max_fds`).
    #[inline(always)]
    fn base_dir_inode(task: u64, dirfd: i32, offsets: &BaseDirOffsets) -> Option<u64> {
        if dirfd == AT_FDCWD {
            let fs = read_kernel::<u64>(task, offsets.task_fs)?;
            let dentry = read_kernel::<u64>(fs, offsets.fs_pwd_dentry)?;
            return read_kernel::<u64>(dentry, offsets.dentry_inode);
        }
        let fd = u32::try_from(dirfd).ok()?;
        let files = read_kernel::<u64>(task, offsets.task_files)?;
        let fdtable = read_kernel::<u64>(files, offsets.files_fdt)?;
        let max_fds = read_kernel::<u32>(fdtable, offsets.fdtable_max_fds)?;
        if fd >= max_fds {
            return None;
        }
        let fd_array = read_kernel::<u64>(fdtable, offsets.fdtable_fd)?;
        let file = read_kernel_at::<u64>(fd_array, u64::from(fd) * 8)?;
        read_kernel::<u64>(file, offsets.file_inode)
    }

    /// The `T` at `base + offset` in kernel memory; `None` for a null `base`, a failed read,
    /// or a zero value (a null pointer, or inode number 0, which means "unknown" anyway).
    #[inline(always)]
    fn read_kernel<T: Copy + PartialEq + Default>(base: u64, offset: u32) -> Option<T> {
        read_kernel_at(base, u64::from(offset))
    }

    #[inline(always)]
    fn read_kernel_at<T: Copy + PartialEq + Default>(base: u64, offset: u64) -> Option<T> {
        if base == 0 {
            return None;
        }
        // SAFETY: the helper copies `size_of::<T>()` bytes of kernel memory into a local,
        // faulting safely on a bad address; `T` is a plain integer.
        let value = unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }.ok()?;
        (value != T::default()).then_some(value)
    }

    /// Marks path `INDEX` unreadable and counts it: the event cannot name the entry.
    #[inline(always)]
    fn unknown<const INDEX: usize>(event: &mut PathEvent) -> Verdict {
        event.flags |= flags::path_unreadable(INDEX);
        count(COUNTER_UNREADABLE);
        Verdict::Unknown
    }

    /// `name_hash` of the last component of the first `len` bytes of `path` (trailing slashes
    /// ignored), in one backward pass that stops at the `/` before it: the cost follows the
    /// length of the name, not of the path (measured on 6.18: a `bpf_loop` iteration costs
    /// about 20 ns, so hashing a whole 24-byte path cost more than reading it). `None` when
    /// the path is a cut tail whose last component may be cut too (no `/` before it), or when
    /// the loop helper failed.
    #[inline(always)]
    fn last_component_hash(
        path: &[u8; PATH_BYTES],
        len: usize,
        truncated: bool,
        walk: &mut NameWalk,
    ) -> Option<u64> {
        walk.hash = NAME_HASH_START;
        walk.in_name = 0;
        walk.whole = 0;
        let mut context = WalkContext {
            path,
            walk: &raw mut *walk,
            len: len as u64,
        };
        // `len` is at most `PATH_BYTES` (the read helpers' bound), so the cast is lossless.
        // SAFETY: `walk_byte` has the callback signature `bpf_loop` wants, and `context`
        // outlives the call, which runs the callback synchronously on this CPU.
        let done = unsafe {
            bpf_loop(
                len as u32,
                walk_byte as *mut c_void,
                (&raw mut context).cast(),
                0,
            )
        };
        if done < 0 {
            return None;
        }
        // No `/` before the name: it begins the buffer, whole unless the buffer is a cut tail.
        (walk.whole != 0 || !truncated).then_some(walk.hash)
    }

    /// `bpf_loop` callback: feeds byte `len - 1 - index` of the path into the basename walk,
    /// and stops at the `/` before the last component.
    extern "C" fn walk_byte(index: u64, context: *mut c_void) -> i64 {
        // SAFETY: `bpf_loop` passes the `WalkContext` that `last_component_hash` built; its
        // pointers are to this CPU's scratch slot, valid for the call (another program may
        // rewrite its bytes only while this task is off the CPU, which `judge_enter` detects).
        let (path, walk, len) = unsafe {
            let context = &*context.cast::<WalkContext>();
            (&*context.path, &mut *context.walk, context.len)
        };
        let Some(&byte) = len
            .checked_sub(index + 1)
            .and_then(|at| path.get(at as usize))
        else {
            return LOOP_BREAK;
        };
        if byte == b'/' {
            if walk.in_name != 0 {
                walk.whole = 1;
                return LOOP_BREAK;
            }
            // A trailing slash.
            return LOOP_CONTINUE;
        }
        walk.in_name = 1;
        walk.hash = name_hash_step(walk.hash, byte);
        LOOP_CONTINUE
    }

    /// Reads the symlink target and tells whether it starts with the store prefix
    /// (`Watched`), does not (`Unwatched`), could not be read (`Unknown`), or makes the call
    /// fail (`Fails`).
    #[inline(always)]
    fn target_in_store(
        target_arg: Str,
        target: &mut [u8; TARGET_BYTES],
        mismatch: &mut u64,
    ) -> Verdict {
        if matches!(target_arg, Str::Fails) {
            return Verdict::Fails;
        }
        match target_arg.read(target) {
            Some(len) => in_store(target, len, mismatch),
            None => Verdict::Unknown,
        }
    }

    /// Whether the first `target_len` bytes of `target` start with the configured store prefix
    /// (`Watched` or `Unwatched`; `Unknown` if the loop helper failed). An unconfigured prefix
    /// (`len == 0`) matches nothing.
    #[inline(always)]
    fn in_store(target: &[u8; TARGET_BYTES], target_len: usize, mismatch: &mut u64) -> Verdict {
        let Some(prefix) = STORE_PREFIX.get(0) else {
            return Verdict::Unwatched;
        };
        let prefix_len = prefix.len as usize;
        if prefix_len == 0 || prefix_len > STORE_PREFIX_MAX || target_len < prefix_len {
            return Verdict::Unwatched;
        }
        *mismatch = 0;
        let mut context = PrefixContext {
            target,
            prefix: &prefix.bytes,
            mismatch: &raw mut *mismatch,
        };
        // SAFETY: as in `last_component_hash`; `prefix_len` is at most `STORE_PREFIX_MAX`.
        let done = unsafe {
            bpf_loop(
                prefix_len as u32,
                compare_prefix_byte as *mut c_void,
                (&raw mut context).cast(),
                0,
            )
        };
        if done < 0 {
            Verdict::Unknown
        } else if *mismatch == 0 {
            Verdict::Watched
        } else {
            Verdict::Unwatched
        }
    }

    /// `bpf_loop` callback: compares byte `index` of the target with the prefix's.
    extern "C" fn compare_prefix_byte(index: u64, context: *mut c_void) -> i64 {
        // SAFETY: `bpf_loop` passes the `PrefixContext` that `in_store` built: pointers to
        // this CPU's scratch slot and to the `STORE_PREFIX` value, alive for the call.
        let (target, prefix, mismatch) = unsafe {
            let context = &*context.cast::<PrefixContext>();
            (&*context.target, &*context.prefix, &mut *context.mismatch)
        };
        let index = index as usize;
        match (target.get(index), prefix.get(index)) {
            (Some(a), Some(b)) if a == b => LOOP_CONTINUE,
            _ => {
                *mismatch = 1;
                LOOP_BREAK
            }
        }
    }

    /// Adds one to this CPU's counter `index`.
    #[inline(always)]
    fn count(index: u32) {
        if let Some(counter) = COUNTERS.get_ptr_mut(index) {
            // An atomic add (`BPF_ATOMIC | BPF_ADD`, the old `XADD`, in every kernel we
            // load on): a program preempted between the load and the store of a plain add
            // would overwrite the increment of another task's program on this CPU, and a
            // loss counter must never lose a loss. `core` offers no read-modify-write for the
            // BPF target (it has no compare-and-swap), hence the instruction itself.
            // SAFETY: the pointer is this CPU's 8-byte slot of the map value, valid and
            // aligned for the map's lifetime; the instruction touches only those 8 bytes.
            unsafe {
                core::arch::asm!(
                    "lock *(u64 *)({counter} + 0) += {one}",
                    counter = in(reg) counter,
                    one = in(reg) 1u64,
                    options(nostack),
                );
            }
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any program with a reachable panic path (it would be an
        // unbounded loop or unknown call), so a program that loads never gets here.
        unsafe { core::hint::unreachable_unchecked() }
    }
}
