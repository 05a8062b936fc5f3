//! One collection, phase by phase, in the order of Nix's `collectGarbage`: take the GC lock,
//! serve the GC socket, roots (tracker, then temp roots), graph (store database), then the walk
//! that decides liveness and deletes as it goes, then the report (`--print-*`, a summary, or
//! `--json`). A run that deletes nothing reads the roots, the database and the store directory
//! at once, on three threads, and gets the inputs the ordered phases would have given.
//!
//! Invariant: nothing is deleted unless every phase before deletion succeeded; any doubt
//! about the roots is an error that stops the run before the store is touched.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Instant;

use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Serialize;

use crate::delete::{self, DeleteError, Deleter};
use crate::gc_lock::{self, GcLockError};
use crate::gc_socket::{GcSocket, GcSocketError, SharedTempRoots};
use crate::graph::StoreGraph;
use crate::layout::StoreLayout;
use crate::liveness::{self, DeadSink, KeepEverything, Liveness, Method, RootSet};
use crate::nix_conf::GcSettings;
use crate::progress::Progress;
use crate::roots::{self, RootsError, TrackedRoots};
use crate::store_db::{self, StoreDbError};
use crate::store_listing::{self, ListError, StoreListing};
use crate::temp_roots::{self, TempRoots, TempRootsError};
use crate::tracker_client::{self, RootKind};

/// What the run does with its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `--print-roots`: the tracker's roots, as `nix-store --gc --print-roots` prints them.
    PrintRoots,
    /// `--print-live`: what `nix-store --gc --print-live` prints.
    PrintLive,
    /// `--print-dead`: what `nix-store --gc --print-dead` prints.
    PrintDead,
    /// `--dry-run`: decide, delete nothing, summarise.
    DryRun,
    /// Delete the dead paths.
    Delete,
}

#[derive(Clone, Debug)]
pub struct CollectOptions {
    pub layout: StoreLayout,
    pub tracker_socket: PathBuf,
    /// How long the tracker may wait for its index to settle before answering "unsettled".
    pub tracker_wait_ms: u64,
    pub settings: GcSettings,
    pub action: Action,
    /// Nix's `--max-freed`; `u64::MAX` when not given. Zero means do nothing, as in Nix.
    pub max_freed: u64,
    pub allow_unreadable_runtime: bool,
    /// A progress line on standard error when it is a terminal.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error(transparent)]
    TempRoots(#[from] TempRootsError),
    #[error(transparent)]
    StoreDb(#[from] StoreDbError),
    #[error("cannot list the store directory {path}")]
    ListStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    GcLock(#[from] GcLockError),
    #[error(transparent)]
    GcSocket(#[from] GcSocketError),
    #[error(transparent)]
    Delete(#[from] DeleteError),
    #[error("cannot remove unused links from {path}")]
    Links {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the output failed")]
    Output(#[source] io::Error),
    #[error("reading the test synchronisation file {path}")]
    TestSync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CollectError {
    /// The roots could not be trusted (tracker unreachable, unsettled, unauthorized,
    /// incomplete, or watching another store): the caller must not collect.
    pub fn is_roots_refusal(&self) -> bool {
        matches!(self, Self::Roots(_))
    }
}

/// Milliseconds per phase, for `--json` and the logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseMillis {
    pub roots: u64,
    pub temp_roots: u64,
    pub load: u64,
    /// Reading the store directory ahead, alongside roots and load (runs that delete nothing;
    /// a real collection reads it during the walk, counted in `liveness`).
    pub list: u64,
    pub lock: u64,
    /// Deciding and deleting (interleaved, as in Nix).
    pub liveness: u64,
    pub links: u64,
    pub report: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RootCounts {
    #[serde(rename = "static")]
    pub static_: usize,
    pub indirect: usize,
    pub runtime: usize,
    /// Temp roots the tracker saw (live clients at query time).
    pub tracker_temp: usize,
    /// Temp roots read by the collector itself from `temproots/`.
    pub temp: usize,
    /// Temp roots received on the GC socket during the run.
    pub gc_socket: usize,
    /// Stale `gcroots/auto` links removed.
    pub stale_links_removed: usize,
    /// Roots naming paths that are not valid (ignored, as Nix does).
    pub invalid: usize,
    /// Unreadable `/proc` entries tolerated with `--allow-unreadable-runtime`.
    pub tolerated_unreadable: Vec<String>,
}

/// The `--json` summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub action: Action,
    pub keep_derivations: bool,
    pub keep_outputs: bool,
    pub roots: RootCounts,
    pub valid_paths: usize,
    pub references: usize,
    pub graph_bytes: usize,
    pub store_entries: usize,
    pub alive: usize,
    pub dead: usize,
    /// Sum of the NAR sizes (from the database) of the dead valid paths.
    pub dead_nar_bytes: u64,
    pub deleted: usize,
    pub freed_bytes: u64,
    /// The walk stopped early (`--max-freed` reached).
    pub stopped_early: bool,
    /// How liveness was decided: `nix-walk` (Nix's walk, step for step) or `closure` (plain
    /// searches, for runs that delete nothing where the order cannot matter).
    pub liveness_method: Option<Method>,
    pub ms: PhaseMillis,
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs one collection and writes its printed output (if any) to `out`.
pub fn collect(options: &CollectOptions, out: &mut dyn Write) -> Result<Summary, CollectError> {
    let start = Instant::now();
    let mut ms = PhaseMillis::default();
    if options.action == Action::PrintRoots {
        let phase = Instant::now();
        let tracked = find_tracked_roots(options)?;
        ms.roots = millis(phase);
        print_roots(options, &tracked, out).map_err(CollectError::Output)?;
        ms.total = millis(start);
        return Ok(summary(
            options,
            root_counts(&tracked),
            None,
            None,
            None,
            ms,
        ));
    }
    let deleting = options.action == Action::Delete;
    if deleting {
        delete::release_reserved_space(&options.layout);
    }

    // `collectGarbage`: the lock first, then the socket, so that from here on every new temp
    // root either is in `temproots/` when we read it or arrives on the socket.
    let phase = Instant::now();
    let _lock = gc_lock::acquire(&options.layout)?;
    let temp_roots = Arc::new(SharedTempRoots::default());
    let socket = GcSocket::serve(&options.layout, Arc::clone(&temp_roots))?;
    ms.lock = millis(phase);

    let inputs = if deleting {
        gather_in_order(options, &mut ms)?
    } else {
        gather_concurrently(options, &mut ms)?
    };
    let Inputs {
        tracked,
        temp,
        graph,
        listing,
        stale_links_removed,
    } = inputs;
    temp_roots.add_all(&temp);
    let mut counts = root_counts(&tracked);
    counts.temp = temp.len();
    counts.stale_links_removed = stale_links_removed;
    tracing::info!(
        roots = tracked.roots.len(),
        temp_roots = temp.len(),
        paths = graph.len(),
        references = graph.edge_count(),
        bytes = graph.heap_bytes(),
        roots_ms = ms.roots,
        load_ms = ms.load,
        list_ms = ms.list,
        "roots found and store database loaded"
    );

    // Synchronisation point for tests, as Nix's `_NIX_TEST_GC_SYNC` (tests/gc-concurrent.sh):
    // reading the named FIFO blocks until the test has run its concurrent clients. Here the
    // lock is held, the socket is served, and the roots are read.
    if let Some(sync) = std::env::var_os("_STORE_GC_TEST_GC_SYNC") {
        fs::read(&sync).map_err(|source| CollectError::TestSync {
            path: PathBuf::from(sync),
            source,
        })?;
    }

    let phase = Instant::now();
    let progress = Progress::new(options.progress, graph.len());
    let mut deleter = if deleting {
        Some(Deleter::new(&options.layout, options.max_freed, &progress)?)
    } else {
        None
    };
    let verdict = {
        let _span = tracing::info_span!("liveness").entered();
        let mut root_set = RootSet::new(&graph, &*temp_roots);
        for root in &tracked.roots {
            root_set.add(&graph, &root.basename);
        }
        counts.invalid = root_set.invalid;
        match (deleter.as_mut(), &listing) {
            // Deleting nothing: the same verdict by plain searches where the order cannot
            // matter (`liveness::decide`), from the listing read ahead.
            (None, Some(listing)) => {
                progress.examined_many(listing.entries);
                liveness::decide(&graph, &root_set, options.settings, listing)
            }
            (deleter, _) => {
                // Streamed from readdir, as Nix reads the store while it deletes: a million
                // names held at once would cost more than the graph.
                let mut list_error = None;
                let entries = store_entries(options)?
                    .map_while(|entry| match entry {
                        Ok(entry) => Some(entry),
                        Err(error) => {
                            list_error = Some(error);
                            None
                        }
                    })
                    .inspect(|_| progress.examined());
                let mut keep = KeepEverything;
                let sink: &mut dyn DeadSink = match deleter {
                    Some(deleter) => deleter,
                    None => &mut keep,
                };
                let verdict = liveness::walk(&graph, &root_set, options.settings, entries, sink);
                if let Some(source) = list_error {
                    return Err(CollectError::ListStore {
                        path: options.layout.store_dir().to_owned(),
                        source,
                    });
                }
                verdict
            }
        }
    };
    ms.liveness = millis(phase);
    progress.finish();
    if let Some(error) = deleter.as_mut().and_then(|deleter| deleter.error.take()) {
        return Err(error.into());
    }
    tracing::info!(
        alive = verdict.alive.len(),
        dead = verdict.dead.len(),
        ms = ms.liveness,
        "liveness decided"
    );

    if deleting {
        let phase = Instant::now();
        let links = options.layout.store_dir().join(".links");
        let removed =
            delete::remove_unused_links(&options.layout).map_err(|source| CollectError::Links {
                path: links,
                source,
            })?;
        tracing::info!(removed, "deleted unused links");
        ms.links = millis(phase);
    }
    counts.gc_socket = socket.roots().received();
    drop(socket);

    let phase = Instant::now();
    report(options, &graph, &verdict, out).map_err(CollectError::Output)?;
    ms.report = millis(phase);
    ms.total = millis(start);
    Ok(summary(
        options,
        counts,
        Some(&graph),
        Some(&verdict),
        deleter.as_ref(),
        ms,
    ))
}

/// What a collection decides from.
struct Inputs {
    tracked: TrackedRoots,
    temp: TempRoots,
    graph: StoreGraph,
    /// The store directory read ahead, for a run that deletes nothing; a real collection
    /// reads it during the walk.
    listing: Option<StoreListing>,
    stale_links_removed: usize,
}

/// A real collection reads its inputs one after the other, as `collectGarbage` does: the
/// roots, then the temp roots, then the database (which Nix queries during its walk, after
/// both), so a path registered and rooted before the roots were found is in the graph.
fn gather_in_order(options: &CollectOptions, ms: &mut PhaseMillis) -> Result<Inputs, CollectError> {
    let phase = Instant::now();
    let tracked = find_tracked_roots(options)?;
    ms.roots = millis(phase);
    let stale_links_removed =
        delete::remove_stale_auto_links(&options.layout, &tracked.stale_links);

    let phase = Instant::now();
    let temp = temp_roots::find_temp_roots(&options.layout, true)?;
    ms.temp_roots = millis(phase);

    let phase = Instant::now();
    let graph = {
        let _span = tracing::info_span!("load").entered();
        store_db::load(&options.layout)?
    };
    ms.load = millis(phase);
    Ok(Inputs {
        tracked,
        temp,
        graph,
        listing: None,
        stale_links_removed,
    })
}

/// A run that deletes nothing reads its inputs at once, each phase on its own thread: the
/// roots (the tracker's answer, then the temp roots), the database, and the store directory
/// (resolved against the graph's names as soon as they are sorted).
///
/// The inputs are those reading in order gives (roots, temp roots, then the database, as in
/// [`gather_in_order`], which also removes what Nix removes on the way). The database
/// snapshot may be older than the roots, so it is checked once they are in: if another
/// connection committed since (a path registered, perhaps rooted, while the tracker
/// answered), the graph is loaded again and the directory read again, after the roots as in
/// order. The directory may be read before the roots' fence, which can only miss an entry
/// created meanwhile: nothing is deleted, and such an entry could as well have been created
/// after the run.
fn gather_concurrently(
    options: &CollectOptions,
    ms: &mut PhaseMillis,
) -> Result<Inputs, CollectError> {
    let layout = &options.layout;
    let parent = &tracing::Span::current();
    let (publish, published) = mpsc::sync_channel(1);
    let (roots, loaded, listing) = thread::scope(|scope| {
        let roots = scope.spawn(|| {
            parent.in_scope(|| -> Result<_, CollectError> {
                let phase = Instant::now();
                let tracked = find_tracked_roots(options)?;
                let roots_ms = millis(phase);
                let phase = Instant::now();
                let temp = temp_roots::find_temp_roots(layout, false)?;
                Ok((tracked, temp, roots_ms, millis(phase)))
            })
        });
        // `collectGarbage` with `maxFreed == 0` does not look at the store.
        let listing = (options.max_freed != 0).then(|| {
            scope.spawn(move || {
                parent.in_scope(|| {
                    let _span = tracing::info_span!("list").entered();
                    let phase = Instant::now();
                    let listing = store_listing::list_while_loading(layout.store_dir(), &published);
                    (listing, millis(phase))
                })
            })
        });
        let phase = Instant::now();
        let loaded = {
            let _span = tracing::info_span!("load").entered();
            // If the load fails before publishing, `publish` is dropped with the closure and
            // the listing thread stops.
            store_db::load_publishing(layout, move |index| {
                // The listing thread may have stopped on its own error, reported below.
                let _ = publish.send(index);
            })
        };
        ms.load = millis(phase);
        (join(roots), loaded, listing.map(join))
    });
    // The roots first: a refusal of the roots is what the caller must see.
    let (tracked, temp, roots_ms, temp_ms) = roots?;
    (ms.roots, ms.temp_roots) = (roots_ms, temp_ms);
    let (mut graph, snapshot) = loaded?;
    // Synchronisation point for tests: the database is read and the roots are in; a commit
    // made while this blocks must be seen below.
    if let Some(sync) = std::env::var_os("_STORE_GC_TEST_LOADED_SYNC") {
        fs::read(&sync).map_err(|source| CollectError::TestSync {
            path: PathBuf::from(sync),
            source,
        })?;
    }
    let mut listing = match listing {
        Some((listing, list_ms)) => {
            ms.list = list_ms;
            listing.map_err(|error| list_error(layout.store_dir(), error))?
        }
        None => StoreListing::default(),
    };
    if !snapshot.is_current()? {
        tracing::info!("the store database changed while the roots were read: reading it again");
        drop(snapshot);
        let phase = Instant::now();
        graph = store_db::load(layout)?;
        if options.max_freed != 0 {
            listing = store_listing::list(layout.store_dir(), |name| graph.find(name))
                .map_err(|error| list_error(layout.store_dir(), error))?;
        }
        ms.load += millis(phase);
    }
    Ok(Inputs {
        tracked,
        temp,
        graph,
        listing: Some(listing),
        stale_links_removed: 0,
    })
}

/// A scoped thread's result; its panic goes on in the caller.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn list_error(store_dir: &std::path::Path, error: ListError) -> CollectError {
    let source = match error {
        ListError::Read(source) => source,
        abandoned @ ListError::Abandoned => io::Error::other(abandoned),
    };
    CollectError::ListStore {
        path: store_dir.to_owned(),
        source,
    }
}

fn root_counts(tracked: &TrackedRoots) -> RootCounts {
    RootCounts {
        static_: tracked.count(RootKind::Static),
        indirect: tracked.count(RootKind::Indirect),
        runtime: tracked.count(RootKind::Runtime),
        tracker_temp: tracked.count(RootKind::Temp),
        tolerated_unreadable: tracked.tolerated.clone(),
        ..RootCounts::default()
    }
}

/// The store directory's entries in readdir order, as Nix walks them (the order matters in
/// databases where a deriver does not list its output, see `liveness`). `collectGarbage`
/// with `maxFreed == 0` does not look at the store at all. Read with `readdir` into a copy
/// of each `dirent`, not `std::fs::read_dir`, which allocates each name.
fn store_entries(
    options: &CollectOptions,
) -> Result<impl Iterator<Item = io::Result<StoreEntry>>, CollectError> {
    let store_dir = options.layout.store_dir();
    let entries = Dir::open(
        store_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| CollectError::ListStore {
        path: store_dir.to_owned(),
        source: errno.into(),
    })?;
    let limit = if options.max_freed == 0 {
        0
    } else {
        usize::MAX
    };
    Ok(entries
        .into_iter()
        .take(limit)
        .map(|entry| entry.map(StoreEntry).map_err(io::Error::from)))
}

/// One entry of the store directory, as its name's bytes.
struct StoreEntry(nix::dir::Entry);

impl AsRef<[u8]> for StoreEntry {
    fn as_ref(&self) -> &[u8] {
        self.0.file_name().to_bytes()
    }
}

/// The tracker's fenced answer, checked (store, completeness policy) and turned into roots.
fn find_tracked_roots(options: &CollectOptions) -> Result<TrackedRoots, CollectError> {
    let _span = tracing::info_span!("roots").entered();
    let report = tracker_client::query(&options.tracker_socket, options.tracker_wait_ms)
        .map_err(RootsError::from)?;
    roots::check_store(&report, &options.layout)?;
    if options.action == Action::PrintRoots {
        // Printing roots deletes nothing: print what there is, and say what is missing.
        if let Err(error) = roots::check_complete(&report, options.allow_unreadable_runtime) {
            tracing::warn!("{error}");
        }
        return Ok(TrackedRoots {
            roots: roots::extract_roots(&report, &options.layout)?,
            ..TrackedRoots::default()
        });
    }
    Ok(roots::accept_report(
        &report,
        &options.layout,
        options.allow_unreadable_runtime,
    )?)
}

/// `nix-store --gc --print-roots`: the transposed (link, store path) pairs, each once, sorted.
fn print_roots(
    options: &CollectOptions,
    tracked: &TrackedRoots,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut pairs: Vec<(&[u8], Vec<u8>)> = tracked
        .roots
        .iter()
        .map(|root| {
            (
                root.retainer.as_slice(),
                options.layout.print_store_path(&root.basename),
            )
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    let mut out = io::BufWriter::new(out);
    for (retainer, target) in pairs {
        out.write_all(retainer)?;
        out.write_all(b" -> ")?;
        out.write_all(&target)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn report(
    options: &CollectOptions,
    graph: &StoreGraph,
    verdict: &Liveness,
    out: &mut dyn Write,
) -> io::Result<()> {
    let names = match options.action {
        Action::PrintDead => verdict.dead_basenames(graph),
        Action::PrintLive => verdict.alive_basenames(graph),
        _ => return Ok(()),
    };
    // `nix-store` prints `results.paths`, a std::set<std::string>: sorted, one per line.
    // Built whole and written at once.
    let dir_len = options.layout.store_dir().as_os_str().len();
    let mut text = Vec::with_capacity(names.iter().map(|name| dir_len + name.len() + 2).sum());
    for name in names {
        options.layout.append_store_path(&mut text, name);
        text.push(b'\n');
    }
    out.write_all(&text)?;
    out.flush()
}

fn summary(
    options: &CollectOptions,
    roots: RootCounts,
    graph: Option<&StoreGraph>,
    verdict: Option<&Liveness>,
    deleter: Option<&Deleter<'_>>,
    ms: PhaseMillis,
) -> Summary {
    Summary {
        action: options.action,
        keep_derivations: options.settings.keep_derivations,
        keep_outputs: options.settings.keep_outputs,
        roots,
        valid_paths: graph.map_or(0, StoreGraph::len),
        references: graph.map_or(0, StoreGraph::edge_count),
        graph_bytes: graph.map_or(0, StoreGraph::heap_bytes),
        store_entries: verdict.map_or(0, |v| v.entries),
        alive: verdict.map_or(0, |v| v.alive.len() + v.invalid_alive.len()),
        dead: verdict.map_or(0, |v| v.dead.len() + v.invalid_dead.len() + v.junk.len()),
        dead_nar_bytes: match (graph, verdict) {
            (Some(graph), Some(verdict)) => verdict.dead_nar_bytes(graph),
            _ => 0,
        },
        deleted: deleter.map_or(0, |d| d.deleted),
        freed_bytes: deleter.map_or(0, |d| d.bytes_freed),
        stopped_early: verdict.is_some_and(|v| v.stopped),
        liveness_method: verdict.map(|v| v.method),
        ms,
    }
}
