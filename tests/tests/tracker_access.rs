//! Who may ask the tracker, what they see, and what one client may cost it: `--allow-uid`,
//! `--allow-gid`, `--reveal-uid` (censoring as Nix's `findRoots(censor)`), connection and
//! request limits, and Nix's roots-daemon protocol (`--nix-roots-socket`), which must fail
//! closed.
//!
//! The users' side runs the real `tracker-cli query` as system users against a real tracker
//! (root, privileges dropped); the unsettled roots-daemon case uses the replay source of
//! tracker_replay.rs, which can make the index unsettled on demand.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use root_tracker::hint::Hint;
use root_tracker::index::Index;
use root_tracker::reconcile::Reconciler;
use root_tracker::server::{Access, Limits, NixRootsConfig, ServerConfig, serve};
use root_tracker::source::replay::ReplaySource;
use root_tracker::state_watch::StateWatch;
use root_tracker::tracker::{Tracker, TrackerOptions};
use tests::{
    FakeStore, HermeticStore, SystemUser, TrackerProcess, package_bin, path_bytes, require_root,
};

/// `tracker-cli query ARGS` against `tracker`, as `user` (root when `None`).
fn query_as(user: Option<&SystemUser>, tracker: &TrackerProcess, args: &[&str]) -> Output {
    let bin = package_bin("tracker-cli");
    let mut command = match user {
        Some(user) => user.command(bin.as_os_str()),
        None => std::process::Command::new(bin),
    };
    command
        .arg("query")
        .arg("--socket")
        .arg(tracker.socket())
        .args(args)
        .output()
        .unwrap()
}

/// stdout of a query that must have answered (complete or not: exit 0 or 3).
fn answered(output: Output, who: &str) -> Vec<u8> {
    assert!(
        matches!(output.status.code(), Some(0 | 3)),
        "query as {who} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `(retainer, target)` of each `--print-roots` line.
fn printed(output: &[u8]) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    output
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let at = line.windows(4).position(|arrow| arrow == b" -> ").unwrap();
            (line[..at].to_vec(), line[at + 4..].to_vec())
        })
        .collect()
}

fn targets(lines: &BTreeSet<(Vec<u8>, Vec<u8>)>) -> BTreeSet<Vec<u8>> {
    lines.iter().map(|(_, target)| target.clone()).collect()
}

/// A tracker the users can reach: its temp dir is 0700 by default.
fn reachable(tracker: &TrackerProcess) {
    fs::set_permissions(tracker.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn retainers_are_censored_unless_revealed() {
    require_root();
    let store = HermeticStore::new();
    let alice = SystemUser::create("alice", &store.path("home/alice"));
    let censored = SystemUser::create("cens", &store.path("home/cens"));
    let revealed = SystemUser::create("reveal", &store.path("home/reveal"));
    let by_group = SystemUser::create("group", &store.path("home/group"));
    let stranger = SystemUser::create("stranger", &store.path("home/stranger"));
    // An indirect root in alice's private home, a static root, and a link into a private
    // directory that even the paths of an error must not reveal.
    let private = store.add_file("private", b"p");
    let shared = store.add_file("shared", b"s");
    fs::create_dir_all(alice.home.join("proj")).unwrap();
    store.add_indirect_root(&alice.home.join("proj/result"), &private);
    symlink(&shared, store.gcroots().join("shared")).unwrap();

    let uid = |user: &SystemUser| user.uid.to_string();
    let tracker = TrackerProcess::start(
        &store,
        "fanotify",
        &[
            "--allow-uid",
            &uid(&censored),
            "--allow-uid",
            &uid(&revealed),
            "--reveal-uid",
            &uid(&revealed),
            "--allow-gid",
            &by_group.gid.to_string(),
        ],
    );
    reachable(&tracker);

    let full = printed(&answered(query_as(None, &tracker, &[]), "root"));
    assert!(
        full.contains(&(
            path_bytes(&alice.home.join("proj/result")).to_vec(),
            path_bytes(&private).to_vec()
        )),
        "root sees alice's retainer: {full:?}"
    );
    assert!(full.contains(&(
        path_bytes(&store.gcroots().join("shared")).to_vec(),
        path_bytes(&shared).to_vec()
    )));

    for (user, who) in [
        (&censored, "an --allow-uid user"),
        (&by_group, "an --allow-gid user"),
    ] {
        let lines = printed(&answered(query_as(Some(user), &tracker, &[]), who));
        assert_eq!(targets(&lines), targets(&full), "{who} sees every target");
        assert!(
            lines.iter().all(|(retainer, _)| retainer == b"{censored}"),
            "{who} sees only censored retainers: {lines:?}"
        );
        assert_eq!(
            lines.len(),
            targets(&full).len(),
            "one line per target, as Nix prints"
        );
        let json = answered(query_as(Some(user), &tracker, &["--json"]), who);
        let text = String::from_utf8(json).unwrap();
        for secret in [
            alice.home.to_str().unwrap(),
            store.gcroots().to_str().unwrap(),
        ] {
            assert!(
                !text.contains(secret),
                "{who}'s JSON shows {secret}: {text}"
            );
        }
    }

    let lines = printed(&answered(
        query_as(Some(&revealed), &tracker, &[]),
        "a --reveal-uid user",
    ));
    assert_eq!(lines, full, "--reveal-uid lifts the censoring");

    let refused = query_as(Some(&stranger), &tracker, &[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(refused.stdout.is_empty());
}

/// One line from a fresh connection to `socket` (which it sends nothing to).
fn first_line(stream: &UnixStream) -> serde_json::Value {
    let mut line = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut line).unwrap();
    serde_json::from_slice(&line).unwrap()
}

#[test]
fn connection_and_request_limits_cost_only_the_offender() {
    require_root();
    let store = HermeticStore::new();
    let tracker = TrackerProcess::start(
        &store,
        "fanotify",
        &[
            "--max-connections",
            "2",
            "--max-requests-per-connection",
            "3",
        ],
    );
    // Two idle connections take every slot: the third is turned away at once.
    let held: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(tracker.socket()).unwrap())
        .collect();
    let third = UnixStream::connect(tracker.socket()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let busy = first_line(&third);
    assert_eq!(busy["error"], "busy", "{busy}");
    let mut rest = Vec::new();
    assert_eq!((&third).read_to_end(&mut rest).unwrap(), 0, "then closed");
    drop(held);

    // The slots come back when the idle connections go; then three requests on one connection
    // are answered and the fourth is refused with the connection closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        let stream = UnixStream::connect(tracker.socket()).unwrap();
        (&stream).write_all(b"{\"request\":\"status\"}\n").unwrap();
        if first_line(&stream)["response"] == "status" {
            break stream;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut reader = BufReader::new(&stream);
    for answer in 2..=4 {
        (&stream).write_all(b"{\"request\":\"status\"}\n").unwrap();
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).unwrap();
        let response: serde_json::Value = serde_json::from_slice(&line).unwrap();
        if answer <= 3 {
            assert_eq!(response["response"], "status", "{response}");
        } else {
            assert_eq!(response["error"], "bad_request", "{response}");
        }
    }
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the refusal"
    );
    assert_eq!(
        tracker.status()["settled"]["state"],
        "settled",
        "still serving"
    );
}

/// A client that starts a request and stalls is cut off after the request timeout with an
/// error, while another client is answered meanwhile.
#[test]
fn slow_requests_are_cut_off_and_others_served() {
    require_root();
    let store = HermeticStore::new();
    let tracker = TrackerProcess::start(&store, "fanotify", &["--request-timeout-ms", "500"]);
    let slow = UnixStream::connect(tracker.socket()).unwrap();
    (&slow).write_all(b"{\"request\":").unwrap();
    // Served while the slow one holds its connection open.
    assert_eq!(tracker.status()["settled"]["state"], "settled");
    // A safety net only: the server decides at 500 ms.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let refused = first_line(&slow);
    assert_eq!(refused["error"], "bad_request", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("timed out"),
        "{refused}"
    );
    let mut rest = Vec::new();
    assert_eq!((&slow).read_to_end(&mut rest).unwrap(), 0, "then closed");
    assert_eq!(
        tracker.status()["settled"]["state"],
        "settled",
        "still serving"
    );
}

/// Nix's client side of the roots-daemon protocol (`requestRuntimeRoots` in libstore's gc.cc):
/// read NUL-terminated strings until the end of the stream or an empty one, each parsed as a
/// store path (`parseStorePath`: absolute, directly in the store dir); a read error or a
/// string that is no store path throws, and the collection stops.
fn nix_client(socket: &Path, store_dir: &Path) -> Result<BTreeSet<Vec<u8>>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .map_err(|error| format!("read error: {error}"))?;
    let mut paths = BTreeSet::new();
    // A last string without its NUL is still read (readLine with eofOk).
    for line in received.split(|&byte| byte == 0) {
        if line.is_empty() {
            break;
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(line));
        if !path.is_absolute() || path.parent() != Some(store_dir) {
            return Err(format!(
                "not a store path: {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        paths.insert(line.to_vec());
    }
    Ok(paths)
}

#[test]
fn nix_roots_socket_lists_every_target_nul_terminated() {
    require_root();
    let store = HermeticStore::new();
    let alice = SystemUser::create("alice", &store.path("home/alice"));
    let indirect = store.add_file("indirect", b"i");
    let direct = store.add_file("direct", b"d");
    fs::create_dir_all(alice.home.join("proj")).unwrap();
    store.add_indirect_root(&alice.home.join("proj/result"), &indirect);
    symlink(&direct, store.gcroots().join("direct")).unwrap();
    // Without a PATH: Nix's own place, `<state>/gc-roots-socket/socket`.
    // This sandbox's pid 1 hides `/proc/1` even from root (tests/src/lib.rs).
    let tracker = TrackerProcess::start(
        &store,
        "fanotify",
        &["--nix-roots-socket", "--nix-roots-allow-unreadable-runtime"],
    );
    let socket = store.state_dir.join("gc-roots-socket/socket");

    let report = tracker.query();
    let mut expected = BTreeSet::new();
    for list in ["roots", "unregistered"] {
        for root in report[list].as_array().unwrap() {
            expected.insert(root_tracker::report::bytes_from_json(&root["target"]).unwrap());
        }
    }
    assert!(expected.contains(path_bytes(&indirect)) && expected.contains(path_bytes(&direct)));
    let mut raw = Vec::new();
    UnixStream::connect(&socket)
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw.last(), Some(&0), "every path is NUL-terminated");
    assert_eq!(
        nix_client(&socket, &store.store_dir).unwrap(),
        expected,
        "exactly the targets of the fenced answer"
    );

    // A root made just now is in the next list: the roots-daemon answer is fenced too.
    let later = store.add_file("later", b"l");
    symlink(&later, store.gcroots().join("later")).unwrap();
    assert!(
        nix_client(&socket, &store.store_dir)
            .unwrap()
            .contains(path_bytes(&later))
    );
}

/// An in-process tracker on a replay source that never rescans on its own and never waits:
/// a `Hint::Lost` leaves it unsettled until a query that may wait comes.
struct Unsettleable {
    fake: FakeStore,
    nix_socket: PathBuf,
    json_socket: PathBuf,
    hints: std::sync::mpsc::Sender<Hint>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Unsettleable {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

const VALID: &str = "0123456789abcdfghijklmnpqrsvwx00-valid";

fn start_unsettleable() -> Unsettleable {
    let fake = FakeStore::new(&[VALID]);
    let layout = fake.layout.clone();
    let index = Index::open(&fake.root.join("index.sqlite")).unwrap();
    let reconciler = Reconciler::new(layout.clone(), index);
    let (source, feed) = ReplaySource::new();
    let state_watch = StateWatch::new(&layout).unwrap();
    let (jobs, job_receiver) = root_tracker::tracker::job_channel().unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let json_socket = fake.root.join("run/socket");
    let nix_socket = fake.root.join("state/gc-roots-socket/socket");
    let config = ServerConfig {
        socket: json_socket.clone(),
        nix_roots: Some(NixRootsConfig {
            socket: nix_socket.clone(),
            // This sandbox's pid 1 hides `/proc/1` even from root (tests/src/lib.rs).
            allow_unreadable_runtime: true,
        }),
        access: Access::default(),
        limits: Limits::default(),
    };
    let server = serve(config, jobs, shutdown.clone()).unwrap();
    let options = TrackerOptions {
        default_query_wait: Duration::ZERO,
        rescan_delay: Duration::from_secs(3600),
        ..TrackerOptions::default()
    };
    let tracker = Tracker::new(
        reconciler,
        Box::new(source),
        state_watch,
        job_receiver,
        options,
    );
    let loop_shutdown = shutdown.clone();
    let tracker_thread = std::thread::spawn(move || tracker.run(&loop_shutdown).unwrap());
    Unsettleable {
        fake,
        nix_socket,
        json_socket,
        hints: feed.hints,
        shutdown,
        threads: vec![server, tracker_thread],
    }
}

#[test]
fn nix_roots_socket_fails_closed_while_unsettled() {
    let running = start_unsettleable();
    let store = running.fake.layout.store_dir().to_owned();
    symlink(
        store.join(VALID),
        running.fake.layout.gcroots_dir().join("r"),
    )
    .unwrap();
    let settled = nix_client(&running.nix_socket, &store).unwrap();
    assert_eq!(
        settled,
        BTreeSet::from([path_bytes(&store.join(VALID)).to_vec()])
    );

    // Lost hints: the index is unsettled, the tracker may not wait (default wait 0) and will
    // not rescan on its own for an hour. A Nix client must get an error, never a short list.
    running
        .hints
        .send(Hint::Lost {
            reason: "test".to_owned(),
        })
        .unwrap();
    let refused = nix_client(&running.nix_socket, &store).unwrap_err();
    assert!(
        refused.contains("root-tracker refused") && refused.contains("unsettled"),
        "{refused}"
    );

    // A JSON query that may wait settles it; then the roots-daemon answer is whole again.
    let stream = UnixStream::connect(&running.json_socket).unwrap();
    (&stream)
        .write_all(b"{\"request\":\"query\",\"wait_ms\":10000}\n")
        .unwrap();
    assert_eq!(first_line(&stream)["response"], "roots");
    assert_eq!(nix_client(&running.nix_socket, &store).unwrap(), settled);
}
