//! Watches the state directory's own trees (`gcroots/`, `profiles/`) with inotify, whatever
//! the backend: they are small, change only through store tools, and every entry in them
//! matters whatever its name or target.
//!
//! Invariant: every directory of the trees is watched before it is examined (a new directory
//! is watched, then reported, so the reconciler's walk of it cannot miss an entry created in
//! between). A queue overflow is reported as lost hints.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::hint::Hint;
use crate::layout::StoreLayout;

#[derive(Debug, thiserror::Error)]
pub enum StateWatchError {
    #[error("inotify {operation} failed")]
    Inotify {
        operation: &'static str,
        #[source]
        source: Errno,
    },
}

pub struct StateWatch {
    inotify: Inotify,
    /// Watched directory → its path; the state dir itself is watched for the trees' creation.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    state_dir: PathBuf,
    trees: [PathBuf; 2],
}

/// Changes of entries inside a watched directory, and of the directory itself.
fn tree_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
}

impl StateWatch {
    /// Watches the state dir and every directory of its trees that exists now.
    pub fn new(layout: &StoreLayout) -> Result<Self, StateWatchError> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|source| {
                StateWatchError::Inotify {
                    operation: "init",
                    source,
                }
            })?;
        let mut watch = Self {
            inotify,
            dirs: HashMap::new(),
            state_dir: layout.state_dir().to_owned(),
            trees: [layout.gcroots_dir(), layout.profiles_dir()],
        };
        let state_dir = watch.state_dir.clone();
        watch.add_dir(&state_dir)?;
        for tree in watch.trees.clone() {
            watch.add_tree(&tree)?;
        }
        Ok(watch)
    }

    /// The inotify fd, for a caller that waits on several fds.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    pub fn watched_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// Appends hints for every queued event. inotify queues events synchronously in the
    /// syscall that made the change, so draining until EAGAIN is a fence: every change that
    /// completed before this call is in `out` afterwards.
    pub fn drain(&mut self, out: &mut Vec<Hint>) -> Result<(), StateWatchError> {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(source) => {
                    return Err(StateWatchError::Inotify {
                        operation: "read",
                        source,
                    });
                }
            };
            for event in events {
                self.handle(event, out)?;
            }
        }
    }

    fn handle(
        &mut self,
        event: nix::sys::inotify::InotifyEvent,
        out: &mut Vec<Hint>,
    ) -> Result<(), StateWatchError> {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.push(Hint::Lost {
                reason: "inotify queue overflow on the state trees".to_owned(),
            });
            return Ok(());
        }
        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return Ok(());
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else {
            return Ok(());
        };
        let Some(name) = event.name else {
            // IN_DELETE_SELF / IN_MOVE_SELF of a watched directory: its parent reports the name too.
            out.push(Hint::Path(dir));
            return Ok(());
        };
        let path = dir.join(&name);
        if dir == self.state_dir {
            // Only the trees' own creation, removal or renaming matters at this level.
            if self.trees.contains(&path) {
                if event
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    self.add_tree(&path)?;
                }
                out.push(Hint::Path(path));
            }
            return Ok(());
        }
        let is_dir = event.mask.contains(AddWatchFlags::IN_ISDIR);
        if is_dir
            && event
                .mask
                .intersects(AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE)
        {
            self.forget_below(&path);
        }
        if is_dir
            && event
                .mask
                .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        {
            // Watch first, then report: the walk the hint triggers sees everything after this.
            self.add_tree(&path)?;
        }
        out.push(Hint::Path(path));
        Ok(())
    }

    /// Watches `dir` and every directory below it (not following symlinks).
    fn add_tree(&mut self, dir: &Path) -> Result<(), StateWatchError> {
        if !self.add_dir(dir)? {
            return Ok(());
        }
        let Ok(entries) = fs::read_dir(dir) else {
            // Gone or unreadable: the reconciler's walk records it.
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|file_type| file_type.is_dir()) {
                self.add_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Returns whether the directory is now watched (false if it vanished or is not one).
    fn add_dir(&mut self, dir: &Path) -> Result<bool, StateWatchError> {
        match self.inotify.add_watch(dir, tree_mask()) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_owned());
                Ok(true)
            }
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(false),
            Err(source) => Err(StateWatchError::Inotify {
                operation: "add_watch",
                source,
            }),
        }
    }

    /// Drops the watches at or below a directory that moved away or was removed; if it moved
    /// within the trees, its new name is watched afresh by IN_MOVED_TO.
    fn forget_below(&mut self, dir: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, path)| path.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }
}
