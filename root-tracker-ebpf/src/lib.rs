//! Types shared by the eBPF programs (kernel side) and the tracker (user side).
//!
//! Every record that crosses the ring buffer is defined here once, `#[repr(C)]`, so both sides
//! agree on its layout; user space reads records with a length check and `read_unaligned`.
#![no_std]
