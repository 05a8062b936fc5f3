//! Read-only access to the store database's `ValidPaths`, to tell registered roots from links
//! to paths Nix would skip ("skipping invalid root").
//!
//! Opened read-only: the tracker never writes to the store's database.
//!
//! [`ValidityCache`] remembers answers between queries of a running tracker and forgets exactly
//! what the store database may have changed since (new registrations by id, any deletion by
//! forgetting everything), so a query over a million roots does not cost a million lookups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use crate::store_path::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    #[error("cannot open the store database {path:?} read-only")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot stat the store database {path:?}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot query the store database {path:?}")]
    Query {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// A read-only connection to `<state>/db/db.sqlite`.
pub struct ValidPaths {
    path: PathBuf,
    connection: Connection,
}

impl ValidPaths {
    pub fn open(path: &Path) -> Result<Self, ValidityError> {
        let open_error = |source| ValidityError::Open {
            path: path.to_owned(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags).map_err(open_error)?;
        // Nix holds its own locks while it writes; wait for them instead of failing.
        connection
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(open_error)?;
        // Lookups come in bursts of up to millions; a larger page cache and memory-mapped reads
        // keep them off the read(2) path. Both are per-connection and read-only safe.
        connection
            .execute_batch("PRAGMA cache_size = -16384;")
            .map_err(open_error)?;
        // Fail now, not on the first root, if this is not a Nix database.
        connection
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = CAST(?1 AS TEXT)")
            .map_err(open_error)?;
        Ok(Self {
            path: path.to_owned(),
            connection,
        })
    }

    /// Which of `printed_paths` (`<store>/<base>`, sorted for locality) are registered, as
    /// `isValidPath` answers, all read in one transaction: one consistent snapshot, and one
    /// lock instead of a lock, an fstat and cache revalidation per lookup.
    pub fn contains_all(&self, printed_paths: &[Vec<u8>]) -> Result<Vec<bool>, ValidityError> {
        let snapshot = self
            .connection
            .unchecked_transaction()
            .map_err(|source| self.query_error(source))?;
        let found = printed_paths
            .iter()
            .map(|path| self.contains(path))
            .collect::<Result<Vec<_>, _>>()?;
        snapshot
            .finish()
            .map_err(|source| self.query_error(source))?;
        Ok(found)
    }

    fn query_error(&self, source: rusqlite::Error) -> ValidityError {
        ValidityError::Query {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether `printed_path` (`<store>/<base>`) is registered, as `isValidPath` answers.
    pub fn contains(&self, printed_path: &[u8]) -> Result<bool, ValidityError> {
        let query_error = |source| self.query_error(source);
        // Bound as a blob and cast, because a store dir need not be UTF-8 and SQLite never
        // considers a blob equal to the text Nix stored.
        let mut statement = self
            .connection
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = CAST(?1 AS TEXT)")
            .map_err(query_error)?;
        let found: Option<i64> = statement
            .query_row([printed_path], |row| row.get(0))
            .optional()
            .map_err(query_error)?;
        Ok(found.is_some())
    }
}

/// Validity answers kept across queries, revalidated against the database's `data_version`.
///
/// Invariant: every remembered answer equals what `isValidPath` would say now. Nix only adds
/// rows with fresh, growing ids (`ValidPaths.id` is AUTOINCREMENT) and removes rows when it
/// collects garbage or repairs; so when the row count grew by exactly the number of rows
/// beyond the highest id seen, nothing was removed and the new rows are the only change.
/// Anything else (a removal, a replaced database file) forgets every answer.
pub struct ValidityCache {
    db_path: PathBuf,
    /// `<store>/`, to read the store paths the database lists.
    store_prefix: Vec<u8>,
    connection: Option<ValidPaths>,
    /// `PRAGMA data_version` when the answers were last revalidated.
    data_version: Option<i64>,
    max_id: i64,
    rows: i64,
    /// Keyed by the roots' own store paths (shared, not copied): a million answers cost a
    /// hash table, not a million printed paths.
    known: HashMap<StorePath, bool>,
    /// (device, inode) of the database file the connection opened: a replaced file is a new
    /// database whose changes the old connection's `data_version` would never show.
    file_id: Option<(u64, u64)>,
    /// Bumped whenever a remembered answer may have changed; callers key their own caches on it.
    epoch: u64,
}

impl ValidityCache {
    pub fn new(db_path: &Path, store_dir: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        Self {
            db_path: db_path.to_owned(),
            store_prefix: [store_dir.as_os_str().as_bytes(), b"/"].concat(),
            connection: None,
            data_version: None,
            max_id: 0,
            rows: 0,
            known: HashMap::new(),
            file_id: None,
            epoch: 0,
        }
    }

    /// Changes whenever an answer this cache gave may have changed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Opens the connection now. The tracker does this before it drops its privileges: in
    /// WAL mode even a reader needs the `-wal` and `-shm` files, and when no one else has the
    /// database open it must create them in `<state>/db`, which belongs to the store's owner.
    /// Root creates them there (SQLite hands them to the database's owner) and the open
    /// connection keeps them in place; later connections of this process share them.
    pub fn open_now(&mut self) -> Result<(), ValidityError> {
        self.refresh()
    }

    /// Forgets every remembered answer (when the tracker rescans: a fresh start costs one
    /// lookup per root, as a scan does). The connection stays: see [`Self::open_now`].
    pub fn forget(&mut self) {
        self.data_version = None;
        self.known.clear();
        self.epoch += 1;
    }

    /// Forgets everything, connection included (the database file was replaced).
    fn reset(&mut self) {
        self.forget();
        self.connection = None;
        self.file_id = None;
    }

    /// Which of `printed_paths` are registered, looked up through the same connection and
    /// remembered nowhere (a verification sweep; query-time runtime and temp roots).
    pub fn contains_all_uncached(
        &mut self,
        printed_paths: &[Vec<u8>],
    ) -> Result<Vec<bool>, ValidityError> {
        if self.connection.is_none() {
            self.refresh()?;
        }
        match &self.connection {
            Some(valid_paths) => valid_paths.contains_all(printed_paths),
            None => ValidPaths::open(&self.db_path)?.contains_all(printed_paths),
        }
    }

    /// Brings the remembered answers up to date with the database (see the type's invariant).
    pub fn refresh(&mut self) -> Result<(), ValidityError> {
        let result = self.try_refresh();
        if result.is_err() {
            // Answers are forgotten; the connection stays (a busy database or a passing I/O
            // error is no reason to lose it: after the privilege drop a new one may not be
            // possible, see `open_now`). Only a replaced file drops it (`try_refresh`).
            self.forget();
        }
        result
    }

    fn try_refresh(&mut self) -> Result<(), ValidityError> {
        use std::os::unix::fs::MetadataExt as _;
        let file_id = std::fs::metadata(&self.db_path)
            .map(|meta| (meta.dev(), meta.ino()))
            .map_err(|source| ValidityError::Stat {
                path: self.db_path.clone(),
                source,
            })?;
        if self.file_id.is_some_and(|known| known != file_id) {
            self.reset();
        }
        if self.file_id.is_none() {
            self.connection = None;
            self.data_version = None;
        }
        self.file_id = Some(file_id);
        let valid_paths = match self.connection.take() {
            Some(connection) => connection,
            None => ValidPaths::open(&self.db_path)?,
        };
        let valid_paths = self.connection.insert(valid_paths);
        let query_error = |source| valid_paths.query_error(source);
        let data_version: i64 = valid_paths
            .connection
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(query_error)?;
        if self.data_version == Some(data_version) {
            return Ok(());
        }
        let snapshot = valid_paths
            .connection
            .unchecked_transaction()
            .map_err(query_error)?;
        let (max_id, rows): (Option<i64>, i64) = snapshot
            .query_row("SELECT max(id), count(*) FROM ValidPaths", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(query_error)?;
        let max_id = max_id.unwrap_or(0);
        let mut added = Vec::new();
        if self.data_version.is_some() {
            let mut statement = snapshot
                .prepare("SELECT CAST(path AS BLOB) FROM ValidPaths WHERE id > ?1")
                .map_err(query_error)?;
            let mut found = statement.query([self.max_id]).map_err(query_error)?;
            while let Some(row) = found.next().map_err(query_error)? {
                added.push(row.get::<_, Vec<u8>>(0).map_err(query_error)?);
            }
        }
        // Without AUTOINCREMENT, SQLite may hand a deleted highest id to the next row, and a
        // removal plus a registration would look like nothing: then every change forgets all.
        let ids_grow: bool = snapshot
            .query_row(
                "SELECT instr(lower(sql), 'autoincrement') > 0 FROM sqlite_master
                 WHERE type = 'table' AND name = 'ValidPaths'",
                [],
                |row| row.get(0),
            )
            .map_err(query_error)?;
        snapshot.finish().map_err(query_error)?;
        let only_added = ids_grow
            && self.data_version.is_some()
            && max_id >= self.max_id
            && i64::try_from(added.len()).is_ok_and(|added| rows == self.rows + added);
        if only_added {
            for path in added {
                let store_path = path
                    .strip_prefix(self.store_prefix.as_slice())
                    .and_then(StorePath::from_base_name);
                // A path that is not a store path was never asked about.
                let Some(store_path) = store_path else {
                    continue;
                };
                if let Some(valid) = self.known.get_mut(&store_path) {
                    if !*valid {
                        *valid = true;
                        self.epoch += 1;
                    }
                }
            }
        } else {
            self.known.clear();
            self.epoch += 1;
        }
        self.data_version = Some(data_version);
        self.max_id = max_id;
        self.rows = rows;
        Ok(())
    }

    /// Which of `store_paths` (printed as `printed_paths`) are registered; looks up (in one
    /// snapshot) only what it does not remember. Call [`Self::refresh`] first.
    pub fn contains_all(
        &mut self,
        store_paths: &[StorePath],
        printed_paths: &[Vec<u8>],
    ) -> Result<Vec<bool>, ValidityError> {
        let unknown: Vec<usize> = (0..store_paths.len())
            .filter(|&at| !self.known.contains_key(&store_paths[at]))
            .collect();
        if !unknown.is_empty() {
            if self.connection.is_none() {
                // Answers are only remembered against a data_version baseline.
                self.refresh()?;
            }
            let printed: Vec<Vec<u8>> = unknown
                .iter()
                .map(|&at| printed_paths[at].clone())
                .collect();
            let found = match &self.connection {
                Some(valid_paths) => valid_paths.contains_all(&printed),
                None => ValidPaths::open(&self.db_path)?.contains_all(&printed),
            };
            let found = match found {
                Ok(found) => found,
                Err(error) => {
                    self.forget();
                    return Err(error);
                }
            };
            self.known.extend(
                unknown
                    .into_iter()
                    .map(|at| store_paths[at].clone())
                    .zip(found),
            );
        }
        Ok(store_paths
            .iter()
            .map(|path| self.known.get(path).copied().unwrap_or(false))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with Nix's `ValidPaths` schema (ids AUTOINCREMENT), or plain rowids.
    fn store_db_with(path: &Path, id: &str) -> Connection {
        let db = Connection::open(path).unwrap();
        db.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS ValidPaths (id {id}, path TEXT UNIQUE NOT NULL);"
        ))
        .unwrap();
        db
    }

    fn store_db(path: &Path) -> Connection {
        store_db_with(path, "INTEGER PRIMARY KEY AUTOINCREMENT")
    }

    #[test]
    fn reused_rowids_do_not_hide_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = store_db_with(&path, "INTEGER PRIMARY KEY");
        register(&db, "a");
        register(&db, "b");
        let mut cache = cache(&path);
        assert_eq!(ask(&mut cache, &["b", "c"]), [true, false]);
        // /s/c takes /s/b's id: same count, same highest id.
        unregister(&db, "b");
        register(&db, "c");
        assert_eq!(ask(&mut cache, &["b", "c"]), [false, true]);
    }

    /// `/s/<hash>-<name>`: the store path named `name` in store `/s`.
    fn printed(name: &str) -> String {
        format!("/s/0123456789abcdfghijklmnpqrsvwxyz-{name}")
    }

    fn register(db: &Connection, name: &str) {
        db.execute("INSERT INTO ValidPaths (path) VALUES (?1)", [printed(name)])
            .unwrap();
    }

    fn unregister(db: &Connection, name: &str) {
        db.execute("DELETE FROM ValidPaths WHERE path = ?1", [printed(name)])
            .unwrap();
    }

    fn cache(db_path: &Path) -> ValidityCache {
        ValidityCache::new(db_path, Path::new("/s"))
    }

    fn ask(cache: &mut ValidityCache, names: &[&str]) -> Vec<bool> {
        cache.refresh().unwrap();
        let printed: Vec<Vec<u8>> = names.iter().map(|name| printed(name).into()).collect();
        let store_paths: Vec<StorePath> = printed
            .iter()
            .map(|path| StorePath::from_base_name(&path[3..]).unwrap())
            .collect();
        cache.contains_all(&store_paths, &printed).unwrap()
    }

    #[test]
    fn remembered_answers_follow_registrations_removals_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = store_db(&path);
        register(&db, "a");
        let mut cache = cache(&path);
        assert_eq!(ask(&mut cache, &["a", "b"]), [true, false]);
        let epoch = cache.epoch();
        assert_eq!(ask(&mut cache, &["a", "b"]), [true, false]);
        assert_eq!(cache.epoch(), epoch, "nothing changed, nothing forgotten");

        // A registration by another connection flips the remembered "invalid".
        register(&db, "b");
        register(&db, "c");
        assert_eq!(ask(&mut cache, &["a", "b", "c"]), [true, true, true]);
        assert_ne!(cache.epoch(), epoch);
        let epoch = cache.epoch();

        // A removal (what a collector does) forgets everything.
        unregister(&db, "a");
        assert_eq!(ask(&mut cache, &["a", "b"]), [false, true]);
        assert_ne!(cache.epoch(), epoch);

        // A removal hidden by as many registrations is still seen (the row count does not
        // grow by the new rows).
        unregister(&db, "b");
        register(&db, "d");
        assert_eq!(ask(&mut cache, &["b", "d"]), [false, true]);

        // A database replaced by another file is a new database.
        drop(db);
        let replacement = dir.path().join("new.sqlite");
        let other = store_db(&replacement);
        register(&other, "b");
        drop(other);
        // (The old database's WAL files go too, or SQLite would read them with the new file.)
        for stale in ["db.sqlite-wal", "db.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(stale));
        }
        std::fs::rename(&replacement, &path).unwrap();
        assert_eq!(ask(&mut cache, &["b", "d"]), [true, false]);
    }
}
