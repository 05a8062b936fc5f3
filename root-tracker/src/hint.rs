//! Hints: what a source tells the reconciler. A hint names what *may* have changed; the
//! reconciler re-reads the filesystem and writes what it finds (DESIGN.md, invariant 2), so
//! duplicated, reordered or merged hints are harmless — lost ones are not, and are reported.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hint {
    /// The entry at this absolute path may have been created, removed, replaced or renamed
    /// (for a directory: everything beneath it may have moved too). The path is as the
    /// operation named it, so it may pass through symlinked directories.
    Path(PathBuf),
    /// An entry with this name changed in a directory the source could not name (a relative
    /// path whose base directory is gone). The reconciler re-checks every root whose path has
    /// a component with this name.
    Basename(OsString),
    /// Mounts changed: anything may now resolve differently.
    MountsChanged,
    /// Hints may have been lost (a full ring buffer or queue), or an operation happened that
    /// the source cannot see (io_uring): the index is unsettled until a rescan.
    Lost { reason: String },
}
