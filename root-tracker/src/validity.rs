//! Read-only access to the store database's `ValidPaths`, to tell registered roots from links
//! to paths Nix would skip ("skipping invalid root").
//!
//! Opened read-only: the tracker never writes to the store's database.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    #[error("cannot open the store database {path:?} read-only")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
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
