//! The reconciler without a kernel: a seeded random workload changes a hermetic store's
//! roots, the hints an ideal source would send are applied, and after every batch the index's
//! answer must equal a fresh scan. Replay a failure with `RT_SEED=<seed>`.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use root_tracker::hint::Hint;
use root_tracker::index::Index;
use root_tracker::layout::StoreLayout;
use root_tracker::mounts::MountTable;
use root_tracker::reconcile::Reconciler;
use root_tracker::scan::{ScanOptions, scan};
use tests::{FakeStore, Rng};

const PATHS: usize = 6;
const DIRS: usize = 5;
const AUTO_LINKS: usize = 8;

/// Even-numbered store paths are registered, odd ones are not (unregistered roots).
fn store_name(index: usize) -> String {
    format!("0123456789abcdfghijklmnpqrsvwx{index:02}-p{index}")
}

struct World {
    /// Owns the temp dir.
    _fake: FakeStore,
    root: PathBuf,
    layout: StoreLayout,
}

fn store_path(world: &World, index: usize) -> PathBuf {
    world.layout.store_dir().join(store_name(index))
}

impl World {
    fn new() -> Self {
        let names: Vec<String> = (0..PATHS).step_by(2).map(store_name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let fake = FakeStore::new(&names);
        Self {
            root: fake.root.clone(),
            layout: fake.layout.clone(),
            _fake: fake,
        }
    }

    fn home(&self, dir: usize) -> PathBuf {
        self.root.join(format!("home/d{dir}"))
    }

    fn auto(&self, link: usize) -> PathBuf {
        self.layout.auto_dir().join(format!("a{link}"))
    }

    /// A reconciler with a fresh index, not scanned yet.
    fn reconciler(&self) -> Reconciler {
        let index = Index::open(&self.root.join("index.sqlite")).unwrap();
        Reconciler::new(self.layout.clone(), index)
    }
}

/// What the index answers for: the state trees, not runtime or temp roots (read at query time).
fn trees_only() -> ScanOptions {
    ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    }
}

/// Everything under `path` (included), deepest first, for hints about a removed tree.
fn tree_paths(path: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(entries) = fs::read_dir(path) {
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            for entry in entries.flatten() {
                paths.extend(tree_paths(&entry.path()));
            }
        }
    }
    paths.push(path.to_owned());
    paths
}

/// Performs one random operation and returns the hints an ideal source would send for it.
fn random_op(world: &World, rng: &mut Rng) -> Vec<Hint> {
    let dir = world.home(rng.below(DIRS));
    let other_dir = world.home(rng.below(DIRS));
    let result = dir.join("result");
    let path_hint = |path: &Path| Hint::Path(path.to_owned());
    match rng.below(10) {
        0 => {
            let _ = fs::create_dir_all(&dir);
            vec![path_hint(&dir)]
        }
        1 | 2 => {
            // ln -sfn STORE/p result (replace whatever is there)
            let _ = fs::create_dir_all(&dir);
            let _ = fs::remove_file(&result);
            let target = store_path(world, rng.below(PATHS));
            let _ = symlink(target, &result);
            vec![path_hint(&result)]
        }
        3 => {
            let _ = fs::remove_file(&result);
            vec![path_hint(&result)]
        }
        4 | 5 => {
            // A new auto link to some user link (absolute, or relative text).
            let auto = world.auto(rng.below(AUTO_LINKS));
            let _ = fs::remove_file(&auto);
            if rng.below(3) == 0 {
                let relative =
                    PathBuf::from("../../..").join(result.strip_prefix(&world.root).unwrap());
                let _ = symlink(relative, &auto);
            } else {
                let _ = symlink(&result, &auto);
            }
            vec![path_hint(&auto)]
        }
        6 => {
            let auto = world.auto(rng.below(AUTO_LINKS));
            let _ = fs::remove_file(&auto);
            vec![path_hint(&auto)]
        }
        7 => {
            // mv dir other_dir (replacing an empty one, or failing)
            let _ = fs::rename(&dir, &other_dir);
            vec![path_hint(&dir), path_hint(&other_dir)]
        }
        8 => {
            let hints = tree_paths(&dir).iter().map(|p| path_hint(p)).collect();
            let _ = fs::remove_dir_all(&dir);
            hints
        }
        _ => {
            // A chain: result -> result2 -> store (two hops: not a root).
            let _ = fs::create_dir_all(&dir);
            let second = dir.join("result2");
            let _ = fs::remove_file(&second);
            let _ = symlink(store_path(world, rng.below(PATHS)), &second);
            let _ = fs::remove_file(&result);
            let _ = symlink(&second, &result);
            vec![path_hint(&second), path_hint(&result)]
        }
    }
}

/// A report as JSON text, one field per line, so a failing comparison shows the difference.
fn comparable(report: impl serde::Serialize) -> String {
    serde_json::to_string_pretty(&serde_json::to_value(report).unwrap()).unwrap()
}

fn run_seed(seed: u64, operations: usize) {
    let world = World::new();
    let options = trees_only();
    let mut reconciler = world.reconciler();
    reconciler.rescan(None).unwrap();
    let mut rng = Rng::new(seed);
    let mut done = 0;
    while done < operations {
        let batch = 1 + rng.below(8);
        let mut hints = Vec::new();
        for _ in 0..batch {
            hints.extend(random_op(&world, &mut rng));
        }
        done += batch;
        reconciler.apply(&hints, None).unwrap();
        let answer = reconciler.answer(&options).unwrap();
        let truth = scan(&world.layout, &options).unwrap();
        assert_eq!(
            comparable(answer.report()),
            comparable(truth.to_json()),
            "seed {seed}: index differs from a scan after {done} operations; replay with RT_SEED={seed}"
        );
    }
}

#[test]
fn random_workload_index_equals_scan() {
    if let Some(seed) = std::env::var("RT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        return run_seed(seed, 200);
    }
    for seed in 0..100 {
        run_seed(seed, 200);
    }
}

#[test]
fn lost_hints_unsettle_until_rescan() {
    let world = World::new();
    let mut reconciler = world.reconciler();
    assert_ne!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled,
        "unsettled before the bootstrap scan"
    );
    reconciler.rescan(None).unwrap();
    assert_eq!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled
    );
    reconciler
        .apply(
            &[Hint::Lost {
                reason: "ring buffer full".to_owned(),
            }],
            None,
        )
        .unwrap();
    assert_eq!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Unsettled {
            reason: "ring buffer full".to_owned()
        }
    );
    reconciler.apply(&[Hint::MountsChanged], None).unwrap();
    reconciler.rescan(None).unwrap();
    assert_eq!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled
    );
}

#[test]
fn verification_counts_drift_and_repairs_it() {
    let world = World::new();
    let mut reconciler = world.reconciler();
    let home = world.home(0);
    fs::create_dir_all(&home).unwrap();
    symlink(store_path(&world, 0), home.join("result")).unwrap();
    symlink(home.join("result"), world.auto(0)).unwrap();
    reconciler.rescan(None).unwrap();
    assert_eq!(
        reconciler.verify().unwrap(),
        0,
        "no drift right after a rescan"
    );
    // A change nobody hinted: the sweep must see it and repair the index.
    fs::remove_file(home.join("result")).unwrap();
    symlink(store_path(&world, 2), home.join("result")).unwrap();
    assert!(reconciler.verify().unwrap() > 0);
    assert!(reconciler.stats().drift >= 1);
    assert_eq!(
        reconciler.verify().unwrap(),
        0,
        "repaired by the sweep's rescan"
    );
    let options = trees_only();
    assert_eq!(
        comparable(reconciler.answer(&options).unwrap().report()),
        comparable(scan(&world.layout, &options).unwrap().to_json())
    );
}

/// A mount change re-checks the roots beneath the mount points at which the source's table
/// changed and leaves the index settled: a tmpfs over a directory hides its indirect root (the
/// auto link turns stale), unmounting it brings the root back, and a mount elsewhere changes
/// nothing. Without a table to compare (the source could not read one, or none was seen at the
/// last rescan) a mount change unsettles the index. The tables are read after each mount, as a
/// source reads them after noticing a change.
#[test]
fn mount_changes_recheck_the_roots_beneath_and_stay_settled() {
    tests::require_root();
    let world = World::new();
    let options = trees_only();
    let mut reconciler = world.reconciler();
    let (home, elsewhere) = (world.home(0), world.home(1));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    symlink(store_path(&world, 0), home.join("result")).unwrap();
    symlink(home.join("result"), world.auto(0)).unwrap();
    let table = || Arc::new(MountTable::read().unwrap());
    reconciler.rescan(Some(&table())).unwrap();
    if !table().has_unique_ids() {
        // Before Linux 6.8 tables cannot be compared (reused IDs): every change unsettles.
        reconciler
            .apply(&[Hint::MountsChanged], Some(&table()))
            .unwrap();
        assert_ne!(
            *reconciler.settled(),
            root_tracker::reconcile::Settled::Settled
        );
        return;
    }

    let check = |reconciler: &mut Reconciler, what: &str, rooted: bool| {
        let rechecks = reconciler.stats().rechecks;
        reconciler
            .apply(&[Hint::MountsChanged], Some(&table()))
            .unwrap();
        assert_eq!(
            *reconciler.settled(),
            root_tracker::reconcile::Settled::Settled,
            "{what}: a mount below the state trees must not unsettle the index"
        );
        let answer = comparable(reconciler.answer(&options).unwrap().report());
        assert_eq!(
            answer,
            comparable(scan(&world.layout, &options).unwrap().to_json()),
            "{what}: index differs from a scan"
        );
        assert_eq!(answer.contains(&store_name(0)), rooted, "{what}: {answer}");
        reconciler.stats().rechecks - rechecks
    };
    assert_eq!(check(&mut reconciler, "before any mount", true), 0);
    let mut unrelated = tests::TmpfsMount::new(&elsewhere);
    assert_eq!(
        check(&mut reconciler, "a mount elsewhere", true),
        0,
        "no indexed root is beneath it"
    );
    let mut over = tests::TmpfsMount::new(&home);
    assert!(check(&mut reconciler, "a tmpfs over the root's directory", false) > 0);
    over.unmount();
    assert!(check(&mut reconciler, "that tmpfs unmounted", true) > 0);
    unrelated.unmount();
    check(&mut reconciler, "the other one unmounted", true);

    reconciler.apply(&[Hint::MountsChanged], None).unwrap();
    assert_ne!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled,
        "a mount change with no table to compare must unsettle the index"
    );
    reconciler.rescan(None).unwrap();
    reconciler
        .apply(&[Hint::MountsChanged], Some(&table()))
        .unwrap();
    assert_ne!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled,
        "nothing to compare with since a rescan without a table: must unsettle"
    );
}

/// A mount made and removed between two reads of the mount table leaves no trace in their
/// comparison, but a re-examination in between read through it: here an auto link re-read
/// while a tmpfs hid its user link turns stale. The re-examination is told the table moved
/// since the source read it (as the tracker asks after every read), and the next mount change
/// reads it again, although the two tables are the same.
#[test]
fn a_read_through_a_short_lived_mount_is_repeated_with_the_next_mount_change() {
    tests::require_root();
    let world = World::new();
    let options = trees_only();
    let mut reconciler = world.reconciler();
    let home = world.home(0);
    fs::create_dir_all(&home).unwrap();
    symlink(store_path(&world, 0), home.join("result")).unwrap();
    let mut watch = root_tracker::mounts::MountWatch::open().unwrap();
    if !watch.table().unwrap().has_unique_ids() {
        eprintln!("skipped: before Linux 6.8 every mount change unsettles the index");
        return;
    }
    reconciler.rescan(watch.table().as_ref()).unwrap();
    let matches_scan = |reconciler: &mut Reconciler| {
        comparable(reconciler.answer(&options).unwrap().report())
            == comparable(scan(&world.layout, &options).unwrap().to_json())
    };

    let mut over = tests::TmpfsMount::new(&home);
    // The auto link appears while the tmpfs hides its target; the source has not read the
    // mount table since.
    symlink(home.join("result"), world.auto(0)).unwrap();
    reconciler
        .apply(&[Hint::Path(world.auto(0))], watch.table().as_ref())
        .unwrap();
    assert!(watch.changed_since_table(), "the mount is after the table");
    reconciler.read_while_mounts_moved();
    over.unmount();
    assert!(
        !matches_scan(&mut reconciler),
        "the index read the link while it was hidden (else this test shows nothing)"
    );
    watch.reread();
    reconciler
        .apply(&[Hint::MountsChanged], watch.table().as_ref())
        .unwrap();
    assert_eq!(
        *reconciler.settled(),
        root_tracker::reconcile::Settled::Settled
    );
    assert!(
        matches_scan(&mut reconciler),
        "the read through the short-lived mount was not repeated"
    );
}
