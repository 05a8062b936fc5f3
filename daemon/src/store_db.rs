//! Reads Nix's store database (`<state>/db/db.sqlite`) once, read-only, into a [`StoreGraph`]:
//! `ValidPaths`, `Refs` and `DerivationOutputs`, in one read transaction so the three tables
//! are one snapshot.
//!
//! Invariant: a row we cannot interpret is an error, never skipped — a reference we dropped
//! could make a live path look dead.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::graph::{GraphBuilder, GraphError, NodeIdx, StoreGraph};
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
    ForeignPath { path: String, store_dir: PathBuf },
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
    fn new(mut pairs: Vec<(i64, NodeIdx)>) -> Self {
        let max_id = pairs.iter().map(|&(id, _)| id).max().unwrap_or(0);
        let dense_len = usize::try_from(max_id).ok().map(|max| max + 1);
        match dense_len {
            Some(len) if pairs.iter().all(|&(id, _)| id >= 0) && len <= 4 * pairs.len() + 4096 => {
                let mut dense = vec![u32::MAX; len];
                for (id, node) in pairs {
                    dense[id as usize] = node.index() as u32;
                }
                Self::Dense(dense)
            }
            _ => {
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

/// Opens the database read-only and loads the graph.
pub fn load(layout: &StoreLayout) -> Result<StoreGraph, StoreDbError> {
    let path = layout.db_path();
    let connection = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreDbError::Open {
        path: path.clone(),
        source,
    })?;
    load_from(&connection, layout, &path)
}

fn load_from(
    connection: &Connection,
    layout: &StoreLayout,
    db_path: &Path,
) -> Result<StoreGraph, StoreDbError> {
    let query_error = |what| {
        let path = db_path.to_owned();
        move |source| StoreDbError::Query { path, what, source }
    };
    // Nix writes while we read; WAL gives this transaction one snapshot of all three tables.
    connection
        .execute_batch("BEGIN DEFERRED")
        .map_err(query_error("begin"))?;
    let store_dir = layout.store_dir();

    let mut builder = GraphBuilder::new();
    let mut ids = Vec::new();
    {
        // Table order, not `ORDER BY path`: walking the path index visits table pages at
        // random (2.4 s against 0.13 s at a million paths); sorting in memory is cheaper.
        let mut statement = connection
            .prepare("SELECT id, path, narSize FROM ValidPaths")
            .map_err(query_error("ValidPaths"))?;
        let mut rows = statement.query([]).map_err(query_error("ValidPaths"))?;
        while let Some(row) = rows.next().map_err(query_error("ValidPaths"))? {
            let id: i64 = row.get(0).map_err(query_error("ValidPaths.id"))?;
            let path = row.get_ref(1).map_err(query_error("ValidPaths.path"))?;
            let path = path
                .as_str()
                .map_err(|e| query_error("ValidPaths.path")(e.into()))?;
            let nar_size: Option<i64> = row.get(2).map_err(query_error("ValidPaths.narSize"))?;
            let basename = layout.store_basename(path.as_bytes()).ok_or_else(|| {
                StoreDbError::ForeignPath {
                    path: path.to_owned(),
                    store_dir: store_dir.to_owned(),
                }
            })?;
            builder.add_path(basename, nar_size.unwrap_or(0).max(0) as u64)?;
            ids.push(id);
        }
    }
    let node_of_row = builder.sort_paths()?;
    let ids: Vec<(i64, NodeIdx)> = ids.into_iter().zip(node_of_row).collect();
    let ids = IdMap::new(ids);
    let node_of = |id: i64, table| ids.get(id).ok_or(StoreDbError::DanglingId { id, table });

    let mut derivers = Vec::new();
    {
        let mut statement = connection
            .prepare(
                "SELECT id, deriver FROM ValidPaths WHERE deriver IS NOT NULL AND deriver != ''",
            )
            .map_err(query_error("ValidPaths.deriver"))?;
        let mut rows = statement
            .query([])
            .map_err(query_error("ValidPaths.deriver"))?;
        while let Some(row) = rows.next().map_err(query_error("ValidPaths.deriver"))? {
            let id: i64 = row.get(0).map_err(query_error("ValidPaths.id"))?;
            let deriver = row.get_ref(1).map_err(query_error("ValidPaths.deriver"))?;
            let deriver = deriver
                .as_str()
                .map_err(|e| query_error("ValidPaths.deriver")(e.into()))?;
            let node = node_of(id, "ValidPaths")?;
            // Only a valid deriver matters: `computeFSClosure` checks `isValidPath(deriver)`.
            if let Some(drv) = layout
                .store_basename(deriver.as_bytes())
                .and_then(|name| builder.find(name))
            {
                derivers.push((node, drv));
            }
        }
    }
    for (node, drv) in derivers {
        builder.set_deriver(node, drv);
    }

    {
        let mut statement = connection
            .prepare("SELECT referrer, reference FROM Refs")
            .map_err(query_error("Refs"))?;
        let mut rows = statement.query([]).map_err(query_error("Refs"))?;
        while let Some(row) = rows.next().map_err(query_error("Refs"))? {
            let referrer: i64 = row.get(0).map_err(query_error("Refs.referrer"))?;
            let reference: i64 = row.get(1).map_err(query_error("Refs.reference"))?;
            builder.add_reference(node_of(referrer, "Refs")?, node_of(reference, "Refs")?);
        }
    }

    let mut outputs = Vec::new();
    {
        // (drv, id) is the primary key: this is output-name order within each derivation,
        // the order of `queryPartialDerivationOutputMap`'s std::map.
        let mut statement = connection
            .prepare("SELECT drv, path FROM DerivationOutputs ORDER BY drv, id")
            .map_err(query_error("DerivationOutputs"))?;
        let mut rows = statement
            .query([])
            .map_err(query_error("DerivationOutputs"))?;
        while let Some(row) = rows.next().map_err(query_error("DerivationOutputs"))? {
            let drv: i64 = row.get(0).map_err(query_error("DerivationOutputs.drv"))?;
            let path = row
                .get_ref(1)
                .map_err(query_error("DerivationOutputs.path"))?;
            let path = path
                .as_str()
                .map_err(|e| query_error("DerivationOutputs.path")(e.into()))?;
            let drv = node_of(drv, "DerivationOutputs")?;
            // Outputs that were never built are not valid; every use checks `isValidPath`.
            if let Some(output) = layout
                .store_basename(path.as_bytes())
                .and_then(|name| builder.find(name))
            {
                outputs.push((drv, output));
            }
        }
    }
    for (drv, output) in outputs {
        builder.add_drv_output(drv, output);
    }
    connection
        .execute_batch("COMMIT")
        .map_err(query_error("commit"))?;
    Ok(builder.build()?)
}
