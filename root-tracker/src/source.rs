//! Sources of hints: the kernel-side watchers that tell the tracker what may have changed.

pub mod ebpf;
