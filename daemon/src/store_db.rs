//! Reads Nix's store database (`<state>/db/db.sqlite`) once, read-only, into a [`StoreGraph`]:
//! `ValidPaths`, `Refs` and `DerivationOutputs`, in one read transaction so the three tables
//! are one snapshot; a [`Snapshot`] tells afterwards whether the database has changed since.
//!
//! Invariant: a row we cannot interpret is an error, never skipped — a reference we dropped
//! could make a live path look dead.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::graph::{GraphBuilder, GraphError, NameIndex, NodeIdx, StoreGraph};
use crate::layout::StoreLayout;

#[derive(Debug, thiserror::Error)]
pub enum StoreDbError {
    #[error("cannot open the store database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("reading the store database {path} ({what})")]
    Query {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store database names {path:?}, which is not a store path under {store_dir}")]
    ForeignPath { path: PathBuf, store_dir: PathBuf },
    #[error("the store database refers to path id {id}, which is not in ValidPaths ({table})")]
    DanglingId { id: i64, table: &'static str },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Maps `ValidPaths.id` to nodes: a dense array when ids are compact (the usual case), else a
/// sorted array searched by bisection, so a store with a long history of deletions cannot
/// blow up memory.
enum IdMap {
    Dense(Vec<u32>),
    Sparse(Vec<(i64, NodeIdx)>),
}

impl IdMap {
    /// From the id of each row (in the order read) and the node of each row.
    fn new(ids: &[i64], node_of_row: &[NodeIdx]) -> Self {
        let max_id = ids.iter().copied().max().unwrap_or(0);
        let min_id = ids.iter().copied().min().unwrap_or(0);
        let dense_len = usize::try_from(max_id).ok().map(|max| max + 1);
        match dense_len {
            Some(len) if min_id >= 0 && len <= 4 * ids.len() + 4096 => {
                let mut dense = vec![u32::MAX; len];
                for (&id, node) in ids.iter().zip(node_of_row) {
                    // 0 <= id <= max_id < len, checked above.
                    dense[id as usize] = node.index() as u32;
                }
                Self::Dense(dense)
            }
            _ => {
                let mut pairs: Vec<(i64, NodeIdx)> = ids
                    .iter()
                    .copied()
                    .zip(node_of_row.iter().copied())
                    .collect();
                pairs.sort_unstable();
                Self::Sparse(pairs)
            }
        }
    }

    fn get(&self, id: i64) -> Option<NodeIdx> {
        match self {
            Self::Dense(dense) => {
                let raw = *dense.get(usize::try_from(id).ok()?)?;
                (raw != u32::MAX).then(|| NodeIdx::from_index(raw as usize))
            }
            Self::Sparse(sorted) => sorted
                .binary_search_by_key(&id, |&(id, _)| id)
                .ok()
                .map(|i| sorted[i].1),
        }
    }
}

/// The `deriver` column of each row that has one (store basenames), in one buffer.
#[derive(Default)]
struct Derivers {
    rows: Vec<u32>,
    ends: Vec<usize>,
    names: Vec<u8>,
}

impl Derivers {
    fn push(&mut self, row: u32, name: &[u8]) {
        self.rows.push(row);
        self.names.extend_from_slice(name);
        self.ends.push(self.names.len());
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.rows
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(&row, (start, end))| (row, &self.names[start..end]))
    }
}

/// The state of the database a graph was read from, kept open to tell later whether it is
/// still the state of the database.
pub struct Snapshot {
    connection: Connection,
    path: PathBuf,
    /// `PRAGMA data_version` inside the read transaction.
    data_version: i64,
}

impl Snapshot {
    /// Whether no other connection has committed since the graph was read, so that loading
    /// it now would give the same graph. `PRAGMA data_version` outside a transaction reads
    /// the newest state, and differs from the value read inside ours exactly when another
    /// connection committed in between (a checkpoint may also count; that only costs a reload).
    pub fn is_current(&self) -> Result<bool, StoreDbError> {
        let now = data_version(&self.connection).map_err(|source| StoreDbError::Query {
            path: self.path.clone(),
            what: "data_version",
            source,
        })?;
        Ok(now == self.data_version)
    }
}

fn data_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// Opens the database read-only and loads the graph.
pub fn load(layout: &StoreLayout) -> Result<StoreGraph, StoreDbError> {
    Ok(load_publishing(layout, |_| {})?.0)
}

/// [`load`], handing the sorted path names to `publish` as soon as they are indexed (before
/// the references are read), and keeping the [`Snapshot`] the graph was read from.
pub fn load_publishing(
    layout: &StoreLayout,
    publish: impl FnOnce(NameIndex),
) -> Result<(StoreGraph, Snapshot), StoreDbError> {
    let path = layout.db_path();
    let connection = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreDbError::Open {
        path: path.clone(),
        source,
    })?;
    let (graph, data_version) = load_from(&connection, layout, &path, publish)?;
    Ok((
        graph,
        Snapshot {
            connection,
            path,
            data_version,
        },
    ))
}

/// The graph, and the `data_version` of the snapshot it was read from.
fn load_from(
    connection: &Connection,
    layout: &StoreLayout,
    db_path: &Path,
    publish: impl FnOnce(NameIndex),
) -> Result<(StoreGraph, i64), StoreDbError> {
    // Built only on failure: this runs for every row.
    let query_error = |what: &'static str, source: rusqlite::Error| StoreDbError::Query {
        path: db_path.to_owned(),
        what,
        source,
    };
    let text_error = |what: &'static str, source: rusqlite::types::FromSqlError| {
        query_error(what, source.into())
    };
    // Nix writes while we read; WAL gives this transaction one snapshot of all three tables.
    connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(|e| query_error("begin", e))?;
    let store_dir = layout.store_dir();

    let mut builder = GraphBuilder::new();
    let mut ids = Vec::new();
    // Derivers are names, looked up once the paths are sorted; kept until then (one buffer)
    // rather than read in a second pass over the table.
    let mut derivers = Derivers::default();
    {
        // Table order, not `ORDER BY path`: walking the path index visits table pages at
        // random (2.4 s against 0.13 s at a million paths); sorting in memory is cheaper.
        let mut statement = connection
            .prepare("SELECT id, path, narSize, deriver FROM ValidPaths")
            .map_err(|e| query_error("ValidPaths", e))?;
        let mut rows = statement
            .query([])
            .map_err(|e| query_error("ValidPaths", e))?;
        while let Some(row) = rows.next().map_err(|e| query_error("ValidPaths", e))? {
            let id = row
                .get_ref(0)
                .map_err(|e| query_error("ValidPaths.id", e))?
                .as_i64()
                .map_err(|e| text_error("ValidPaths.id", e))?;
            let path = row
                .get_ref(1)
                .map_err(|e| query_error("ValidPaths.path", e))?
                .as_bytes()
                .map_err(|e| text_error("ValidPaths.path", e))?;
            let nar_size = row
                .get_ref(2)
                .map_err(|e| query_error("ValidPaths.narSize", e))?
                .as_i64_or_null()
                .map_err(|e| text_error("ValidPaths.narSize", e))?;
            let basename =
                layout
                    .store_basename(path)
                    .ok_or_else(|| StoreDbError::ForeignPath {
                        path: PathBuf::from(OsStr::from_bytes(path)),
                        store_dir: store_dir.to_owned(),
                    })?;
            let row_index = builder.add_path(basename, nar_size.unwrap_or(0).max(0) as u64)?;
            ids.push(id);
            let deriver = row
                .get_ref(3)
                .map_err(|e| query_error("ValidPaths.deriver", e))?;
            if !matches!(deriver, ValueRef::Null) {
                let deriver = deriver
                    .as_bytes()
                    .map_err(|e| text_error("ValidPaths.deriver", e))?;
                // A deriver outside the store is never valid, so never followed.
                if let Some(name) = layout.store_basename(deriver) {
                    derivers.push(row_index, name);
                }
            }
        }
    }
    let node_of_row = builder.sort_paths()?;
    if let Some(index) = builder.name_index() {
        publish(index);
    }
    // Only a valid deriver matters: `computeFSClosure` checks `isValidPath(deriver)`.
    for (row, name) in derivers.iter() {
        if let Some(drv) = builder.find(name) {
            builder.set_deriver(node_of_row[row as usize], drv);
        }
    }
    drop(derivers);
    let ids = {
        let map = IdMap::new(&ids, &node_of_row);
        drop((ids, node_of_row));
        map
    };
    // `ok_or_else`: an error built eagerly for every row costs more than the lookup.
    let node_of = |id: i64, table| {
        ids.get(id)
            .ok_or_else(|| StoreDbError::DanglingId { id, table })
    };

    {
        let mut statement = connection
            .prepare("SELECT referrer, reference FROM Refs")
            .map_err(|e| query_error("Refs", e))?;
        let mut rows = statement.query([]).map_err(|e| query_error("Refs", e))?;
        while let Some(row) = rows.next().map_err(|e| query_error("Refs", e))? {
            let referrer = row
                .get_ref(0)
                .map_err(|e| query_error("Refs.referrer", e))?
                .as_i64()
                .map_err(|e| text_error("Refs.referrer", e))?;
            let reference = row
                .get_ref(1)
                .map_err(|e| query_error("Refs.reference", e))?
                .as_i64()
                .map_err(|e| text_error("Refs.reference", e))?;
            builder.add_reference(node_of(referrer, "Refs")?, node_of(reference, "Refs")?);
        }
    }

    let mut outputs = Vec::new();
    {
        // (drv, id) is the primary key: this is output-name order within each derivation,
        // the order of `queryPartialDerivationOutputMap`'s std::map.
        let mut statement = connection
            .prepare("SELECT drv, path FROM DerivationOutputs ORDER BY drv, id")
            .map_err(|e| query_error("DerivationOutputs", e))?;
        let mut rows = statement
            .query([])
            .map_err(|e| query_error("DerivationOutputs", e))?;
        while let Some(row) = rows
            .next()
            .map_err(|e| query_error("DerivationOutputs", e))?
        {
            let drv = row
                .get_ref(0)
                .map_err(|e| query_error("DerivationOutputs.drv", e))?
                .as_i64()
                .map_err(|e| text_error("DerivationOutputs.drv", e))?;
            let path = row
                .get_ref(1)
                .map_err(|e| query_error("DerivationOutputs.path", e))?
                .as_bytes()
                .map_err(|e| text_error("DerivationOutputs.path", e))?;
            let drv = node_of(drv, "DerivationOutputs")?;
            // Outputs that were never built are not valid; every use checks `isValidPath`.
            if let Some(output) = layout
                .store_basename(path)
                .and_then(|name| builder.find(name))
            {
                outputs.push((drv, output));
            }
        }
    }
    for (drv, output) in outputs {
        builder.add_drv_output(drv, output);
    }
    // Still inside the transaction: the version of the snapshot read above.
    let data_version = data_version(connection).map_err(|e| query_error("data_version", e))?;
    connection
        .execute_batch("COMMIT")
        .map_err(|e| query_error("commit", e))?;
    Ok((builder.build()?, data_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxya-a";
    const B: &str = "0123456789abcdfghijklmnpqrsvwxyb-b";
    const C: &str = "0123456789abcdfghijklmnpqrsvwxyc-c";

    /// A store database with the columns the loader reads, in WAL mode as Nix keeps it.
    fn database(dir: &Path) -> (StoreLayout, Connection) {
        let layout = StoreLayout::new(&dir.join("store"), &dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("state/db")).unwrap();
        let writer = Connection::open(layout.db_path()).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL,
                     narSize INTEGER, deriver TEXT);
                 CREATE TABLE Refs (referrer INTEGER, reference INTEGER,
                     PRIMARY KEY (referrer, reference));
                 CREATE TABLE DerivationOutputs (drv INTEGER, id TEXT, path TEXT,
                     PRIMARY KEY (drv, id));",
            )
            .unwrap();
        (layout, writer)
    }

    fn register(writer: &Connection, layout: &StoreLayout, id: i64, name: &str) {
        let path = layout.store_dir().join(name);
        writer
            .execute(
                "INSERT INTO ValidPaths (id, path, narSize) VALUES (?1, ?2, 7)",
                rusqlite::params![id, path.to_str().unwrap()],
            )
            .unwrap();
    }

    #[test]
    fn names_are_published_and_a_later_commit_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, writer) = database(dir.path());
        register(&writer, &layout, 1, A);
        register(&writer, &layout, 2, B);
        writer
            .execute("INSERT INTO Refs VALUES (1, 2)", [])
            .unwrap();

        let mut published = None;
        let (graph, snapshot) = load_publishing(&layout, |index| published = Some(index)).unwrap();
        let index = published.expect("the names are published");
        let [a, b] = [A, B].map(|name| graph.find(name.as_bytes()).unwrap());
        assert_eq!(index.find(A.as_bytes()), Some(a));
        assert_eq!(index.find(C.as_bytes()), None);
        assert_eq!(graph.references(a), &[b]);
        assert!(snapshot.is_current().unwrap(), "nothing was committed");
        assert!(snapshot.is_current().unwrap(), "asking does not change it");

        register(&writer, &layout, 3, C);
        assert!(!snapshot.is_current().unwrap(), "a commit since the load");
        assert_eq!(load(&layout).unwrap().len(), 3);
    }
}
