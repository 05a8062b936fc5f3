//! Nix clients that run while `store-gc` collects keep what they add: with the GC lock held by
//! the collector, `nix-store --add` and `nix-store --add-root` cannot take their shared lock,
//! so they send their temp roots to `<state>/gc-socket/socket` and wait for the ack. The paths
//! they register or root must survive the collection.
//!
//! The collector pauses at its test synchronisation point (the FIFO named by
//! `_STORE_GC_TEST_GC_SYNC`, as Nix's `_NIX_TEST_GC_SYNC`): lock held, socket served, roots
//! read, nothing decided yet. Opening the FIFO for writing returns only once it is there.
//!
//! A run that deletes nothing reads the database while the tracker answers; a commit between
//! its read and the roots' arrival must be seen, as if the database had been read after the
//! roots (`_STORE_GC_TEST_LOADED_SYNC` pauses it there).

mod gc_common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use gc_common::{lines, store_gc, store_gc_command, success, tracker_args, valid_paths};
use tests::{HermeticStore, SystemUser, TrackerProcess, bytes_path, require_root};

#[test]
fn clients_during_a_collection_keep_their_paths() {
    require_root();
    let store = HermeticStore::new();
    let doomed = store.add_file("doomed", b"d");
    let rescued = store.add_file("rescued", b"r");
    let gcuser = SystemUser::create("gc", &store.path("home/gc"));
    store.chown_all(&gcuser);
    let uid = gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&store, "fanotify", &tracker_args(&uid));

    let fifo = store.path("gc-sync");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let mut collector = store_gc_command(&gcuser, &store, &tracker.socket());
    collector
        .arg("--allow-unreadable-runtime")
        .env("_STORE_GC_TEST_GC_SYNC", &fifo);
    let child = collector.spawn().unwrap();
    // Blocks until the collector opens the FIFO: it holds the lock and serves the socket now.
    let mut sync = fs::OpenOptions::new().write(true).open(&fifo).unwrap();

    // Clients of the store run as its owner.
    let nix_store = |args: &[&OsStr]| store.nix_store_as(&gcuser, args);
    let source = store.path("home/gc/new-file");
    fs::write(&source, b"added while collecting").unwrap();
    std::os::unix::fs::chown(&source, Some(gcuser.uid), Some(gcuser.gid)).unwrap();
    let added = nix_store(&[OsStr::new("--add"), source.as_os_str()]);
    let added = bytes_path(added.strip_suffix(b"\n").unwrap());
    let link = store.path("home/gc/result");
    nix_store(&[
        OsStr::new("--add-root"),
        link.as_os_str(),
        OsStr::new("--indirect"),
        OsStr::new("-r"),
        rescued.as_os_str(),
    ]);

    sync.write_all(b"go").unwrap();
    drop(sync);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "store-gc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let valid: Vec<PathBuf> = valid_paths(&store);
    assert!(
        valid.contains(&added) && added.exists(),
        "the path added during GC was collected"
    );
    assert!(
        valid.contains(&rescued) && rescued.exists(),
        "the path rooted during GC was collected"
    );
    assert!(
        !valid.contains(&doomed) && !doomed.exists(),
        "the unrooted path must be collected"
    );
}

/// A rooted path `kept` refers to `held`, which lives only through that reference; the
/// reference is removed from the database while a `--print-dead` run waits after reading it.
/// The run must notice the commit and read the database again: `held` is then dead, as
/// `nix-store` (which reads the database during its walk) says.
#[test]
fn a_commit_while_the_roots_are_read_is_seen_by_a_dry_run() {
    require_root();
    let store = HermeticStore::new();
    let kept = store.add_file("kept", b"k");
    let held = store.add_file("held", b"h");
    std::os::unix::fs::symlink(&kept, store.gcroots().join("kept")).unwrap();
    let db_path = store.state_dir.join("db/db.sqlite");
    let id_of = |db: &rusqlite::Connection, path: &PathBuf| -> i64 {
        db.query_row(
            "SELECT id FROM ValidPaths WHERE path = ?1",
            [path.to_str().unwrap()],
            |row| row.get(0),
        )
        .unwrap()
    };
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let (kept_id, held_id) = (id_of(&db, &kept), id_of(&db, &held));
        db.execute("INSERT INTO Refs VALUES (?1, ?2)", [kept_id, held_id])
            .unwrap();
    }
    let gcuser = SystemUser::create("gc", &store.path("home/gc"));
    store.chown_all(&gcuser);
    let uid = gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&store, "fanotify", &tracker_args(&uid));
    let dead = |output: &[u8]| -> bool { lines(output).contains(&held.as_os_str().as_bytes()) };

    let before = success(
        store_gc(
            &gcuser,
            &store,
            &tracker.socket(),
            &["--allow-unreadable-runtime", "--print-dead"],
        ),
        "store-gc --print-dead before the change",
    );
    assert!(!dead(&before), "held is alive through kept's reference");

    let fifo = store.path("loaded-sync");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let mut collector = store_gc_command(&gcuser, &store, &tracker.socket());
    collector
        .args(["--allow-unreadable-runtime", "--print-dead"])
        .env("_STORE_GC_TEST_LOADED_SYNC", &fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = collector.spawn().unwrap();
    // Blocks until the collector opens the FIFO: it has read the database by now.
    let mut sync = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let (kept_id, held_id) = (id_of(&db, &kept), id_of(&db, &held));
        let removed = db
            .execute(
                "DELETE FROM Refs WHERE referrer = ?1 AND reference = ?2",
                [kept_id, held_id],
            )
            .unwrap();
        assert_eq!(removed, 1);
    }
    sync.write_all(b"go").unwrap();
    drop(sync);
    let ours = success(child.wait_with_output().unwrap(), "store-gc --print-dead");
    assert!(
        dead(&ours),
        "the reference removed during the run was still followed"
    );
    let nix = store.nix_store(&["--gc", "--print-dead"]);
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&nix),
        "--print-dead: store-gc (left) differs from nix-store (right)"
    );
}
