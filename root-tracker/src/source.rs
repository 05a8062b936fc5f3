//! Sources of hints: the kernel-side watchers that tell the tracker what may have changed.
//!
//! Every backend implements [`Source`]. The state directory's own trees (`gcroots/`,
//! `profiles/`) are watched by the tracker itself with inotify, whatever the backend; sources
//! cover the rest of the filesystem, where user links (indirect-root targets) live.

pub mod ebpf;
pub mod fanotify;
pub mod kernel_layout;
pub mod replay;

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::hint::Hint;

/// What the tracker cares about; a source filters on it (in the kernel where it can).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// `<store>`: a symlink created anywhere whose target text starts with `<store>/` is reported.
    pub store_dir: PathBuf,
    /// Every component name of every path an indirect root goes through (`home`, `alice`,
    /// `proj`, `result` for `/home/alice/proj/result`): a create, delete, rename or link of an
    /// entry with one of these names is reported.
    pub basenames: BTreeSet<Vec<u8>>,
    /// The paths themselves (retainers of indirect roots, and the tracker's state dir): a
    /// source that marks filesystems (fanotify) marks every filesystem holding one of them.
    pub paths: Vec<PathBuf>,
}

/// Counters a source keeps, shown by `root-tracker status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceStats {
    /// Events read from the kernel.
    pub events: u64,
    /// Events the kernel could not deliver (ring buffer full, queue overflow).
    pub dropped: u64,
    /// eBPF only: operations judged unwatched that succeeded after names were added to the
    /// kernel's filter, so the names added meanwhile were looked at again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unjudged: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error(transparent)]
    Fanotify(#[from] fanotify::FanotifyError),
    #[error("{operation} failed")]
    Io {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub trait Source: Send {
    /// `"ebpf"` or `"fanotify"`.
    fn name(&self) -> &'static str;

    /// Replaces the interest; hints for operations after this call use the new one.
    fn set_interest(&mut self, interest: &Interest) -> Result<(), SourceError>;

    /// Waits up to `timeout` for hints and appends them to `out`; returns early once some
    /// have arrived, or once `wake` is readable (the tracker loop has a request to answer).
    fn poll(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<(), SourceError>;

    /// The fence (invariant 5): appends every hint for an operation that completed before this
    /// call. If it cannot be sure by `deadline`, it appends a [`Hint::Lost`] instead of guessing.
    fn fence(&mut self, deadline: Instant, out: &mut Vec<Hint>) -> Result<(), SourceError>;

    fn stats(&self) -> SourceStats;

    /// What the source found the kernel supports and chose to use, for `status`.
    fn checks(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// When (`CLOCK_MONOTONIC` ns, the kernel's own clock for the event) the earliest
    /// operation behind the hints appended since the last call completed; `None` when the
    /// source cannot tell (fanotify and inotify events carry no time), and the tracker measures
    /// from when it received the hints instead.
    fn take_earliest_completion(&mut self) -> Option<u64> {
        None
    }

    /// The mount table as the source read it when it last noticed a mount change, *before* it
    /// adjusted what it watches (see `mounts`). The reconciler compares consecutive tables to
    /// re-check only the roots beneath mount points that changed; `None` (no table, or one that
    /// could not be read) makes every mount change unsettle the index instead.
    fn mount_table(&self) -> Option<std::sync::Arc<crate::mounts::MountTable>> {
        None
    }

    /// Whether the mount table may have changed since [`Self::mount_table`] was read
    /// ([`crate::mounts::MountWatch::changed_since_table`]); the tracker asks after every
    /// re-examination. A source without a table has nothing to compare and says no: every
    /// mount change unsettles its index anyway.
    fn mounts_changed_since_table(&mut self) -> bool {
        false
    }
}

/// Which backend `root-tracker run --backend` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Ebpf,
    Fanotify,
}

/// The `poll(2)` entry for a tracker's wake-up fd in a source's wait (the kernel skips an
/// entry whose fd is negative, so `None` waits on the source alone).
pub(crate) fn wake_pollfd(wake: Option<BorrowedFd<'_>>) -> libc::pollfd {
    libc::pollfd {
        fd: wake.map_or(-1, |fd| fd.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Whether `poll(2)` found the wake-up fd of [`wake_pollfd`] readable.
pub(crate) fn woken(entry: &libc::pollfd) -> bool {
    entry.revents & libc::POLLIN != 0
}

/// Attaches the chosen backend; `Auto` tries eBPF first and falls back to fanotify. Returns
/// the source and why it was chosen (for the log and `status`).
pub fn open(
    choice: BackendChoice,
    interest: &Interest,
    ebpf_options: &ebpf::EbpfOptions,
) -> Result<(Box<dyn Source>, String), SourceError> {
    match choice {
        BackendChoice::Ebpf => Ok((
            Box::new(ebpf::EbpfSource::attach_with(interest, ebpf_options)?),
            "requested with --backend ebpf".to_owned(),
        )),
        BackendChoice::Fanotify => Ok((
            Box::new(fanotify::FanotifySource::new(interest)?),
            "requested with --backend fanotify".to_owned(),
        )),
        BackendChoice::Auto => match ebpf::EbpfSource::attach_with(interest, ebpf_options) {
            Ok(source) => Ok((
                Box::new(source),
                "auto: the eBPF programs loaded and attached".to_owned(),
            )),
            Err(error) => {
                tracing::warn!(%error, "eBPF source unavailable; falling back to fanotify");
                Ok((
                    Box::new(fanotify::FanotifySource::new(interest)?),
                    format!("auto: eBPF unavailable ({error}); fanotify instead"),
                ))
            }
        },
    }
}
