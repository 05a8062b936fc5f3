//! The reconciler: turns hints into index updates by re-reading the filesystem.
//!
//! Invariant (DESIGN.md 2): a hint is never the final word. A hint about a path in the state
//! trees re-examines that subtree; a hint about any other path re-examines every state-tree
//! entry whose answer depends on it (an indirect root's target, or a directory above it). A hint
//! that says hints were lost makes the index unsettled until a rescan. A hint that mounts
//! changed is turned into path hints for the mount points at which the source's mount table
//! differs from the one seen last (`mounts` says why that order is safe); a mount on or above
//! the state trees, the store or its database, or a change with no table to compare, unsettles.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::hint::Hint;
use crate::index::{Index, IndexError};
use crate::layout::StoreLayout;
use crate::mounts::MountTable;
use crate::report::{MergedReport, ScanReport};
use crate::scan::{Findings, ScanError, ScanOptions};
use crate::store_path::{base_name_of, is_in_dir};
use crate::validity::ValidityCache;

/// Whether the index can be trusted to hold every root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Settled {
    Settled,
    Unsettled { reason: String },
}

/// Counters shown by `status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReconcileStats {
    pub hints: u64,
    /// State-tree entries re-examined because of a hint.
    pub rechecks: u64,
    pub rescans: u64,
    /// Differences found by verification sweeps between the index and a fresh scan.
    pub drift: u64,
    pub verifications: u64,
    #[serde(skip)]
    pub last_rescan: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// Entries re-examined in one index transaction by [`Reconciler::recheck_all`].
const RECHECK_BATCH: usize = 16 * 1024;

pub struct Reconciler {
    layout: StoreLayout,
    index: Index,
    settled: Settled,
    stats: ReconcileStats,
    /// Set when the watched paths changed, so sources need a new interest.
    interest_changed: bool,
    validity: ValidityCache,
    /// The index's part of the last answer, reused while neither the index nor any validity
    /// answer it used has changed.
    index_answer: Option<IndexAnswer>,
    /// The source's mount table as of the last rescan or mount change: what the next one is
    /// compared with (`None`: a mount change unsettles the index).
    mounts: Option<Arc<MountTable>>,
    /// The state-tree paths the last re-examination read (see [`Self::read_while_mounts_moved`]).
    last_examined: Vec<Vec<u8>>,
    /// Paths read while the mount table was moving, read again with the next mount change.
    pending_after_mounts: BTreeSet<Vec<u8>>,
}

struct IndexAnswer {
    generation: u64,
    validity_epoch: u64,
    report: ScanReport,
}

/// A query's answer: the index's part and what was read at query time (runtime and temp roots).
pub struct Answer<'a> {
    index: &'a ScanReport,
    volatile: ScanReport,
}

impl Answer<'_> {
    pub fn report(&self) -> MergedReport<'_> {
        MergedReport::new(&[self.index, &self.volatile])
    }
}

impl Reconciler {
    /// Starts unsettled: nothing is known until the first rescan.
    pub fn new(layout: StoreLayout, index: Index) -> Self {
        let validity = ValidityCache::new(&layout.db_path(), layout.store_dir());
        Self {
            layout,
            index,
            settled: Settled::Unsettled {
                reason: "not scanned yet".to_owned(),
            },
            stats: ReconcileStats::default(),
            interest_changed: true,
            validity,
            index_answer: None,
            mounts: None,
            last_examined: Vec::new(),
            pending_after_mounts: BTreeSet::new(),
        }
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// Opens the store database now, while the tracker may still create its WAL files
    /// ([`ValidityCache::open_now`]).
    pub fn open_store_db(&mut self) -> Result<(), ReconcileError> {
        self.validity.open_now().map_err(ScanError::from)?;
        Ok(())
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn settled(&self) -> &Settled {
        &self.settled
    }

    pub fn stats(&self) -> &ReconcileStats {
        &self.stats
    }

    /// Marks the index unsettled; the first reason is kept until a rescan.
    pub fn unsettle(&mut self, reason: impl Into<String>) {
        if self.settled == Settled::Settled {
            let reason = reason.into();
            tracing::warn!(%reason, "index unsettled");
            self.settled = Settled::Unsettled { reason };
        }
    }

    /// Marks the index unsettled for a cause no rescan removes (the /proc reader is gone): its
    /// reason replaces a passing one, so `status` names the cause that lasts.
    pub fn unsettle_for_good(&mut self, reason: String) {
        let unsettled = Settled::Unsettled { reason };
        if self.settled != unsettled {
            tracing::warn!(reason = ?unsettled, "index unsettled for good");
            self.settled = unsettled;
        }
    }

    /// Takes (and clears) the "interest changed" flag.
    pub fn take_interest_changed(&mut self) -> bool {
        std::mem::take(&mut self.interest_changed)
    }

    /// The full traversal of the state trees; settles the index. Sources must already be
    /// attached (invariant 4), so that nothing between this scan and the next hint is missed.
    /// `mounts` is the source's mount table now ([`crate::source::Source::mount_table`]): read
    /// before the traversal, so a later mount change shows when the next table is compared.
    #[tracing::instrument(skip_all)]
    pub fn rescan(&mut self, mounts: Option<&Arc<MountTable>>) -> Result<(), ReconcileError> {
        let started = std::time::Instant::now();
        self.mounts = mounts.cloned();
        self.pending_after_mounts.clear();
        let trees = [self.layout.gcroots_dir(), self.layout.profiles_dir()];
        self.reexamine(trees.iter().map(|tree| tree.as_os_str().as_bytes()))?;
        // A rescan starts from nothing, validity answers included (as a scan would).
        self.validity.forget();
        self.settled = Settled::Settled;
        self.stats.rescans += 1;
        self.stats.last_rescan = Some(SystemTime::now());
        self.interest_changed = true;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "rescan settled the index"
        );
        Ok(())
    }

    /// Applies a batch of hints. `mounts` is the source's mount table as of these hints (see
    /// [`Self::rescan`]); it only matters when they include [`Hint::MountsChanged`].
    #[tracing::instrument(skip_all, fields(hints = hints.len()))]
    pub fn apply(
        &mut self,
        hints: &[Hint],
        mounts: Option<&Arc<MountTable>>,
    ) -> Result<(), ReconcileError> {
        self.stats.hints += hints.len() as u64;
        let gcroots = self
            .layout
            .gcroots_dir()
            .into_os_string()
            .into_encoded_bytes();
        let profiles = self
            .layout
            .profiles_dir()
            .into_os_string()
            .into_encoded_bytes();
        let mut subtrees: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut entries: BTreeSet<Vec<u8>> = BTreeSet::new();
        // Sources repeat themselves (a burst of changes to one link); each distinct hint is
        // judged once, which also saves a realpath per duplicate.
        let distinct: BTreeSet<&Hint> = hints.iter().collect();
        // Mount points that changed count as paths that changed, and what was read while
        // the table was moving is read again now that the source has caught up.
        let mut mount_points = BTreeSet::new();
        if distinct.contains(&Hint::MountsChanged) {
            self.mount_points_changed(mounts, &mut mount_points);
            subtrees.append(&mut self.pending_after_mounts);
        }
        let paths = distinct
            .iter()
            .filter_map(|hint| match hint {
                Hint::Path(path) => Some(path.as_os_str().as_bytes()),
                _ => None,
            })
            .chain(mount_points.iter().map(Vec::as_slice));
        let mut above = Vec::new();
        for path in paths {
            if path == gcroots.as_slice()
                || path == profiles.as_slice()
                || is_in_dir(path, &gcroots)
                || is_in_dir(path, &profiles)
            {
                subtrees.insert(path.to_vec());
            } else if is_in_dir(&gcroots, path) || is_in_dir(&profiles, path) {
                above.push(path);
            }
            entries.extend(self.index.entries_watching(path));
            match crate::index::through_real_dir(path) {
                Some(canonical) => entries.extend(self.index.entries_watching(&canonical)),
                // Its directory is gone, so we cannot tell which link it was: be broad.
                None => entries.extend(self.index.entries_with_component(base_name_of(path))),
            }
        }
        for path in above {
            // A directory above the state trees changed: everything may have moved.
            self.unsettle(format!(
                "{} changed above the state trees",
                String::from_utf8_lossy(path)
            ));
        }
        for hint in distinct {
            match hint {
                Hint::Path(_) | Hint::MountsChanged => {}
                Hint::Basename(name) => {
                    entries.extend(self.index.entries_with_component(name.as_bytes()));
                }
                Hint::Lost { reason } => self.unsettle(reason.clone()),
            }
        }
        // Keep only the outermost subtrees; an entry inside one is re-examined with it.
        let mut outermost: Vec<Vec<u8>> = Vec::new();
        for subtree in subtrees {
            if !outermost.iter().any(|outer| is_in_dir(&subtree, outer)) {
                outermost.push(subtree);
            }
        }
        entries.retain(|entry| {
            !outermost
                .iter()
                .any(|outer| entry == outer || is_in_dir(entry, outer))
        });
        self.stats.rechecks += (outermost.len() + entries.len()) as u64;
        self.reexamine(outermost.iter().chain(&entries).map(Vec::as_slice))
    }

    /// Adds the points at which the source's mount table `now` differs from the one seen last to
    /// `points`. A mount on or above the store or its database, or no table to compare (or
    /// tables without unique mount IDs, before Linux 6.8), unsettles the index instead: what the
    /// index holds may not be what a collector would read.
    fn mount_points_changed(
        &mut self,
        now: Option<&Arc<MountTable>>,
        points: &mut BTreeSet<Vec<u8>>,
    ) {
        let before = std::mem::replace(&mut self.mounts, now.cloned());
        let (Some(before), Some(now)) = (before, now) else {
            self.unsettle("mounts changed");
            return;
        };
        if !before.comparable_with(now) {
            // mountinfo's IDs and device numbers are reused: a replaced mount can look unchanged.
            self.unsettle("mounts changed (this kernel has no unique mount IDs to compare)");
            return;
        }
        let store_dir = self.layout.store_dir().as_os_str().as_bytes().to_vec();
        let db_dir = self
            .layout
            .db_path()
            .parent()
            .map(|dir| dir.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        for point in before.changed_points(now) {
            let covers = |dir: &[u8]| point == dir || is_in_dir(dir, &point);
            if covers(&store_dir) || covers(&db_dir) {
                self.unsettle(format!(
                    "a mount at {} changed the store or its database",
                    String::from_utf8_lossy(&point)
                ));
            }
            tracing::debug!(point = %String::from_utf8_lossy(&point), "mount changed");
            points.insert(point);
        }
    }

    /// Called when the mount table moved while (or since before) the last re-examination read
    /// the filesystem ([`crate::source::Source::mounts_changed_since_table`]): what it read
    /// may have gone through a mount no table will show, so it is read again when the next
    /// mount change is applied (the source reports that change: it happened after the source
    /// last read the table). See `mounts`.
    pub fn read_while_mounts_moved(&mut self) {
        self.pending_after_mounts
            .extend(std::mem::take(&mut self.last_examined));
    }

    /// Called when the mount table held still while the last re-examination read: nothing it
    /// read needs reading again, so the list of what it read (every entry, after the
    /// bootstrap) is not kept until the next one.
    pub fn mounts_held_still(&mut self) {
        self.last_examined = Vec::new();
    }

    /// Re-examines the given state-tree entries.
    pub fn recheck(&mut self, entries: &BTreeSet<Vec<u8>>) -> Result<(), ReconcileError> {
        self.stats.rechecks += entries.len() as u64;
        self.reexamine(entries.iter().map(Vec::as_slice))
    }

    /// Re-examines every entry the index holds, settling nothing (after the bootstrap every
    /// watched path is new to the source, so every entry is read again), [`RECHECK_BATCH`]
    /// entries at a time: the findings of a million entries at once would double the
    /// tracker's peak.
    pub fn recheck_all(&mut self) -> Result<(), ReconcileError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self.index.keys_after(after.as_deref(), RECHECK_BATCH);
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            self.stats.rechecks += batch.len() as u64;
            self.reexamine(batch.iter().map(Vec::as_slice))?;
        }
        // What all the batches read lies in the trees; should the mount table have moved
        // meanwhile, they are what is read again (`read_while_mounts_moved`).
        self.last_examined = [self.layout.gcroots_dir(), self.layout.profiles_dir()]
            .map(|tree| tree.into_os_string().into_encoded_bytes())
            .into();
        Ok(())
    }

    /// Watched paths added since the last call (see [`Index::take_new_watched`]).
    pub fn take_new_watched(&mut self) -> Vec<std::sync::Arc<[u8]>> {
        self.index.take_new_watched()
    }

    /// Re-reads each path (a state-tree entry or subtree) and replaces what the index knows
    /// of it, all in one index transaction. A path inside another is read with it.
    fn reexamine<'p>(
        &mut self,
        paths: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<(), ReconcileError> {
        let mut paths: Vec<&[u8]> = paths.into_iter().collect();
        paths.sort_unstable();
        paths.dedup();
        let listed: HashSet<&[u8]> = paths.iter().copied().collect();
        let outermost: Vec<Vec<u8>> = paths
            .iter()
            .filter(|path| !ancestors(path).any(|ancestor| listed.contains(ancestor)))
            .map(|path| path.to_vec())
            .collect();
        if outermost.is_empty() {
            self.last_examined = outermost;
            return Ok(());
        }
        let mut findings = Findings::new(&self.layout);
        for path in &outermost {
            findings.find_roots(Path::new(OsStr::from_bytes(path)));
        }
        let replaced = self.index.replace_subtrees(&outermost, findings);
        self.last_examined = outermost;
        replaced?;
        if self.index.take_watched_changed() {
            self.interest_changed = true;
        }
        Ok(())
    }

    /// The answer to a query: the index's static and indirect roots plus the runtime and temp
    /// roots read now, checked against the store database.
    pub fn answer(&mut self, options: &ScanOptions) -> Result<Answer<'_>, ReconcileError> {
        self.validity.refresh().map_err(ScanError::from)?;
        let mut findings = Findings::new(&self.layout);
        findings.find_volatile_roots(options)?;
        // Not remembered: runtime and temp roots come from any process's environment and
        // mappings, and remembering every store-path-like string a user can put there would
        // let them grow the tracker's heap without bound. They are few per query.
        let mut volatile =
            findings.into_report(|_, paths| self.validity.contains_all_uncached(paths))?;
        volatile.normalize();
        let generation = self.index.generation();
        let cached = match self.index_answer.take() {
            Some(cached)
                if cached.generation == generation
                    && cached.validity_epoch == self.validity.epoch() =>
            {
                cached
            }
            _ => {
                let mut findings = Findings::new(&self.layout);
                self.index.add_to(&mut findings);
                let mut report = findings
                    .into_report(|targets, paths| self.validity.contains_all(targets, paths))?;
                report.normalize();
                IndexAnswer {
                    generation,
                    validity_epoch: self.validity.epoch(),
                    report,
                }
            }
        };
        let cached = self.index_answer.insert(cached);
        Ok(Answer {
            index: &cached.report,
            volatile,
        })
    }

    /// Compares the index with a fresh traversal of the state trees and counts differences
    /// (which should never happen). Differences are logged and repaired by a rescan.
    pub fn verify(&mut self) -> Result<u64, ReconcileError> {
        let options = ScanOptions {
            runtime: false,
            temp: false,
            ..ScanOptions::default()
        };
        let mut from_index = Findings::new(&self.layout);
        self.index.add_to(&mut from_index);
        let mut indexed =
            from_index.into_report(|_, paths| self.validity.contains_all_uncached(paths))?;
        indexed.normalize();
        let mut fresh = crate::scan::scan_with_validity(&self.layout, &options, |_, paths| {
            self.validity.contains_all_uncached(paths)
        })?;
        fresh.normalize();
        let drift = symmetric_difference(&indexed.roots, &fresh.roots)
            + symmetric_difference(&indexed.unregistered, &fresh.unregistered)
            + symmetric_difference(&indexed.stale_links, &fresh.stale_links)
            + symmetric_difference(&indexed.unreadable, &fresh.unreadable);
        self.stats.verifications += 1;
        if drift > 0 {
            self.stats.drift += drift;
            tracing::error!(drift, "the index drifted from the filesystem; rescanning");
            let mounts = self.mounts.clone();
            self.rescan(mounts.as_ref())?;
        }
        Ok(drift)
    }
}

fn symmetric_difference<T: Ord>(a: &[T], b: &[T]) -> u64 {
    let a: BTreeSet<&T> = a.iter().collect();
    let b: BTreeSet<&T> = b.iter().collect();
    a.symmetric_difference(&b).count() as u64
}

/// The directories above `path`, innermost first: `/a/b/c` → `/a/b`, `/a` (not `/`).
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = path;
    std::iter::from_fn(move || {
        let slash = rest.iter().rposition(|&c| c == b'/')?;
        rest = &rest[..slash];
        (!rest.is_empty()).then_some(rest)
    })
}
