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

    /// Empties the user dirs and the auto links between seeds.
    pub fn reset(&mut self) {
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
    /// directory, a busy mount point), so they are ignored.
    pub fn op(&mut self, rng: &mut Rng) {
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
                let auto = self.auto_link(rng);
                let _ = fs::remove_file(&auto);
                if rng.below(3) == 0 {
                    // Relative text, resolved against gcroots/auto.
                    let _ = symlink(relative(&self.layout.auto_dir(), &result), &auto);
                } else {
                    let _ = symlink(&result, &auto);
                }
            }
            6 => {
                let auto = self.auto_link(rng);
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
                let _ = symlink(relative(&dir, &self.target(rng)), &result);
            }
        }
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
pub fn io_uring_unlink(path: &Path) {
    let _ = crate::uring::unlinkat(libc::AT_FDCWD, path, 0);
}

/// A `renameat` through io_uring.
pub fn io_uring_rename(from: &Path, to: &Path) {
    let _ = crate::uring::renameat(libc::AT_FDCWD, from, libc::AT_FDCWD, to);
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
