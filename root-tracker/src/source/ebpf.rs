//! eBPF source (placeholder).
