//! root-tracker: finds and tracks the garbage-collection roots of a Nix store.
//!
//! Data flow (see DESIGN.md): kernel sources feed hints to the reconciler, which keeps the
//! index; the scanner ([`scan`]) is the full traversal used for bootstrap, recovery and the
//! `scan` command, and the reference the live index is tested against.

pub mod cli;
pub mod hint;
pub mod index;
pub mod layout;
pub mod mounts;
pub mod privilege;
pub mod proc_reader;
pub mod protocol;
pub mod reconcile;
pub mod report;
pub mod scan;
pub mod server;
pub mod source;
pub mod state_watch;
pub mod store_path;
pub mod tracker;
pub mod validity;
