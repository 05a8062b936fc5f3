//! The live root index: for every entry under `gcroots/` and `profiles/`, what examining it
//! found (roots, stale links, unreadable entries) and which paths outside the state directory
//! (indirect-root targets) its answer depends on.
//!
//! Invariant: the index holds exactly what a scan of the state trees would find, for every
//! entry whose hints have been applied. It is kept in memory and written through to SQLite
//! (WAL) so that a restarted tracker has its last answer; a restart is unsettled until one
//! rescan (the filesystem may have changed while nobody watched).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};

use crate::layout::StoreLayout;
use crate::report::{Root, RootKind, StaleLink, Unreadable};
use crate::scan::{Candidate, Findings};
use crate::source::Interest;
use crate::store_path::{base_name_of, dir_of};

/// What examining one state-tree entry found, as the index keeps it: slices sized to their
/// contents and the rare problems out of line, five words in its B-tree node. Its paths are
/// shared with the maps' keys: a root's link is its entry's key, an indirect root's retainer
/// the path it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EntryFindings {
    roots: Box<[Root]>,
    /// The indirect-root targets this entry's answer depends on (as written and canonical),
    /// sorted and distinct.
    watched: Box<[Arc<[u8]>]>,
    problems: Option<Box<Problems>>,
}

/// Stale links and unreadable paths: an entry that has them is rare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Problems {
    stale: Vec<StaleLink>,
    unreadable: Vec<Unreadable>,
}

impl EntryFindings {
    fn stale(&self) -> &[StaleLink] {
        self.problems
            .as_ref()
            .map_or(&[], |problems| &problems.stale)
    }

    fn unreadable(&self) -> &[Unreadable] {
        self.problems
            .as_ref()
            .map_or(&[], |problems| &problems.unreadable)
    }
}

/// An entry's findings while a batch is grouped.
#[derive(Default)]
struct EntryBuilder {
    roots: Vec<Root>,
    problems: Problems,
    watched: PathSet,
}

impl EntryBuilder {
    fn build(self) -> EntryFindings {
        let Self {
            roots,
            problems,
            watched,
        } = self;
        let has_problems = !(problems.stale.is_empty() && problems.unreadable.is_empty());
        EntryFindings {
            roots: roots.into_boxed_slice(),
            watched: watched.0.into_boxed_slice(),
            problems: has_problems.then(|| Box::new(problems)),
        }
    }
}

/// A small set of paths kept as a sorted vector: entries depend on one or two paths and most
/// paths have one dependent entry, where a B-tree would spend a 280-byte node on each set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PathSet(Vec<Arc<[u8]>>);

impl PathSet {
    fn insert(&mut self, path: Arc<[u8]>) {
        if let Err(at) = self.0.binary_search_by(|probe| probe[..].cmp(&path[..])) {
            push_exact(&mut self.0, path);
            self.0[at..].rotate_right(1);
        }
    }

    fn remove(&mut self, path: &[u8]) {
        if let Ok(at) = self.0.binary_search_by(|probe| probe[..].cmp(path)) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, Arc<[u8]>> {
        self.0.iter()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open the index database {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write the index database")]
    Write(#[source] rusqlite::Error),
}

pub struct Index {
    entries: BTreeMap<Arc<[u8]>, EntryFindings>,
    /// Watched path (raw or canonical retainer) → entries depending on it.
    by_watched: BTreeMap<Arc<[u8]>, PathSet>,
    db: Connection,
    generation: u64,
    /// Set when a watched path was added or removed (sources need a new interest).
    watched_changed: bool,
    /// Watched paths added since the last `take_new_watched`.
    new_watched: Vec<Arc<[u8]>>,
}

impl Index {
    /// Opens (or creates) the index database at `path`; the in-memory index starts empty and
    /// is filled by the bootstrap scan.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let open_error = |source| IndexError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let db = Connection::open(path).map_err(open_error)?;
        // temp_store: SQLite's temporary files would go to /tmp, where Landlock lets no thread
        // of the tracker write after the privilege drop.
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA temp_store = MEMORY;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
             CREATE TABLE IF NOT EXISTS roots (
                 link BLOB NOT NULL, retainer BLOB NOT NULL, target BLOB NOT NULL,
                 kind TEXT NOT NULL, generation INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS roots_by_link ON roots (link);
             CREATE TABLE IF NOT EXISTS watched (
                 link BLOB NOT NULL, path BLOB NOT NULL, generation INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS watched_by_link ON watched (link);",
        )
        .map_err(open_error)?;
        let generation = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'generation'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_or(0, |value| u64::try_from(value).unwrap_or(0));
        Ok(Self {
            entries: BTreeMap::new(),
            by_watched: BTreeMap::new(),
            db,
            generation,
            watched_changed: false,
            new_watched: Vec::new(),
        })
    }

    /// Number of distinct watched paths.
    pub fn watched_len(&self) -> usize {
        self.by_watched.len()
    }

    /// Takes (and clears) the flag set when a watched path appeared or disappeared.
    pub fn take_watched_changed(&mut self) -> bool {
        std::mem::take(&mut self.watched_changed)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces everything known at or below `subtree` (a state-tree path) with `findings`,
    /// which must come from examining exactly that subtree.
    #[cfg(test)]
    pub(crate) fn replace_subtree(
        &mut self,
        subtree: &[u8],
        findings: Findings<'_>,
    ) -> Result<(), IndexError> {
        self.replace_subtrees(&[subtree.to_vec()], findings)
    }

    /// [`Self::replace_subtree`] for many subtrees, none inside another, examined into one
    /// `findings`: one generation, one transaction. Examining a thousand entries costs one
    /// grouping, not a thousand (the re-read after the bootstrap examines every entry).
    pub(crate) fn replace_subtrees(
        &mut self,
        subtrees: &[Vec<u8>],
        findings: Findings<'_>,
    ) -> Result<(), IndexError> {
        self.generation += 1;
        let grouped = group_by_entry(findings, &mut HashMap::new());
        // Which watched paths are new to the source, and which it may stop watching, is
        // judged against the state before this batch, so re-examining an entry whose paths
        // did not change does not count as a change.
        let mut incoming: Vec<Arc<[u8]>> = grouped
            .values()
            .flat_map(|entry| entry.watched.iter().cloned())
            .collect();
        incoming.sort_unstable();
        incoming.dedup();
        let new_paths: Vec<Arc<[u8]>> = incoming
            .iter()
            .filter(|path| !self.by_watched.contains_key(&path[..]))
            .cloned()
            .collect();
        let generation = self.generation;
        let transaction = self.db.transaction().map_err(IndexError::Write)?;
        for subtree in subtrees {
            persist_removal(&transaction, subtree)?;
        }
        for (key, entry) in &grouped {
            persist_entry(&transaction, key, entry, generation)?;
        }
        transaction
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?1)",
                [i64::try_from(generation).unwrap_or(i64::MAX)],
            )
            .map_err(IndexError::Write)?;
        transaction.commit().map_err(IndexError::Write)?;
        let mut grouped = grouped;
        let mut orphaned = Vec::new();
        for subtree in subtrees {
            for key in self.keys_at_or_below(subtree) {
                // An entry found as it was keeps its allocations: re-reading every entry (as
                // after the bootstrap) builds no second copy of the index beside the first,
                // which would leave the heap fragmented at twice its size.
                if grouped.get(&key[..]) == self.entries.get(&key[..]) {
                    grouped.remove(&key[..]);
                } else {
                    orphaned.extend(self.remove_entry(&key));
                }
            }
        }
        self.insert_entries(grouped);
        let is_incoming = |path: &Arc<[u8]>| incoming.binary_search(path).is_ok();
        if !new_paths.is_empty() || orphaned.iter().any(|path| !is_incoming(path)) {
            self.watched_changed = true;
        }
        self.new_watched.extend(new_paths);
        Ok(())
    }

    /// Entries whose answer depends on `path` (or on anything below it, for a directory).
    pub fn entries_watching(&self, path: &[u8]) -> BTreeSet<Vec<u8>> {
        let mut found = BTreeSet::new();
        let from: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(path), Bound::Unbounded);
        for (watched, entries) in self.by_watched.range::<[u8], _>(from) {
            if !watched.starts_with(path) {
                break;
            }
            if watched.len() == path.len() || watched[path.len()] == b'/' {
                found.extend(entries.iter().map(|entry| entry.to_vec()));
            }
        }
        found
    }

    /// Entries whose watched paths have a component named `name`. A walk over every watched
    /// path: this answers the rare hint that names an entry without its directory.
    pub fn entries_with_component(&self, name: &[u8]) -> BTreeSet<Vec<u8>> {
        self.by_watched
            .iter()
            .filter(|(watched, _)| components(watched).any(|component| component == name))
            .flat_map(|(_, entries)| entries.iter().map(|entry| entry.to_vec()))
            .collect()
    }

    /// Watched paths added since the last call: the source must start watching them, then
    /// the entries depending on them are read again (attach first, then scan).
    pub fn take_new_watched(&mut self) -> Vec<Arc<[u8]>> {
        std::mem::take(&mut self.new_watched)
    }

    /// What sources should report, derived from what the index watches.
    pub fn interest(&self, layout: &StoreLayout) -> Interest {
        Interest {
            store_dir: layout.store_dir().to_owned(),
            basenames: self
                .by_watched
                .keys()
                .flat_map(|watched| components(watched))
                .map(<[u8]>::to_vec)
                .collect(),
            paths: self
                .by_watched
                .keys()
                .map(|path| PathBuf::from(OsStr::from_bytes(&path[..])))
                .collect(),
        }
    }

    /// Everything the index holds, as scan findings (the static and indirect part of an answer).
    pub(crate) fn add_to(&self, findings: &mut Findings<'_>) {
        for entry in self.entries.values() {
            findings
                .candidates
                .extend(entry.roots.iter().cloned().map(|root| Candidate {
                    root,
                    check_validity: true,
                }));
            findings.stale_links.extend(entry.stale().iter().cloned());
            findings
                .unreadable
                .extend(entry.unreadable().iter().cloned());
        }
    }

    pub fn count(&self, kind: RootKind) -> usize {
        self.entries
            .values()
            .flat_map(|entry| &entry.roots)
            .filter(|root| root.kind == kind)
            .count()
    }

    /// Up to `limit` entry keys in order, from the first after `after` (from the first, with
    /// `None`).
    pub fn keys_after(&self, after: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range::<[u8], _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(key, _)| key.to_vec())
            .collect()
    }

    fn keys_at_or_below(&self, subtree: &[u8]) -> Vec<Arc<[u8]>> {
        let from: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(subtree), Bound::Unbounded);
        self.entries
            .range::<[u8], _>(from)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(subtree))
            .filter(|key| key.len() == subtree.len() || key[subtree.len()] == b'/')
            .cloned()
            .collect()
    }

    /// Removes an entry; returns the watched paths no other entry depends on any more.
    fn remove_entry(&mut self, key: &[u8]) -> Vec<Arc<[u8]>> {
        let Some(entry) = self.entries.remove(key) else {
            return Vec::new();
        };
        let mut orphaned = Vec::new();
        for watched in entry.watched {
            remove_from(&mut self.by_watched, &watched, key);
            if !self.by_watched.contains_key(&watched[..]) {
                orphaned.push(watched);
            }
        }
        orphaned
    }

    /// Adds entries not in the index. A large batch (the bootstrap's) is merged in bulk: std's
    /// B-tree fills its nodes when built from sorted items, but only half when they are
    /// inserted one by one in order, which doubles the nodes of a million entries.
    fn insert_entries(&mut self, mut entries: EntriesFound) {
        // (watched path, entry watching it)
        let mut pairs: Vec<(SharedPath, SharedPath)> = entries
            .iter()
            .flat_map(|(key, entry)| {
                entry
                    .watched
                    .iter()
                    .map(|watched| (watched.clone(), key.clone()))
            })
            .collect();
        if pairs.len() > self.by_watched.len() / 4 {
            pairs.sort_unstable();
            let mut added: Vec<(Arc<[u8]>, PathSet)> = Vec::new();
            for (watched, key) in pairs {
                if let Some(set) = self.by_watched.get_mut(&watched[..]) {
                    set.insert(key);
                    continue;
                }
                match added.last_mut() {
                    Some((last, set)) if *last == watched => set.insert(key),
                    _ => {
                        let mut set = PathSet::default();
                        set.insert(key);
                        added.push((watched, set));
                    }
                }
            }
            self.by_watched.append(&mut added.into_iter().collect());
        } else {
            for (watched, key) in pairs {
                self.by_watched.entry(watched).or_default().insert(key);
            }
        }
        if entries.len() > self.entries.len() / 4 {
            self.entries.append(&mut entries);
        } else {
            self.entries.extend(entries);
        }
    }
}

/// A path held by the index, shared by every structure that names it.
type SharedPath = Arc<[u8]>;

/// State-tree entry → what examining it found.
type EntriesFound = BTreeMap<Arc<[u8]>, EntryFindings>;

/// Findings of one examination, grouped by the state-tree entry they belong to.
fn group_by_entry(
    findings: Findings<'_>,
    canonical_dirs: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
) -> EntriesFound {
    let mut grouped: BTreeMap<Arc<[u8]>, EntryBuilder> = BTreeMap::new();
    for Candidate { root, .. } in findings.candidates {
        let entry = grouped.entry(root.link.clone()).or_default();
        push_exact(&mut entry.roots, root);
    }
    for stale in findings.stale_links {
        let entry = grouped.entry(stale.link.as_slice().into()).or_default();
        push_exact(&mut entry.problems.stale, stale);
    }
    for unreadable in findings.unreadable {
        let key = unreadable.via.as_ref().unwrap_or(&unreadable.path);
        let entry = grouped.entry(key.as_slice().into()).or_default();
        push_exact(&mut entry.problems.unreadable, unreadable);
    }
    for watched in findings.watched {
        let entry = grouped.entry(watched.link).or_default();
        if let Some(real) = through_real_dir_cached(&watched.retainer, canonical_dirs) {
            if real[..] != watched.retainer[..] {
                entry.watched.insert(real.into());
            }
        }
        entry.watched.insert(watched.retainer);
    }
    // Collected from sorted items, so the map's nodes are full.
    grouped
        .into_iter()
        .map(|(key, entry)| (key, entry.build()))
        .collect()
}

/// Pushes without the spare room `Vec` leaves for growth when it is empty (room for four): a
/// lasting entry has one root and one or two watched paths, and shrinking a vector of four
/// afterwards leaves a hole beside each one.
fn push_exact<T>(vec: &mut Vec<T>, item: T) {
    if vec.capacity() == 0 {
        vec.reserve_exact(1);
    }
    vec.push(item);
}

fn remove_from(map: &mut BTreeMap<Arc<[u8]>, PathSet>, watched: &[u8], key: &[u8]) {
    if let Some(set) = map.get_mut(watched) {
        set.remove(key);
        if set.is_empty() {
            map.remove(watched);
        }
    }
}

/// The names along a path: `/home/alice/result` → `home`, `alice`, `result`.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&c| c == b'/').filter(|name| !name.is_empty())
}

/// `realpath(dir_of(path)) + "/" + base_name(path)`: the same entry named through its real
/// directory, as a source reports it when the path passes through a symlinked directory.
/// `None` if the directory is gone.
pub(crate) fn through_real_dir(path: &[u8]) -> Option<Vec<u8>> {
    through_real_dir_cached(path, &mut HashMap::new())
}

/// [`through_real_dir`] with a cache of resolved directories, for a batch of paths.
fn through_real_dir_cached(
    path: &[u8],
    cache: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    let dir = dir_of(path);
    let real_dir = cache
        .entry(dir.to_vec())
        .or_insert_with(|| {
            std::fs::canonicalize(OsStr::from_bytes(dir))
                .ok()
                .map(|canonical| canonical.into_os_string().into_encoded_bytes())
        })
        .clone()?;
    Some([real_dir.as_slice(), b"/", base_name_of(path)].concat())
}

/// Deletes every row at or below `subtree`, including rows a previous run left behind.
fn persist_removal(
    transaction: &rusqlite::Transaction<'_>,
    subtree: &[u8],
) -> Result<(), IndexError> {
    // Below `subtree` means starting with `subtree/`: the byte range [subtree/, subtree0),
    // since '0' follows '/' in byte order.
    let below_start = [subtree, b"/"].concat();
    let below_end = [subtree, b"0"].concat();
    for table in ["roots", "watched"] {
        transaction
            .execute(
                &format!("DELETE FROM {table} WHERE link = ?1 OR (link >= ?2 AND link < ?3)"),
                params![subtree, below_start, below_end],
            )
            .map_err(IndexError::Write)?;
    }
    Ok(())
}

fn persist_entry(
    transaction: &rusqlite::Transaction<'_>,
    key: &[u8],
    entry: &EntryFindings,
    generation: u64,
) -> Result<(), IndexError> {
    let generation = i64::try_from(generation).unwrap_or(i64::MAX);
    let mut insert_root = transaction
        .prepare_cached(
            "INSERT INTO roots (link, retainer, target, kind, generation) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(IndexError::Write)?;
    for root in &entry.roots {
        let retainer = root.retainer.printed();
        insert_root
            .execute(params![
                key,
                retainer,
                root.target.base_name(),
                root.kind.as_str(),
                generation
            ])
            .map_err(IndexError::Write)?;
    }
    let mut insert_watched = transaction
        .prepare_cached("INSERT INTO watched (link, path, generation) VALUES (?1, ?2, ?3)")
        .map_err(IndexError::Write)?;
    for watched in &entry.watched {
        insert_watched
            .execute(params![key, &watched[..], generation])
            .map_err(IndexError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(db: &Path) -> i64 {
        Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM roots", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn path_sets_stay_sorted_and_distinct() {
        let mut set = PathSet::default();
        for path in ["/b", "/a", "/c", "/a", "/b/x"] {
            set.insert(path.as_bytes().into());
        }
        let listed = |set: &PathSet| set.iter().map(|path| path.to_vec()).collect::<Vec<_>>();
        let expected: Vec<Vec<u8>> = ["/a", "/b", "/b/x", "/c"].map(|p| p.into()).into();
        assert_eq!(listed(&set), expected);
        set.remove(b"/b");
        set.remove(b"/missing");
        let expected: Vec<Vec<u8>> = ["/a", "/b/x", "/c"].map(|p| p.into()).into();
        assert_eq!(listed(&set), expected);
    }

    /// Re-reading an entry that did not change keeps what the index holds (no second copy);
    /// one that changed is replaced, and the watched-path map follows.
    #[test]
    fn reexamining_keeps_unchanged_entries_and_replaces_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let layout =
            StoreLayout::new(&dir.path().join("store"), &dir.path().join("state")).unwrap();
        let gcroots = layout.gcroots_dir();
        std::fs::create_dir_all(gcroots.join("auto")).unwrap();
        let store_path = |name: &str| {
            layout
                .store_dir()
                .join(format!("0123456789abcdfghijklmnpqrsvwxyz-{name}"))
        };
        let result = dir.path().join("home/result");
        std::fs::create_dir_all(result.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(store_path("a"), gcroots.join("a")).unwrap();
        std::os::unix::fs::symlink(store_path("b"), gcroots.join("b")).unwrap();
        std::os::unix::fs::symlink(store_path("c"), &result).unwrap();
        std::os::unix::fs::symlink(&result, gcroots.join("auto/c")).unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let tree = gcroots.as_os_str().as_bytes().to_vec();
        let examine = |index: &mut Index| {
            let mut findings = Findings::new(&layout);
            findings.find_roots(&gcroots);
            index.replace_subtree(&tree, findings).unwrap();
        };
        examine(&mut index);
        let key_of = |index: &Index, name: &str| {
            let key = gcroots.join(name);
            index
                .entries
                .get_key_value(key.as_os_str().as_bytes())
                .map(|(key, _)| key.clone())
                .unwrap()
        };
        let (a_before, c_before) = (key_of(&index, "a"), key_of(&index, "auto/c"));
        // Batches of keys in order, each starting after the last one of the batch before.
        let first = index.keys_after(None, 2);
        let rest = index.keys_after(first.last().map(Vec::as_slice), 2);
        let key = |name: &str| gcroots.join(name).into_os_string().into_encoded_bytes();
        assert_eq!(first, [key("a"), key("auto/c")]);
        assert_eq!(rest, [key("b")]);
        assert!(
            index
                .keys_after(rest.last().map(Vec::as_slice), 2)
                .is_empty()
        );
        std::fs::remove_file(gcroots.join("b")).unwrap();
        std::os::unix::fs::symlink(store_path("b2"), gcroots.join("b")).unwrap();
        std::fs::remove_file(&result).unwrap();
        std::os::unix::fs::symlink(store_path("c2"), &result).unwrap();
        examine(&mut index);
        assert!(Arc::ptr_eq(&a_before, &key_of(&index, "a")), "a was copied");
        assert!(!Arc::ptr_eq(&c_before, &key_of(&index, "auto/c")));
        let targets: BTreeSet<Vec<u8>> = index
            .entries
            .values()
            .flat_map(|entry| &entry.roots)
            .map(|root| root.target.base_name().to_vec())
            .collect();
        let names = |names: &[&str]| -> BTreeSet<Vec<u8>> {
            names
                .iter()
                .map(|name| format!("0123456789abcdfghijklmnpqrsvwxyz-{name}").into_bytes())
                .collect()
        };
        assert_eq!(targets, names(&["a", "b2", "c2"]));
        let watching = index.entries_watching(result.as_os_str().as_bytes());
        assert_eq!(watching, BTreeSet::from([c_before.to_vec()]));
        std::fs::remove_file(gcroots.join("auto/c")).unwrap();
        examine(&mut index);
        assert!(
            index
                .entries_watching(result.as_os_str().as_bytes())
                .is_empty()
        );
        assert_eq!(index.watched_len(), 0);
    }

    #[test]
    fn a_restart_replaces_rows_instead_of_adding_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let layout =
            StoreLayout::new(&dir.path().join("store"), &dir.path().join("state")).unwrap();
        let gcroots = layout.gcroots_dir();
        std::fs::create_dir_all(gcroots.join("sub")).unwrap();
        let target = layout
            .store_dir()
            .join("0123456789abcdfghijklmnpqrsvwxyz-x");
        std::os::unix::fs::symlink(&target, gcroots.join("a")).unwrap();
        std::os::unix::fs::symlink(&target, gcroots.join("sub/b")).unwrap();
        let db = dir.path().join("index.sqlite");
        let tree = gcroots.as_os_str().as_bytes().to_vec();
        for _ in 0..2 {
            let mut index = Index::open(&db).unwrap();
            let mut findings = Findings::new(&layout);
            findings.find_roots(&gcroots);
            index.replace_subtree(&tree, findings).unwrap();
            assert_eq!(index.count(RootKind::Static), 2);
            assert_eq!(rows(&db), 2);
        }
        // Re-examining one entry replaces only its rows.
        let mut index = Index::open(&db).unwrap();
        let sub = gcroots.join("sub");
        std::fs::remove_file(sub.join("b")).unwrap();
        let mut findings = Findings::new(&layout);
        findings.find_roots(&sub);
        index
            .replace_subtree(sub.as_os_str().as_bytes(), findings)
            .unwrap();
        assert_eq!(rows(&db), 1);
    }
}
