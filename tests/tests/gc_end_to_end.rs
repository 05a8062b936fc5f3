//! The reason this project exists, end to end, and what a crash in the middle leaves.
//!
//! A store owned by an unprivileged user `gcuser`; a user `alice` whose 0700 home holds
//! `proj/result`, an indirect root. `nix-store --gc --print-dead` run as `gcuser` cannot read
//! alice's home and calls her build dead (the bug). `store-gc collect` run as `gcuser`, with the
//! tracker running as root (privileges dropped), deletes nothing alive: the store it leaves
//! equals what root's `nix-store --gc` leaves on an identical store.
//!
//! Crash: `store-gc` killed with SIGKILL while it deletes leaves a consistent database (every
//! valid path on disk, no reference to an invalid path, integrity and foreign keys intact),
//! and the next run finishes the job: again what root's `nix-store --gc` leaves.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

mod gc_common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gc_common::{lines, store_gc, store_gc_command, success, valid_paths};
use tests::{HermeticStore, SystemUser, TrackerProcess, nix32_from, path_bytes, require_root};

/// One store built twice (the database holds absolute paths, so the twin is built anew at its
/// own location with the same names): `chain` (alice's build: each path refers to the next),
/// `public` (rooted in gcroots), `garbage` (nothing refers to it), and `dead_bulk` more dead
/// paths to make a collection take a while.
struct Built {
    store: HermeticStore,
    chain: Vec<PathBuf>,
    public: PathBuf,
    garbage: Vec<PathBuf>,
}

fn store_path(store: &HermeticStore, name: &str, seed: u64) -> PathBuf {
    store.store_dir.join(format!("{}-{name}", nix32_from(seed)))
}

/// Registers `paths` (each `(path, references)`, references registered earlier or alongside).
fn register(store: &HermeticStore, paths: &[(PathBuf, Vec<PathBuf>)]) {
    let mut registration = Vec::new();
    for (path, references) in paths {
        fs::create_dir_all(path).unwrap();
        fs::write(path.join("file"), path_bytes(path)).unwrap();
        write!(
            registration,
            "{}\nsha256:{}\n4096\n\n{}\n",
            path.display(),
            "0".repeat(64),
            references.len()
        )
        .unwrap();
        for reference in references {
            writeln!(registration, "{}", reference.display()).unwrap();
        }
    }
    store.register_validity(&registration);
}

fn build(alice_home: &Path, dead_bulk: usize) -> Built {
    let store = HermeticStore::new();
    let chain: Vec<PathBuf> = (0..4)
        .map(|index| store_path(&store, &format!("alice-build-{index}"), 100 + index))
        .collect();
    let public = store_path(&store, "public", 200);
    let garbage: Vec<PathBuf> = (0..dead_bulk.max(2))
        .map(|index| store_path(&store, &format!("garbage-{index}"), 1000 + index as u64))
        .collect();
    let mut paths: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    // Built from the bottom: chain[3] first, chain[0] refers to chain[1].
    for index in (0..chain.len()).rev() {
        let references = chain.get(index + 1).cloned().into_iter().collect();
        paths.push((chain[index].clone(), references));
    }
    paths.push((public.clone(), vec![chain[3].clone()]));
    for (index, path) in garbage.iter().enumerate() {
        // Dead closures of several paths, some referring into the live chain.
        let mut references = Vec::new();
        if index > 0 && index % 4 != 0 {
            references.push(garbage[index - 1].clone());
        }
        if index % 7 == 0 {
            references.push(chain[2].clone());
        }
        paths.push((path.clone(), references));
    }
    register(&store, &paths);
    symlink(&public, store.gcroots().join("public")).unwrap();
    fs::create_dir_all(alice_home.join("proj")).unwrap();
    store.add_indirect_root(&alice_home.join("proj/result"), &chain[0]);
    Built {
        store,
        chain,
        public,
        garbage,
    }
}

/// What a collection leaves, by name (the twin lives elsewhere): valid paths and store entries.
fn left(store: &HermeticStore) -> (Vec<OsString>, Vec<OsString>) {
    let names = |paths: Vec<PathBuf>| -> Vec<OsString> {
        let mut names: Vec<OsString> = paths
            .iter()
            .map(|path| path.file_name().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let entries: Vec<PathBuf> = fs::read_dir(&store.store_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name() != Some(OsStr::new(".links")))
        .collect();
    (names(valid_paths(store)), names(entries))
}

/// Root's `nix-store --gc` on a twin of the store (alice's link in the twin's own home).
fn what_nix_leaves(dead_bulk: usize) -> (Vec<OsString>, Vec<OsString>) {
    let home = tempfile::Builder::new()
        .prefix("rt-twin-")
        .tempdir()
        .unwrap();
    let twin = build(&home.path().join("alice"), dead_bulk);
    success(
        twin.store.nix_store_command().arg("--gc").output().unwrap(),
        "root's nix-store --gc",
    );
    left(&twin.store)
}

/// The users and a tracker; `home` holds alice's home (0700, hers).
struct World {
    built: Built,
    gcuser: SystemUser,
    _alice: SystemUser,
    tracker: TrackerProcess,
    _homes: tempfile::TempDir,
}

fn world(dead_bulk: usize) -> World {
    require_root();
    let homes = tempfile::Builder::new()
        .prefix("rt-homes-")
        .tempdir()
        .unwrap();
    let alice_home = homes.path().join("alice");
    let built = build(&alice_home, dead_bulk);
    let alice = SystemUser::create("alice", &alice_home);
    // Her link and project belong to her; the home stays 0700.
    let status = Command::new("chown")
        .arg("-hR")
        .arg(format!("{}:{}", alice.uid, alice.gid))
        .arg(&alice_home)
        .status()
        .unwrap();
    assert!(status.success());
    let gcuser = SystemUser::create("gc", &homes.path().join("gcuser"));
    built.store.chown_all(&gcuser);
    let uid = gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&built.store, "ebpf", &["--allow-uid", &uid]);
    World {
        built,
        gcuser,
        _alice: alice,
        tracker,
        _homes: homes,
    }
}

#[test]
fn an_unprivileged_collection_keeps_what_only_root_can_see() {
    let world = world(6);
    let World { built, gcuser, .. } = &world;
    let store = &built.store;

    // The bug: gcuser's own Nix cannot read alice's home and calls her build dead.
    let nix_dead = store.nix_store_as(gcuser, &["--gc", "--print-dead"]);
    let nix_dead = lines(&nix_dead);
    for path in &built.chain[..3] {
        assert!(
            nix_dead.contains(&path_bytes(path)),
            "gcuser's nix-store should (wrongly) call {} dead:\n{}",
            path.display(),
            String::from_utf8_lossy(&nix_dead.join(&b'\n'))
        );
    }

    // The fix: store-gc as gcuser asks the tracker, which can.
    let socket = world.tracker.socket();
    let dead = success(
        store_gc(
            gcuser,
            store,
            &socket,
            &["--print-dead", "--allow-unreadable-runtime"],
        ),
        "store-gc --print-dead",
    );
    let dead = lines(&dead);
    for path in built.chain.iter().chain([&built.public]) {
        assert!(
            !dead.contains(&path_bytes(path)),
            "store-gc calls live {} dead",
            path.display()
        );
    }
    for path in &built.garbage {
        assert!(
            dead.contains(&path_bytes(path)),
            "{} not dead",
            path.display()
        );
    }

    success(
        store_gc(gcuser, store, &socket, &["--allow-unreadable-runtime"]),
        "store-gc collect",
    );
    for path in built.chain.iter().chain([&built.public]) {
        assert!(path.exists(), "store-gc deleted live {}", path.display());
    }
    assert_eq!(
        left(store),
        what_nix_leaves(6),
        "store-gc left another store than root's nix-store --gc"
    );
}

/// Every valid path is on disk, nothing valid refers to an invalid path, and SQLite agrees.
fn assert_consistent(store: &HermeticStore) {
    let db = rusqlite::Connection::open(store.state_dir.join("db/db.sqlite")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let dangling: i64 = db
        .query_row(
            "SELECT count(*) FROM Refs WHERE reference NOT IN (SELECT id FROM ValidPaths)
                 OR referrer NOT IN (SELECT id FROM ValidPaths)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(dangling, 0, "references to or from invalid paths");
    for path in valid_paths(store) {
        assert!(
            fs::symlink_metadata(&path).is_ok(),
            "valid path {} is gone from disk",
            path.display()
        );
    }
}

#[test]
fn a_collection_killed_while_deleting_is_finished_by_the_next() {
    const DEAD_BULK: usize = 3000;
    let world = world(DEAD_BULK);
    let World { built, gcuser, .. } = &world;
    let store = &built.store;
    let socket = world.tracker.socket();
    let before = fs::read_dir(&store.store_dir).unwrap().count();
    let mut child = store_gc_command(gcuser, store, &socket)
        .arg("--allow-unreadable-runtime")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once deletion has visibly begun (a condition, not a delay).
    let killed = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Err(status);
        }
        let now = fs::read_dir(&store.store_dir).unwrap().count();
        if now + 20 < before {
            child.kill().unwrap();
            break Ok(child.wait().unwrap());
        }
        std::thread::yield_now();
    };
    let status = killed.unwrap_or_else(|status| {
        panic!("store-gc finished ({status}) before it could be killed; make DEAD_BULK larger")
    });
    assert!(!status.success(), "{status}");
    let after_kill = fs::read_dir(&store.store_dir).unwrap().count();
    assert!(
        after_kill > built.chain.len() + 1 + 1,
        "nothing left to finish"
    );
    assert_consistent(store);
    for path in built.chain.iter().chain([&built.public]) {
        assert!(path.exists(), "live {} deleted", path.display());
    }

    success(
        store_gc(gcuser, store, &socket, &["--allow-unreadable-runtime"]),
        "the second store-gc collect",
    );
    assert_consistent(store);
    assert_eq!(left(store), what_nix_leaves(DEAD_BULK));
}

/// On a terminal, a collection draws a progress line on standard error; piped, it does not.
#[test]
fn progress_is_drawn_only_on_a_terminal() {
    let world = world(6);
    let World { built, gcuser, .. } = &world;
    let store = &built.store;
    let command = store_gc_command(gcuser, store, &world.tracker.socket());
    let words: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_str().unwrap().to_owned())
        .chain(["--dry-run", "--allow-unreadable-runtime"].map(String::from))
        .collect();
    assert!(words.iter().all(|word| !word.contains([' ', '\'', '"'])));
    // util-linux `script` runs the command on a new pseudo-terminal and copies what it writes.
    let on_terminal = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(words.join(" "))
        .arg("/dev/null")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(
        shown.contains("store-gc: examined "),
        "no progress line: {shown}"
    );
    let piped = store_gc(
        gcuser,
        store,
        &world.tracker.socket(),
        &["--dry-run", "--allow-unreadable-runtime"],
    );
    let piped_err = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{piped_err}");
    assert!(!piped_err.contains("store-gc: examined"), "{piped_err}");
}
