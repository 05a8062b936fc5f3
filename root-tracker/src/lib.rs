//! root-tracker: finds and tracks the garbage-collection roots of a Nix store.
//!
//! Data flow (see DESIGN.md): kernel sources feed hints to the reconciler, which keeps the
//! index; the scanner is the full traversal used for bootstrap, recovery and `scan`.

pub mod cli;
pub mod source;
