//! Test harness: hermetic Nix stores driven by the real `nix-store`, system users, and
//! processes that hold store paths. Everything a test creates is removed in `Drop`, also when
//! the test panics. Helpers panic with the failing command's stderr rather than return errors.

#![expect(
    clippy::unwrap_used,
    reason = "a test harness panics on failure, as aya's test README recommends"
)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod dirlock;
pub mod interest_race;
pub mod uring;
pub mod workload;

/// Not a speed bound: a wait that ignores its wake-up sits this out and the check fails.
pub const WOKEN_POLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks that `source.poll` returns once its wake-up fd is readable, with nothing to read:
/// the tracker loop relies on it to answer a request without waiting for the source's
/// timeout. Polls that return with hints (other tests' mounts, say) are retried; only one
/// that returns with none ends the check, and that must be before [`WOKEN_POLL_TIMEOUT`].
pub fn check_poll_returns_when_woken(source: &mut dyn root_tracker::source::Source) {
    use std::os::fd::AsFd as _;
    let wake = nix::sys::eventfd::EventFd::from_value(1).unwrap();
    let started = std::time::Instant::now();
    loop {
        let mut hints = Vec::new();
        source
            .poll(WOKEN_POLL_TIMEOUT, Some(wake.as_fd()), &mut hints)
            .unwrap();
        if hints.is_empty() {
            break;
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < WOKEN_POLL_TIMEOUT,
        "poll sat out its {WOKEN_POLL_TIMEOUT:?} timeout with its wake-up fd readable"
    );
}

/// A path made of arbitrary bytes.
pub fn bytes_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

pub fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// A binary of this package (`tracker-cli`, `root-holder`), next to the test executable's `deps/`.
pub fn package_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built (run the tests through cargo)",
        bin.display()
    );
    bin
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Panics with a clear message when not root: these tests need root (CI runs them as root).
pub fn require_root() {
    assert!(
        is_root(),
        "this test must run as root (CI does); run `cargo xtask test` as root"
    );
}

fn check(output: Output, what: &dyn std::fmt::Debug) -> Output {
    assert!(
        output.status.success(),
        "{what:?} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A Nix store in a temporary directory, isolated through `NIX_STORE_DIR`, `NIX_STATE_DIR`,
/// `NIX_LOG_DIR` and `NIX_CONF_DIR`. The real `/nix` is never touched.
pub struct HermeticStore {
    dir: tempfile::TempDir,
    pub store_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl HermeticStore {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rt-store-")
            .tempdir()
            .unwrap();
        // Other users (the unprivileged tests) must be able to reach the store.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let store = Self {
            store_dir: dir.path().join("store"),
            state_dir: dir.path().join("state"),
            dir,
        };
        for sub in ["conf", "log", "home", "src"] {
            fs::create_dir_all(store.path(sub)).unwrap();
        }
        fs::write(
            store.path("conf/nix.conf"),
            "build-users-group =\nsandbox = false\nsubstituters =\n",
        )
        .unwrap();
        store.nix_store(&["--init"]);
        store
    }

    /// `<tmp>/<sub>`.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn gcroots(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    pub fn profiles(&self) -> PathBuf {
        self.state_dir.join("profiles")
    }

    /// The environment that aims Nix tools at this store.
    pub fn nix_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("NIX_STORE_DIR", self.store_dir.clone()),
            ("NIX_STATE_DIR", self.state_dir.clone()),
            ("NIX_LOG_DIR", self.path("log")),
            ("NIX_CONF_DIR", self.path("conf")),
            ("HOME", self.path("home")),
            ("XDG_CACHE_HOME", self.path("home/.cache")),
        ]
    }

    /// A `nix-store` command aimed at this store.
    pub fn nix_store_command(&self) -> Command {
        let mut command = Command::new("nix-store");
        command.env_remove("NIX_REMOTE").envs(self.nix_env());
        command
    }

    /// A `nix-store` command aimed at this store, run as `user` (the store's owner, or a user
    /// who cannot read everything).
    pub fn nix_store_command_as(&self, user: &SystemUser) -> Command {
        let mut command = user.command(OsStr::new("nix-store"));
        command.env_remove("NIX_REMOTE").envs(self.nix_env());
        command
    }

    /// `nix-store ARGS` as `user`; panics with its stderr unless it succeeds; its stdout.
    pub fn nix_store_as<S: AsRef<OsStr>>(&self, user: &SystemUser, args: &[S]) -> Vec<u8> {
        let mut command = self.nix_store_command_as(user);
        command.args(args);
        check(command.output().unwrap(), &command).stdout
    }

    /// `nix-env -p PROFILE --set PATH`: a profile generation, as a user's `nix-env` makes it.
    pub fn set_profile(&self, profile: &Path, path: &Path) {
        let mut command = Command::new("nix-env");
        command
            .env_remove("NIX_REMOTE")
            .envs(self.nix_env())
            .arg("-p")
            .arg(profile)
            .arg("--set")
            .arg(path);
        check(command.output().unwrap(), &command);
    }

    /// Runs `nix-store ARGS` and returns its standard output; panics if it fails.
    pub fn nix_store(&self, args: &[&str]) -> Vec<u8> {
        let mut command = self.nix_store_command();
        command.args(args);
        check(command.output().unwrap(), &command).stdout
    }

    /// `nix-store --add` of a file with `contents`; returns the store path.
    pub fn add_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let source = self.unique_src(name);
        fs::write(&source, contents).unwrap();
        self.add(&source)
    }

    /// `nix-store --add` of a directory holding `files`; returns the store path.
    pub fn add_dir(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let source = self.unique_src(name);
        fs::create_dir_all(&source).unwrap();
        for (file, contents) in files {
            fs::write(source.join(file), contents).unwrap();
        }
        self.add(&source)
    }

    /// `nix-store --add` of an existing file or directory.
    pub fn add(&self, source: &Path) -> PathBuf {
        let out = self.nix_store(&["--add", source.to_str().unwrap()]);
        bytes_path(out.strip_suffix(b"\n").unwrap())
    }

    fn unique_src(&self, name: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.path(&format!("src/{n}"));
        fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// `nix-store --add-root LINK --indirect -r PATH`: LINK -> PATH plus `gcroots/auto/<hash>` -> LINK.
    pub fn add_indirect_root(&self, link: &Path, path: &Path) {
        let mut command = self.nix_store_command();
        command
            .arg("--add-root")
            .arg(link)
            .arg("--indirect")
            .arg("-r")
            .arg(path);
        check(command.output().unwrap(), &command);
    }

    /// A well-formed store path in this store's directory that is not registered.
    pub fn unregistered_path(&self, name: &str) -> PathBuf {
        self.store_dir
            .join(format!("0123456789abcdfghijklmnpqrsvwxyz-{name}"))
    }

    /// What the oracle says: `nix-store --gc --print-roots`. Note that Nix deletes stale
    /// `gcroots/auto` links and dead temp-root files while it does this.
    pub fn nix_print_roots(&self) -> Vec<u8> {
        self.nix_store(&["--gc", "--print-roots"])
    }

    /// Runs `root-tracker scan` against this store.
    pub fn scan_command(&self) -> Command {
        let mut command = Command::new(package_bin("tracker-cli"));
        command
            .arg("scan")
            .arg("--store-dir")
            .arg(&self.store_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        command
    }

    pub fn scan(&self, extra: &[&str]) -> Output {
        let mut command = self.scan_command();
        command.args(extra);
        command.output().unwrap()
    }

    /// `root-tracker scan --json`, parsed, with the exit status.
    pub fn scan_json(&self) -> (serde_json::Value, Option<i32>) {
        let output = self.scan(&["--json"]);
        let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "scan --json printed no JSON ({error}); stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (value, output.status.code())
    }

    /// Gives the whole temporary tree to `user` (for tests where an unprivileged user owns the store).
    pub fn chown_all(&self, user: &SystemUser) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(&self.store_dir)
            .arg(&self.state_dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Default for HermeticStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The unreadable entries of a `scan --json` answer that are not `/proc` entries of processes
/// this sandbox hides even from root. The sandbox's pid 1 refuses `/proc/1/*` to everyone else.
pub fn unreadable_outside_hidden_processes(json: &serde_json::Value) -> Vec<serde_json::Value> {
    json["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            let path = root_tracker::report::bytes_from_json(&entry["path"]).unwrap();
            let hidden = path.starts_with(b"/proc/") && entry["errno"] == libc::EACCES;
            !hidden
        })
        .cloned()
        .collect()
}

/// A system user created with `useradd` and deleted (with its home) in `Drop`.
pub struct SystemUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl SystemUser {
    /// Creates a user whose home is `home`, mode 0700, owned by the user.
    pub fn create(role: &str, home: &Path) -> Self {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rt{}{}{}",
            role,
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--home-dir",
            ])
            .arg(home)
            .arg(&name)
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        let created = Self {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: home.to_owned(),
        };
        fs::create_dir_all(home).unwrap();
        std::os::unix::fs::chown(home, Some(created.uid), Some(created.gid)).unwrap();
        fs::set_permissions(home, fs::Permissions::from_mode(0o700)).unwrap();
        created
    }

    /// `command` run as this user (no supplementary groups, no capabilities).
    pub fn command(&self, program: &OsStr) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// A running `root-holder`: holds store paths until dropped (then it is stopped and reaped).
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Starts `command` (a `root-holder`, possibly a copy in the store) and waits for `ready`.
    pub fn start(mut command: Command) -> Self {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "root-holder did not start");
        Self { child, stdin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin tells it to exit; kill in case it is stuck.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `--print-roots` output (each `LINK -> STOREPATH`), for assertions on content.
pub fn roots_lines(output: &[u8]) -> Vec<Vec<u8>> {
    // A link name may itself contain a newline, so split on "\n" only before a known prefix is
    // not possible in general; callers use this for outputs whose names have no newline.
    output
        .split(|&c| c == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// `a -> b` as printed.
pub fn root_line(link: &Path, target: &Path) -> Vec<u8> {
    [path_bytes(link), b" -> ", path_bytes(target)].concat()
}

/// Joins two byte strings as a path, for names that are not UTF-8.
pub fn join_bytes(dir: &Path, name: &[u8]) -> PathBuf {
    let mut joined: OsString = dir.as_os_str().to_owned();
    joined.push("/");
    joined.push(OsStr::from_bytes(name));
    PathBuf::from(joined)
}

pub fn into_bytes(path: PathBuf) -> Vec<u8> {
    path.into_os_string().into_vec()
}

impl HermeticStore {
    /// Registers `count` empty store paths with `nix-store --register-validity --hash-given`
    /// (fast: no hashing) and returns them.
    pub fn register_empty_paths(&self, prefix: &str, count: usize) -> Vec<PathBuf> {
        use std::io::Write as _;
        let mut registration = Vec::new();
        let paths: Vec<PathBuf> = (0..count)
            .map(|index| {
                let hash = nix32_from(index as u64);
                let path = self.store_dir.join(format!("{hash}-{prefix}-{index}"));
                fs::write(&path, b"").unwrap();
                writeln!(
                    registration,
                    "{}\nsha256:{}\n0\n\n0",
                    path.display(),
                    "0".repeat(64)
                )
                .unwrap();
                path
            })
            .collect();
        self.register_validity(&registration);
        paths
    }

    /// `nix-store --register-validity --hash-given` with `registration` on its standard input
    /// (path, hash, size, deriver, reference count, references — one per line, per path).
    pub fn register_validity(&self, registration: &[u8]) {
        use std::io::Write as _;
        let mut command = self.nix_store_command();
        command
            .args(["--register-validity", "--hash-given"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(registration).unwrap();
        check(child.wait_with_output().unwrap(), &command);
    }
}

/// 32 characters of Nix's base-32 alphabet derived from `seed`.
pub fn nix32_from(seed: u64) -> String {
    const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut state = seed;
    (0..32)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(NIX32[(state >> 59) as usize])
        })
        .collect()
}

/// A tmpfs mounted by a test, unmounted (lazily, so a busy mount cannot fail the cleanup)
/// in `Drop`, also when the test panics.
pub struct TmpfsMount {
    pub path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    pub fn new(path: &Path) -> Self {
        require_root();
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "rt-test"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {} failed", path.display());
        Self {
            path: path.to_owned(),
            mounted: true,
        }
    }

    pub fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A running `root-tracker run` (the `tracker-cli` binary) on a hermetic store, killed and
/// reaped in `Drop`. Its socket, index and log live in their own temp dir.
pub struct TrackerProcess {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub backend: String,
    args: Vec<OsString>,
}

impl TrackerProcess {
    pub fn start(store: &HermeticStore, backend: &str, extra: &[&str]) -> Self {
        Self::start_with_user(store, backend, None, extra)
    }

    /// `root-tracker run --user USER`. Its directory (socket, index, log) is given to `user`
    /// first, as systemd's `StateDirectory=` and `RuntimeDirectory=` would; `user` must outlive
    /// the tracker (declare it first), since `userdel` refuses a user that still runs processes.
    pub fn start_as(
        store: &HermeticStore,
        backend: &str,
        user: &SystemUser,
        extra: &[&str],
    ) -> Self {
        Self::start_with_user(store, backend, Some(user), extra)
    }

    fn start_with_user(
        store: &HermeticStore,
        backend: &str,
        user: Option<&SystemUser>,
        extra: &[&str],
    ) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("rt-tracker-")
            .tempdir()
            .unwrap();
        if let Some(user) = user {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let mut args: Vec<OsString> = vec!["run".into(), "--backend".into(), backend.into()];
        args.extend([
            "--socket".into(),
            dir.path().join("socket").into_os_string(),
        ]);
        args.extend([
            "--db".into(),
            dir.path().join("index.sqlite").into_os_string(),
        ]);
        args.extend([
            "--store-dir".into(),
            store.store_dir.clone().into_os_string(),
        ]);
        args.extend([
            "--state-dir".into(),
            store.state_dir.clone().into_os_string(),
        ]);
        if !extra.contains(&"--verify-interval-secs") {
            args.extend(["--verify-interval-secs".into(), "0".into()]);
        }
        if let Some(user) = user {
            args.extend(["--user".into(), user.name.clone().into()]);
        }
        args.extend(extra.iter().map(OsString::from));
        let mut tracker = Self {
            child: None,
            dir,
            backend: backend.to_owned(),
            args,
        };
        tracker.spawn();
        tracker
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tracker.log"))
            .unwrap();
        let child = Command::new(package_bin("tracker-cli"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the socket answers a status request (the bootstrap scan is done then:
    /// requests are served by the tracker loop only after it).
    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().unwrap())
            {
                panic!(
                    "the tracker exited with {status} while starting:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = self.request(br#"{"request":"status"}"#) {
                if response["response"] == "status" {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the tracker did not start:\n{}",
                self.log()
            );
            std::thread::yield_now();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("tracker.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// One request line, one parsed response.
    pub fn request(&self, line: &[u8]) -> std::io::Result<serde_json::Value> {
        use std::io::Write as _;
        let mut stream = std::os::unix::net::UnixStream::connect(self.socket())?;
        stream.write_all(line)?;
        stream.write_all(b"\n")?;
        let mut response = Vec::new();
        BufReader::new(&stream).read_until(b'\n', &mut response)?;
        serde_json::from_slice(&response).map_err(std::io::Error::other)
    }

    /// A fenced query; panics unless the tracker answers with roots.
    pub fn query(&self) -> serde_json::Value {
        let response = self
            .request(br#"{"request":"query","wait_ms":60000}"#)
            .unwrap();
        assert_eq!(
            response["response"],
            "roots",
            "query failed: {response}\n{}",
            self.log()
        );
        response["report"].clone()
    }

    pub fn status(&self) -> serde_json::Value {
        self.request(br#"{"request":"status"}"#).unwrap()["status"].clone()
    }

    /// SIGSTOP: the tracker reads nothing until `resume`, so kernel queues fill up. Returns
    /// once every thread of it has stopped (`waitpid` reports the group stop), so that what
    /// the caller does next is certainly read only after `resume`.
    pub fn pause(&self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
            WaitStatus::Stopped(..) => {}
            other => panic!("the tracker did not stop but {other:?}:\n{}", self.log()),
        }
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    }

    /// `kill -9`, then start again with the same index database.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let readers = children_of(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let killed = wait_until_dead(&readers);
            if !killed.is_empty() {
                eprintln!("killed processes that outlived the tracker: {killed:?}");
            }
        }
    }

    /// SIGTERM, then waits (at most 30 s, then SIGKILL) for the tracker to exit, and for its
    /// /proc reader, which leaves when the tracker's end of their socket closes; its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let readers = children_of(child.id());
        let _wait_for_readers = WaitUntilDead(readers);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the tracker did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The tracker's process id (it runs unless a test killed it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The tracker's /proc reader: its only child process (none with `--keep-privileges`).
    pub fn reader_pid(&self) -> Option<u32> {
        let children = children_of(self.pid());
        assert!(
            children.len() <= 1,
            "the tracker has several children: {children:?}"
        );
        children.first().copied()
    }
}

/// The processes whose parent is `pid`, from `/proc/*/status` (this kernel has no
/// `/proc/<pid>/task/<tid>/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").unwrap() {
        let name = entry.unwrap().file_name();
        let Some(child) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{child}/status")) else {
            continue; // gone meanwhile
        };
        let parent = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .map(|ppid| ppid.trim().parse::<u32>().unwrap());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Whether `pid` has exited (gone, or a zombie not reaped yet).
pub fn has_exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Waits (at most 30 s) until each of `pids` has exited; kills and returns the ones that did not.
pub fn wait_until_dead(pids: &[u32]) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut killed = Vec::new();
    for &pid in pids {
        while !has_exited(pid) {
            if std::time::Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.push(pid);
                break;
            }
            std::thread::yield_now();
        }
    }
    killed
}

/// [`wait_until_dead`] on drop; a straggler fails the test unless it fails already.
struct WaitUntilDead(Vec<u32>);

impl Drop for WaitUntilDead {
    fn drop(&mut self) {
        let killed = wait_until_dead(&self.0);
        if !std::thread::panicking() {
            assert_eq!(killed, Vec::<u32>::new(), "processes outlived the tracker");
        }
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The parts of a report that the live index is responsible for: static and indirect roots,
/// unregistered roots, stale links and unreadable entries (runtime and temp roots are read
/// at query time, from the same code as a scan).
pub fn index_part(report: &serde_json::Value) -> serde_json::Value {
    let keep = |list: &serde_json::Value| -> Vec<serde_json::Value> {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|root| root["kind"] == "static" || root["kind"] == "indirect")
            .cloned()
            .collect()
    };
    serde_json::json!({
        "roots": keep(&report["roots"]),
        "unregistered": keep(&report["unregistered"]),
        "stale_links": report["stale_links"],
        "unreadable": report["unreadable"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| {
                let path = root_tracker::report::bytes_from_json(&entry["path"]).unwrap();
                !path.starts_with(b"/proc/")
            })
            .cloned()
            .collect::<Vec<_>>(),
    })
}

/// xorshift64*: a small, seeded, reproducible generator for the random-workload tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// A store laid out as Nix lays it out, made without Nix: its database holds only a
/// `ValidPaths` table. For unprivileged tests of the reconciler, tracker loop and server.
pub struct FakeStore {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub layout: root_tracker::layout::StoreLayout,
}

impl FakeStore {
    /// Registers `<store>/<name>` for each of `valid`.
    pub fn new(valid: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let layout =
            root_tracker::layout::StoreLayout::new(&root.join("store"), &root.join("state"))
                .unwrap();
        for sub in [
            "store",
            "state/gcroots/auto",
            "state/profiles",
            "state/db",
            "home",
        ] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let db = rusqlite::Connection::open(layout.db_path()).unwrap();
        db.execute_batch(
            "CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);",
        )
        .unwrap();
        for name in valid {
            let path = layout.store_dir().join(name);
            db.execute(
                "INSERT INTO ValidPaths (path) VALUES (?1)",
                [path.to_str().unwrap()],
            )
            .unwrap();
        }
        Self {
            _dir: dir,
            root,
            layout,
        }
    }
}
