//! Deleting what the walk found dead, in the order Nix deletes it: per dead closure,
//! referrers before references, each path first invalidated in the database (as
//! `invalidatePathChecked`: refused while another valid path still refers to it), then removed
//! from disk (`deletePath`: directories made writable first, bytes counted as Nix counts them).
//!
//! Invalidations are batched into one transaction per chunk of a closure; a crash between the
//! commit and the file removal leaves files that are no longer valid, which the next run
//! deletes as unregistered entries — never a valid path whose files are gone.

use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior};

use crate::graph::{NodeIdx, StoreGraph};
use crate::layout::{StoreLayout, canon_path};
use crate::liveness::DeadSink;
use crate::progress::Progress;

/// Invalidations per transaction when no `--max-freed` bound needs path-by-path accounting.
const CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("cannot open the store database {path} for writing")]
    OpenDb {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("updating the store database {path} ({what})")]
    Db {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot delete path '{path}' because it is in use by '{referrer}'")]
    InUse { path: String, referrer: String },
    #[error("store path name {name:?} is not UTF-8 text as the database stores it")]
    NotText { name: String },
    #[error("cannot delete {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Deletes dead closures and entries as the walk reports them.
pub struct Deleter<'a> {
    layout: &'a StoreLayout,
    db: Connection,
    max_freed: u64,
    chunk: usize,
    /// Entries removed from the store directory (Nix's `results.paths`).
    pub deleted: usize,
    /// Nix's `bytesFreed`.
    pub bytes_freed: u64,
    /// Invalidated in the database.
    pub invalidated: usize,
    /// The error that stopped the walk, if any.
    pub error: Option<DeleteError>,
    progress: &'a Progress,
}

impl<'a> Deleter<'a> {
    pub fn new(
        layout: &'a StoreLayout,
        max_freed: u64,
        progress: &'a Progress,
    ) -> Result<Self, DeleteError> {
        let path = layout.db_path();
        let db = Connection::open(&path).map_err(|source| DeleteError::OpenDb {
            path: path.clone(),
            source,
        })?;
        let db_error = |what| {
            let path = path.clone();
            move |source| DeleteError::Db { path, what, source }
        };
        // As Nix's SQLite wrapper: wait for other writers, and let foreign keys remove the
        // `Refs` rows of a deleted referrer and the `DerivationOutputs` of a deleted derivation.
        db.busy_timeout(Duration::from_secs(3600))
            .map_err(db_error("busy timeout"))?;
        db.execute_batch("PRAGMA foreign_keys = 1")
            .map_err(db_error("foreign keys"))?;
        // As Nix's `openDB` with fsync-metadata (the default): in WAL mode, NORMAL syncs at
        // checkpoints, not at every commit, and a crash loses at most the last commits, never
        // consistency. FULL (SQLite's default) costs an fsync per dead closure.
        db.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(db_error("synchronous"))?;
        // With a bound, account path by path as Nix does, so we stop where it would.
        let chunk = if max_freed == u64::MAX { CHUNK } else { 1 };
        Ok(Self {
            layout,
            db,
            max_freed,
            chunk,
            deleted: 0,
            bytes_freed: 0,
            invalidated: 0,
            error: None,
            progress,
        })
    }

    /// `invalidatePathChecked` for each path of `chunk`, in one transaction.
    fn invalidate(&mut self, graph: &StoreGraph, chunk: &[NodeIdx]) -> Result<(), DeleteError> {
        let db_path = self.layout.db_path();
        let db_error = |what| {
            let path = db_path.clone();
            move |source| DeleteError::Db { path, what, source }
        };
        let transaction = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error("begin"))?;
        let mut invalidated = 0;
        for &node in chunk {
            let printed = self.layout.print_store_path(graph.basename(node));
            let path = std::str::from_utf8(&printed).map_err(|_| DeleteError::NotText {
                name: String::from_utf8_lossy(&printed).into_owned(),
            })?;
            let id: Option<i64> = transaction
                .prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")
                .and_then(|mut statement| statement.query_row([path], |row| row.get(0)))
                .optional()
                .map_err(db_error("look up path"))?;
            // Already invalid (another collector got there): nothing to do, as in Nix.
            let Some(id) = id else { continue };
            let referrer: Option<String> = transaction
                .prepare_cached(
                    "SELECT v.path FROM Refs r JOIN ValidPaths v ON r.referrer = v.id \
                     WHERE r.reference = ?1 AND r.referrer != ?1 LIMIT 1",
                )
                .and_then(|mut statement| statement.query_row([id], |row| row.get(0)))
                .optional()
                .map_err(db_error("query referrers"))?;
            // Someone registered a path referring to this one since we loaded the graph:
            // deleting it would break that path's closure. Stop (the transaction rolls back).
            if let Some(referrer) = referrer {
                return Err(DeleteError::InUse {
                    path: path.to_owned(),
                    referrer,
                });
            }
            transaction
                .prepare_cached("DELETE FROM ValidPaths WHERE id = ?1")
                .and_then(|mut statement| statement.execute([id]))
                .map_err(db_error("invalidate path"))?;
            invalidated += 1;
        }
        transaction.commit().map_err(db_error("commit"))?;
        self.invalidated += invalidated;
        Ok(())
    }

    /// Whether `<store>/<name>` is a valid path in the database now.
    fn registered_now(&self, name: &[u8]) -> Result<bool, DeleteError> {
        let printed = self.layout.print_store_path(name);
        // Nix stores paths as text: a name that is not UTF-8 cannot be registered.
        let Ok(path) = std::str::from_utf8(&printed) else {
            return Ok(false);
        };
        self.db
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = ?1")
            .and_then(|mut statement| statement.exists([path]))
            .map_err(|source| DeleteError::Db {
                path: self.layout.db_path(),
                what: "look up path",
                source,
            })
    }

    /// Nix's `deleteFromStore`: remove `<store>/<name>`, count it, stop past `--max-freed`.
    fn remove(&mut self, name: &[u8]) -> ControlFlow<()> {
        let path = self
            .layout
            .store_dir()
            .join(std::ffi::OsStr::from_bytes(name));
        tracing::info!(path = %path.display(), "deleting");
        self.deleted += 1;
        if let Err(source) = delete_path(&path, &mut self.bytes_freed) {
            self.error = Some(DeleteError::Remove { path, source });
            return ControlFlow::Break(());
        }
        self.progress.deleted(self.bytes_freed);
        if self.bytes_freed > self.max_freed {
            tracing::warn!(
                max_freed = self.max_freed,
                "deleted more than --max-freed bytes; stopping"
            );
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

impl DeadSink for Deleter<'_> {
    fn dead_paths(&mut self, graph: &StoreGraph, paths: &[NodeIdx]) -> ControlFlow<()> {
        for chunk in paths.chunks(self.chunk) {
            if let Err(error) = self.invalidate(graph, chunk) {
                self.error = Some(error);
                return ControlFlow::Break(());
            }
            for &node in chunk {
                self.remove(graph.basename(node))?;
            }
        }
        ControlFlow::Continue(())
    }

    fn dead_entry(&mut self, name: &[u8]) -> ControlFlow<()> {
        // Not in the graph we loaded; but a client that takes no temp root (plain
        // `--register-validity`) may have registered it since. Nix asks `isValidPath` at this
        // point; so do we, and keep what is valid now.
        match self.registered_now(name) {
            Ok(false) => self.remove(name),
            Ok(true) => {
                tracing::info!(name = %String::from_utf8_lossy(name), "registered since the database was loaded; kept");
                ControlFlow::Continue(())
            }
            Err(error) => {
                self.error = Some(error);
                ControlFlow::Break(())
            }
        }
    }

    fn deletes(&self) -> bool {
        true
    }
}

/// Nix's `_deletePath`: a missing path is fine; a directory is made accessible (u+rwx) before
/// its entries are removed; a file frees its size when it has one or two links (two: probably
/// a hard link into `.links`, freed when that is cleaned).
pub fn delete_path(path: &Path, bytes_freed: &mut u64) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let ignore_missing = |result: io::Result<()>| match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    if metadata.is_dir() {
        let mode = metadata.mode();
        if mode & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode((mode & 0o7777) | 0o700))?;
        }
        for entry in fs::read_dir(path)? {
            delete_path(&entry?.path(), bytes_freed)?;
        }
        ignore_missing(fs::remove_dir(path))
    } else {
        if matches!(metadata.nlink(), 1 | 2) {
            *bytes_freed += metadata.size();
        }
        ignore_missing(fs::remove_file(path))
    }
}

/// The start of a deleting `collectGarbage`: `deletePath(reservedPath)`, so that a collection
/// started because the disk is full has room for its database transactions. Nix recreates the
/// file the next time a store is opened. A failure is only logged: the file is a convenience,
/// and not releasing it keeps every path alive that would have been.
pub fn release_reserved_space(layout: &StoreLayout) {
    let path = layout.reserved_path();
    let mut freed = 0;
    match delete_path(&path, &mut freed) {
        Ok(()) if freed > 0 => {
            tracing::info!(path = %path.display(), freed, "released the reserved space")
        }
        Ok(()) => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot release the reserved space")
        }
    }
}

/// The end of `collectGarbage`: files in `<store>/.links` with no other link are unused.
pub fn remove_unused_links(layout: &StoreLayout) -> io::Result<usize> {
    let dir = layout.store_dir().join(".links");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.nlink() == 1 {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `findRoots` removes a link under `<state>/gcroots/auto` whose target does not exist
/// ("removing stale link"). Only links the tracker itself found stale are candidates, and each
/// is checked again now (under the GC lock) from here: removed only when the target is
/// confirmed missing for both (ENOENT or ENOTDIR, Nix's `pathExists`). Our own view alone is
/// not enough — in another mount namespace (a service's PrivateTmp, ProtectHome) a live
/// user's link can look missing, and removing its auto link would lose the root at the next
/// run. A tracker that censors links for us confirms nothing, so nothing is removed then.
/// Returns how many links were removed.
pub fn remove_stale_auto_links(layout: &StoreLayout, confirmed: &[Vec<u8>]) -> usize {
    let auto = layout.state_dir().join("gcroots/auto");
    let mut removed = 0;
    for link in confirmed {
        let link = Path::new(std::ffi::OsStr::from_bytes(link));
        if !link.starts_with(&auto) || link == auto {
            continue;
        }
        let is_link = fs::symlink_metadata(link).is_ok_and(|meta| meta.file_type().is_symlink());
        if is_link && is_stale(layout, link) {
            tracing::info!(link = %link.display(), "removing stale link");
            if fs::remove_file(link).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn is_stale(layout: &StoreLayout, link: &Path) -> bool {
    let Ok(target) = fs::read_link(link) else {
        return false;
    };
    if layout.is_in_store(target.as_os_str().as_bytes()) {
        return false;
    }
    let absolute = match link.parent() {
        Some(dir) => dir.join(&target),
        None => target,
    };
    let Some(absolute) = canon_path(&absolute) else {
        return false;
    };
    match fs::symlink_metadata(&absolute) {
        Ok(_) => false,
        Err(error) => {
            error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ENOTDIR)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;

    #[test]
    fn read_only_trees_are_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        fs::create_dir_all(tree.join("bin")).unwrap();
        fs::write(tree.join("bin/tool"), b"12345").unwrap();
        fs::write(tree.join("data"), b"123").unwrap();
        std::os::unix::fs::symlink("data", tree.join("link")).unwrap();
        fs::set_permissions(tree.join("bin"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o555)).unwrap();
        let mut bytes = 0;
        delete_path(&tree, &mut bytes).unwrap();
        assert!(!tree.exists());
        // Symlinks count their own size (the target text), as lstat reports it.
        assert_eq!(bytes, 5 + 3 + 4);
        delete_path(&tree, &mut bytes).unwrap();
    }

    #[test]
    fn only_auto_links_with_missing_targets_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let layout =
            StoreLayout::new(&dir.path().join("store"), &dir.path().join("state")).unwrap();
        let auto = layout.state_dir().join("gcroots/auto");
        fs::create_dir_all(auto.join("sub")).unwrap();
        fs::create_dir_all(layout.store_dir()).unwrap();
        let result = dir.path().join("result");
        fs::write(&result, b"").unwrap();
        std::os::unix::fs::symlink(&result, auto.join("alive")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), auto.join("stale")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), auto.join("sub/stale")).unwrap();
        // A (dangling) link into the store is a direct root, not an indirect one.
        let in_store = layout
            .store_dir()
            .join("0123456789abcdfghijklmnpqrsvwxyz-x");
        std::os::unix::fs::symlink(&in_store, auto.join("direct")).unwrap();
        let bytes = |name: &str| auto.join(name).into_os_string().into_vec();
        // Unconfirmed by the tracker: kept, however missing its target looks from here.
        assert_eq!(remove_stale_auto_links(&layout, &[]), 0);
        assert_eq!(
            remove_stale_auto_links(&layout, &[b"{censored}".to_vec()]),
            0
        );
        assert!(auto.join("stale").symlink_metadata().is_ok());
        // Confirmed: removed only where the target is missing from here too, and only links
        // under gcroots/auto.
        let outside = dir.path().join("outside");
        std::os::unix::fs::symlink(dir.path().join("gone"), &outside).unwrap();
        let confirmed = [
            bytes("alive"),
            bytes("stale"),
            bytes("sub/stale"),
            bytes("direct"),
            outside.clone().into_os_string().into_vec(),
        ];
        assert_eq!(remove_stale_auto_links(&layout, &confirmed), 2);
        assert!(auto.join("alive").symlink_metadata().is_ok());
        assert!(auto.join("direct").symlink_metadata().is_ok());
        assert!(outside.symlink_metadata().is_ok());
        assert!(auto.join("stale").symlink_metadata().is_err());
        assert!(auto.join("sub/stale").symlink_metadata().is_err());
    }
}
