//! Real collections: `store-gc collect`, run as the store's unprivileged owner with roots from
//! a running tracker, leaves exactly the store that root's `nix-store --gc` leaves when run on
//! an identical copy: the same valid paths, the same entries in the store directory, the same
//! `gcroots/auto` links (stale ones removed), and the same "N store paths deleted, X MiB freed".
//! Every third seed collects with `--max-freed 600`, which stops both part-way (a derivation
//! file is a few hundred bytes), so the deletion order must be Nix's too.
//!
//! The two collections run one after the other at the same location (the database holds
//! absolute paths), each on a fresh `cp -a` copy of one snapshot.
//! Replay one seed: `RT_GC_SEED=<seed> cargo test -p tests --test gc_delete`;
//! more seeds: `RT_GC_DELETE_SEEDS=<count>`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing"
)]

mod gc_common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use gc_common::{generate, store_gc, success, tracker_args, valid_paths};
use tests::{HermeticStore, Rng, SystemUser, TrackerProcess, require_root};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RT_GC_SEED") {
        return vec![seed.parse().expect("RT_GC_SEED must be a number")];
    }
    let count: u64 = std::env::var("RT_GC_DELETE_SEEDS")
        .ok()
        .map(|count| count.parse().expect("RT_GC_DELETE_SEEDS must be a number"))
        .unwrap_or(8);
    (1..=count).collect()
}

/// What a collection leaves: valid paths, store directory entries, auto links, and whether
/// Nix's reserved space (`<state>/db/reserved`) is still there.
#[derive(Debug, PartialEq, Eq)]
struct Left {
    valid: Vec<PathBuf>,
    entries: Vec<OsString>,
    auto_links: Vec<OsString>,
    reserved: bool,
}

fn sorted_names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    names
}

fn left(store: &HermeticStore) -> Left {
    Left {
        valid: valid_paths(store),
        entries: sorted_names(&store.store_dir),
        auto_links: sorted_names(&store.gcroots().join("auto")),
        reserved: store.state_dir.join("db/reserved").exists(),
    }
}

/// Replaces the store and state dirs with fresh copies of the snapshot. Both collections run
/// on such copies: `cp` may create entries in another order than it read them (GNU cp sorts
/// by inode), and the order of the store directory decides which closure is deleted first —
/// so what `--max-freed` lets go — for Nix as for us.
fn restore(store: &HermeticStore, snapshot: &Path) {
    for dir in [&store.store_dir, &store.state_dir] {
        let status = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
        fs::remove_dir_all(dir).unwrap();
    }
    cp_a(&snapshot.join("store"), &store.store_dir);
    cp_a(&snapshot.join("state"), &store.state_dir);
}

fn cp_a(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn real_collection_leaves_what_nix_leaves() {
    require_root();
    for seed in seeds() {
        eprintln!("seed {seed} (replay: RT_GC_SEED={seed} cargo test -p tests --test gc_delete)");
        one_seed(seed);
    }
}

fn one_seed(seed: u64) {
    let store = HermeticStore::new();
    let mut rng = Rng::new(seed);
    // Temp roots are left out here (a snapshot cannot carry a client's lock); the differential
    // print test covers them. Their unregistered entry, if any, is then plain garbage.
    let made = generate(&store, &mut rng, seed);
    // Read-only directory trees, as real store paths are: one dead, one alive.
    let tree_dead = store.add_dir("tree-dead", &[("a", b"12345"), ("b", b"1")]);
    let tree_live = store.add_dir("tree-live", &[("c", b"123")]);
    symlink(&tree_live, store.gcroots().join("tree")).unwrap();
    fs::create_dir_all(store.gcroots().join("auto")).unwrap();
    let gcuser = SystemUser::create("gc", &store.path("home/gc"));
    store.chown_all(&gcuser);
    let snapshot = store.path("snapshot");
    fs::create_dir_all(&snapshot).unwrap();
    cp_a(&store.store_dir, &snapshot);
    cp_a(&store.state_dir, &snapshot);
    let context = || {
        format!(
            "seed {seed}: {}\nreplay: RT_GC_SEED={seed} cargo test -p tests --test gc_delete",
            made.describe()
        )
    };

    restore(&store, &snapshot);
    let limit: &[&str] = if seed.is_multiple_of(3) {
        &["--max-freed", "600"]
    } else {
        &[]
    };
    // Every nix-store run that opened the store made it (gc-reserved-space); a collection
    // releases it.
    assert!(
        store.state_dir.join("db/reserved").exists(),
        "nix-store left no db/reserved to release: {}",
        context()
    );
    let uid = gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&store, "fanotify", &tracker_args(&uid));
    let ours_printed = success(
        store_gc(
            &gcuser,
            &store,
            &tracker.socket(),
            &[&["--allow-unreadable-runtime"], limit].concat(),
        ),
        "store-gc collect",
    );
    drop(tracker);
    let ours = left(&store);

    restore(&store, &snapshot);
    let nix_printed = store.nix_store(&[&["--gc"], limit].concat());
    let nix = left(&store);

    assert_eq!(
        ours,
        nix,
        "store-gc (left) and nix-store --gc (right) left different stores\n{}",
        context()
    );
    assert_eq!(
        String::from_utf8_lossy(&ours_printed),
        String::from_utf8_lossy(&nix_printed),
        "{}",
        context()
    );
    // Something was deleted and something kept, whatever the seed.
    assert!(
        ours.valid.len() < made.valid.len() + 2,
        "nothing deleted: {}",
        context()
    );
    assert!(
        ours.valid.contains(&tree_live) && tree_live.join("c").exists(),
        "{}",
        context()
    );
    if limit.is_empty() {
        assert!(!ours.valid.contains(&made.orphan), "{}", context());
        assert!(
            !ours.valid.contains(&tree_dead) && !tree_dead.exists(),
            "{}",
            context()
        );
    }
}
