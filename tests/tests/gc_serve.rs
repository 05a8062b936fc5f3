//! `store-gc serve`, run as the store's unprivileged owner against a running tracker: a
//! scheduled collection deletes the dead paths and keeps the rooted one; free space below
//! `--min-free` starts a collection without waiting for the interval; a stopped tracker makes
//! every run a counted refusal that deletes nothing; `--dry-run` decides without deleting; the
//! metrics endpoint serves well-formed Prometheus text with every family; SIGTERM stops it.
//!
//! The tests synchronise on `/metrics` (polled until a counter moves, with a deadline), never
//! on fixed sleeps.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers (Daemon, Exposition): a panic is the test failing"
)]

mod gc_common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gc_common::{tracker_args, valid_paths};
use tests::{HermeticStore, SystemUser, TrackerProcess, package_bin, require_root};

/// How long a condition on the metrics may take to become true.
const DEADLINE: Duration = Duration::from_secs(90);

/// A store owned by `gcuser` with one rooted path and two dead ones (a file and a read-only
/// directory tree, as `nix-store --add` makes them).
struct Setup {
    store: HermeticStore,
    gcuser: SystemUser,
    live: PathBuf,
    dead: Vec<PathBuf>,
}

impl Setup {
    fn new() -> Self {
        require_root();
        let store = HermeticStore::new();
        let live = store.add_file("live", b"alive");
        symlink(&live, store.gcroots().join("live")).unwrap();
        let dead = vec![
            store.add_file("dead-file", b"dead"),
            store.add_dir("dead-tree", &[("a", b"12345"), ("b", b"6")]),
        ];
        let gcuser = SystemUser::create("gc", &store.path("home/gc"));
        store.chown_all(&gcuser);
        Self {
            store,
            gcuser,
            live,
            dead,
        }
    }

    fn tracker(&self) -> TrackerProcess {
        let uid = self.gcuser.uid.to_string();
        TrackerProcess::start(&self.store, "fanotify", &tracker_args(&uid))
    }

    fn assert_collected(&self) {
        let valid = valid_paths(&self.store);
        assert!(
            valid.contains(&self.live),
            "the rooted path is no longer valid"
        );
        assert!(self.live.exists(), "the rooted path was deleted");
        for dead in &self.dead {
            assert!(!valid.contains(dead), "{} still valid", dead.display());
            assert!(!dead.exists(), "{} still on disk", dead.display());
        }
    }

    fn assert_untouched(&self) {
        let valid = valid_paths(&self.store);
        for path in self.dead.iter().chain([&self.live]) {
            assert!(valid.contains(path), "{} no longer valid", path.display());
            assert!(path.exists(), "{} was deleted", path.display());
        }
    }
}

/// A running `store-gc serve` as `gcuser`, metrics on a loopback port it picked; killed and
/// reaped in `Drop`.
struct Daemon {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Daemon {
    fn start(setup: &Setup, socket: &Path, args: &[&str]) -> Self {
        Self::start_with(setup, socket, args, |_| {})
    }

    /// `start`, with the command adjusted by `configure` (environment) before it is spawned.
    fn start_with(
        setup: &Setup,
        socket: &Path,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let log = setup.store.path(&format!(
            "serve-{}.log",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut command = setup.gcuser.command(package_bin("store-gc").as_os_str());
        command
            .env_remove("NIX_STORE_DIR")
            .env_remove("NIX_STATE_DIR")
            .env_remove("NIX_CONF_DIR")
            .env("RUST_LOG", "info")
            .arg("serve")
            .arg("--tracker-socket")
            .arg(socket)
            .arg("--store-dir")
            .arg(&setup.store.store_dir)
            .arg("--state-dir")
            .arg(&setup.store.state_dir)
            .arg("--conf-dir")
            .arg(setup.store.path("conf"))
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--tracker-wait-ms",
                "5000",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        // The first line names the bound address; EOF means it exited.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim_end()
            .strip_prefix("metrics: http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .map(str::to_owned);
        let Some(address) = address else {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!(
                "store-gc serve did not start ({status}), stdout {line:?}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Self {
            child,
            address,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics`: panics unless the answer is a 200 in the text format.
    fn scrape(&self) -> Exposition {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        Exposition::parse(body)
    }

    /// Scrapes until `condition` holds; panics with the daemon's log past the deadline or if
    /// the daemon exits.
    fn wait_for(&mut self, what: &str, condition: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("store-gc serve exited with {status}:\n{}", self.log());
            }
            let metrics = self.scrape();
            if condition(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; metrics:\n{}\nlog:\n{}",
                metrics.text,
                self.log()
            );
            // A scrape costs a tracker status request: poll, but not in a tight loop.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the daemon must exit 0 on its own.
    fn terminate(self) {
        self.send_sigterm();
        self.wait_for_clean_exit();
    }

    fn send_sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits until `text` appears in the daemon's log.
    fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "store-gc serve exited with {status} before logging {text:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_clean_exit(mut self) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "store-gc serve ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit {status}:\n{}", self.log());
        assert!(
            self.log().contains("store-gc serve stopped"),
            "{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Labels = BTreeMap<String, String>;

/// A parsed text exposition: every line checked against the format (HELP/TYPE comments, then
/// `name{label="value",...} value`), each family declared once with a type, its samples right
/// after its TYPE line (a family split in two is rejected by Prometheus).
struct Exposition {
    text: String,
    types: BTreeMap<String, String>,
    samples: Vec<(String, Labels, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                name.clone_into(&mut family);
                assert!(
                    ["counter", "gauge"].contains(&kind),
                    "unexpected type in {line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} declared twice"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.is_empty() && valid_name(name), "{line}");
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (name, labels, value) = parse_sample(line);
            assert_eq!(name, family, "sample outside its family: {line}");
            samples.push((name, labels, value));
        }
        Self {
            text: text.to_owned(),
            types,
            samples,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| *value)
    }

    /// The one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let values: Vec<f64> = self.matching(name, labels).collect();
        assert_eq!(values.len(), 1, "{name} {labels:?} in\n{}", self.text);
        values[0]
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{a="x",b="y\"z"} 1.5`, with the label escapes the format defines.
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let name_end = line.find(['{', ' ']).unwrap();
    let name = &line[..name_end];
    assert!(valid_name(name), "bad metric name in {line}");
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").unwrap();
            assert!(valid_name(key), "bad label name in {line}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().unwrap() {
                    (index, '"') => break index,
                    (_, '\\') => match chars.next().unwrap().1 {
                        'n' => value.push('\n'),
                        escaped @ ('\\' | '"') => value.push(escaped),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    (_, other) => value.push(other),
                }
            };
            assert!(labels.insert(key.to_owned(), value).is_none(), "{line}");
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').unwrap();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    (name.to_owned(), labels, value)
}

fn runs(metrics: &Exposition, labels: &[(&str, &str)]) -> f64 {
    metrics.sum("store_gc_runs_total", labels)
}

const FAMILIES: &[(&str, &str)] = &[
    ("store_gc_runs_total", "counter"),
    ("store_gc_running", "gauge"),
    ("store_gc_deleted_paths_total", "counter"),
    ("store_gc_freed_bytes_total", "counter"),
    ("store_gc_phase_seconds_total", "counter"),
    ("store_gc_last_success_timestamp_seconds", "gauge"),
    ("store_gc_last_phase_seconds", "gauge"),
    ("store_gc_last_roots", "gauge"),
    ("store_gc_last_paths", "gauge"),
    ("store_gc_store_free_bytes", "gauge"),
    ("store_gc_min_free_bytes", "gauge"),
    ("store_gc_tracker_up", "gauge"),
    ("store_gc_tracker_index_settled", "gauge"),
    ("store_gc_tracker_lag_p99_seconds", "gauge"),
];

#[test]
fn scheduled_collection_deletes_the_dead_and_exports_metrics() {
    let setup = Setup::new();
    let tracker = setup.tracker();
    // A root change the tracker sees while running, so that it has a lag to report.
    symlink(&setup.live, setup.store.gcroots().join("live-again")).unwrap();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut daemon = Daemon::start(
        &setup,
        &tracker.socket(),
        &["--interval", "1s", "--allow-unreadable-runtime"],
    );
    let metrics = daemon.wait_for("a successful scheduled run", |metrics| {
        runs(metrics, &[("outcome", "ok"), ("trigger", "schedule")]) >= 1.0
    });
    setup.assert_collected();

    for (family, kind) in FAMILIES {
        assert_eq!(
            metrics.types.get(*family).map(String::as_str),
            Some(*kind),
            "{family} in\n{}",
            metrics.text
        );
    }
    assert_eq!(runs(&metrics, &[("outcome", "refused")]), 0.0);
    assert_eq!(runs(&metrics, &[("outcome", "error")]), 0.0);
    assert!(metrics.value("store_gc_deleted_paths_total", &[]) >= 2.0);
    assert!(metrics.value("store_gc_freed_bytes_total", &[]) > 0.0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let last_success = metrics.value("store_gc_last_success_timestamp_seconds", &[]);
    assert!(
        (started.as_secs_f64() - 1.0..=now.as_secs_f64() + 1.0).contains(&last_success),
        "last success {last_success} not between {started:?} and {now:?}"
    );
    for phase in [
        "lock",
        "roots",
        "temp_roots",
        "load",
        "liveness",
        "links",
        "report",
        "total",
    ] {
        let last = metrics.value("store_gc_last_phase_seconds", &[("phase", phase)]);
        let total = metrics.value("store_gc_phase_seconds_total", &[("phase", phase)]);
        assert!(
            (0.0..60.0).contains(&last) && total >= last,
            "{phase}: {last} {total}"
        );
    }
    assert!(
        metrics.value("store_gc_last_phase_seconds", &[("phase", "total")])
            >= metrics.value("store_gc_last_phase_seconds", &[("phase", "liveness")])
    );
    // gcroots/live and gcroots/live-again.
    assert_eq!(
        metrics.value("store_gc_last_roots", &[("kind", "static")]),
        2.0
    );
    assert_eq!(
        metrics.value("store_gc_last_roots", &[("kind", "indirect")]),
        0.0
    );
    assert!(metrics.value("store_gc_last_paths", &[("state", "alive")]) >= 1.0);
    assert!(metrics.value("store_gc_store_free_bytes", &[]) > 0.0);
    assert!(!metrics.has("store_gc_min_free_bytes", &[]));
    assert_eq!(metrics.value("store_gc_tracker_up", &[]), 1.0);
    assert_eq!(metrics.value("store_gc_tracker_index_settled", &[]), 1.0);
    // fanotify events carry no kernel time; the tracker's own receipt lag is there.
    assert!(!metrics.has(
        "store_gc_tracker_lag_p99_seconds",
        &[("from", "kernel_event")]
    ));
    let lag = metrics.value("store_gc_tracker_lag_p99_seconds", &[("from", "receipt")]);
    assert!((0.0..60.0).contains(&lag), "lag {lag}");

    let log = daemon.log();
    assert!(
        log.contains("collection finished") && log.contains("trigger=\"schedule\""),
        "no structured run log:\n{log}"
    );
    daemon.terminate();
    drop(tracker);
}

#[test]
fn a_restarted_daemon_keeps_its_schedule() {
    let setup = Setup::new();
    let tracker = setup.tracker();
    // The last scheduled collection was two hours ago, with a one-hour interval: overdue, so
    // the daemon collects at once instead of starting a new hour.
    let file = setup.store.state_dir.join("store-gc/last-scheduled-run");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fs::write(&file, format!("{}\n", now - 7200)).unwrap();
    setup.store.chown_all(&setup.gcuser);
    let mut daemon = Daemon::start(
        &setup,
        &tracker.socket(),
        &["--interval", "1h", "--allow-unreadable-runtime"],
    );
    daemon.wait_for("the overdue scheduled run", |metrics| {
        runs(metrics, &[("outcome", "ok"), ("trigger", "schedule")]) >= 1.0
    });
    setup.assert_collected();
    let recorded: u64 = fs::read_to_string(&file).unwrap().trim().parse().unwrap();
    assert!(
        recorded >= now,
        "the run was not recorded: {recorded} < {now}"
    );
    drop(daemon);
    drop(tracker);
}

/// Where `min-free`/`max-free` come from in [`low_free_space`].
enum FreeSpaceFrom {
    Flags,
    NixConf,
}

#[test]
fn low_free_space_collects_without_waiting_for_the_interval() {
    low_free_space(FreeSpaceFrom::Flags);
}

#[test]
fn min_free_and_max_free_are_read_from_nix_conf() {
    low_free_space(FreeSpaceFrom::NixConf);
}

fn low_free_space(from: FreeSpaceFrom) {
    let setup = Setup::new();
    let tracker = setup.tracker();
    let stat = nix::sys::statvfs::statvfs(&setup.store.store_dir).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    let tebibyte = 1u64 << 40;
    let min_free = (free + tebibyte).to_string();
    let max_free = (free + 2 * tebibyte).to_string();
    let mut args = vec!["--interval", "1h", "--check-interval", "1s"];
    args.push("--allow-unreadable-runtime");
    let conf = setup.store.path("conf");
    fs::create_dir_all(&conf).unwrap();
    let conf_file = conf.join("nix.conf");
    let conf_before = fs::read(&conf_file).ok();
    match from {
        FreeSpaceFrom::Flags => {
            args.extend(["--min-free", &min_free, "--max-free", &max_free]);
        }
        FreeSpaceFrom::NixConf => {
            let mut text = conf_before.clone().unwrap_or_default();
            text.extend(format!("\nmin-free = {min_free}\nmax-free = {max_free}\n").bytes());
            fs::write(&conf_file, text).unwrap();
        }
    }
    let mut daemon = Daemon::start(&setup, &tracker.socket(), &args);
    let metrics = daemon.wait_for("a successful free-space run", |metrics| {
        runs(metrics, &[("outcome", "ok"), ("trigger", "free_space")]) >= 1.0
    });
    setup.assert_collected();
    assert_eq!(runs(&metrics, &[("trigger", "schedule")]), 0.0);
    assert_eq!(
        metrics.value("store_gc_min_free_bytes", &[]),
        (free + tebibyte) as f64
    );
    let log = daemon.log();
    assert!(log.contains("free space below min-free"), "{log}");
    drop(daemon);
    drop(tracker);
    if let Some(before) = conf_before {
        fs::write(&conf_file, before).unwrap();
    }
}

#[test]
fn stopped_tracker_means_counted_refusals_and_no_deletion() {
    let setup = Setup::new();
    let tracker = setup.tracker();
    let socket = tracker.socket();
    drop(tracker);
    let mut daemon = Daemon::start(
        &setup,
        &socket,
        &[
            "--interval",
            "1s",
            "--check-interval",
            "1s",
            "--allow-unreadable-runtime",
        ],
    );
    // Retried after 1 s, then 2 s: two refusals, and the daemon still serving.
    let metrics = daemon.wait_for("two refused runs", |metrics| {
        runs(metrics, &[("outcome", "refused"), ("trigger", "schedule")]) >= 2.0
    });
    setup.assert_untouched();
    assert_eq!(runs(&metrics, &[("outcome", "ok")]), 0.0);
    assert_eq!(runs(&metrics, &[("outcome", "error")]), 0.0);
    assert_eq!(metrics.value("store_gc_deleted_paths_total", &[]), 0.0);
    assert_eq!(
        metrics.value("store_gc_last_success_timestamp_seconds", &[]),
        0.0
    );
    assert_eq!(metrics.value("store_gc_tracker_up", &[]), 0.0);
    assert!(!metrics.has("store_gc_tracker_index_settled", &[]));
    let log = daemon.log();
    assert!(
        log.contains("collection refused, nothing deleted") && log.contains("unreachable"),
        "{log}"
    );
    daemon.terminate();
}

#[test]
fn dry_run_decides_and_deletes_nothing() {
    let setup = Setup::new();
    let tracker = setup.tracker();
    let mut daemon = Daemon::start(
        &setup,
        &tracker.socket(),
        &[
            "--interval",
            "1s",
            "--dry-run",
            "--allow-unreadable-runtime",
        ],
    );
    let metrics = daemon.wait_for("a successful dry run", |metrics| {
        runs(metrics, &[("outcome", "ok")]) >= 1.0
    });
    setup.assert_untouched();
    assert_eq!(metrics.value("store_gc_deleted_paths_total", &[]), 0.0);
    assert!(metrics.value("store_gc_last_paths", &[("state", "dead")]) >= 2.0);
    drop(daemon);
    drop(tracker);
}

#[test]
fn sigterm_waits_for_the_collection_in_progress() {
    let setup = Setup::new();
    let tracker = setup.tracker();
    let fifo = setup.store.path("gc-sync");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let mut daemon = Daemon::start_with(
        &setup,
        &tracker.socket(),
        &["--interval", "1s", "--allow-unreadable-runtime"],
        |command| {
            command.env("_STORE_GC_TEST_GC_SYNC", &fifo);
        },
    );
    // Returns once the collection holds the GC lock and has its roots, before deciding.
    let sync = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    daemon.send_sigterm();
    daemon.wait_for_log("SIGTERM: stopping after the collection in progress");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "exited in the middle of a collection:\n{}",
        daemon.log()
    );
    let metrics = daemon.scrape();
    assert_eq!(metrics.value("store_gc_running", &[]), 1.0);
    setup.assert_untouched();
    // Let the collection go on: it finishes, then the daemon stops.
    drop(sync);
    daemon.wait_for_clean_exit();
    setup.assert_collected();
    drop(tracker);
}

#[test]
fn refuses_to_run_as_root() {
    require_root();
    let output = Command::new(package_bin("store-gc"))
        .args([
            "serve",
            "--interval",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(output.stdout.is_empty(), "started anyway: {output:?}");
}
