//! The eBPF programs. Built for `bpfel-unknown-none` by `root-tracker`'s build script.
//!
//! `sys_enter_symlink` and `sys_enter_symlinkat` report symlink creations whose target starts
//! with the store dir prefix (`STORE_PREFIX`, set by user space before attaching). Every matching
//! request is either sent or counted as dropped, and a request whose target cannot be read is
//! counted too, so lost hints are always visible.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// On the host this binary has nothing to do; it exists so `cargo build --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod kernel {
    use aya_ebpf::{
        helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
        macros::{map, tracepoint},
        maps::{Array, PerCpuArray, RingBuf},
        programs::TracePointContext,
    };
    use root_tracker_ebpf::{
        AT_FDCWD, COUNTER_COUNT, COUNTER_DROPPED, COUNTER_SENT, COUNTER_TARGET_UNREADABLE,
        PATH_BYTES, RING_BUF_BYTES, STORE_PREFIX_MAX, StorePrefix, SymlinkEvent, flags, syscall,
    };

    #[map]
    static SYMLINK_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

    #[map]
    static STORE_PREFIX: Array<StorePrefix> = Array::with_max_entries(1, 0);

    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

    /// An event is 8 KiB, far over the 512-byte BPF stack, so it is built in a per-CPU slot and
    /// copied into the ring buffer only once the filter has matched.
    #[map]
    static SCRATCH: PerCpuArray<SymlinkEvent> = PerCpuArray::with_max_entries(1, 0);

    /// Byte offsets of the arguments in the syscall tracepoint records
    /// (`/sys/kernel/tracing/events/syscalls/sys_enter_symlink{,at}/format`); each argument is
    /// an 8-byte slot after the 8-byte common header and the syscall number.
    const ARG0: usize = 16;
    const ARG1: usize = 24;
    const ARG2: usize = 32;

    /// Where a syscall keeps the arguments the programs read.
    struct Args {
        syscall: u32,
        target: usize,
        dirfd: Option<usize>,
        link_path: usize,
    }

    #[tracepoint(category = "syscalls", name = "sys_enter_symlink")]
    pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
        let args = Args {
            syscall: syscall::SYMLINK,
            target: ARG0,
            dirfd: None,
            link_path: ARG1,
        };
        let _ = report_symlink(&ctx, &args);
        0
    }

    #[tracepoint(category = "syscalls", name = "sys_enter_symlinkat")]
    pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
        let args = Args {
            syscall: syscall::SYMLINKAT,
            target: ARG0,
            dirfd: Some(ARG1),
            link_path: ARG2,
        };
        let _ = report_symlink(&ctx, &args);
        0
    }

    /// Reads the target; if it is in the store, reads the rest and sends the event.
    #[inline(always)]
    fn report_symlink(ctx: &TracePointContext, args: &Args) -> Result<(), i64> {
        let event_ptr = SCRATCH.get_ptr_mut(0).ok_or(0)?;
        // SAFETY: the map lookup returned a non-null pointer to this CPU's slot, which lives as
        // long as the map; the program runs to completion on this CPU (syscall tracepoints do
        // not nest), so nothing else aliases the slot meanwhile.
        let event = unsafe { &mut *event_ptr };

        // SAFETY: `args.target` is the offset of a pointer-sized field in the tracepoint record.
        let target_ptr = unsafe { ctx.read_at::<u64>(args.target) }? as *const u8;
        // SAFETY: the helper reads at most `PATH_BYTES` bytes from user memory, faulting safely.
        let target_len =
            match unsafe { bpf_probe_read_user_str_bytes(target_ptr, &mut event.target) } {
                Ok(target) => target.len(),
                Err(error) => {
                    // Not knowing whether it was a store link is a possibly lost hint: count it.
                    count(COUNTER_TARGET_UNREADABLE);
                    return Err(error.into());
                }
            };
        if !in_store(&event.target, target_len) {
            return Ok(());
        }

        let pid_tgid = bpf_get_current_pid_tgid();
        event.tgid = (pid_tgid >> 32) as u32;
        event.tid = pid_tgid as u32;
        event.syscall = args.syscall;
        event.dirfd = match args.dirfd {
            // The record slot is a sign-extended `int`; truncating keeps its value.
            // SAFETY: `offset` is the offset of an 8-byte field in the tracepoint record.
            Some(offset) => unsafe { ctx.read_at::<u64>(offset) }? as i32,
            None => AT_FDCWD,
        };
        event.target_len = target_len as u32;
        event.flags = 0;
        event.reserved = 0;
        if target_len >= PATH_BYTES - 1 {
            event.flags |= flags::TARGET_TRUNCATED;
        }

        // SAFETY: `args.link_path` is the offset of a pointer-sized field in the record.
        let link_ptr = unsafe { ctx.read_at::<u64>(args.link_path) }? as *const u8;
        // SAFETY: as for the target: bounded read of user memory that may fault.
        match unsafe { bpf_probe_read_user_str_bytes(link_ptr, &mut event.link_path) } {
            Ok(link_path) => {
                event.link_path_len = link_path.len() as u32;
                if link_path.len() >= PATH_BYTES - 1 {
                    event.flags |= flags::LINK_PATH_TRUNCATED;
                }
            }
            Err(_) => {
                event.link_path_len = 0;
                event.flags |= flags::LINK_PATH_UNREADABLE;
            }
        }

        match SYMLINK_EVENTS.output::<SymlinkEvent>(&*event, 0) {
            Ok(()) => count(COUNTER_SENT),
            Err(_) => count(COUNTER_DROPPED),
        }
        Ok(())
    }

    /// Whether the first `target_len` bytes of `target` start with the configured store prefix.
    /// An unconfigured prefix (`len == 0`) matches nothing.
    #[inline(always)]
    fn in_store(target: &[u8; PATH_BYTES], target_len: usize) -> bool {
        let Some(prefix) = STORE_PREFIX.get(0) else {
            return false;
        };
        let prefix_len = prefix.len as usize;
        if prefix_len == 0 || prefix_len > STORE_PREFIX_MAX || target_len < prefix_len {
            return false;
        }
        // Bounded by the constant `STORE_PREFIX_MAX`, so the verifier can prove termination.
        let mut i = 0;
        while i < STORE_PREFIX_MAX {
            if i >= prefix_len {
                return true;
            }
            if target.get(i) != prefix.bytes.get(i) {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Adds one to this CPU's counter `index`.
    #[inline(always)]
    fn count(index: u32) {
        if let Some(counter) = COUNTERS.get_ptr_mut(index) {
            // SAFETY: the pointer is this CPU's 8-byte slot of the map value, valid for the
            // map's lifetime. It has one writer at a time: the slot is per CPU and tracepoint
            // programs do not nest on a CPU (the kernel's `bpf_prog_active` guard). The BPF
            // target has no atomic read-modify-write in `core`, hence the plain add.
            unsafe { *counter += 1 };
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any program with a reachable panic path (it would be an
        // unbounded loop or unknown call), so a program that loads never gets here.
        unsafe { core::hint::unreachable_unchecked() }
    }
}
