//! The eBPF programs. Built for `bpfel-unknown-none` by `root-tracker`'s build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// On the host this binary has nothing to do; it exists so `cargo build --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
