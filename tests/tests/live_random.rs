//! The live index against the kernel, for each backend: a seeded random workload of link,
//! directory, mount and io_uring operations runs against a hermetic store while
//! `root-tracker run` watches; after every batch a fenced query must equal a fresh scan.
//!
//! Replay one seed: `RT_SEED=<seed> cargo test -p tests --test live_random -- <backend>`.
//! More: `RT_LIVE_SEEDS=<n> RT_LIVE_OPS=<n>` (`cargo xtask soak` sets them).

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};
use tests::{HermeticStore, Rng, TmpfsMount, TrackerProcess, index_part, require_root};

const DIRS: usize = 4;
const AUTO_LINKS: usize = 8;

/// Fields drop in order: the overlay, then the second filesystem, then the store's temp dir.
struct Workload {
    /// A tmpfs mounted over one of the user directories, if any.
    overlay: Option<TmpfsMount>,
    _second_fs: TmpfsMount,
    store: HermeticStore,
    layout: StoreLayout,
    /// Registered store paths, and one that is not.
    targets: Vec<PathBuf>,
    /// Two filesystems for user links: the store's own, and a tmpfs.
    homes: [PathBuf; 2],
    serial: u64,
}

impl Workload {
    fn new() -> Self {
        require_root();
        let store = HermeticStore::new();
        let mut targets = store.register_empty_paths("live", 5);
        targets.push(store.unregistered_path("unregistered"));
        let homes = [store.path("home/live"), store.path("home/other")];
        fs::create_dir_all(&homes[0]).unwrap();
        let second_fs = TmpfsMount::new(&homes[1]);
        let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
        fs::create_dir_all(layout.auto_dir()).unwrap();
        Self {
            store,
            layout,
            targets,
            homes,
            _second_fs: second_fs,
            overlay: None,
            serial: 0,
        }
    }

    fn dir(&self, rng: &mut Rng) -> PathBuf {
        self.homes[rng.below(2)].join(format!("d{}", rng.below(DIRS)))
    }

    fn target(&self, rng: &mut Rng) -> PathBuf {
        self.targets[rng.below(self.targets.len())].clone()
    }

    fn temp_name(&mut self, dir: &Path) -> PathBuf {
        self.serial += 1;
        dir.join(format!(".tmp-{}", self.serial))
    }

    /// Empties the user dirs and the auto links between seeds.
    fn reset(&mut self) {
        if let Some(mut overlay) = self.overlay.take() {
            overlay.unmount();
        }
        for home in &self.homes {
            for entry in fs::read_dir(home).unwrap().flatten() {
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
        }
        for entry in fs::read_dir(self.layout.auto_dir()).unwrap().flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }

    fn op(&mut self, rng: &mut Rng) {
        let dir = self.dir(rng);
        let other = self.dir(rng);
        let result = dir.join("result");
        match rng.below(17) {
            0 => drop(fs::create_dir_all(&dir)),
            1 => {
                let _ = fs::create_dir_all(&dir);
                let _ = symlink(self.target(rng), &result);
            }
            2 => {
                // ln -sfn: a temporary link renamed over the old one.
                let _ = fs::create_dir_all(&dir);
                let temp = self.temp_name(&dir);
                if symlink(self.target(rng), &temp).is_ok() {
                    let _ = fs::rename(&temp, &result);
                }
            }
            3 => drop(fs::remove_file(&result)),
            4 | 5 => {
                let auto = self
                    .layout
                    .auto_dir()
                    .join(format!("a{}", rng.below(AUTO_LINKS)));
                let _ = fs::remove_file(&auto);
                if rng.below(3) == 0 {
                    // Relative text, resolved against gcroots/auto.
                    let relative = Path::new("../../..")
                        .join(result.strip_prefix(self.store.path("")).unwrap());
                    let _ = symlink(relative, &auto);
                } else {
                    let _ = symlink(&result, &auto);
                }
            }
            6 => {
                let auto = self
                    .layout
                    .auto_dir()
                    .join(format!("a{}", rng.below(AUTO_LINKS)));
                if rng.below(2) == 0 {
                    let _ = fs::remove_file(&auto);
                } else {
                    let temp = self.temp_name(&self.layout.auto_dir());
                    if symlink(&result, &temp).is_ok() {
                        let _ = fs::rename(&temp, &auto);
                    }
                }
            }
            7 => drop(fs::remove_dir(&dir)),
            8 => drop(fs::rename(&dir, &other)),
            9 => drop(fs::remove_dir_all(&dir)),
            10 => {
                // A hard link to a symlink (linkat without AT_SYMLINK_FOLLOW).
                let _ = fs::create_dir_all(&other);
                let _ = nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    &result,
                    nix::fcntl::AT_FDCWD,
                    &other.join("result"),
                    nix::fcntl::AtFlags::empty(),
                );
            }
            11 => {
                // mv across filesystems: copy the link, then unlink the original (as mv does).
                if let Ok(target) = fs::read_link(&result) {
                    let _ = fs::create_dir_all(&other);
                    let _ = fs::remove_file(other.join("result"));
                    if symlink(target, other.join("result")).is_ok() {
                        let _ = fs::remove_file(&result);
                    }
                }
            }
            12 => match self.overlay.take() {
                Some(mut overlay) => overlay.unmount(),
                None if dir.is_dir() => self.overlay = Some(TmpfsMount::new(&dir)),
                None => {}
            },
            13 => io_uring_unlink(&result),
            14 => io_uring_rename(&result, &other.join("result")),
            15 => {
                // A two-hop chain: not a root for Nix.
                let _ = fs::create_dir_all(&dir);
                let second = dir.join("result2");
                let _ = fs::remove_file(&second);
                let _ = symlink(self.target(rng), &second);
                let _ = fs::remove_file(&result);
                let _ = symlink(&second, &result);
            }
            _ => {
                // Relative link text into the store: never a root.
                let _ = fs::create_dir_all(&dir);
                let _ = fs::remove_file(&result);
                let base = self.target(rng);
                let relative = Path::new("../../../store").join(base.file_name().unwrap());
                let _ = symlink(relative, &result);
            }
        }
    }

    fn truth(&self) -> serde_json::Value {
        let options = ScanOptions {
            runtime: false,
            temp: false,
            ..ScanOptions::default()
        };
        index_part(&scan(&self.layout, &options).unwrap().to_json())
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn io_uring_submit(entry: io_uring::squeue::Entry) {
    let mut ring = io_uring::IoUring::new(4).unwrap();
    // SAFETY: the entry's pointers (paths) outlive the submission, which completes below.
    unsafe { ring.submission().push(&entry).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let _ = ring.completion().next();
}

fn io_uring_unlink(path: &Path) {
    let path = c_path(path);
    let fd = io_uring::types::Fd(libc::AT_FDCWD);
    io_uring_submit(io_uring::opcode::UnlinkAt::new(fd, path.as_ptr()).build());
}

fn io_uring_rename(from: &Path, to: &Path) {
    let (from, to) = (c_path(from), c_path(to));
    let fd = io_uring::types::Fd(libc::AT_FDCWD);
    io_uring_submit(io_uring::opcode::RenameAt::new(fd, from.as_ptr(), fd, to.as_ptr()).build());
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn live_random(backend: &str) {
    let mut workload = Workload::new();
    let tracker = TrackerProcess::start(&workload.store, backend, &[]);
    let seeds: Vec<u64> = match std::env::var("RT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..env_number("RT_LIVE_SEEDS", 200)).collect(),
    };
    let operations = env_number("RT_LIVE_OPS", 200) as usize;
    for seed in seeds {
        workload.reset();
        let mut rng = Rng::new(seed);
        let mut done = 0;
        while done < operations {
            let batch = 1 + rng.below(10);
            for _ in 0..batch {
                workload.op(&mut rng);
            }
            done += batch;
            let answer = index_part(&tracker.query());
            let truth = workload.truth();
            if answer != truth {
                let message = format!(
                    "backend {backend}, seed {seed}: the fenced query differs from a scan after {done} operations.\n\
                     replay: RT_SEED={seed} cargo test -p tests --test live_random -- {backend}\n\
                     query: {answer:#}\nscan: {truth:#}\ntracker log:\n{}",
                    tracker.log()
                );
                // Straight to the process's stderr, which the test harness does not capture:
                // in a long soak the other backend may run for many minutes more.
                let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
                panic!("{message}");
            }
        }
    }
    let status = tracker.status();
    assert_eq!(status["reconciler"]["drift"], 0, "{status:#}");
}

#[test]
fn ebpf() {
    live_random("ebpf");
}

#[test]
fn fanotify() {
    live_random("fanotify");
}
