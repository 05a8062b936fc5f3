//! `store-gc` fails closed: when the tracker is unreachable, unsettled, refuses us, watches
//! another store, or cannot vouch for every root, it exits 3 with the cause on one line and
//! deletes nothing. Run as root, it refuses outright (exit 4).
//!
//! Tracker answers that cannot be provoked on demand (unsettled, an unreadable home) come from
//! a stand-in server speaking the documented protocol (docs/protocol.md).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers (Setup, FakeTracker): a panic is the test failing"
)]

mod gc_common;

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use gc_common::{store_gc, success, valid_paths};
use tests::{HermeticStore, SystemUser, TrackerProcess, package_bin, require_root};

/// A store with one rooted and one unrooted path, owned by an unprivileged user.
struct Setup {
    store: HermeticStore,
    gcuser: SystemUser,
    rooted: PathBuf,
    unrooted: PathBuf,
}

impl Setup {
    fn new() -> Self {
        require_root();
        let store = HermeticStore::new();
        let rooted = store.add_file("rooted", b"r");
        let unrooted = store.add_file("unrooted", b"u");
        std::os::unix::fs::symlink(&rooted, store.gcroots().join("rooted")).unwrap();
        let gcuser = SystemUser::create("gc", &store.path("home/gc"));
        store.chown_all(&gcuser);
        Self {
            store,
            gcuser,
            rooted,
            unrooted,
        }
    }

    fn run(&self, socket: &Path, args: &[&str]) -> Output {
        store_gc(&self.gcuser, &self.store, socket, args)
    }

    /// Nothing was deleted: every path still valid and on disk.
    fn assert_untouched(&self) {
        let valid = valid_paths(&self.store);
        for path in [&self.rooted, &self.unrooted] {
            assert!(valid.contains(path), "{} no longer valid", path.display());
            assert!(path.exists(), "{} was deleted", path.display());
        }
    }

    /// A report in the tracker's format for this store, with `unreadable` entries.
    fn report(&self, complete: bool, unreadable: &str) -> String {
        format!(
            r#"{{"response":"roots","report":{{"store_dir":"{}","state_dir":"{}","complete":{complete},"counts":{{}},"roots":[{{"kind":"static","retainer":"{}","link":"{}","target":"{}"}}],"unregistered":[],"stale_links":[],"stale_temp_roots":[],"unreadable":[{unreadable}]}}}}"#,
            self.store.store_dir.display(),
            self.store.state_dir.display(),
            self.store.gcroots().join("rooted").display(),
            self.store.gcroots().join("rooted").display(),
            self.rooted.display(),
        )
    }
}

/// A stand-in tracker: answers every request on its socket with one fixed line.
struct FakeTracker {
    dir: tempfile::TempDir,
}

impl FakeTracker {
    fn start(response: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("socket");
        let listener = UnixListener::bind(&socket).unwrap();
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
        // The thread ends with the test process; each connection gets one answer.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = Vec::new();
                let _ = BufReader::new(&stream).read_until(b'\n', &mut line);
                let _ = stream.write_all(response.as_bytes());
                let _ = stream.write_all(b"\n");
            }
        });
        Self { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }
}

fn assert_refused(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "expected exit 3 (roots refused); stderr: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing may be printed on a refusal: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr should name {needle:?}: {stderr}"
        );
    }
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line cause: {stderr}"
    );
}

#[test]
fn refuses_to_run_as_root() {
    let setup = Setup::new();
    let output = std::process::Command::new(package_bin("store-gc"))
        .args([
            "collect",
            "--print-dead",
            "--tracker-socket",
            "/nonexistent",
        ])
        .arg("--store-dir")
        .arg(&setup.store.store_dir)
        .arg("--state-dir")
        .arg(&setup.store.state_dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to run as root"));
    assert!(output.stdout.is_empty());
    setup.assert_untouched();
}

#[test]
fn unreachable_tracker_means_no_collection() {
    let setup = Setup::new();
    let missing = setup.store.path("no-tracker/socket");
    let output = setup.run(&missing, &["--allow-unreadable-runtime"]);
    assert_refused(&output, &["unreachable", "no-tracker/socket"]);
    setup.assert_untouched();
}

#[test]
fn unsettled_tracker_means_no_collection() {
    let setup = Setup::new();
    let fake = FakeTracker::start(
        r#"{"response":"error","error":"unsettled","message":"fanotify queue overflow; rescanning"}"#.to_owned(),
    );
    let output = setup.run(&fake.socket(), &["--allow-unreadable-runtime"]);
    assert_refused(&output, &["unsettled", "fanotify queue overflow"]);
    setup.assert_untouched();
}

#[test]
fn garbage_from_the_tracker_means_no_collection() {
    let setup = Setup::new();
    let fake = FakeTracker::start("this is not json".to_owned());
    let output = setup.run(
        &fake.socket(),
        &["--allow-unreadable-runtime", "--print-dead"],
    );
    assert_refused(&output, &["cannot use"]);
    setup.assert_untouched();
}

#[test]
fn unreadable_entries_refuse_and_only_proc_can_be_tolerated() {
    let setup = Setup::new();
    let proc_entry = r#"{"path":"/proc/1/fd","via":null,"operation":"opendir","errno":13,"error":"Permission denied (os error 13)"}"#;
    let home_entry = format!(
        r#"{{"path":"/home/alice/result","via":"{}","operation":"readlink","errno":13,"error":"Permission denied (os error 13)"}}"#,
        setup.store.gcroots().join("auto/x").display()
    );

    // Only /proc unreadable: refused without the flag, accepted with it.
    let proc_only = FakeTracker::start(setup.report(false, proc_entry));
    let output = setup.run(&proc_only.socket(), &["--print-dead"]);
    assert_refused(
        &output,
        &["incomplete", "/proc/1/fd", "--allow-unreadable-runtime"],
    );
    let dead = success(
        setup.run(
            &proc_only.socket(),
            &["--print-dead", "--allow-unreadable-runtime"],
        ),
        "store-gc with the flag",
    );
    assert_eq!(dead, format!("{}\n", setup.unrooted.display()).into_bytes());

    // A private home unreadable: refused even with the flag, naming the entry.
    let home = FakeTracker::start(setup.report(false, &format!("{proc_entry},{home_entry}")));
    let output = setup.run(&home.socket(), &["--allow-unreadable-runtime"]);
    assert_refused(&output, &["incomplete", "/home/alice/result"]);
    setup.assert_untouched();
}

#[test]
fn a_tracker_of_another_store_is_refused() {
    let setup = Setup::new();
    let other = setup.report(true, "").replace(
        &format!("\"store_dir\":\"{}\"", setup.store.store_dir.display()),
        "\"store_dir\":\"/nix/store\"",
    );
    let fake = FakeTracker::start(other);
    let output = setup.run(&fake.socket(), &["--print-dead"]);
    assert_refused(&output, &["/nix/store"]);
    setup.assert_untouched();
}

#[test]
fn real_tracker_unauthorized_and_incomplete_answers_refuse() {
    let setup = Setup::new();
    // Not allowed: the tracker rejects the collector's uid.
    let tracker = TrackerProcess::start(&setup.store, "fanotify", &gc_common::tracker_args(""));
    let output = setup.run(&tracker.socket(), &["--allow-unreadable-runtime"]);
    assert_refused(&output, &["unauthorized"]);
    drop(tracker);

    let uid = setup.gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&setup.store, "fanotify", &gc_common::tracker_args(&uid));
    let report = tracker.query();
    if report["complete"] == false {
        // This sandbox hides /proc/1 even from root: the real answer is incomplete, so a run
        // without --allow-unreadable-runtime must refuse and delete nothing.
        let output = setup.run(&tracker.socket(), &[]);
        assert_refused(&output, &["incomplete", "/proc/"]);
        setup.assert_untouched();
    } else {
        eprintln!(
            "the tracker's answer is complete here; the refusal is covered by the stand-in tests"
        );
    }
    let dead = success(
        setup.run(
            &tracker.socket(),
            &["--print-dead", "--allow-unreadable-runtime"],
        ),
        "store-gc --print-dead",
    );
    assert_eq!(dead, format!("{}\n", setup.unrooted.display()).into_bytes());
}
