//! The big garbage collector lock, `<state>/gc.lock`, taken exclusively as Nix's
//! `collectGarbage` takes it (`openGCLock`, then a blocking write lock).
//!
//! Invariant: while we hold it, a Nix client that wants to add a temp root cannot take its
//! shared lock, so it must tell us through the GC socket instead; nothing new escapes us.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use crate::layout::StoreLayout;

#[derive(Debug, thiserror::Error)]
pub enum GcLockError {
    #[error("cannot open the global GC lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock the global GC lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held until dropped.
#[derive(Debug)]
pub struct GcLock {
    _lock: Flock<File>,
}

/// Opens `<state>/gc.lock` (created 0600, as Nix does) and waits for the exclusive lock.
pub fn acquire(layout: &StoreLayout) -> Result<GcLock, GcLockError> {
    let path = layout.state_dir().join("gc.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| GcLockError::Open {
            path: path.clone(),
            source,
        })?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(GcLock { _lock: lock }),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, errno)) => {
            return Err(GcLockError::Lock {
                path,
                source: errno.into(),
            });
        }
    };
    tracing::warn!("waiting for the big garbage collector lock...");
    match Flock::lock(file, FlockArg::LockExclusive) {
        Ok(lock) => Ok(GcLock { _lock: lock }),
        Err((_, errno)) => Err(GcLockError::Lock {
            path,
            source: errno.into(),
        }),
    }
}
