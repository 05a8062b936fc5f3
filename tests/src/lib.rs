//! Test harness: hermetic stores and everything a test creates, removed in `Drop`.
