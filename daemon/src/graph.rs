//! The store as an integer graph: every valid path is a [`NodeIdx`], numbered in byte order of
//! its basename (so numeric order is Nix's `StorePathSet` order), with its references, referrers
//! and derivation links in compressed sparse rows.
//!
//! Invariant: loaded once, read-only afterwards; no per-path heap allocation (basenames live in
//! one buffer, neighbours in flat arrays). Measured (`graph_bytes` in `--json`): a million paths
//! with 3.5 million references take 113 MB — names 45 MB, name index 12 MB, sizes and
//! derivers 12 MB, reference rows both ways 36 MB, derivation-output row offsets 8 MB — and a
//! dry run on them peaks at 136 MB resident (the reference pairs while the rows are built).

use std::sync::Arc;

use crate::store_path::{self, HashPart};

/// A valid store path, as its rank in byte order of basenames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIdx(u32);

impl NodeIdx {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// For maps built alongside the graph; `index` must be below the node count.
    pub(crate) fn from_index(index: usize) -> Self {
        Self(index as u32)
    }
}

const NO_NODE: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("store path {name:?} is registered twice")]
    Duplicate { name: String },
    #[error("store path name {name:?} is longer than 255 bytes")]
    NameTooLong { name: String },
    #[error("the store is too large for 32-bit indexes ({what})")]
    TooLarge { what: &'static str },
}

/// Compressed sparse rows: the neighbours of node `i` are `targets[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Default)]
struct Csr {
    offsets: Vec<u32>,
    targets: Vec<NodeIdx>,
}

impl Csr {
    /// Builds rows from `(from, to)` pairs with a counting sort, which keeps the order of the
    /// pairs within a row (callers rely on that for output-name order).
    fn from_pairs(nodes: usize, pairs: &[(NodeIdx, NodeIdx)]) -> Result<Self, GraphError> {
        let too_large = || GraphError::TooLarge { what: "edges" };
        u32::try_from(pairs.len()).map_err(|_| too_large())?;
        let mut offsets = vec![0u32; nodes + 1];
        for (from, _) in pairs {
            offsets[from.index() + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor: Vec<u32> = offsets[..nodes].to_vec();
        let mut targets = vec![NodeIdx(0); pairs.len()];
        for &(from, to) in pairs {
            let slot = &mut cursor[from.index()];
            targets[*slot as usize] = to;
            *slot += 1;
        }
        Ok(Self { offsets, targets })
    }

    /// The reversed edges; rows come out sorted, as the source rows are visited in order.
    fn transposed(&self) -> Self {
        let nodes = self.offsets.len().saturating_sub(1);
        let mut offsets = vec![0u32; nodes + 1];
        for target in &self.targets {
            offsets[target.index() + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor: Vec<u32> = offsets[..nodes].to_vec();
        let mut targets = vec![NodeIdx(0); self.targets.len()];
        for from in 0..nodes {
            for &to in self.row(NodeIdx(from as u32)) {
                let slot = &mut cursor[to.index()];
                targets[*slot as usize] = NodeIdx(from as u32);
                *slot += 1;
            }
        }
        Self { offsets, targets }
    }

    /// The same rows with each row's targets sorted and deduplicated.
    fn sorted_rows(mut self) -> Self {
        let nodes = self.offsets.len().saturating_sub(1);
        let mut write = 0usize;
        let mut new_offsets = Vec::with_capacity(self.offsets.len());
        new_offsets.push(0u32);
        for node in 0..nodes {
            let (start, end) = (self.offsets[node] as usize, self.offsets[node + 1] as usize);
            self.targets[start..end].sort_unstable();
            let mut last = None;
            for read in start..end {
                let target = self.targets[read];
                if last != Some(target) {
                    self.targets[write] = target;
                    write += 1;
                    last = Some(target);
                }
            }
            // `write` never exceeds the original edge count, which fits in u32.
            new_offsets.push(write as u32);
        }
        self.targets.truncate(write);
        self.targets.shrink_to_fit();
        Self {
            offsets: new_offsets,
            targets: self.targets,
        }
    }

    fn row(&self, node: NodeIdx) -> &[NodeIdx] {
        match (
            self.offsets.get(node.index()),
            self.offsets.get(node.index() + 1),
        ) {
            (Some(&start), Some(&end)) => &self.targets[start as usize..end as usize],
            _ => &[],
        }
    }

    fn bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.targets.capacity() * 4
    }
}

/// Basenames as records in one buffer, in the order they were read: the name's length (one
/// byte), the name, then its node (4 bytes, little-endian, written once sorted). `starts` is
/// indexed by node (sorted order) and gives each record's offset, so sorting permutes 4 bytes
/// per path, never the names themselves.
///
/// `table` is an open-addressing hash index (linear probing, at most half full) from a name's
/// first 8 bytes to its record: the collector looks up every entry of the store directory, and
/// a lookup that finds its name reads two places in memory, the slot and the record, where a
/// bisection over a million names costs a cache miss per level.
#[derive(Debug, Default)]
pub(crate) struct PathNames {
    buffer: Vec<u8>,
    starts: Vec<u32>,
    table: Vec<u32>,
}

/// An empty slot of the table: no record starts there, as every record ends before it.
const NO_RECORD: u32 = u32::MAX;

/// The slot of a key: the hash parts of store paths are already random, Fibonacci hashing
/// spreads whatever else.
fn slot(key: u64, mask: usize) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
}

/// The first 8 bytes of a name, zero-padded, big-endian: ordering by (key, name) is byte order.
fn name_key(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = name.len().min(8);
    bytes[..len].copy_from_slice(&name[..len]);
    u64::from_be_bytes(bytes)
}

impl PathNames {
    /// Appends a record (its node is written by [`Self::index`]); false when the buffer would
    /// outgrow 32-bit offsets.
    fn push(&mut self, name: &[u8], len: u8) -> bool {
        let start = self.buffer.len();
        match u32::try_from(start + 1 + name.len() + 4) {
            Ok(end) if end < NO_RECORD => {}
            _ => return false,
        }
        self.buffer.push(len);
        self.buffer.extend_from_slice(name);
        self.buffer.extend_from_slice(&NO_NODE.to_le_bytes());
        self.starts.push(start as u32);
        true
    }

    /// The name of the record at `start`.
    fn name_at(&self, start: u32) -> &[u8] {
        let start = start as usize;
        let len = usize::from(self.buffer[start]);
        &self.buffer[start + 1..start + 1 + len]
    }

    /// The node of the record at `start`.
    fn node_at(&self, start: u32) -> NodeIdx {
        let start = start as usize;
        let at = start + 1 + usize::from(self.buffer[start]);
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.buffer[at..at + 4]);
        NodeIdx(u32::from_le_bytes(bytes))
    }

    fn get(&self, index: usize) -> &[u8] {
        self.name_at(self.starts[index])
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Only once sorted (the index is built then).
    fn find(&self, basename: &[u8]) -> Option<NodeIdx> {
        let mask = self.table.len().checked_sub(1)?;
        let mut at = slot(name_key(basename), mask);
        loop {
            let start = self.table[at];
            if start == NO_RECORD {
                return None;
            }
            if self.name_at(start) == basename {
                return Some(self.node_at(start));
            }
            at = (at + 1) & mask;
        }
    }

    /// Writes each record's node and builds the hash index over the (sorted) names.
    fn index(&mut self) {
        let size = (self.len() * 2).next_power_of_two().max(2);
        let mask = size - 1;
        let mut table = vec![NO_RECORD; size];
        for node in 0..self.len() {
            let start = self.starts[node];
            let at = start as usize + 1 + usize::from(self.buffer[start as usize]);
            self.buffer[at..at + 4].copy_from_slice(&(node as u32).to_le_bytes());
            let mut at = slot(name_key(self.name_at(start)), mask);
            while table[at] != NO_RECORD {
                at = (at + 1) & mask;
            }
            table[at] = start;
        }
        self.table = table;
    }

    /// Nodes whose names start with `prefix` (at least 8 bytes): they all share the home slot
    /// of `prefix`'s key, so they lie in the probe run from there to the first empty slot.
    fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = NodeIdx> + 'a {
        debug_assert!(prefix.len() >= 8, "the key must be a whole prefix");
        let mask = self.table.len().wrapping_sub(1);
        let mut at = slot(name_key(prefix), mask);
        std::iter::from_fn(move || {
            loop {
                let start = *self.table.get(at)?;
                if start == NO_RECORD {
                    return None;
                }
                at = (at + 1) & mask;
                if self.name_at(start).starts_with(prefix) {
                    return Some(self.node_at(start));
                }
            }
        })
    }

    fn bytes(&self) -> usize {
        self.buffer.capacity() + self.starts.capacity() * 4 + self.table.capacity() * 4
    }
}

/// The sorted names of a graph still being built, shared: the store directory's entries can
/// be resolved to nodes while the edges load (see `store_listing`).
#[derive(Clone, Debug)]
pub struct NameIndex(Arc<PathNames>);

impl NameIndex {
    /// The node of a basename, if it is a valid path.
    pub fn find(&self, basename: &[u8]) -> Option<NodeIdx> {
        self.0.find(basename)
    }
}

/// The store database as a graph. Built by [`GraphBuilder`] (see `store_db`).
#[derive(Debug)]
pub struct StoreGraph {
    names: Arc<PathNames>,
    nar_sizes: Vec<u64>,
    derivers: Vec<u32>,
    references: Csr,
    referrers: Csr,
    /// Derivation → its valid outputs, in output-name order (`queryPartialDerivationOutputMap`).
    drv_outputs: Csr,
    /// Output → the valid derivations listing it, in path order (`queryValidDerivers`).
    output_derivers: Csr,
    /// Every valid deriver is a derivation (`.drv`) whose recorded outputs include the path.
    derivers_list_their_outputs: bool,
    /// Every `DerivationOutputs` row between valid paths is one of a derivation (`.drv`).
    outputs_are_of_derivations: bool,
}

impl StoreGraph {
    pub fn len(&self) -> usize {
        self.nar_sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nar_sizes.is_empty()
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeIdx> + use<> {
        (0..self.len() as u32).map(NodeIdx)
    }

    /// The basename of a node (`<hash>-<name>`).
    pub fn basename(&self, node: NodeIdx) -> &[u8] {
        self.names.get(node.index())
    }

    /// The node of a basename, if it is a valid path (hash index).
    pub fn find(&self, basename: &[u8]) -> Option<NodeIdx> {
        self.names.find(basename)
    }

    /// The valid paths whose names start with `hash` (Nix compares temp roots by hash part).
    pub fn with_hash<'a>(&'a self, hash: &'a HashPart) -> impl Iterator<Item = NodeIdx> + 'a {
        self.names.with_prefix(hash)
    }

    /// True when every valid deriver of a valid path is a derivation listing that path among
    /// its outputs: then the deriver edges `computeFSClosure` follows forward (the `deriver`
    /// column) are exactly the reverse of those `collectGarbage` follows from a derivation to
    /// its outputs (`DerivationOutputs` rows whose output names it as deriver).
    pub fn derivers_list_their_outputs(&self) -> bool {
        self.derivers_list_their_outputs
    }

    /// True when every `DerivationOutputs` row between valid paths is one of a `.drv` path:
    /// then the output edges `computeFSClosure` follows forward (from derivations only) are
    /// exactly the reverse of `queryValidDerivers` (from any path).
    pub fn outputs_are_of_derivations(&self) -> bool {
        self.outputs_are_of_derivations
    }

    pub fn nar_size(&self, node: NodeIdx) -> u64 {
        self.nar_sizes[node.index()]
    }

    pub fn is_derivation(&self, node: NodeIdx) -> bool {
        store_path::is_derivation(self.basename(node))
    }

    /// The registered deriver, when it is itself a valid path.
    pub fn deriver(&self, node: NodeIdx) -> Option<NodeIdx> {
        let deriver = self.derivers[node.index()];
        (deriver != NO_NODE).then_some(NodeIdx(deriver))
    }

    /// References other than the path itself, in path order.
    pub fn references(&self, node: NodeIdx) -> &[NodeIdx] {
        self.references.row(node)
    }

    /// Referrers other than the path itself, in path order.
    pub fn referrers(&self, node: NodeIdx) -> &[NodeIdx] {
        self.referrers.row(node)
    }

    /// Valid outputs recorded for a derivation, in output-name order.
    pub fn drv_outputs(&self, node: NodeIdx) -> &[NodeIdx] {
        self.drv_outputs.row(node)
    }

    /// Valid derivations that list this path as an output, in path order.
    pub fn output_derivers(&self, node: NodeIdx) -> &[NodeIdx] {
        self.output_derivers.row(node)
    }

    /// Heap bytes held, for the summary and the benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.names.bytes()
            + self.nar_sizes.capacity() * 8
            + self.derivers.capacity() * 4
            + self.references.bytes()
            + self.referrers.bytes()
            + self.drv_outputs.bytes()
            + self.output_derivers.bytes()
    }

    /// Number of reference edges (self-references excluded).
    pub fn edge_count(&self) -> usize {
        self.references.targets.len()
    }
}

/// Collects paths (in any order), sorts them, then takes edges, then builds the rows.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    /// Filled by [`Self::add_path`]; moved into `sorted` by [`Self::sort_paths`].
    names: PathNames,
    /// The names once sorted and indexed, shared with [`NameIndex`] handles.
    sorted: Option<Arc<PathNames>>,
    nar_sizes: Vec<u64>,
    derivers: Vec<u32>,
    references: Vec<(NodeIdx, NodeIdx)>,
    /// (derivation, output) in (derivation id, output name) order.
    drv_outputs: Vec<(NodeIdx, NodeIdx)>,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a path; returns its row (the order of adding). Call [`Self::sort_paths`] after
    /// the last one (paths added after it are not indexed).
    pub fn add_path(&mut self, basename: &[u8], nar_size: u64) -> Result<u32, GraphError> {
        let row = u32::try_from(self.names.len())
            .ok()
            .filter(|&row| row != NO_NODE)
            .ok_or(GraphError::TooLarge { what: "paths" })?;
        let len = u8::try_from(basename.len()).map_err(|_| GraphError::NameTooLong {
            name: String::from_utf8_lossy(basename).into_owned(),
        })?;
        if !self.names.push(basename, len) {
            return Err(GraphError::TooLarge {
                what: "path name bytes",
            });
        }
        self.nar_sizes.push(nar_size);
        self.derivers.push(NO_NODE);
        Ok(row)
    }

    /// Numbers the paths in byte order of their basenames; returns the node of each row.
    pub fn sort_paths(&mut self) -> Result<Vec<NodeIdx>, GraphError> {
        let names = &self.names;
        // (first 8 bytes, row) sorted in one contiguous array; rows whose keys tie (rare:
        // hash parts are random) are then ordered by their whole names.
        let mut order: Vec<(u64, u32)> = (0..names.len())
            .map(|row| (name_key(names.get(row)), row as u32))
            .collect();
        order.sort_unstable();
        let mut run_start = 0;
        for end in 1..=order.len() {
            if end == order.len() || order[end].0 != order[run_start].0 {
                if end - run_start > 1 {
                    order[run_start..end].sort_unstable_by(|a, b| {
                        names.get(a.1 as usize).cmp(names.get(b.1 as usize))
                    });
                }
                run_start = end;
            }
        }
        // Equal names have equal keys: only neighbours with equal keys (rare) are compared,
        // not every name with the next (a cache miss each).
        if let Some(pair) = order
            .windows(2)
            .filter(|pair| pair[0].0 == pair[1].0)
            .map(|pair| (pair[0].1 as usize, pair[1].1 as usize))
            .find(|&(a, b)| names.get(a) == names.get(b))
        {
            return Err(GraphError::Duplicate {
                name: String::from_utf8_lossy(names.get(pair.0)).into_owned(),
            });
        }
        let mut node_of_row = vec![NodeIdx(0); order.len()];
        for (node, &(_, row)) in order.iter().enumerate() {
            node_of_row[row as usize] = NodeIdx(node as u32);
        }
        permute(&mut self.names.starts, &order);
        permute(&mut self.nar_sizes, &order);
        drop(order);
        self.names.index();
        self.names.buffer.shrink_to_fit();
        self.sorted = Some(Arc::new(std::mem::take(&mut self.names)));
        Ok(node_of_row)
    }

    /// The names, sorted or not yet.
    fn names(&self) -> &PathNames {
        self.sorted.as_deref().unwrap_or(&self.names)
    }

    /// Lookup once the paths are sorted.
    pub fn find(&self, basename: &[u8]) -> Option<NodeIdx> {
        self.names().find(basename)
    }

    /// A shared handle on the sorted names; `None` before [`Self::sort_paths`].
    pub fn name_index(&self) -> Option<NameIndex> {
        self.sorted.clone().map(NameIndex)
    }

    pub fn set_deriver(&mut self, node: NodeIdx, deriver: NodeIdx) {
        self.derivers[node.index()] = deriver.0;
    }

    /// A reference edge; self-references are dropped (Nix skips them everywhere in GC).
    pub fn add_reference(&mut self, referrer: NodeIdx, reference: NodeIdx) {
        if referrer != reference {
            self.references.push((referrer, reference));
        }
    }

    /// A `DerivationOutputs` row whose output is valid; call in output-name order per derivation.
    pub fn add_drv_output(&mut self, drv: NodeIdx, output: NodeIdx) {
        self.drv_outputs.push((drv, output));
    }

    pub fn build(self) -> Result<StoreGraph, GraphError> {
        let nodes = self.nar_sizes.len();
        let references = Csr::from_pairs(nodes, &self.references)?.sorted_rows();
        drop(self.references);
        let referrers = references.transposed();
        // Output-name order is the order the rows were added in; keep it, but drop duplicates
        // (two output names with the same path).
        let mut drv_outputs = Csr::from_pairs(nodes, &self.drv_outputs)?;
        dedup_rows_keep_order(&mut drv_outputs);
        let flipped: Vec<_> = self.drv_outputs.iter().map(|&(d, o)| (o, d)).collect();
        let output_derivers = Csr::from_pairs(nodes, &flipped)?.sorted_rows();
        let names = self.sorted.unwrap_or_else(|| Arc::new(self.names));
        let derivers_list_their_outputs = self.derivers.iter().enumerate().all(|(output, &drv)| {
            drv == NO_NODE
                || (store_path::is_derivation(names.get(drv as usize))
                    && drv_outputs
                        .row(NodeIdx(drv))
                        .contains(&NodeIdx(output as u32)))
        });
        let outputs_are_of_derivations = (0..nodes).all(|drv| {
            drv_outputs.row(NodeIdx(drv as u32)).is_empty()
                || store_path::is_derivation(names.get(drv))
        });
        Ok(StoreGraph {
            names,
            nar_sizes: self.nar_sizes,
            derivers: self.derivers,
            references,
            referrers,
            drv_outputs,
            output_derivers,
            derivers_list_their_outputs,
            outputs_are_of_derivations,
        })
    }
}

/// `values[i] = old values[order[i].1]`.
fn permute<T: Copy>(values: &mut Vec<T>, order: &[(u64, u32)]) {
    let permuted: Vec<T> = order.iter().map(|&(_, row)| values[row as usize]).collect();
    *values = permuted;
}

fn dedup_rows_keep_order(csr: &mut Csr) {
    let nodes = csr.offsets.len().saturating_sub(1);
    let mut write = 0usize;
    let mut new_offsets = Vec::with_capacity(csr.offsets.len());
    new_offsets.push(0u32);
    for node in 0..nodes {
        let (start, end) = (csr.offsets[node] as usize, csr.offsets[node + 1] as usize);
        let row_start = write;
        for read in start..end {
            let target = csr.targets[read];
            if !csr.targets[row_start..write].contains(&target) {
                csr.targets[write] = target;
                write += 1;
            }
        }
        new_offsets.push(write as u32);
    }
    csr.targets.truncate(write);
    csr.offsets = new_offsets;
}

/// A fixed-size set of nodes.
#[derive(Clone, Debug)]
pub struct NodeSet {
    words: Vec<u64>,
    count: usize,
}

impl NodeSet {
    pub fn new(nodes: usize) -> Self {
        Self {
            words: vec![0; nodes.div_ceil(64)],
            count: 0,
        }
    }

    pub fn contains(&self, node: NodeIdx) -> bool {
        self.words
            .get(node.index() / 64)
            .is_some_and(|word| word & (1 << (node.index() % 64)) != 0)
    }

    /// Adds `node`; true when it was not there before.
    pub fn insert(&mut self, node: NodeIdx) -> bool {
        let Some(word) = self.words.get_mut(node.index() / 64) else {
            return false;
        };
        let bit = 1 << (node.index() % 64);
        let new = *word & bit == 0;
        *word |= bit;
        self.count += usize::from(new);
        new
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = NodeIdx> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(NodeIdx((w * 64) as u32 + bit))
            })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A graph of paths named `<hash>-<name>` with the given references (by name).
    pub(crate) fn graph(names: &[&str], refs: &[(&str, &str)]) -> StoreGraph {
        let mut builder = GraphBuilder::new();
        for name in names {
            builder.add_path(name.as_bytes(), 1).unwrap();
        }
        builder.sort_paths().unwrap();
        for (from, to) in refs {
            let from = builder.find(from.as_bytes()).unwrap();
            let to = builder.find(to.as_bytes()).unwrap();
            builder.add_reference(from, to);
        }
        builder.build().unwrap()
    }

    #[test]
    fn rows_are_sorted_and_reversed() {
        let g = graph(
            &["c", "a", "b"],
            &[("a", "c"), ("a", "b"), ("a", "a"), ("b", "c")],
        );
        let [a, b, c] = ["a", "b", "c"].map(|n| g.find(n.as_bytes()).unwrap());
        assert_eq!(g.references(a), &[b, c]);
        assert_eq!(g.referrers(c), &[a, b]);
        assert_eq!(g.referrers(a), &[] as &[NodeIdx]);
        assert_eq!(g.edge_count(), 3);
        assert_eq!(g.basename(b), b"b");
        assert_eq!(g.find(b"d"), None);
    }

    #[test]
    fn paths_are_numbered_in_name_order_and_duplicates_refused() {
        let mut builder = GraphBuilder::new();
        for name in [&b"c"[..], b"a", b"b"] {
            builder.add_path(name, 0).unwrap();
        }
        let node_of_row = builder.sort_paths().unwrap();
        assert_eq!(node_of_row, vec![NodeIdx(2), NodeIdx(0), NodeIdx(1)]);
        assert_eq!(builder.find(b"b"), Some(NodeIdx(1)));
        let mut twice = GraphBuilder::new();
        twice.add_path(b"a", 0).unwrap();
        twice.add_path(b"a", 0).unwrap();
        assert!(matches!(
            twice.sort_paths(),
            Err(GraphError::Duplicate { .. })
        ));
        assert!(GraphBuilder::new().add_path(&[b'x'; 256], 0).is_err());
    }

    #[test]
    fn lookups_agree_with_byte_order_for_shared_prefixes() {
        // Names sharing their first 8 bytes, and names shorter than 8 bytes.
        let names = ["abcdefghX", "abcdefgh", "abcdefghA", "ab", "ab\u{0}c", "b"];
        let g = graph(&names, &[]);
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort();
        let in_order: Vec<&[u8]> = g.nodes().map(|node| g.basename(node)).collect();
        assert_eq!(
            in_order,
            sorted.iter().map(|n| n.as_bytes()).collect::<Vec<_>>()
        );
        for name in names {
            assert_eq!(
                g.basename(g.find(name.as_bytes()).unwrap()),
                name.as_bytes()
            );
        }
        assert_eq!(g.find(b"abcdefghB"), None);
        assert_eq!(g.find(b"a"), None);
    }

    #[test]
    fn paths_are_found_by_hash_part() {
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        let other = "0123456789abcdfghijklmnpqrsvwxya";
        let names = [
            format!("{h}-a"),
            format!("{h}-b.drv"),
            format!("{other}-a"),
            "01234567".to_owned(),
        ];
        let g = graph(&names.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        let hash: HashPart = h.as_bytes().try_into().unwrap();
        let mut found: Vec<&[u8]> = g.with_hash(&hash).map(|n| g.basename(n)).collect();
        found.sort();
        assert_eq!(found, vec![names[0].as_bytes(), names[1].as_bytes()]);
        let absent: HashPart = [b'9'; 32];
        assert_eq!(g.with_hash(&absent).count(), 0);
    }

    #[test]
    fn node_sets() {
        let mut set = NodeSet::new(130);
        assert!(set.insert(NodeIdx(129)));
        assert!(set.insert(NodeIdx(3)));
        assert!(!set.insert(NodeIdx(3)));
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![NodeIdx(3), NodeIdx(129)]
        );
    }
}
