//! The tracker loop and server without a kernel source: a replay source stands in for the
//! kernel, inotify (unprivileged) watches the state trees, and clients talk JSON lines over a
//! real Unix socket in a temp dir.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use root_tracker::hint::Hint;
use root_tracker::index::Index;
use root_tracker::layout::StoreLayout;
use root_tracker::protocol::{ErrorKind, Request, Response};
use root_tracker::reconcile::Reconciler;
use root_tracker::report::bytes_from_json;
use root_tracker::server::{Access, Limits, ServerConfig, serve};
use root_tracker::source::replay::{ReplayFeed, ReplaySource};
use root_tracker::state_watch::StateWatch;
use root_tracker::tracker::{Tracker, TrackerOptions};
use tests::FakeStore;

struct Running {
    fake: FakeStore,
    layout: StoreLayout,
    socket: PathBuf,
    feed: ReplayFeed,
    shutdown: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

const VALID: &str = "0123456789abcdfghijklmnpqrsvwx00-valid";
const OTHER: &str = "0123456789abcdfghijklmnpqrsvwx02-other";

fn start() -> Running {
    let fake = FakeStore::new(&[VALID, OTHER]);
    let layout = fake.layout.clone();
    let root = fake.root.clone();
    fs::create_dir_all(root.join("home/proj")).unwrap();
    let index = Index::open(&root.join("index.sqlite")).unwrap();
    let reconciler = Reconciler::new(layout.clone(), index);
    let (source, feed) = ReplaySource::new();
    let state_watch = StateWatch::new(&layout).unwrap();
    let (jobs, job_receiver) = root_tracker::tracker::job_channel().unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let socket = root.join("run/socket");
    let config = ServerConfig {
        socket: socket.clone(),
        nix_roots: None,
        access: Access::default(),
        limits: Limits::default(),
    };
    let server = serve(config, jobs, shutdown.clone()).unwrap();
    let tracker = Tracker::new(
        reconciler,
        Box::new(source),
        state_watch,
        job_receiver,
        TrackerOptions::default(),
    );
    let loop_shutdown = shutdown.clone();
    let tracker_thread = std::thread::spawn(move || tracker.run(&loop_shutdown).unwrap());
    Running {
        fake,
        layout,
        socket,
        feed,
        shutdown,
        threads: vec![server, tracker_thread],
    }
}

fn exchange(socket: &Path, line: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(line).unwrap();
    let mut response = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut response)
        .unwrap();
    response
}

fn ask(socket: &Path, request: &Request) -> Response {
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    serde_json::from_slice(&exchange(socket, &line)).unwrap()
}

/// `(retainer, target)` of every root in a query answer.
fn roots(running: &Running) -> Vec<(Vec<u8>, Vec<u8>)> {
    match ask(
        &running.socket,
        &Request::Query {
            wait_ms: Some(10_000),
        },
    ) {
        Response::Roots { report } => serde_json::from_str::<serde_json::Value>(report.get())
            .unwrap()["roots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|root| root["kind"] != "runtime" && root["kind"] != "temp")
            .map(|root| {
                (
                    bytes_from_json(&root["retainer"]).unwrap(),
                    bytes_from_json(&root["target"]).unwrap(),
                )
            })
            .collect(),
        other => panic!("expected roots, got {other:?}"),
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

#[test]
fn queries_are_fenced_against_state_tree_and_source_changes() {
    let running = start();
    let store = running.layout.store_dir().to_owned();
    let home = running.fake.root.join("home/proj");
    assert!(roots(&running).is_empty());

    // A direct root appears in gcroots: seen by inotify, no hint needed, fenced by the query.
    let direct = running.layout.gcroots_dir().join("direct");
    symlink(store.join(VALID), &direct).unwrap();
    assert_eq!(
        roots(&running),
        vec![(bytes(&direct), bytes(&store.join(VALID)))]
    );

    // An indirect root: the auto link is seen by inotify and followed at once.
    symlink(store.join(OTHER), home.join("result")).unwrap();
    symlink(home.join("result"), running.layout.auto_dir().join("x")).unwrap();
    let answer = roots(&running);
    assert!(
        answer.contains(&(bytes(&home.join("result")), bytes(&store.join(OTHER)))),
        "{answer:?}"
    );

    // The user link changes: only the source can tell; the query fences the source.
    fs::remove_file(home.join("result")).unwrap();
    symlink(store.join(VALID), home.join("result")).unwrap();
    running
        .feed
        .hints
        .send(Hint::Path(home.join("result")))
        .unwrap();
    let answer = roots(&running);
    assert!(
        answer.contains(&(bytes(&home.join("result")), bytes(&store.join(VALID)))),
        "{answer:?}"
    );

    // The interest the tracker gives its source names the user link's components.
    let interest = running.feed.interest.lock().unwrap().clone();
    assert!(
        interest.basenames.contains(b"result".as_slice())
            && interest.basenames.contains(b"proj".as_slice())
    );
}

/// Validity is remembered between queries (validity.rs), yet a registration or a removal in
/// the store database, which no filesystem watch reports, shows in the very next answer.
#[test]
fn answers_follow_the_store_database_between_queries() {
    let running = start();
    let store = running.layout.store_dir().to_owned();
    const LATER: &str = "0123456789abcdfghijklmnpqrsvwx03-later";
    let direct = running.layout.gcroots_dir().join("later");
    symlink(store.join(LATER), &direct).unwrap();
    assert!(roots(&running).is_empty(), "not registered yet");
    let db = rusqlite::Connection::open(running.layout.db_path()).unwrap();
    let registered = store.join(LATER);
    db.execute(
        "INSERT INTO ValidPaths (path) VALUES (?1)",
        [registered.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(roots(&running), vec![(bytes(&direct), bytes(&registered))]);
    db.execute(
        "DELETE FROM ValidPaths WHERE path = ?1",
        [registered.to_str().unwrap()],
    )
    .unwrap();
    assert!(roots(&running).is_empty(), "collected: no longer a root");
}

#[test]
fn lost_hints_are_settled_by_a_rescan_before_answering() {
    let running = start();
    let store = running.layout.store_dir().to_owned();
    let home = running.fake.root.join("home/proj");
    symlink(store.join(VALID), home.join("result")).unwrap();
    symlink(home.join("result"), running.layout.auto_dir().join("x")).unwrap();
    assert_eq!(roots(&running).len(), 1);
    // A change the source lost: only the rescan that a Lost hint forces can find it.
    fs::remove_file(home.join("result")).unwrap();
    running
        .feed
        .hints
        .send(Hint::Lost {
            reason: "test".to_owned(),
        })
        .unwrap();
    assert!(roots(&running).is_empty());
    match ask(&running.socket, &Request::Status {}) {
        Response::Status { status } => {
            assert_eq!(status["settled"]["state"], "settled");
            assert!(
                status["reconciler"]["rescans"].as_u64().unwrap() >= 2,
                "{status}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests_cost_only_their_connection() {
    let running = start();
    for line in [
        &b"{nonsense\n"[..],
        b"{\"request\":\"delete\"}\n",
        b"\xff\xfe\n",
    ] {
        let response: Response = serde_json::from_slice(&exchange(&running.socket, line)).unwrap();
        assert!(
            matches!(
                response,
                Response::Error {
                    error: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{response:?}"
        );
    }
    let mut huge = vec![b'x'; root_tracker::protocol::MAX_REQUEST_BYTES + 10];
    huge.push(b'\n');
    let response: Response = serde_json::from_slice(&exchange(&running.socket, &huge)).unwrap();
    assert!(matches!(
        response,
        Response::Error {
            error: ErrorKind::BadRequest,
            ..
        }
    ));
    // Still serving.
    assert!(matches!(
        ask(&running.socket, &Request::Status {}),
        Response::Status { .. }
    ));
}

#[test]
fn unauthorized_callers_get_an_error_and_no_roots() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, server_side) = tokio::io::duplex(4096);
        // No tracker behind it: an unauthorized caller must be refused before any job is sent.
        let (jobs, _receiver) = root_tracker::tracker::job_channel().unwrap();
        let server = tokio::spawn(async move {
            root_tracker::server::handle_connection(server_side, None, jobs, &Limits::default())
                .await
        });
        let (reader, mut writer) = tokio::io::split(client);
        writer
            .write_all(b"{\"request\":\"query\"}\n")
            .await
            .unwrap();
        let mut line = Vec::new();
        tokio::io::BufReader::new(reader)
            .read_until(b'\n', &mut line)
            .await
            .unwrap();
        let response: Response = serde_json::from_slice(&line).unwrap();
        assert!(
            matches!(
                response,
                Response::Error {
                    error: ErrorKind::Unauthorized,
                    ..
                }
            ),
            "{response:?}"
        );
        server.await.unwrap().unwrap();
    });
}
