//! Which store paths are alive and which are dead: Nix 2.8's `collectGarbage`, step for step,
//! on the integer graph.
//!
//! Nix does not compute "the closure of the roots". It walks the store directory in `readdir`
//! order and, for each entry not yet decided, searches breadth-first along *referrers* (plus,
//! with `keep-derivations`, from a derivation to those of its outputs whose deriver it is, and,
//! with `keep-outputs`, from an output to the derivations listing it) for a root, a temp root
//! or a path already known alive (`deleteReferrersClosure`). Found: the path found and the start
//! are alive, with the forward closure of the path found (`computeFSClosure` with outputs and
//! derivers per the settings). Not found: everything visited is dead. We mirror that, order
//! included, so `--print-dead`/`--print-live` match `nix-store` byte for byte even where a
//! database makes the order matter (a deriver that does not list its output).
//!
//! When nothing is deleted and the database makes the order irrelevant, [`decide`] reaches the
//! same verdict by two plain searches over the graph instead (see there for why it is the same).
//!
//! Invariant: `alive` is closed under the forward edges, which lets the forward closure stop at
//! paths already alive (each path is expanded once in total, not once per root).

use std::ops::ControlFlow;

use serde::Serialize;

use crate::graph::{NodeIdx, NodeSet, StoreGraph};
use crate::nix_conf::GcSettings;
use crate::store_listing::{LINKS_DIR, StoreListing};
use crate::store_path::{self, HashPart};
use crate::temp_roots::TempRoots;

/// Temp roots as the walk sees them: fixed ones read from `temproots/`, or the GC socket's
/// live set, which grows while we walk.
pub trait TempRootGate {
    /// Nix, under the shared lock: `tempRoots.count(hash)`, and if not, `pending = hash`, so
    /// a client sending this path waits until we are done with the closure.
    fn is_temp_root_else_pending(&self, hash: &HashPart) -> bool;
    /// Nix's `releasePending`: the current closure is finished (deleted); wake waiting clients.
    fn release_pending(&self);
    /// The hash parts of the temp roots known now.
    fn hashes(&self) -> Vec<HashPart>;
}

impl TempRootGate for TempRoots {
    fn is_temp_root_else_pending(&self, hash: &HashPart) -> bool {
        self.contains_hash(hash)
    }

    fn hashes(&self) -> Vec<HashPart> {
        self.hash_parts().copied().collect()
    }

    fn release_pending(&self) {}
}

/// What happens to dead things as the walk finds them: nothing (dry runs) or deletion.
/// `Break` stops the walk (Nix's `GCLimitReached`, or an error the sink keeps).
pub trait DeadSink {
    /// A closure found dead, newly dead paths only, referrers before references.
    fn dead_paths(&mut self, graph: &StoreGraph, paths: &[NodeIdx]) -> ControlFlow<()>;
    /// A dead entry that is not a valid path (unregistered, or not a store path name).
    fn dead_entry(&mut self, name: &[u8]) -> ControlFlow<()>;
    /// Whether dead paths stop being valid: then, as in Nix's database, a later closure
    /// (`computeFSClosure`) no longer reaches them through derivers or outputs.
    fn deletes(&self) -> bool;
}

/// Deletes nothing.
pub struct KeepEverything;

impl DeadSink for KeepEverything {
    fn dead_paths(&mut self, _: &StoreGraph, _: &[NodeIdx]) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn dead_entry(&mut self, _: &[u8]) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn deletes(&self) -> bool {
        false
    }
}

/// The roots the collector must keep: valid paths named by the tracker (Nix's `roots`), and
/// temp roots compared by hash part.
pub struct RootSet<'a> {
    nodes: NodeSet,
    temp: &'a dyn TempRootGate,
    /// Roots naming paths that are not valid: Nix skips them (`findRoots`: "skipping invalid root").
    pub invalid: usize,
}

impl<'a> RootSet<'a> {
    pub fn new(graph: &StoreGraph, temp: &'a dyn TempRootGate) -> Self {
        Self {
            nodes: NodeSet::new(graph.len()),
            temp,
            invalid: 0,
        }
    }

    /// Adds a root by basename; a path that is not valid is counted and ignored, as Nix does.
    pub fn add(&mut self, graph: &StoreGraph, basename: &[u8]) {
        match graph.find(basename) {
            Some(node) => {
                self.nodes.insert(node);
            }
            None => self.invalid += 1,
        }
    }

    /// `roots.count(path)`, then the temp roots (which marks the path pending when it is
    /// not one), in Nix's order.
    fn holds(&self, graph: &StoreGraph, node: NodeIdx) -> bool {
        self.nodes.contains(node)
            || store_path::hash_part(graph.basename(node))
                .is_some_and(|hash| self.temp.is_temp_root_else_pending(&hash))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// How a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Nix's `collectGarbage` walk, step for step, in `readdir` order.
    NixWalk,
    /// Two plain searches (see [`decide`]): the same verdict where the order cannot matter.
    Closure,
}

/// The verdict on a store directory.
#[derive(Debug)]
pub struct Liveness {
    pub alive: NodeSet,
    pub dead: NodeSet,
    /// Dead valid paths in the order Nix deletes them: closure by closure, each topologically
    /// sorted with referrers before references (`topoSortPaths`). Empty when decided by
    /// [`Method::Closure`], which deletes nothing.
    pub deletion_order: Vec<NodeIdx>,
    /// Store-path-named entries that are not valid, kept because a temp root names their hash.
    pub invalid_alive: Vec<Vec<u8>>,
    /// Store-path-named entries that are not valid and not temp roots (Nix deletes them).
    pub invalid_dead: Vec<Vec<u8>>,
    /// Entries whose names are not store paths at all; Nix's `collectGarbage` deletes these
    /// too (`deleteFromStore(name)`), even on `--print-dead`. We only report them when dry.
    pub junk: Vec<Vec<u8>>,
    /// Entries of the store directory examined.
    pub entries: usize,
    /// The sink stopped the walk (`--max-freed` reached, or a deletion failed).
    pub stopped: bool,
    pub method: Method,
}

impl Liveness {
    /// Bytes (NAR size from the database) of the dead valid paths.
    pub fn dead_nar_bytes(&self, graph: &StoreGraph) -> u64 {
        self.dead.iter().map(|node| graph.nar_size(node)).sum()
    }

    /// Basenames of what `--print-dead` lists, in byte order.
    pub fn dead_basenames<'g>(&'g self, graph: &'g StoreGraph) -> Vec<&'g [u8]> {
        in_byte_order(
            graph,
            &self.dead,
            self.invalid_dead.iter().chain(&self.junk),
        )
    }

    /// Basenames of what `--print-live` lists, in byte order.
    pub fn alive_basenames<'g>(&'g self, graph: &'g StoreGraph) -> Vec<&'g [u8]> {
        in_byte_order(graph, &self.alive, self.invalid_alive.iter())
    }
}

/// The basenames of `nodes` and the `others`, in byte order. Nodes are numbered in byte order
/// of their names, so only the others are sorted, then merged in.
fn in_byte_order<'g>(
    graph: &'g StoreGraph,
    nodes: &NodeSet,
    others: impl Iterator<Item = &'g Vec<u8>>,
) -> Vec<&'g [u8]> {
    let mut others: Vec<&[u8]> = others.map(Vec::as_slice).collect();
    others.sort_unstable();
    let mut names = Vec::with_capacity(nodes.len() + others.len());
    let mut others = others.into_iter().peekable();
    for name in nodes.iter().map(|node| graph.basename(node)) {
        while let Some(other) = others.next_if(|&other| other < name) {
            names.push(other);
        }
        names.push(name);
    }
    names.extend(others);
    names
}

/// Decides without deleting anything, as `nix-store --gc --print-dead`/`--print-live` do.
///
/// Nix's walk (see the module header) can give an order-dependent answer only because its
/// search and its closure follow different relations: the search goes from a derivation to
/// the outputs that name it as deriver (keep-derivations) and from an output to every
/// derivation listing it (keep-outputs, `queryValidDerivers`), while the closure goes from a
/// path to its `deriver` column and from a `.drv` to its listed outputs. When those are each
/// other's reverse (checked on the loaded graph, for the settings in force), every search edge
/// is a reversed closure edge and the walk's answer does not depend on the order:
///
/// - the dead set stays closed under the search and never meets the closure C of the roots
///   (a search from a path of C reaches a root unless it finds a path already alive, and paths
///   already alive are in C), so an entry is alive exactly when it is in C;
/// - every root in the store directory is searched from and marks its whole closure, so when
///   all roots are entries, `alive` is C; the dead set is everything the searches from the
///   entries outside C reach, which is all valid paths outside C when all are entries.
///
/// A root that is valid but not in the directory is only marked if some search happens to
/// reach it first, so then (and when the relations differ) we walk as Nix does. Temp roots
/// are taken as they are once the entries are read; one a client sends later counts as if it
/// had come after Nix's walk, which a run that deletes nothing cannot tell apart.
///
/// Entries that are not valid paths are decided first, as the walk decides them: nothing
/// else depends on them, so their place in the `readdir` order does not matter here.
pub fn decide(
    graph: &StoreGraph,
    roots: &RootSet<'_>,
    settings: GcSettings,
    listing: &StoreListing,
) -> Liveness {
    let mut sink = KeepEverything;
    let mut walk = Walk::new(graph, roots, settings, &mut sink);
    walk.verdict.entries = listing.entries;
    // A sink that keeps everything never stops the walk.
    for name in &listing.junk {
        let _ = walk.junk_entry(name);
    }
    for name in &listing.unregistered {
        let _ = walk.unregistered_entry(name);
    }
    let order = &listing.valid;
    if !search_reverses_closure(graph, settings) {
        tracing::info!("derivers and outputs disagree in the database: walking as Nix does");
        for &node in order {
            let _ = walk.delete_referrers_closure(node);
        }
        return walk.verdict;
    }
    let mut on_disk = NodeSet::new(graph.len());
    for &node in order {
        on_disk.insert(node);
    }
    let mut starts = roots.nodes.clone();
    for hash in roots.temp.hashes() {
        for node in graph.with_hash(&hash) {
            starts.insert(node);
        }
    }
    if starts.iter().any(|node| !on_disk.contains(node)) {
        tracing::info!("a root is not in the store directory: walking as Nix does");
        for &node in order {
            let _ = walk.delete_referrers_closure(node);
        }
        return walk.verdict;
    }
    let mut alive = NodeSet::new(graph.len());
    for start in starts.iter() {
        extend_closure(graph, settings, &mut alive, None, start);
    }
    let dead = if on_disk.len() == graph.len() {
        let mut dead = NodeSet::new(graph.len());
        for node in graph.nodes().filter(|&node| !alive.contains(node)) {
            dead.insert(node);
        }
        dead
    } else {
        search_closure(graph, settings, &alive, &on_disk)
    };
    let verdict = &mut walk.verdict;
    verdict.alive = alive;
    verdict.dead = dead;
    verdict.method = Method::Closure;
    walk.verdict
}

/// Whether, under `settings`, the edges of Nix's referrer search are exactly the reversed
/// edges of its forward closure (see [`decide`]). References and referrers always are.
fn search_reverses_closure(graph: &StoreGraph, settings: GcSettings) -> bool {
    (!settings.keep_derivations || graph.derivers_list_their_outputs())
        && (!settings.keep_outputs || graph.outputs_are_of_derivations())
}

/// Everything the searches from the entries outside `alive` visit: the valid paths from which
/// such an entry can be reached along closure edges (none of them alive).
fn search_closure(
    graph: &StoreGraph,
    settings: GcSettings,
    alive: &NodeSet,
    on_disk: &NodeSet,
) -> NodeSet {
    let mut dead = NodeSet::new(graph.len());
    let mut queue: Vec<NodeIdx> = on_disk
        .iter()
        .filter(|&node| !alive.contains(node))
        .collect();
    for &node in &queue {
        dead.insert(node);
    }
    while let Some(node) = queue.pop() {
        for_each_search_edge(graph, settings, node, |next| {
            if dead.insert(next) {
                queue.push(next);
            }
        });
    }
    dead
}

/// The neighbours `deleteReferrersClosure` visits from a valid path: its referrers, with
/// keep-derivations the outputs of a derivation that name it as their deriver, with
/// keep-outputs the valid derivations listing the path as an output.
fn for_each_search_edge(
    graph: &StoreGraph,
    settings: GcSettings,
    path: NodeIdx,
    mut visit: impl FnMut(NodeIdx),
) {
    for &referrer in graph.referrers(path) {
        visit(referrer);
    }
    if settings.keep_derivations && graph.is_derivation(path) {
        for &output in graph.drv_outputs(path) {
            if graph.deriver(output) == Some(path) {
                visit(output);
            }
        }
    }
    if settings.keep_outputs {
        for &drv in graph.output_derivers(path) {
            visit(drv);
        }
    }
}

/// Adds `start` and its forward closure to `alive` (`computeFSClosure(start, closure, false,
/// keepOutputs, keepDerivations)`), not expanding paths already alive (their closure is, by
/// the module invariant) nor, given `skip`, those in it.
fn extend_closure(
    graph: &StoreGraph,
    settings: GcSettings,
    alive: &mut NodeSet,
    skip: Option<&NodeSet>,
    start: NodeIdx,
) {
    if !alive.insert(start) {
        return;
    }
    let mut stack = vec![start];
    while let Some(node) = stack.pop() {
        let outputs: &[NodeIdx] = if settings.keep_outputs && graph.is_derivation(node) {
            graph.drv_outputs(node)
        } else {
            &[]
        };
        let deriver = graph.deriver(node).filter(|_| settings.keep_derivations);
        for &next in graph
            .references(node)
            .iter()
            .chain(outputs)
            .chain(deriver.as_ref())
        {
            if skip.is_some_and(|skip| skip.contains(next)) {
                continue;
            }
            if alive.insert(next) {
                stack.push(next);
            }
        }
    }
}

/// Runs Nix's walk over the store directory's entries, given in `readdir` order, and hands
/// each dead closure and entry to `sink` as soon as it is decided, as `collectGarbage` deletes
/// inside its loop: a temp root that arrives later can still save everything not yet decided.
pub fn walk(
    graph: &StoreGraph,
    roots: &RootSet<'_>,
    settings: GcSettings,
    entries: impl IntoIterator<Item = impl AsRef<[u8]>>,
    sink: &mut dyn DeadSink,
) -> Liveness {
    let mut walk = Walk::new(graph, roots, settings, sink);
    walk.run(entries);
    walk.verdict
}

struct Walk<'a> {
    graph: &'a StoreGraph,
    roots: &'a RootSet<'a>,
    settings: GcSettings,
    sink: &'a mut dyn DeadSink,
    verdict: Liveness,
    /// `visited_epoch[n] == epoch`: visited by the current search (Nix's `visited` set).
    visited_epoch: Vec<u32>,
    /// `sorted_epoch[n] == epoch`: placed by the current topological sort.
    sorted_epoch: Vec<u32>,
    epoch: u32,
    queue: Vec<NodeIdx>,
}

impl<'a> Walk<'a> {
    fn new(
        graph: &'a StoreGraph,
        roots: &'a RootSet<'a>,
        settings: GcSettings,
        sink: &'a mut dyn DeadSink,
    ) -> Self {
        Walk {
            graph,
            roots,
            settings,
            sink,
            verdict: Liveness {
                alive: NodeSet::new(graph.len()),
                dead: NodeSet::new(graph.len()),
                deletion_order: Vec::new(),
                invalid_alive: Vec::new(),
                invalid_dead: Vec::new(),
                junk: Vec::new(),
                entries: 0,
                stopped: false,
                method: Method::NixWalk,
            },
            visited_epoch: vec![0; graph.len()],
            sorted_epoch: vec![0; graph.len()],
            epoch: 0,
            queue: Vec::new(),
        }
    }

    fn run(&mut self, entries: impl IntoIterator<Item = impl AsRef<[u8]>>) {
        for name in entries {
            if self.entry(name.as_ref()).is_break() {
                self.verdict.stopped = true;
                break;
            }
        }
    }

    /// One entry of the store directory (the loop body of `collectGarbage`).
    fn entry(&mut self, name: &[u8]) -> ControlFlow<()> {
        match self.sort_entry(name)? {
            Some(node) => self.delete_referrers_closure(node),
            None => ControlFlow::Continue(()),
        }
    }

    /// The loop body up to the search: skips `.`, `..` and `.links`, decides entries that are
    /// not valid paths, and returns the node of a valid path, which the search decides.
    fn sort_entry(&mut self, name: &[u8]) -> ControlFlow<(), Option<NodeIdx>> {
        if name == b"." || name == b".." || name == LINKS_DIR {
            return ControlFlow::Continue(None);
        }
        self.verdict.entries += 1;
        if !store_path::is_valid_basename(name) {
            self.junk_entry(name)?;
            return ControlFlow::Continue(None);
        }
        match self.graph.find(name) {
            Some(node) => ControlFlow::Continue(Some(node)),
            None => {
                self.unregistered_entry(name)?;
                ControlFlow::Continue(None)
            }
        }
    }

    /// Nix deletes whatever is not named like a store path (`deleteFromStore(name)`).
    fn junk_entry(&mut self, name: &[u8]) -> ControlFlow<()> {
        self.verdict.junk.push(name.to_vec());
        self.sink.dead_entry(name)
    }

    /// Named like a store path but not valid: no edges, never a (non-temp) root, so only its
    /// hash can save it.
    fn unregistered_entry(&mut self, name: &[u8]) -> ControlFlow<()> {
        let temp = store_path::hash_part(name)
            .is_some_and(|hash| self.roots.temp.is_temp_root_else_pending(&hash));
        let flow = if temp {
            self.verdict.invalid_alive.push(name.to_vec());
            ControlFlow::Continue(())
        } else {
            self.verdict.invalid_dead.push(name.to_vec());
            self.sink.dead_entry(name)
        };
        self.roots.temp.release_pending();
        flow
    }

    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited_epoch.fill(0);
            self.sorted_epoch.fill(0);
            self.epoch = 1;
        }
    }

    fn enqueue(&mut self, node: NodeIdx) {
        let slot = &mut self.visited_epoch[node.index()];
        if *slot != self.epoch {
            *slot = self.epoch;
            self.queue.push(node);
        }
    }

    /// Nix's `deleteReferrersClosure(start)`; pending is released however it ends.
    fn delete_referrers_closure(&mut self, start: NodeIdx) -> ControlFlow<()> {
        let flow = self.search_and_delete(start);
        self.roots.temp.release_pending();
        flow
    }

    fn search_and_delete(&mut self, start: NodeIdx) -> ControlFlow<()> {
        self.next_epoch();
        self.queue.clear();
        self.enqueue(start);
        let graph = self.graph;
        let mut head = 0;
        while let Some(&path) = self.queue.get(head) {
            head += 1;
            // Bail out if we've previously discovered that this path is alive.
            if self.verdict.alive.contains(path) {
                self.verdict.alive.insert(start);
                return ControlFlow::Continue(());
            }
            // If we've previously deleted this path, we don't have to handle it again.
            if self.verdict.dead.contains(path) {
                continue;
            }
            // A root or a temp root: it and its closure live, and so does the start.
            if self.roots.holds(graph, path) {
                self.mark_alive(path);
                self.verdict.alive.insert(start);
                return ControlFlow::Continue(());
            }
            // Referrers; with keep-derivations, a derivation lives while an output it derived
            // lives; with keep-outputs, an output lives while a derivation listing it lives.
            for_each_search_edge(graph, self.settings, path, |next| self.enqueue(next));
        }
        let first_new = self.verdict.deletion_order.len();
        self.mark_dead_closure();
        let graph = self.graph;
        self.sink
            .dead_paths(graph, &self.verdict.deletion_order[first_new..])
    }

    /// `alive` gets `path` and its forward closure (`computeFSClosure(path, closure, false,
    /// keepOutputs, keepDerivations)`). Paths already alive are not expanded: their closure
    /// is already alive (module invariant). When deleting, paths already found dead are gone
    /// from Nix's database by now, so its closure skips them (a deriver that did not list
    /// its output may have been deleted before the output was found alive); when only
    /// printing, they are still valid there and the closure goes through them.
    fn mark_alive(&mut self, path: NodeIdx) {
        let skip = self.sink.deletes().then_some(&self.verdict.dead);
        extend_closure(
            self.graph,
            self.settings,
            &mut self.verdict.alive,
            skip,
            path,
        );
    }

    /// Everything the search visited is dead; record it in Nix's deletion order
    /// (`topoSortPaths(visited)`: depth-first over references within the set, from each member
    /// in path order, reversed post-order — referrers before their references).
    fn mark_dead_closure(&mut self) {
        let graph = self.graph;
        // When deleting, paths of earlier dead closures are no longer valid in Nix's database:
        // `topoSortPaths` gets no references for them (InvalidPath), which changes the order
        // (and so what `--max-freed` lets go). When only printing, they keep their references.
        let skip_dead = self.sink.deletes();
        let mut items = std::mem::take(&mut self.queue);
        items.sort_unstable();
        let mut post_order = Vec::with_capacity(items.len());
        let mut stack: Vec<(NodeIdx, usize)> = Vec::new();
        for &item in &items {
            if self.sorted_epoch[item.index()] == self.epoch {
                continue;
            }
            self.sorted_epoch[item.index()] = self.epoch;
            stack.push((item, 0));
            while let Some((node, next_child)) = stack.last_mut() {
                let node = *node;
                let children = if skip_dead && self.verdict.dead.contains(node) {
                    &[]
                } else {
                    graph.references(node)
                };
                if let Some(&child) = children.get(*next_child) {
                    *next_child += 1;
                    let in_items = self.visited_epoch[child.index()] == self.epoch;
                    if in_items && self.sorted_epoch[child.index()] != self.epoch {
                        self.sorted_epoch[child.index()] = self.epoch;
                        stack.push((child, 0));
                    }
                } else {
                    post_order.push(node);
                    stack.pop();
                }
            }
        }
        for &node in post_order.iter().rev() {
            if self.verdict.dead.insert(node) {
                self.verdict.deletion_order.push(node);
            }
        }
        items.clear();
        self.queue = items;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;

    /// [`decide`] on a store directory holding `names`, in this order.
    fn decide_names(
        graph: &StoreGraph,
        roots: &RootSet<'_>,
        settings: GcSettings,
        names: impl IntoIterator<Item = impl AsRef<[u8]>>,
    ) -> Liveness {
        let listing = StoreListing::from_names(names, |name| graph.find(name));
        decide(graph, roots, settings, &listing)
    }

    const H: &str = "0123456789abcdfghijklmnpqrsvwxy";

    /// `<H><c>-<name>`: a distinct valid basename per single-character key (not e, o, t, u).
    fn name(key: char, suffix: &str) -> String {
        format!("{H}{key}-{suffix}")
    }

    struct Fixture {
        graph: StoreGraph,
        names: Vec<String>,
    }

    impl Fixture {
        /// The name of the path keyed `key` (its hash part ends in that char).
        fn name(&self, key: char) -> &[u8] {
            self.names
                .iter()
                .find(|n| n.as_bytes()[31] == key as u8)
                .unwrap()
                .as_bytes()
        }
    }

    /// Paths keyed by a char; `drv` names end in `.drv`. `outputs`: (drv, output) rows;
    /// `derivers`: (output, deriver).
    fn fixture(
        keys: &[(char, &str)],
        refs: &[(char, char)],
        outputs: &[(char, char)],
        derivers: &[(char, char)],
    ) -> Fixture {
        let mut names: Vec<String> = keys.iter().map(|&(k, s)| name(k, s)).collect();
        names.sort();
        let mut builder = GraphBuilder::new();
        for n in &names {
            builder.add_path(n.as_bytes(), 10).unwrap();
        }
        builder.sort_paths().unwrap();
        let find = |builder: &GraphBuilder, key: char| {
            let n = names
                .iter()
                .find(|n| n.as_bytes()[31] == key as u8)
                .unwrap();
            builder.find(n.as_bytes()).unwrap()
        };
        for &(a, b) in refs {
            let (a, b) = (find(&builder, a), find(&builder, b));
            builder.add_reference(a, b);
        }
        for &(d, o) in outputs {
            let (d, o) = (find(&builder, d), find(&builder, o));
            builder.add_drv_output(d, o);
        }
        for &(o, d) in derivers {
            let (o, d) = (find(&builder, o), find(&builder, d));
            builder.set_deriver(o, d);
        }
        Fixture {
            graph: builder.build().unwrap(),
            names,
        }
    }

    impl Fixture {
        fn run(&self, roots: &[char], settings: GcSettings) -> (Vec<char>, Vec<char>) {
            let temp = TempRoots::default();
            let mut set = RootSet::new(&self.graph, &temp);
            for &root in roots {
                let n = self
                    .names
                    .iter()
                    .find(|n| n.as_bytes()[31] == root as u8)
                    .unwrap();
                set.add(&self.graph, n.as_bytes());
            }
            let verdict = decide_names(
                &self.graph,
                &set,
                settings,
                self.names.iter().map(|n| n.as_bytes()),
            );
            let keys = |names: Vec<&[u8]>| names.iter().map(|n| n[31] as char).collect();
            (
                keys(verdict.alive_basenames(&self.graph)),
                keys(verdict.dead_basenames(&self.graph)),
            )
        }
    }

    const DEFAULT: GcSettings = GcSettings {
        keep_derivations: true,
        keep_outputs: false,
    };

    #[test]
    fn closure_of_roots_lives_the_rest_dies() {
        let f = fixture(
            &[('a', "a"), ('b', "b"), ('c', "c"), ('d', "d")],
            &[('a', 'b'), ('c', 'b'), ('d', 'c')],
            &[],
            &[],
        );
        assert_eq!(f.run(&['a'], DEFAULT), (vec!['a', 'b'], vec!['c', 'd']));
        assert_eq!(f.run(&[], DEFAULT), (vec![], vec!['a', 'b', 'c', 'd']));
        assert_eq!(f.run(&['d'], DEFAULT), (vec!['b', 'c', 'd'], vec!['a']));
    }

    #[test]
    fn keep_derivations_and_keep_outputs() {
        // d.drv builds q (deriver d, listed in d's outputs); r roots q.
        let f = fixture(
            &[('d', "x.drv"), ('q', "x"), ('s', "src"), ('r', "r")],
            &[('d', 's'), ('r', 'q')],
            &[('d', 'q')],
            &[('q', 'd')],
        );
        let none = GcSettings {
            keep_derivations: false,
            keep_outputs: false,
        };
        assert_eq!(f.run(&['r'], none), (vec!['q', 'r'], vec!['d', 's']));
        // keep-derivations: the deriver of a live output lives, with its closure.
        assert_eq!(f.run(&['r'], DEFAULT), (vec!['d', 'q', 'r', 's'], vec![]));
        // keep-outputs alone: rooting the derivation keeps its output.
        let outputs = GcSettings {
            keep_derivations: false,
            keep_outputs: true,
        };
        assert_eq!(f.run(&['d'], outputs), (vec!['d', 'q', 's'], vec!['r']));
        assert_eq!(f.run(&['d'], none), (vec!['d', 's'], vec!['q', 'r']));
    }

    /// r refers to q; q's deriver is d (a derivation), but d's outputs do not list q.
    fn deriver_not_listing_its_output() -> Fixture {
        fixture(
            &[('d', "x.drv"), ('q', "x"), ('r', "r")],
            &[('r', 'q')],
            &[],
            &[('q', 'd')],
        )
    }

    #[test]
    fn a_deriver_not_listing_its_output_depends_on_order() {
        // o's deriver is d, but d's outputs do not list o: the forward closure from a root
        // reaches d, the backward search from d does not reach o. Nix's answer depends on
        // readdir order; so does ours, in the same way.
        let f = deriver_not_listing_its_output();
        let temp = TempRoots::default();
        let mut set = RootSet::new(&f.graph, &temp);
        let by_key = |k: char| f.name(k);
        set.add(&f.graph, by_key('r'));
        let drv_first = decide_names(&f.graph, &set, DEFAULT, ['d', 'q', 'r'].map(by_key));
        assert_eq!(drv_first.dead_basenames(&f.graph), vec![by_key('d')]);
        // ...while d is also in the alive closure of r, as in Nix.
        assert!(drv_first.alive_basenames(&f.graph).contains(&by_key('d')));
        let root_first = decide_names(&f.graph, &set, DEFAULT, ['r', 'd', 'q'].map(by_key));
        assert!(root_first.dead_basenames(&f.graph).is_empty());
    }

    /// Deletes nothing but says it does, to see the walk as a deleting run sees it.
    struct PretendToDelete;

    impl DeadSink for PretendToDelete {
        fn dead_paths(&mut self, _: &StoreGraph, _: &[NodeIdx]) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }

        fn dead_entry(&mut self, _: &[u8]) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }

        fn deletes(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_deleted_deriver_is_not_revived_by_a_later_closure() {
        // d.drv (referring to s) derived q but does not list it; r roots q. With d seen first
        // it is deleted; a deleting Nix then no longer finds it valid when r's closure is
        // computed, while a printing Nix still does.
        let f = fixture(
            &[('d', "x.drv"), ('s', "src"), ('q', "x"), ('r', "r")],
            &[('d', 's'), ('r', 'q')],
            &[],
            &[('q', 'd')],
        );
        let temp = TempRoots::default();
        let mut set = RootSet::new(&f.graph, &temp);
        let by_key = |k: char| f.name(k);
        set.add(&f.graph, by_key('r'));
        let order = ['d', 's', 'q', 'r'].map(by_key);
        let deleting = walk(&f.graph, &set, DEFAULT, order, &mut PretendToDelete);
        assert_eq!(
            deleting.dead_basenames(&f.graph),
            vec![by_key('d'), by_key('s')]
        );
        assert_eq!(
            deleting.alive_basenames(&f.graph),
            vec![by_key('q'), by_key('r')]
        );
        let printing = decide_names(&f.graph, &set, DEFAULT, order);
        assert_eq!(
            printing.dead_basenames(&f.graph),
            vec![by_key('d'), by_key('s')]
        );
        assert_eq!(
            printing.alive_basenames(&f.graph),
            vec![by_key('d'), by_key('q'), by_key('r'), by_key('s')]
        );
    }

    #[test]
    fn deleted_paths_have_no_references_in_the_topological_sort() {
        // x is deleted first; then s's closure {s, y, m, x, z} is sorted. Deleting, x has no
        // references any more (Nix's topoSortPaths gets InvalidPath), so m is placed from z;
        // printing, x still refers to m and places it early.
        let f = fixture(
            &[('a', "s"), ('b', "x"), ('c', "y"), ('d', "m"), ('f', "z")],
            &[('c', 'a'), ('d', 'a'), ('b', 'd'), ('f', 'd')],
            &[],
            &[],
        );
        let temp = TempRoots::default();
        let set = RootSet::new(&f.graph, &temp);
        let by_key = |k: char| f.name(k);
        let order = ['b', 'a'].map(by_key);
        let keys = |verdict: &Liveness| -> String {
            verdict
                .deletion_order
                .iter()
                .map(|&n| f.graph.basename(n)[31] as char)
                .collect()
        };
        let deleting = walk(&f.graph, &set, DEFAULT, order, &mut PretendToDelete);
        assert_eq!(keys(&deleting), "bfdca");
        let printing = walk(&f.graph, &set, DEFAULT, order, &mut KeepEverything);
        assert_eq!(keys(&printing), "bfcda");
    }

    #[test]
    fn printed_names_merge_paths_and_other_entries_in_byte_order() {
        let g = crate::graph::tests::graph(&["b", "d", "f", "h"], &[]);
        let mut nodes = NodeSet::new(g.len());
        for name in ["b", "f", "h"] {
            nodes.insert(g.find(name.as_bytes()).unwrap());
        }
        let others = ["g", "a", "i", "c", "e"].map(|name| name.as_bytes().to_vec());
        let names: Vec<&[u8]> = in_byte_order(&g, &nodes, others.iter());
        let expected: Vec<&[u8]> = ["a", "b", "c", "e", "f", "g", "h", "i"]
            .iter()
            .map(|name| name.as_bytes())
            .collect();
        assert_eq!(names, expected);
        assert!(in_byte_order(&g, &NodeSet::new(g.len()), [].iter()).is_empty());
    }

    #[test]
    fn temp_roots_match_by_hash_and_invalid_entries_die() {
        let f = fixture(&[('a', "a"), ('b', "b")], &[('a', 'b')], &[], &[]);
        let mut temp = TempRoots::default();
        temp.insert(name('a', "whatever").as_bytes());
        let set = RootSet::new(&f.graph, &temp);
        let lock = name('a', "a.lock");
        let stray = name('z', "stray");
        let entries = [
            name('a', "a"),
            name('b', "b"),
            lock.clone(),
            stray.clone(),
            ".links".into(),
            "junk name".into(),
        ];
        let verdict = decide_names(
            &f.graph,
            &set,
            DEFAULT,
            entries.iter().map(|n| n.as_bytes()),
        );
        assert_eq!(verdict.alive.len(), 2);
        assert_eq!(verdict.invalid_alive, vec![lock.into_bytes()]);
        assert_eq!(verdict.invalid_dead, vec![stray.into_bytes()]);
        assert_eq!(verdict.junk, vec![b"junk name".to_vec()]);
        assert_eq!(verdict.entries, 5);
    }

    #[test]
    fn deletion_order_puts_referrers_first() {
        let f = fixture(
            &[('a', "a"), ('b', "b"), ('c', "c")],
            &[('a', 'b'), ('b', 'c'), ('a', 'c')],
            &[],
            &[],
        );
        let temp = TempRoots::default();
        let set = RootSet::new(&f.graph, &temp);
        let verdict = walk(
            &f.graph,
            &set,
            DEFAULT,
            f.names.iter().rev().map(|n| n.as_bytes()),
            &mut KeepEverything,
        );
        let order: Vec<u8> = verdict
            .deletion_order
            .iter()
            .map(|&n| f.graph.basename(n)[31])
            .collect();
        assert_eq!(order, b"abc");
    }

    /// SplitMix64, for the seeded random graphs below.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n.max(1) as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// A random store: paths (some `.drv`), references, derivation outputs and derivers that
    /// agree (`symmetric`) or not, roots, temp roots, settings, and a directory listing in
    /// random order that may miss valid paths and hold invalid or junk entries.
    fn random_case(
        rng: &mut Rng,
        symmetric: bool,
    ) -> (StoreGraph, TempRoots, Vec<String>, Vec<String>, GcSettings) {
        const KEYS: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let count = 2 + rng.below(14);
        let names: Vec<String> = (0..count)
            .map(|i| {
                let suffix = if rng.chance(35) { "x.drv" } else { "x" };
                name(KEYS[i] as char, suffix)
            })
            .collect();
        let mut builder = GraphBuilder::new();
        for n in &names {
            builder.add_path(n.as_bytes(), 1).unwrap();
        }
        builder.sort_paths().unwrap();
        let node = |builder: &GraphBuilder, i: usize| builder.find(names[i].as_bytes()).unwrap();
        for _ in 0..rng.below(2 * count) {
            let (a, b) = (rng.below(count), rng.below(count));
            let (a, b) = (node(&builder, a), node(&builder, b));
            builder.add_reference(a, b);
        }
        let is_drv = |i: usize| names[i].ends_with(".drv");
        let mut deriver_of = vec![None; count];
        for _ in 0..rng.below(count) {
            let (d, o) = (rng.below(count), rng.below(count));
            if symmetric && (!is_drv(d) || deriver_of[o].is_some()) {
                continue;
            }
            builder.add_drv_output(node(&builder, d), node(&builder, o));
            if symmetric && rng.chance(70) {
                deriver_of[o] = Some(d);
            }
        }
        if !symmetric {
            for _ in 0..rng.below(count) {
                deriver_of[rng.below(count)] = Some(rng.below(count));
            }
        }
        for (o, d) in deriver_of.iter().enumerate() {
            if let Some(d) = *d {
                let (o, d) = (node(&builder, o), node(&builder, d));
                builder.set_deriver(o, d);
            }
        }
        let graph = builder.build().unwrap();
        let roots: Vec<String> = names.iter().filter(|_| rng.chance(20)).cloned().collect();
        let mut temp = TempRoots::default();
        if rng.chance(30) {
            temp.insert(name(KEYS[rng.below(32)] as char, "x.lock").as_bytes());
        }
        let mut entries: Vec<String> = if rng.chance(60) {
            names.clone()
        } else {
            names.iter().filter(|_| rng.chance(80)).cloned().collect()
        };
        if rng.chance(30) {
            entries.push(name(KEYS[count + rng.below(32 - count)] as char, "stray"));
            entries.push("junk name".into());
        }
        for i in (1..entries.len()).rev() {
            entries.swap(i, rng.below(i + 1));
        }
        let settings = GcSettings {
            keep_derivations: rng.chance(60),
            keep_outputs: rng.chance(40),
        };
        (graph, temp, roots, entries, settings)
    }

    #[test]
    fn deciding_by_closure_matches_the_walk_on_random_stores() {
        let mut by_closure = 0;
        let mut walked = 0;
        for seed in 0..3000u64 {
            let mut rng = Rng(seed);
            let symmetric = rng.chance(70);
            let (graph, temp, roots, entries, settings) = random_case(&mut rng, symmetric);
            let mut set = RootSet::new(&graph, &temp);
            for root in &roots {
                set.add(&graph, root.as_bytes());
            }
            let listing = || entries.iter().map(String::as_bytes);
            let fast = decide_names(&graph, &set, settings, listing());
            let slow = walk(&graph, &set, settings, listing(), &mut KeepEverything);
            let context =
                format!("seed {seed}, {settings:?}, entries {entries:?}, roots {roots:?}");
            assert_eq!(slow.method, Method::NixWalk);
            assert_eq!(
                fast.alive_basenames(&graph),
                slow.alive_basenames(&graph),
                "{context}"
            );
            assert_eq!(
                fast.dead_basenames(&graph),
                slow.dead_basenames(&graph),
                "{context}"
            );
            assert_eq!(fast.entries, slow.entries);
            if symmetric {
                assert!(search_reverses_closure(&graph, settings), "{context}");
            }
            match fast.method {
                Method::Closure => by_closure += 1,
                Method::NixWalk => walked += 1,
            }
        }
        assert!(by_closure > 1000 && walked > 300, "{by_closure} {walked}");
    }

    #[test]
    fn a_deriver_not_listing_its_output_is_walked_as_nix_does() {
        // The store of `a_deriver_not_listing_its_output_depends_on_order`: `decide` must not
        // take the closure (which would keep d whatever the order).
        let f = deriver_not_listing_its_output();
        let temp = TempRoots::default();
        let mut set = RootSet::new(&f.graph, &temp);
        set.add(&f.graph, f.name('r'));
        let verdict = decide_names(&f.graph, &set, DEFAULT, ['d', 'q', 'r'].map(|k| f.name(k)));
        assert_eq!(verdict.method, Method::NixWalk);
        assert_eq!(verdict.dead_basenames(&f.graph), vec![f.name('d')]);
        let outputs_only = GcSettings {
            keep_derivations: false,
            keep_outputs: true,
        };
        let verdict = decide_names(
            &f.graph,
            &set,
            outputs_only,
            ['d', 'q', 'r'].map(|k| f.name(k)),
        );
        assert_eq!(verdict.method, Method::Closure);
    }
}
