//! A `root-tracker run` process for xtask's tasks (`run`, `bench events`): started on a
//! fixture store with its own socket, index and log in a temp dir, killed and reaped in `Drop`.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::fixture::Fixture;
use crate::store_owner::StoreOwner;

/// A running `root-tracker run`, killed and reaped in `Drop`; its socket, index and log live in
/// its own temp dir, removed after the process is gone.
pub(crate) struct RunningTracker {
    child: Child,
    dir: tempfile::TempDir,
    pub(crate) backend: &'static str,
    /// From spawn until the socket first answered (the bootstrap scan is done then).
    pub(crate) bootstrap: Duration,
}

impl RunningTracker {
    pub(crate) fn start(
        binary: &Path,
        fixture: &Fixture,
        backend: &'static str,
    ) -> anyhow::Result<Self> {
        Self::start_with(binary, fixture, backend, &[])
    }

    /// [`Self::start`] with extra `run` arguments (e.g. `--allow-uid`). The socket's directory
    /// is searchable by everyone, so allowed users can reach the socket.
    pub(crate) fn start_with(
        binary: &Path,
        fixture: &Fixture,
        backend: &'static str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_as(binary, fixture, backend, None, extra)
    }

    /// [`Self::start_with`], and with `user` (a system user made like the store's owner) the
    /// tracker runs as that user after attaching (`--user`); its directory is given to the user first, as systemd's `StateDirectory=`
    /// would. `user` must outlive the tracker: `userdel` refuses a user that runs processes.
    pub(crate) fn start_as(
        binary: &Path,
        fixture: &Fixture,
        backend: &'static str,
        user: Option<&StoreOwner>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("rt-bench-tracker-")
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let mut user_args = Vec::new();
        if let Some(user) = user {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).with_context(
                || format!("cannot give {} to {}", dir.path().display(), user.name),
            )?;
            user_args.extend(["--user".to_owned(), user.name.clone()]);
        }
        let log = fs::File::create(dir.path().join("tracker.log"))?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("run")
            .args(["--backend", backend])
            .arg("--socket")
            .arg(dir.path().join("socket"))
            .arg("--db")
            .arg(dir.path().join("index.sqlite"))
            .arg("--store-dir")
            .arg(fixture.store_dir())
            .arg("--state-dir")
            .arg(fixture.state_dir())
            .args(["--verify-interval-secs", "0"])
            .args(&user_args)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        // From here on the guard owns the child: any error below kills it.
        let mut tracker = Self {
            child,
            dir,
            backend,
            bootstrap: Duration::ZERO,
        };
        tracker.wait_ready(started)?;
        Ok(tracker)
    }

    /// Polls with status requests: the tracker loop serves them only after the bootstrap scan.
    fn wait_ready(&mut self, started: Instant) -> anyhow::Result<()> {
        let deadline = started + Duration::from_secs(30 * 60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} tracker exited with {status} while starting:\n{}",
                    self.backend,
                    self.log()
                );
            }
            if let Ok(status) = self.status() {
                self.bootstrap = started.elapsed();
                if status.pointer("/settled/state") != Some(&"settled".into()) {
                    // A query waits for the rescan; the timings below must not include it.
                    self.query()?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} tracker did not answer within 30 min:\n{}",
                    self.backend,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tracker's socket, for `root-tracker query --socket`.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("tracker.log")).unwrap_or_default()
    }

    /// One request line; the raw response line (without its newline).
    pub(crate) fn request(&self, line: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(self.dir.path().join("socket"))
            .context("cannot connect to the tracker")?;
        stream.write_all(line)?;
        stream.write_all(b"\n")?;
        let mut response = Vec::new();
        BufReader::new(&stream).read_until(b'\n', &mut response)?;
        if response.pop() != Some(b'\n') {
            bail!("the {} tracker closed the connection", self.backend);
        }
        Ok(response)
    }

    pub(crate) fn status(&self) -> anyhow::Result<serde_json::Value> {
        let mut response: serde_json::Value =
            serde_json::from_slice(&self.request(br#"{"request":"status"}"#)?)?;
        if response["response"] != "status" {
            bail!("status request failed: {response}");
        }
        Ok(response["status"].take())
    }

    /// A fenced query, timed from the request to the last byte of the answer; the answer is
    /// returned unparsed (at 1M roots it is hundreds of MB) and checked by the caller.
    pub(crate) fn query(&self) -> anyhow::Result<(Duration, Vec<u8>)> {
        let started = Instant::now();
        let answer = self.request(br#"{"request":"query","wait_ms":600000}"#)?;
        let elapsed = started.elapsed();
        if !answer.starts_with(br#"{"response":"roots""#) {
            let head = String::from_utf8_lossy(&answer[..answer.len().min(500)]).into_owned();
            bail!(
                "the {} tracker did not answer with roots: {head}",
                self.backend
            );
        }
        Ok((elapsed, answer))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmHWM` from /proc/<pid>/status: the tracker's peak resident set, in KiB.
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    /// User + system CPU time the tracker has used so far.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces, so split after its `)`):
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |index: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(index)
                .context("short /proc/<pid>/stat")?
                .parse()?)
        };
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
    }
}

impl Drop for RunningTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
