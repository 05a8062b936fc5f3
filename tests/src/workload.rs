//! The seeded random workload of the live-index tests: link, directory, mount and io_uring
//! operations on user links and auto links of a store, the kinds the live index must follow.
//! `live_random` runs it on a hermetic store against each backend; `vm-check`'s `random` step
//! runs it on Linux 6.1 in fentry mode. After each batch, a fenced query must equal
//! [`Workload::truth`].

#![expect(
    clippy::unwrap_used,
    reason = "a test harness panics on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use root_tracker::layout::StoreLayout;
use root_tracker::scan::{ScanOptions, scan};

use crate::{Rng, TmpfsMount, index_part};

/// Directories per home, `d0` … `d3`.
const DIRS: usize = 4;
/// Names of auto links, `a0` … `a7`.
const AUTO_LINKS: usize = 8;

/// Operations on a store's user and auto links. Owns only the tmpfs it may mount over a user
/// directory; the store and the homes' filesystems are the caller's, and must outlive it.
pub struct Workload {
    /// A tmpfs mounted over one of the user directories, if any.
    overlay: Option<TmpfsMount>,
    layout: StoreLayout,
    /// Registered store paths, and one that is not.
    targets: Vec<PathBuf>,
    /// Where user links go: two directories, best on two filesystems (moves between them
    /// are then copies and unlinks, as `mv` does them).
    homes: [PathBuf; 2],
    serial: u64,
    /// What the current seed did so far, one line per operation with its outcome, for the
    /// failure message: a seed's failure depends on the tracker's timing and may not replay.
    journal: Vec<String>,
}

impl Workload {
    /// `targets`: store paths to link to (registered ones, and one that is not); `homes`: two
    /// existing directories for user links. The auto dir is created if missing.
    pub fn new(layout: StoreLayout, targets: Vec<PathBuf>, homes: [PathBuf; 2]) -> Self {
        fs::create_dir_all(layout.auto_dir()).unwrap();
        Self {
            overlay: None,
            layout,
            targets,
            homes,
            serial: 0,
            journal: Vec::new(),
        }
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.layout
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

    fn auto_link(&self, rng: &mut Rng) -> PathBuf {
        self.layout
            .auto_dir()
            .join(format!("a{}", rng.below(AUTO_LINKS)))
    }

    /// The operations of the current seed so far, one line each with its outcome.
    pub fn journal(&self) -> String {
        self.journal.join("\n")
    }

    /// Empties the user dirs and the auto links between seeds.
    pub fn reset(&mut self) {
        self.journal.clear();
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

    /// One operation drawn from `rng`. Failures are part of the workload (a missing
    /// directory, a busy mount point), so they are ignored, and journaled.
    pub fn op(&mut self, rng: &mut Rng) {
        let dir = self.dir(rng);
        let other = self.dir(rng);
        let result = dir.join("result");
        let line = match rng.below(17) {
            0 => format!("mkdir -p {}: {:?}", dir.display(), fs::create_dir_all(&dir)),
            1 => {
                let _ = fs::create_dir_all(&dir);
                let target = self.target(rng);
                let done = symlink(&target, &result);
                format!("ln -s {} {}: {done:?}", target.display(), result.display())
            }
            2 => {
                // ln -sfn: a temporary link renamed over the old one.
                let _ = fs::create_dir_all(&dir);
                let temp = self.temp_name(&dir);
                let target = self.target(rng);
                let done = symlink(&target, &temp).and_then(|()| fs::rename(&temp, &result));
                format!(
                    "ln -sfn {} {}: {done:?}",
                    target.display(),
                    result.display()
                )
            }
            3 => format!("rm {}: {:?}", result.display(), fs::remove_file(&result)),
            4 | 5 => {
                let auto = self.auto_link(rng);
                let removed = fs::remove_file(&auto);
                let text = if rng.below(3) == 0 {
                    // Relative text, resolved against gcroots/auto.
                    relative(&self.layout.auto_dir(), &result)
                } else {
                    result.clone()
                };
                let done = symlink(&text, &auto);
                format!(
                    "rm {auto} ({removed:?}); ln -s {} {auto}: {done:?}",
                    text.display(),
                    auto = auto.display()
                )
            }
            6 => {
                let auto = self.auto_link(rng);
                if rng.below(2) == 0 {
                    format!("rm {}: {:?}", auto.display(), fs::remove_file(&auto))
                } else {
                    let temp = self.temp_name(&self.layout.auto_dir());
                    let done = symlink(&result, &temp).and_then(|()| fs::rename(&temp, &auto));
                    format!("ln -sfn {} {}: {done:?}", result.display(), auto.display())
                }
            }
            7 => format!("rmdir {}: {:?}", dir.display(), fs::remove_dir(&dir)),
            8 => format!(
                "mv {} {}: {:?}",
                dir.display(),
                other.display(),
                fs::rename(&dir, &other)
            ),
            9 => format!("rm -r {}: {:?}", dir.display(), fs::remove_dir_all(&dir)),
            10 => {
                // A hard link to a symlink (linkat without AT_SYMLINK_FOLLOW).
                let _ = fs::create_dir_all(&other);
                let to = other.join("result");
                let done = nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    &result,
                    nix::fcntl::AT_FDCWD,
                    &to,
                    nix::fcntl::AtFlags::empty(),
                );
                format!("ln {} {}: {done:?}", result.display(), to.display())
            }
            11 => {
                // mv across filesystems: copy the link, then unlink the original (as mv does).
                let to = other.join("result");
                let done = fs::read_link(&result).and_then(|target| {
                    let _ = fs::create_dir_all(&other);
                    let _ = fs::remove_file(&to);
                    symlink(target, &to)?;
                    fs::remove_file(&result)
                });
                format!("copy+rm {} {}: {done:?}", result.display(), to.display())
            }
            12 => match self.overlay.take() {
                Some(mut overlay) => {
                    overlay.unmount();
                    "umount the tmpfs".to_owned()
                }
                None if dir.is_dir() => {
                    self.overlay = Some(TmpfsMount::new(&dir));
                    format!("mount a tmpfs on {}", dir.display())
                }
                None => format!("no tmpfs: {} is not a directory", dir.display()),
            },
            13 => format!(
                "io_uring unlinkat {}: res {}",
                result.display(),
                io_uring_unlink(&result)
            ),
            14 => {
                let to = other.join("result");
                let done = io_uring_rename(&result, &to);
                format!(
                    "io_uring renameat {} {}: res {done}",
                    result.display(),
                    to.display()
                )
            }
            15 => {
                // A two-hop chain: not a root for Nix.
                let _ = fs::create_dir_all(&dir);
                let second = dir.join("result2");
                let _ = fs::remove_file(&second);
                let target = self.target(rng);
                let first = symlink(&target, &second);
                let _ = fs::remove_file(&result);
                let done = symlink(&second, &result);
                format!(
                    "chain {} -> {} -> {}: {first:?}, {done:?}",
                    result.display(),
                    second.display(),
                    target.display()
                )
            }
            _ => {
                // Relative link text into the store: never a root.
                let _ = fs::create_dir_all(&dir);
                let removed = fs::remove_file(&result);
                let text = relative(&dir, &self.target(rng));
                let done = symlink(&text, &result);
                format!(
                    "rm {result} ({removed:?}); ln -s {} {result}: {done:?}",
                    text.display(),
                    result = result.display()
                )
            }
        };
        self.journal.push(line);
    }

    /// Runs seed `seed` from an emptied tree: batches of 1 to 10 operations, `check(done)`
    /// after each (`done`: operations so far), until at least `operations` ran. Both users
    /// draw the same numbers, so a seed replays the same way on the host and in the VM.
    pub fn run_seed<E>(
        &mut self,
        seed: u64,
        operations: usize,
        mut check: impl FnMut(&Self, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        self.reset();
        let mut rng = Rng::new(seed);
        let mut done = 0;
        while done < operations {
            let batch = 1 + rng.below(10);
            for _ in 0..batch {
                self.op(&mut rng);
            }
            done += batch;
            check(self, done)?;
        }
        Ok(())
    }

    /// What a scan of the store finds now, in the form a query's index part is compared in.
    pub fn truth(&self) -> serde_json::Value {
        let options = ScanOptions {
            runtime: false,
            temp: false,
            ..ScanOptions::default()
        };
        index_part(&scan(&self.layout, &options).unwrap().to_json())
    }
}

/// Link text leading from directory `from` to `to`, both absolute and free of `..` and
/// symlinks: `..` up to their common ancestor, then down.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut text = PathBuf::new();
    for _ in common..from.len() {
        text.push("..");
    }
    for component in &to[common..] {
        text.push(component);
    }
    text
}

/// An `unlinkat` through io_uring, which no syscall tracepoint sees.
/// Returns the completion's result: 0 or a negated errno.
pub fn io_uring_unlink(path: &Path) -> i32 {
    crate::uring::unlinkat(libc::AT_FDCWD, path, 0)
}

/// A `renameat` through io_uring; returns the completion's result.
pub fn io_uring_rename(from: &Path, to: &Path) -> i32 {
    crate::uring::renameat(libc::AT_FDCWD, from, libc::AT_FDCWD, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_text_climbs_to_the_common_ancestor() {
        assert_eq!(
            relative(
                Path::new("/t/state/gcroots/auto"),
                Path::new("/t/home/live/d0/result")
            ),
            Path::new("../../../home/live/d0/result")
        );
        assert_eq!(
            relative(Path::new("/t/home/live/d0"), Path::new("/t/store/abc-x")),
            Path::new("../../../store/abc-x")
        );
    }
}
