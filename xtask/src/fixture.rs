//! Hermetic Nix stores for `run` and `bench`, made with the real `nix-store` in a temp dir
//! (`NIX_STORE_DIR`, `NIX_STATE_DIR`, ...), never the machine's `/nix`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

pub struct Fixture {
    dir: tempfile::TempDir,
}

/// Nix's base-32 alphabet.
const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

impl Fixture {
    /// An empty, initialised store.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("rt-xtask-").tempdir()?;
        let fixture = Self { dir };
        for sub in ["conf", "log", "home", "src"] {
            fs::create_dir_all(fixture.root().join(sub))?;
        }
        fs::write(
            fixture.root().join("conf/nix.conf"),
            "build-users-group =\nsandbox = false\nsubstituters =\n",
        )?;
        fixture.nix_store(&["--init"], None)?;
        Ok(fixture)
    }

    /// A small store with one root of each static kind, an indirect root, a profile and a stale link.
    pub fn demo() -> anyhow::Result<Self> {
        let fixture = Self::new()?;
        let add = |name: &str| fixture.add_file(name);
        let direct = add("direct")?;
        let indirect = add("indirect")?;
        let stale = add("stale")?;
        let profile = add("profile")?;
        symlink(&direct, fixture.state_dir().join("gcroots/direct"))?;
        let project = fixture.root().join("home/alice/project");
        fs::create_dir_all(&project)?;
        for (link, path) in [("result", &indirect), ("old-result", &stale)] {
            let link = project.join(link);
            fixture.nix_store(
                &[
                    "--add-root",
                    path_str(&link)?,
                    "--indirect",
                    "-r",
                    path_str(path)?,
                ],
                None,
            )?;
        }
        fs::remove_file(project.join("old-result"))?;
        let status = fixture
            .nix_command("nix-env")
            .arg("-p")
            .arg(fixture.state_dir().join("profiles/default"))
            .arg("--set")
            .arg(&profile)
            .output()?;
        if !status.status.success() {
            bail!(
                "nix-env --set failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        Ok(fixture)
    }

    /// A store with `count` registered paths, each rooted by an indirect root
    /// `home/u<h>/p<j>/result` (100 per home) with its `gcroots/auto` link, as
    /// `nix-store --add-root --indirect` lays them out. Registered with `--register-validity`.
    pub fn with_indirect_roots(count: usize) -> anyhow::Result<Self> {
        let fixture = Self::new()?;
        let store_dir = fixture.store_dir();
        let mut registration = Vec::new();
        let auto = fixture.state_dir().join("gcroots/auto");
        fs::create_dir_all(&auto)?;
        for index in 0..count {
            let base = format!("{}-pkg-{index}", nix32_hash(index as u64));
            let path = store_dir.join(&base);
            fs::write(&path, b"")?;
            writeln!(
                registration,
                "{}\nsha256:{}\n0\n\n0",
                path.display(),
                "0".repeat(64)
            )?;
            let home = fixture
                .root()
                .join(format!("home/u{}/p{}", index / 100, index % 100));
            fs::create_dir_all(&home)?;
            let result = home.join("result");
            symlink(&path, &result)?;
            symlink(&result, auto.join(nix32_hash(index as u64 ^ 0x5eed)))?;
        }
        fixture.nix_store(
            &["--register-validity", "--hash-given"],
            Some(&registration),
        )?;
        Ok(fixture)
    }

    /// `nix-store --add` of a file named and holding `name`; returns its store path.
    pub fn add_file(&self, name: &str) -> anyhow::Result<PathBuf> {
        let source = self.root().join("src").join(name);
        fs::write(&source, name)?;
        let out = self.nix_store(&["--add", path_str(&source)?], None)?;
        Ok(PathBuf::from(String::from_utf8(out)?.trim_end()))
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the store on disk past this value (for `bench gc-store`); returns its root.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root().join("store")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// `root-tracker scan` (the binary at `tracker`) aimed at this store.
    pub fn tracker_scan(&self, tracker: &Path) -> Command {
        let mut command = Command::new(tracker);
        command
            .arg("scan")
            .arg("--store-dir")
            .arg(self.store_dir())
            .arg("--state-dir")
            .arg(self.state_dir());
        command
    }

    /// A Nix tool aimed at this store.
    pub fn nix_command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env_remove("NIX_REMOTE")
            .env("NIX_STORE_DIR", self.store_dir())
            .env("NIX_STATE_DIR", self.state_dir())
            .env("NIX_LOG_DIR", self.root().join("log"))
            .env("NIX_CONF_DIR", self.root().join("conf"))
            .env("HOME", self.root().join("home"));
        command
    }

    /// `nix-store ARGS` with optional standard input; returns standard output.
    pub fn nix_store(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let mut command = self.nix_command("nix-store");
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .context("cannot run nix-store (is nix-bin installed? run `cargo xtask setup`)")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input)?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "nix-store {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(output.stdout)
    }
}

/// 32 Nix base-32 characters derived from `seed` (splitmix64), so paths spread like real hashes.
pub fn nix32_hash(seed: u64) -> String {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..32)
        .map(|_| char::from(NIX32[(next() % 32) as usize]))
        .collect()
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Where `Fixture::with_indirect_roots` put root number `index`.
impl Fixture {
    /// The user's link (`home/u<h>/p<j>/result`) of indirect root `index`.
    pub fn indirect_root_link(&self, index: usize) -> PathBuf {
        self.root()
            .join(format!("home/u{}/p{}/result", index / 100, index % 100))
    }

    /// The registered store path that indirect root `index` points to.
    pub fn indirect_root_target(&self, index: usize) -> PathBuf {
        self.store_dir()
            .join(format!("{}-pkg-{index}", nix32_hash(index as u64)))
    }
}
