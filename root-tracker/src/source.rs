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

/// What a kernel source's wait saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Nothing became ready before the timeout.
    pub timed_out: bool,
    /// The mount table changed (the change is consumed: the next wait reports the next one).
    pub mounts_changed: bool,
    /// The tracker loop's wake-up fd is readable: a request waits.
    pub woken: bool,
}

/// Waits up to `timeout` for `events` to be readable, the mount table to change or `wake`
/// (the tracker loop's eventfd) to be readable. An interrupted wait returns all-false, as if
/// something may be there: callers read their source again and re-wait.
pub(crate) fn wait_for(
    events: BorrowedFd<'_>,
    mounts: &crate::mounts::MountWatch,
    wake: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> std::io::Result<Readiness> {
    let readable = |fd: BorrowedFd<'_>| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        readable(events),
        mounts.pollfd(),
        // The kernel skips an entry whose fd is negative.
        wake.map_or(
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            },
            readable,
        ),
    ];
    // Round up so a sub-millisecond remainder still waits instead of spinning.
    let millis = timeout.as_micros().div_ceil(1000);
    let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed array whose fds are borrowed for the
    // call, and its length is passed with it.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        return if error.kind() == std::io::ErrorKind::Interrupted {
            Ok(Readiness::default())
        } else {
            Err(error)
        };
    }
    Ok(Readiness {
        timed_out: ready == 0,
        mounts_changed: crate::mounts::MountWatch::reported(&fds[1]),
        woken: fds[2].revents & libc::POLLIN != 0,
    })
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
