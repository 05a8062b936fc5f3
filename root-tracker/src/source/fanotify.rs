//! fanotify source: a `FAN_MARK_FILESYSTEM` mark with `FAN_REPORT_DFID_NAME` on every filesystem
//! that holds a directory of a watched path, and `/proc/self/mountinfo` for mount changes.
//! Directory handles are resolved with `open_by_handle_at`; names are filtered here, in user space.
//!
//! Invariant: a create, delete, rename or link of a watched name on a marked filesystem becomes a
//! hint (its path, or its bare name when its directory is gone), and a full queue becomes
//! [`Hint::Lost`]. fanotify queues an event inside the syscall that made the change, so reading
//! the queue until it is empty is a fence.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::{CString, OsStr},
    io,
    mem::{offset_of, size_of},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open, readlinkat},
    sys::{
        stat::{Mode, SFlag, fstat, lstat, stat},
        statfs::fstatfs,
    },
};

use super::{Interest, Source, SourceError, SourceStats};
use crate::hint::Hint;
use crate::mounts::MountWatch;

/// Events every mark asks for, besides the rename events chosen by [`RenameEvents`].
/// `FAN_ONDIR`: directories on a watched path are created, removed and renamed too.
const BASE_MASK: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_ONDIR;

/// Big enough for many events per `read`; one event is at most about 300 bytes
/// (metadata, two handles of at most `MAX_HANDLE_SZ`, two names of at most `NAME_MAX`).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// `MAX_HANDLE_SZ` from `linux/exportfs.h`: the kernel never reports a longer handle.
const MAX_HANDLE_BYTES: usize = 128;

/// Why the fanotify source could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// fanotify with directory handles and names needs Linux 5.9 and `CAP_SYS_ADMIN`.
    #[error("fanotify_init(FAN_REPORT_DFID_NAME) failed (needs Linux 5.9 and CAP_SYS_ADMIN)")]
    Init {
        #[source]
        source: io::Error,
    },
    /// A filesystem holding a watched path cannot be marked (e.g. it cannot encode file
    /// handles): changes there would go unseen, so the caller must not trust its index there.
    #[error("cannot mark the filesystem of {path:?} with fanotify")]
    Mark {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory on a watched path could not be examined, so we cannot tell which
    /// filesystem holds it.
    #[error("cannot stat {path:?} to choose the filesystems to mark")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {} to watch for mount changes", crate::mounts::MOUNTINFO)]
    Mountinfo {
        #[source]
        source: io::Error,
    },
    #[error("reading fanotify events failed")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("waiting for fanotify events failed")]
    Wait {
        #[source]
        source: io::Error,
    },
    /// The kernel speaks a different event format than the one parsed here.
    #[error("fanotify event metadata version {found}, expected {expected}")]
    Version { found: u8, expected: u8 },
    #[error("malformed fanotify event: {reason}")]
    Malformed { reason: &'static str },
}

/// How renames are reported: one `FAN_RENAME` event with both ends (Linux 5.17), or separate
/// `FAN_MOVED_FROM` and `FAN_MOVED_TO` events on older kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameEvents {
    Rename,
    MovedFromTo,
}

impl RenameEvents {
    fn mask(self) -> u64 {
        match self {
            RenameEvents::Rename => BASE_MASK | libc::FAN_RENAME,
            RenameEvents::MovedFromTo => BASE_MASK | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO,
        }
    }
}

/// The filesystem id fanotify reports in its info records (`statfs`'s `f_fsid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Fsid([i32; 2]);

impl Fsid {
    fn of(fd: BorrowedFd<'_>) -> nix::Result<Self> {
        let fsid = fstatfs(fd)?.filesystem_id();
        // SAFETY: `fsid_t` is `#[repr(C)] struct { __val: [c_int; 2] }`, so it has the size and
        // layout of `[i32; 2]` (transmute checks the size), and every bit pattern is valid.
        Ok(Fsid(unsafe {
            std::mem::transmute::<libc::fsid_t, [i32; 2]>(fsid)
        }))
    }
}

/// A filesystem we hold a mark on.
#[derive(Debug)]
struct MarkedFs {
    fsid: Fsid,
    /// A directory on it, through which handles are resolved. We keep its path rather than an
    /// open fd so that the tracker never makes `umount` of a user's filesystem fail with EBUSY.
    via: PathBuf,
}

/// The fanotify backend of [`Source`].
pub struct FanotifySource {
    group: OwnedFd,
    /// Polled for `POLLPRI`, which the kernel raises when the mount table changes.
    mountinfo: MountWatch,
    interest: Interest,
    /// `<store>/`: symlinks created with a target starting with this are reported.
    store_prefix: Vec<u8>,
    renames: RenameEvents,
    /// Marked filesystems by `st_dev`.
    marked: BTreeMap<u64, MarkedFs>,
    buffer: Vec<u8>,
    stats: SourceStats,
}

impl std::fmt::Debug for FanotifySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanotifySource")
            .field("renames", &self.renames)
            .field("marked", &self.marked)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FanotifySource {
    /// Creates the fanotify group and marks every filesystem holding a directory of one of
    /// `interest.paths`. Needs `CAP_SYS_ADMIN`.
    pub fn new(interest: &Interest) -> Result<Self, SourceError> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain syscall wrapper with integer arguments.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(FanotifyError::Init {
                source: io::Error::last_os_error(),
            }
            .into());
        }
        // SAFETY: `fanotify_init` succeeded, so `fd` is a new descriptor that nothing else owns.
        let group = unsafe { OwnedFd::from_raw_fd(fd) };
        let mountinfo = MountWatch::open().map_err(|source| FanotifyError::Mountinfo { source })?;
        let mut this = Self {
            group,
            mountinfo,
            interest: Interest::default(),
            store_prefix: Vec::new(),
            renames: RenameEvents::Rename,
            marked: BTreeMap::new(),
            buffer: vec![0; READ_BUFFER_BYTES],
            stats: SourceStats::default(),
        };
        this.set_interest(interest)?;
        Ok(this)
    }

    /// How this kernel reports renames (probed at the first mark).
    pub fn rename_events(&self) -> RenameEvents {
        self.renames
    }

    /// The directories through which the marked filesystems are reached, one per filesystem.
    pub fn marked_filesystems(&self) -> impl Iterator<Item = &Path> {
        self.marked.values().map(|fs| fs.via.as_path())
    }

    /// Marks the filesystems the interest needs and unmarks those it no longer needs.
    /// Marks every filesystem it can before returning the first failure.
    ///
    /// `remark` marks every wanted filesystem again, also those already marked under the same
    /// `st_dev`: after a mount change the number may name another filesystem (the kernel reuses
    /// anonymous device numbers: a tmpfs unmounted and another mounted in its place often get
    /// the same one, and the old mark died with the old superblock). Marking is idempotent for
    /// a superblock that already has our mark, so a mount change costs one syscall per
    /// filesystem. (Seen: live_random fanotify seed 241 missed a link made in a tmpfs mounted
    /// over the place of another.)
    fn update_marks(&mut self, remark: bool) -> Result<(), FanotifyError> {
        let wanted = wanted_filesystems(&self.interest)?;
        let unneeded: Vec<u64> = self
            .marked
            .keys()
            .filter(|dev| !wanted.contains_key(dev))
            .copied()
            .collect();
        for dev in unneeded {
            if let Some(fs) = self.marked.remove(&dev) {
                self.unmark(dev, &fs);
            }
        }
        let mut first_error = None;
        for (dev, dir) in wanted {
            if !remark && self.marked.contains_key(&dev) {
                continue;
            }
            match mark(&self.group, &mut self.renames, &dir) {
                Ok(fsid) => {
                    self.marked.insert(dev, MarkedFs { fsid, via: dir });
                }
                Err(error) => {
                    // Whatever was marked under this number before may be gone.
                    self.marked.remove(&dev);
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Best effort: a mark left behind only costs events we filter out, and the kernel drops
    /// it with the filesystem. We only unmark through a path still on that filesystem.
    fn unmark(&self, dev: u64, fs: &MarkedFs) {
        let still_there = stat(&fs.via).is_ok_and(|st| st.st_dev == dev);
        if !still_there {
            return;
        }
        let removed = fanotify_mark(
            &self.group,
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
            self.renames.mask(),
            &fs.via,
        );
        if let Err(error) = removed {
            tracing::debug!(via = ?fs.via, %error, "fanotify: could not remove a filesystem mark");
        }
    }

    /// Waits up to `timeout` for events, a mount change (handled here) or `wake`; returns
    /// whether `wake` was readable.
    fn wait(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<bool, FanotifyError> {
        let seen = super::wait_for(self.group.as_fd(), &self.mountinfo, wake, timeout)
            .map_err(|source| FanotifyError::Wait { source })?;
        // The kernel answers POLLERR|POLLPRI once per mount-table change, and `poll` itself
        // consumes it (`mounts_poll` records the event it reported), so nothing is read.
        if seen.mounts_changed {
            // The table first, then the marks (the order `mounts` relies on): a mount made
            // after this read is reported by the next poll.
            self.mountinfo.reread();
            out.push(Hint::MountsChanged);
            // A mount may have put a watched path on another filesystem.
            self.update_marks(true)?;
        }
        Ok(seen.woken)
    }

    /// Reads events until the queue is empty (`true`) or `deadline` passes (`false`).
    fn drain(&mut self, deadline: Instant, out: &mut Vec<Hint>) -> Result<bool, FanotifyError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.drain_into(&mut buffer, deadline, out);
        self.buffer = buffer;
        result
    }

    fn drain_into(
        &mut self,
        buffer: &mut [u8],
        deadline: Instant,
        out: &mut Vec<Hint>,
    ) -> Result<bool, FanotifyError> {
        // Directory handles and filesystems are resolved at most once per drain; nothing is
        // kept open across drains.
        let mut resolver = Resolver::new(&self.marked);
        loop {
            let read = match nix::unistd::read(&self.group, buffer) {
                Ok(read) => read,
                Err(Errno::EAGAIN) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(FanotifyError::Read {
                        source: errno.into(),
                    });
                }
            };
            if read == 0 {
                return Ok(true);
            }
            let mut rest = buffer.get(..read).unwrap_or_default();
            while !rest.is_empty() {
                let (event, tail) = Event::parse(rest)?;
                rest = tail;
                self.stats.events += 1;
                if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                    self.stats.dropped += 1;
                    out.push(Hint::Lost {
                        reason: "fanotify queue overflow".to_owned(),
                    });
                    continue;
                }
                self.hints_for(&event, &mut resolver, out);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    fn hints_for(&self, event: &Event<'_>, resolver: &mut Resolver<'_>, out: &mut Vec<Hint>) {
        let is_dir = event.mask & libc::FAN_ONDIR != 0;
        // Merged events (same directory and name) may carry several bits; an end that may be
        // new is checked like a creation, which also covers the removal checks.
        let appears = event.mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0;
        for record in &event.records {
            let new_end = match record.kind {
                libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => false,
                libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => true,
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME => appears,
                _ => continue,
            };
            if let Some(hint) = self.hint_for_entry(record, new_end && !is_dir, resolver) {
                out.push(hint);
            }
        }
    }

    /// The hint for one directory entry, or `None` when it cannot matter: its name is not
    /// watched and it is not a new symlink into the store.
    fn hint_for_entry(
        &self,
        record: &DirEntryRecord<'_>,
        may_be_store_link: bool,
        resolver: &mut Resolver<'_>,
    ) -> Option<Hint> {
        let name = record.name;
        if name.is_empty() || name == b"." {
            return None;
        }
        let watched = self.interest.basenames.contains(name);
        let check_target = may_be_store_link && !self.store_prefix.is_empty();
        if !watched && !check_target {
            return None;
        }
        let name_os = OsStr::from_bytes(name);
        match resolver.resolve(record) {
            Resolution::Dir(dir) => {
                let path = dir.path.join(name_os);
                if watched {
                    return Some(Hint::Path(path));
                }
                match readlinkat(&dir.fd, name_os) {
                    Ok(target) if target.as_bytes().starts_with(&self.store_prefix) => {
                        Some(Hint::Path(path))
                    }
                    Ok(_) => None,
                    // Not a symlink.
                    Err(Errno::EINVAL) => None,
                    // Already gone, or unreadable: events are hints, report it anyway.
                    Err(_) => Some(Hint::Path(path)),
                }
            }
            // The directory is deleted, and the entry with it: a symlink there can no longer
            // be a root, so only a watched name is worth a hint.
            Resolution::Gone => watched.then(|| Hint::Basename(name_os.to_owned())),
            // We could not look: fail towards reporting.
            Resolution::Unknown if watched => Some(Hint::Basename(name_os.to_owned())),
            // A new entry we could not look at may be a symlink into the store; a bare name
            // cannot stand for it (no indexed root goes through an unwatched name), so only a
            // rescan can tell. Said once per drain.
            Resolution::Unknown => resolver.first_unchecked_entry().then(|| Hint::Lost {
                reason: "fanotify: a new entry's directory could not be resolved to check it"
                    .to_owned(),
            }),
            // A filesystem we no longer need (a mark we could not remove): no root is there.
            Resolution::NotMarked => None,
        }
    }
}

impl Source for FanotifySource {
    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn set_interest(&mut self, interest: &Interest) -> Result<(), SourceError> {
        self.interest = interest.clone();
        self.store_prefix = store_prefix(&interest.store_dir);
        self.update_marks(false)?;
        Ok(())
    }

    fn poll(
        &mut self,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
        out: &mut Vec<Hint>,
    ) -> Result<(), SourceError> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let before = out.len();
        loop {
            let remaining =
                deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            let woken = self.wait(remaining, wake, out)?;
            // Bounded so that a storm of filtered-out events cannot hold us past the timeout.
            let drain_deadline =
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            self.drain(drain_deadline, out)?;
            if out.len() > before || remaining.is_zero() || woken {
                return Ok(());
            }
        }
    }

    fn fence(&mut self, deadline: Instant, out: &mut Vec<Hint>) -> Result<(), SourceError> {
        // The kernel queued every event of a change that completed before this call, and the
        // mount table's counter moved inside the mount syscall: reading both now sees them.
        self.wait(Duration::ZERO, None, out)?;
        if !self.drain(deadline, out)? {
            out.push(Hint::Lost {
                reason: "fanotify fence deadline passed before the queue was drained".to_owned(),
            });
        }
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn mount_table(&self) -> Option<std::sync::Arc<crate::mounts::MountTable>> {
        self.mountinfo.table()
    }

    fn mounts_changed_since_table(&mut self) -> bool {
        self.mountinfo.changed_since_table()
    }

    fn checks(&self) -> serde_json::Value {
        serde_json::json!({
            "rename_events": match self.rename_events() {
                RenameEvents::Rename => "FAN_RENAME",
                RenameEvents::MovedFromTo => "FAN_MOVED_FROM|FAN_MOVED_TO",
            },
            "marked_filesystems": self
                .marked_filesystems()
                .map(|path| path.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        })
    }
}

/// `<store>/`, the prefix of a symlink target in the store (empty: no store filter).
fn store_prefix(store_dir: &Path) -> Vec<u8> {
    let mut prefix = store_dir.as_os_str().as_bytes().to_vec();
    if prefix.is_empty() {
        return prefix;
    }
    while prefix.last() == Some(&b'/') {
        prefix.pop();
    }
    prefix.push(b'/');
    prefix
}

/// Every filesystem holding a directory of a watched path, by `st_dev`, with one directory on
/// it. For `/home/alice/proj/result` these are the filesystems of `/`, `/home`, `/home/alice`
/// and `/home/alice/proj` (an entry lives in its parent's filesystem), and of the path itself
/// if it is a directory; ancestors that do not exist yet are skipped — creating them is an
/// event on an existing ancestor's filesystem, and a mount is seen through mountinfo.
fn wanted_filesystems(interest: &Interest) -> Result<BTreeMap<u64, PathBuf>, FanotifyError> {
    let mut seen: HashMap<&Path, ()> = HashMap::new();
    let mut wanted = BTreeMap::new();
    for path in &interest.paths {
        let ancestors: Vec<&Path> = path.ancestors().collect();
        for (depth, dir) in ancestors.iter().rev().enumerate() {
            if dir.as_os_str().is_empty() || seen.insert(dir, ()).is_some() {
                continue;
            }
            // The path itself counts only as a real directory: if it is a symlink into the
            // store, the store's filesystem is not ours to watch.
            let is_path_itself = depth + 1 == ancestors.len();
            let status = if is_path_itself {
                lstat(*dir)
            } else {
                stat(*dir)
            };
            match status {
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
                {
                    wanted.entry(st.st_dev).or_insert_with(|| dir.to_path_buf());
                }
                Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(errno) => {
                    return Err(FanotifyError::Stat {
                        path: dir.to_path_buf(),
                        source: errno.into(),
                    });
                }
            }
        }
    }
    Ok(wanted)
}

/// Marks the filesystem holding `dir`, probing once whether the kernel accepts `FAN_RENAME`.
fn mark(group: &OwnedFd, renames: &mut RenameEvents, dir: &Path) -> Result<Fsid, FanotifyError> {
    let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
    let mut result = fanotify_mark(group, flags, renames.mask(), dir);
    if *renames == RenameEvents::Rename && result == Err(Errno::EINVAL) {
        // Before Linux 5.17 FAN_RENAME is unknown: fall back to one event per end.
        let fallback = fanotify_mark(group, flags, RenameEvents::MovedFromTo.mask(), dir);
        if fallback.is_ok() {
            *renames = RenameEvents::MovedFromTo;
        }
        result = fallback;
    }
    let to_error = |errno: Errno| FanotifyError::Mark {
        path: dir.to_path_buf(),
        source: errno.into(),
    };
    result.map_err(to_error)?;
    let fd = open(dir, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(to_error)?;
    Fsid::of(fd.as_fd()).map_err(to_error)
}

fn fanotify_mark(group: &OwnedFd, flags: libc::c_uint, mask: u64, path: &Path) -> nix::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `group` is an open fanotify group and `path` a NUL-terminated string that lives
    // through the call.
    let result = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    Errno::result(result).map(drop)
}

/// One event read from the group.
struct Event<'a> {
    mask: u64,
    records: Vec<DirEntryRecord<'a>>,
}

/// A `fanotify_event_info_fid` record: a directory handle on a filesystem, and a name in it.
struct DirEntryRecord<'a> {
    kind: u8,
    fsid: Fsid,
    handle_type: i32,
    handle: &'a [u8],
    name: &'a [u8],
}

fn ne_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}
fn ne_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}
fn ne_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}
fn ne_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Event<'a> {
    /// Parses the event at the start of `bytes`; returns it and the bytes after it. Every
    /// field is read by offset with a length check (the buffer has no alignment guarantee).
    fn parse(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), FanotifyError> {
        use libc::fanotify_event_metadata as Meta;
        let malformed = |reason| FanotifyError::Malformed { reason };
        let event_len = ne_u32(bytes, offset_of!(Meta, event_len))
            .ok_or_else(|| malformed("truncated metadata"))? as usize;
        let version = *bytes
            .get(offset_of!(Meta, vers))
            .ok_or_else(|| malformed("truncated metadata"))?;
        if version != libc::FANOTIFY_METADATA_VERSION {
            return Err(FanotifyError::Version {
                found: version,
                expected: libc::FANOTIFY_METADATA_VERSION,
            });
        }
        let metadata_len = usize::from(
            ne_u16(bytes, offset_of!(Meta, metadata_len))
                .ok_or_else(|| malformed("truncated metadata"))?,
        );
        if metadata_len < size_of::<Meta>() || event_len < metadata_len || event_len > bytes.len() {
            return Err(malformed("event length out of bounds"));
        }
        let mask = ne_u64(bytes, offset_of!(Meta, mask)).ok_or_else(|| malformed("no mask"))?;
        let fd = ne_i32(bytes, offset_of!(Meta, fd)).ok_or_else(|| malformed("no fd"))?;
        if fd >= 0 {
            // Groups reporting handles get no fds (FAN_NOFD); close one should it ever come.
            // SAFETY: the kernel installed this descriptor for us with the event; nothing
            // else owns it, and it is closed exactly once, here.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let (event, rest) = bytes.split_at(event_len);
        let mut records = Vec::new();
        let mut info = event.get(metadata_len..).unwrap_or_default();
        while !info.is_empty() {
            let (record, tail) = parse_info_record(info)?;
            if let Some(record) = record {
                records.push(record);
            }
            info = tail;
        }
        Ok((Event { mask, records }, rest))
    }
}

/// Parses one info record (`fanotify_event_info_header` first); records other than directory
/// handles with names (none are expected) are skipped.
fn parse_info_record(info: &[u8]) -> Result<(Option<DirEntryRecord<'_>>, &[u8]), FanotifyError> {
    use libc::{fanotify_event_info_fid as Fid, fanotify_event_info_header as Header};
    let malformed = |reason| FanotifyError::Malformed { reason };
    let kind = *info
        .get(offset_of!(Header, info_type))
        .ok_or_else(|| malformed("truncated info header"))?;
    let len = usize::from(
        ne_u16(info, offset_of!(Header, len)).ok_or_else(|| malformed("truncated info header"))?,
    );
    if len < size_of::<Header>() || len > info.len() {
        return Err(malformed("info record length out of bounds"));
    }
    let (record, rest) = info.split_at(len);
    let has_name = matches!(
        kind,
        libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
    );
    if !has_name {
        return Ok((None, rest));
    }
    let fsid_at = offset_of!(Fid, fsid);
    let fsid = Fsid([
        ne_i32(record, fsid_at).ok_or_else(|| malformed("truncated fsid"))?,
        ne_i32(record, fsid_at + 4).ok_or_else(|| malformed("truncated fsid"))?,
    ]);
    let handle_at = offset_of!(Fid, handle);
    let handle_bytes = ne_u32(
        record,
        handle_at + offset_of!(libc::file_handle, handle_bytes),
    )
    .ok_or_else(|| malformed("truncated file handle"))? as usize;
    let handle_type = ne_i32(
        record,
        handle_at + offset_of!(libc::file_handle, handle_type),
    )
    .ok_or_else(|| malformed("truncated file handle"))?;
    let handle_start = handle_at + offset_of!(libc::file_handle, f_handle);
    if handle_bytes > MAX_HANDLE_BYTES {
        return Err(malformed("file handle longer than MAX_HANDLE_SZ"));
    }
    let handle = record
        .get(handle_start..handle_start + handle_bytes)
        .ok_or_else(|| malformed("truncated file handle"))?;
    // The name is NUL-terminated and the record padded with NULs.
    let name_and_padding = record
        .get(handle_start + handle_bytes..)
        .unwrap_or_default();
    let name_len = name_and_padding
        .iter()
        .position(|&byte| byte == 0)
        .ok_or_else(|| malformed("name without NUL"))?;
    let name = name_and_padding.get(..name_len).unwrap_or_default();
    Ok((
        Some(DirEntryRecord {
            kind,
            fsid,
            handle_type,
            handle,
            name,
        }),
        rest,
    ))
}

/// A directory resolved from its handle.
struct ResolvedDir {
    fd: OwnedFd,
    path: PathBuf,
}

enum Resolution<'r> {
    Dir(&'r ResolvedDir),
    /// The directory no longer exists.
    Gone,
    /// It could not be resolved for another reason (no mount to decode through, descriptors
    /// exhausted, a path outside our root).
    Unknown,
    /// The handle is from a filesystem we do not (any longer) mark.
    NotMarked,
}

/// What a directory handle resolved to, cached for one drain.
enum Cached {
    Dir(ResolvedDir),
    Gone,
    Unknown,
}

/// Resolves directory handles during one drain, caching filesystems and directories.
struct Resolver<'m> {
    marked: &'m BTreeMap<u64, MarkedFs>,
    /// A directory fd per marked filesystem, to decode handles through; `None` if the
    /// directory we know no longer leads there.
    mounts: HashMap<Fsid, Option<OwnedFd>>,
    dirs: HashMap<(Fsid, i32, Vec<u8>), Cached>,
    /// Whether an entry that could not be checked was already reported as lost.
    unchecked_reported: bool,
}

impl<'m> Resolver<'m> {
    fn new(marked: &'m BTreeMap<u64, MarkedFs>) -> Self {
        Self {
            marked,
            mounts: HashMap::new(),
            dirs: HashMap::new(),
            unchecked_reported: false,
        }
    }

    /// `true` the first time it is called in a drain.
    fn first_unchecked_entry(&mut self) -> bool {
        !std::mem::replace(&mut self.unchecked_reported, true)
    }

    fn resolve(&mut self, record: &DirEntryRecord<'_>) -> Resolution<'_> {
        let key = (record.fsid, record.handle_type, record.handle.to_vec());
        if !self.dirs.contains_key(&key) {
            let cached = match self.mount(record.fsid) {
                None => return Resolution::NotMarked,
                Some(Some(mount)) => decode(mount.as_fd(), record.handle_type, record.handle),
                Some(None) => Cached::Unknown,
            };
            self.dirs.insert(key.clone(), cached);
        }
        match self.dirs.get(&key) {
            Some(Cached::Dir(dir)) => Resolution::Dir(dir),
            Some(Cached::Gone) => Resolution::Gone,
            Some(Cached::Unknown) | None => Resolution::Unknown,
        }
    }

    /// `None`: not a marked filesystem; `Some(None)`: marked but unreachable now.
    fn mount(&mut self, fsid: Fsid) -> Option<Option<&OwnedFd>> {
        if !self.mounts.contains_key(&fsid) {
            let fs = self.marked.values().find(|fs| fs.fsid == fsid)?;
            // `open_by_handle_at` refuses O_PATH descriptors as its mount fd.
            let fd = open(
                &fs.via,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .filter(|fd| Fsid::of(fd.as_fd()).is_ok_and(|found| found == fsid));
            self.mounts.insert(fsid, fd);
        }
        self.mounts.get(&fsid).map(Option::as_ref)
    }
}

/// Opens the directory a handle names and finds its path.
fn decode(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8]) -> Cached {
    // A `struct file_handle` in a u32 buffer, so that it is aligned as the kernel declares it:
    // `handle_bytes`, `handle_type`, then the opaque handle.
    let mut words = vec![
        handle.len() as u32,
        u32::from_ne_bytes(handle_type.to_ne_bytes()),
    ];
    words.resize(2 + handle.len().div_ceil(4), 0);
    for (word, chunk) in words.iter_mut().skip(2).zip(handle.chunks(4)) {
        let mut padded = [0u8; 4];
        padded
            .iter_mut()
            .zip(chunk)
            .for_each(|(byte, from)| *byte = *from);
        *word = u32::from_ne_bytes(padded);
    }
    // SAFETY: `words` holds a complete `file_handle` whose `handle_bytes` matches the bytes
    // that follow it, suitably aligned and alive through the call; `mount` is an open fd.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            words.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return match Errno::last() {
            Errno::ESTALE | Errno::ENOENT => Cached::Gone,
            errno => {
                tracing::debug!(%errno, "fanotify: cannot open a directory by its handle");
                Cached::Unknown
            }
        };
    }
    // SAFETY: `open_by_handle_at` succeeded, so `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A deleted directory may still decode while its inode lives; its entries are gone too.
    if fstat(&fd).is_ok_and(|st| st.st_nlink == 0) {
        return Cached::Gone;
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(path) if path.is_absolute() => Cached::Dir(ResolvedDir { fd, path }),
        // Not reachable from our root (e.g. under a mount we cannot see).
        Ok(_) | Err(_) => Cached::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an event as the kernel lays it out: metadata, then one DFID_NAME record.
    fn event_bytes(mask: u64, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        record.push(libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
        record.push(0);
        record.extend_from_slice(&[0, 0]); // length, patched below
        record.extend_from_slice(&7i32.to_ne_bytes());
        record.extend_from_slice(&9i32.to_ne_bytes());
        record.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        record.extend_from_slice(&1i32.to_ne_bytes());
        record.extend_from_slice(handle);
        record.extend_from_slice(name);
        record.push(0);
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let record_len = (record.len() as u16).to_ne_bytes();
        record[2..4].copy_from_slice(&record_len);
        let metadata_len = size_of::<libc::fanotify_event_metadata>();
        let mut event = Vec::new();
        event.extend_from_slice(&((metadata_len + record.len()) as u32).to_ne_bytes());
        event.push(libc::FANOTIFY_METADATA_VERSION);
        event.push(0);
        event.extend_from_slice(&(metadata_len as u16).to_ne_bytes());
        event.extend_from_slice(&mask.to_ne_bytes());
        event.extend_from_slice(&(-1i32).to_ne_bytes());
        event.extend_from_slice(&42i32.to_ne_bytes());
        event.extend_from_slice(&record);
        event
    }

    #[test]
    fn parses_an_event_with_a_directory_handle_and_name() {
        let mut bytes = event_bytes(libc::FAN_CREATE, &[1, 2, 3, 4, 5, 6, 7, 8], b"res\nult\xff");
        bytes.extend(event_bytes(libc::FAN_DELETE, &[9; 12], b"x"));
        let (first, rest) = Event::parse(&bytes).unwrap();
        assert_eq!(first.mask, libc::FAN_CREATE);
        assert_eq!(first.records.len(), 1);
        let record = &first.records[0];
        assert_eq!(record.fsid, Fsid([7, 9]));
        assert_eq!(record.handle_type, 1);
        assert_eq!(record.handle, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(record.name, b"res\nult\xff");
        let (second, rest) = Event::parse(rest).unwrap();
        assert_eq!(second.records[0].name, b"x");
        assert!(rest.is_empty());
    }

    #[test]
    fn rejects_truncated_events() {
        let bytes = event_bytes(libc::FAN_CREATE, &[1; 8], b"name");
        for cut in [3, 20, bytes.len() - 1] {
            assert!(Event::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn store_prefix_ends_in_one_slash() {
        assert_eq!(store_prefix(Path::new("/nix/store")), b"/nix/store/");
        assert_eq!(store_prefix(Path::new("/nix/store/")), b"/nix/store/");
        assert_eq!(store_prefix(Path::new("")), b"");
    }
}
