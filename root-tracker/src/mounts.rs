//! This process's mount table. [`MountWatch`] tells when it changed (sources turn that into
//! `Hint::MountsChanged`) and keeps the [`MountTable`] the source read when it noticed, so that
//! the reconciler re-checks only the roots beneath the mount points that changed (DESIGN.md: "a
//! mount change re-checks the indexed roots beneath it") instead of rescanning everything.
//!
//! Invariant (the order that makes the comparison safe): a source reads the table *before* it
//! adjusts what it watches to the mounts (fanotify marks the filesystems the table's mounts put
//! under watched paths), and the reconciler re-examines the changed points *after* that. A
//! mount made after the table was read moves the kernel's event counter again, so the next poll
//! reports it and the next comparison shows it; a mount in the table is covered by the source
//! before anything beneath it is read again. Reading the table anywhere else (e.g. at the
//! reconciler, after the source adjusted) would break this: a mount between the source's
//! adjustment and that read would be compared away without ever being watched.
//!
//! Comparing two tables shows only the net change, and a mount made and removed between two
//! reads of the table leaves none, yet a re-examination in between read through it (seen:
//! a link hidden by a tmpfs that was gone again at the next read stayed "stale"). So every
//! re-examination asks [`MountWatch::changed_since_table`] when it is done: if the table moved
//! since the source last read it, what was read may belong to a state no table shows, and is
//! read again once the source has caught up (the reconciler keeps it pending until the next
//! mount change is applied; the source's own watch is bound to report that change).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Arc;

/// Where the kernel lists this process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount as far as the paths beneath it are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    /// Where it is mounted, as this process sees it.
    point: Vec<u8>,
    /// Which directory of its filesystem it shows there (a bind mount shows a subdirectory).
    root: Vec<u8>,
    /// `major:minor` of its filesystem.
    device: Vec<u8>,
}

/// The mounts of this process's mount namespace, by mount ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountTable {
    mounts: HashMap<u64, Mount>,
    /// Whether the IDs are the kernel's unique 64-bit mount IDs (`listmount`/`statmount`,
    /// Linux 6.8), never reused. mountinfo's IDs are reused, and so are anonymous device
    /// numbers: a tmpfs unmounted and another mounted at the same place between two reads
    /// can look exactly like the first, so two mountinfo tables cannot be compared safely.
    unique_ids: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountTableError {
    #[error("cannot read {MOUNTINFO}")]
    Read(#[source] io::Error),
    #[error("{MOUNTINFO} line {line} is not understood: {text:?}")]
    Parse { line: usize, text: String },
    #[error("{call} failed")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("statmount of mount {id} answered what this code does not understand")]
    Statmount { id: u64 },
}

impl MountTable {
    /// Reads this process's mount table: by unique mount IDs where the kernel has
    /// `listmount`/`statmount`, else from mountinfo.
    pub fn read() -> Result<Self, MountTableError> {
        if let Some(table) = unique::read()? {
            return Ok(table);
        }
        let text = std::fs::read(MOUNTINFO).map_err(MountTableError::Read)?;
        Self::parse(&text)
    }

    /// Whether this table and `newer` can be compared: only tables of unique IDs can
    /// ([`Self::unique_ids`]'s reason).
    pub fn comparable_with(&self, newer: &Self) -> bool {
        self.unique_ids && newer.unique_ids
    }

    /// Whether the table was read by unique mount IDs (Linux 6.8 and later).
    pub fn has_unique_ids(&self) -> bool {
        self.unique_ids
    }

    /// Parses mountinfo text (proc(5)): `ID PARENT MAJOR:MINOR ROOT POINT OPTIONS ...`, with
    /// space, tab, newline and backslash in paths written as `\ooo`.
    pub fn parse(text: &[u8]) -> Result<Self, MountTableError> {
        let mut mounts = HashMap::new();
        for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = || MountTableError::Parse {
                line: index + 1,
                text: String::from_utf8_lossy(line).into_owned(),
            };
            let mut fields = line.split(|&byte| byte == b' ');
            let id = fields
                .next()
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|id| id.parse::<u64>().ok())
                .ok_or_else(bad)?;
            let _parent = fields.next().ok_or_else(bad)?;
            let device = fields.next().ok_or_else(bad)?.to_vec();
            let root = unescape(fields.next().ok_or_else(bad)?);
            let point = unescape(fields.next().ok_or_else(bad)?);
            if point.first() != Some(&b'/') {
                return Err(bad());
            }
            mounts.insert(
                id,
                Mount {
                    point,
                    root,
                    device,
                },
            );
        }
        Ok(Self {
            mounts,
            unique_ids: false,
        })
    }

    /// The same mounts, taken as keyed by unique mount IDs (for tests that build a table).
    #[cfg(test)]
    pub(crate) fn with_unique_ids(mut self) -> Self {
        self.unique_ids = true;
        self
    }

    /// `major:minor` of the filesystem of mount `id` (its superblock's device, which `stat`
    /// does not always report: btrfs subvolumes have their own).
    pub fn device(&self, id: u64) -> Option<&[u8]> {
        self.mounts.get(&id).map(|mount| mount.device.as_slice())
    }

    /// The mount points at which `newer` differs from `self`: mounts added or removed, and
    /// both the old and the new point of a mount whose point, root or device changed (a mount
    /// ID reused by a new mount).
    pub fn changed_points(&self, newer: &Self) -> BTreeSet<Vec<u8>> {
        let mut points = BTreeSet::new();
        for (id, mount) in &self.mounts {
            match newer.mounts.get(id) {
                Some(now) if now == mount => {}
                Some(now) => {
                    points.insert(mount.point.clone());
                    points.insert(now.point.clone());
                }
                None => {
                    points.insert(mount.point.clone());
                }
            }
        }
        for (id, mount) in &newer.mounts {
            if !self.mounts.contains_key(id) {
                points.insert(mount.point.clone());
            }
        }
        points
    }
}

/// Undoes mountinfo's `\ooo` escapes (the kernel's `mangle`: space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut index = 0;
    while index < field.len() {
        let octal = field
            .get(index + 1..index + 4)
            .filter(|digits| {
                field[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            })
            .map(|digits| {
                digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'))
            })
            .and_then(|value| u8::try_from(value).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(field[index]);
                index += 1;
            }
        }
    }
    out
}

/// The mount table by unique mount IDs: `listmount(2)` for the IDs of every mount in this
/// process's namespace, `statmount(2)` for each one's point, root and device (Linux 6.8).
mod unique {
    use std::collections::HashMap;
    use std::io;

    use super::{Mount, MountTable, MountTableError};

    /// `struct mnt_id_req`, version 0 (`MNT_ID_REQ_SIZE_VER0`).
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
    }

    /// Syscall numbers, the same on every architecture (new syscalls share one table since
    /// 5.1); the libc crate in use does not have them for x86_64 yet.
    const SYS_STATMOUNT: libc::c_long = 457;
    const SYS_LISTMOUNT: libc::c_long = 458;
    /// `LSMT_ROOT`: list from the root of the caller's mount namespace.
    const LSMT_ROOT: u64 = u64::MAX;
    const STATMOUNT_SB_BASIC: u64 = 0x1;
    const STATMOUNT_MNT_BASIC: u64 = 0x2;
    const STATMOUNT_MNT_ROOT: u64 = 0x8;
    const STATMOUNT_MNT_POINT: u64 = 0x10;
    /// Offsets in `struct statmount` (include/uapi/linux/mount.h), stable by design: the
    /// struct only grows into its spare space.
    const SB_DEV_MAJOR: usize = 16;
    const SB_DEV_MINOR: usize = 20;
    const MASK: usize = 8;
    const MNT_ROOT: usize = 104;
    const MNT_POINT: usize = 108;
    const STRINGS: usize = 512;

    fn request(mnt_id: u64, param: u64) -> MntIdReq {
        MntIdReq {
            size: size_of::<MntIdReq>() as u32,
            spare: 0,
            mnt_id,
            param,
        }
    }

    /// `None` when the kernel has no `listmount` (before 6.8) or refuses it.
    pub(super) fn read() -> Result<Option<MountTable>, MountTableError> {
        let Some(ids) = list()? else {
            return Ok(None);
        };
        let mut mounts = HashMap::with_capacity(ids.len());
        let mut buffer = vec![0u8; 4096];
        for id in ids {
            if let Some(mount) = stat(id, &mut buffer)? {
                mounts.insert(id, mount);
            }
        }
        Ok(Some(MountTable {
            mounts,
            unique_ids: true,
        }))
    }

    fn list() -> Result<Option<Vec<u64>>, MountTableError> {
        let mut ids = Vec::new();
        let mut chunk = vec![0u64; 1024];
        loop {
            let req = request(LSMT_ROOT, ids.last().copied().unwrap_or(0));
            // SAFETY: `req` is a valid mnt_id_req of the size it states, and `chunk` a
            // writable array of `chunk.len()` u64s; both outlive the call.
            let listed = unsafe {
                libc::syscall(
                    SYS_LISTMOUNT,
                    &raw const req,
                    chunk.as_mut_ptr(),
                    chunk.len(),
                    0u32,
                )
            };
            if listed < 0 {
                let error = io::Error::last_os_error();
                // Unknown to the kernel, or refused by a seccomp filter or an LSM.
                return match error.raw_os_error() {
                    Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EINVAL)
                        if ids.is_empty() =>
                    {
                        Ok(None)
                    }
                    _ => Err(MountTableError::Syscall {
                        call: "listmount",
                        source: error,
                    }),
                };
            }
            let listed = usize::try_from(listed).unwrap_or(0).min(chunk.len());
            ids.extend_from_slice(&chunk[..listed]);
            if listed < chunk.len() {
                return Ok(Some(ids));
            }
        }
    }

    /// One mount's point, root and device; `None` if it is gone already.
    fn stat(id: u64, buffer: &mut Vec<u8>) -> Result<Option<Mount>, MountTableError> {
        let req = request(
            id,
            STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT,
        );
        loop {
            // SAFETY: `req` is a valid mnt_id_req of the size it states, and `buffer` a
            // writable area of `buffer.len()` bytes; both outlive the call.
            let done = unsafe {
                libc::syscall(
                    SYS_STATMOUNT,
                    &raw const req,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    0u32,
                )
            };
            if done == 0 {
                break;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EOVERFLOW) if buffer.len() < 1 << 20 => {
                    let grown = buffer.len() * 4;
                    buffer.resize(grown, 0);
                }
                Some(libc::ENOENT) => return Ok(None),
                _ => {
                    return Err(MountTableError::Syscall {
                        call: "statmount",
                        source: error,
                    });
                }
            }
        }
        let bad = || MountTableError::Statmount { id };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(buffer.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(buffer.get(at..at + 8)?.try_into().ok()?))
        };
        let wanted = STATMOUNT_SB_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT;
        if u64_at(MASK).ok_or_else(bad)? & wanted != wanted {
            return Err(bad());
        }
        let string = |offset_at: usize| -> Option<Vec<u8>> {
            let start = STRINGS + usize::try_from(u32_at(offset_at)?).ok()?;
            let rest = buffer.get(start..)?;
            let end = rest.iter().position(|&byte| byte == 0)?;
            Some(rest[..end].to_vec())
        };
        let device = format!(
            "{}:{}",
            u32_at(SB_DEV_MAJOR).ok_or_else(bad)?,
            u32_at(SB_DEV_MINOR).ok_or_else(bad)?
        );
        Ok(Some(Mount {
            point: string(MNT_POINT).ok_or_else(bad)?,
            root: string(MNT_ROOT).ok_or_else(bad)?,
            device: device.into_bytes(),
        }))
    }
}

/// An open `/proc/self/mountinfo`, for `poll(2)`: the kernel reports `POLLPRI|POLLERR` once
/// per change of this process's mount table (and `poll` itself consumes the report), whether
/// a mount syscall, an automount expiring or propagation from another namespace made it.
pub struct MountWatch {
    file: std::fs::File,
    /// The table as of the last [`Self::reread`] (`None`: it could not be read).
    table: Option<Arc<MountTable>>,
    /// A second open of the table, whose poll state only [`Self::reread`] and
    /// [`Self::changed_since_table`] consume (each open file keeps its own).
    since_table: std::fs::File,
    /// Set once `since_table` reported a change after the last reread; sticky until the next.
    moved: bool,
}

impl MountWatch {
    /// Opens the table for polling and reads it: call before the source starts watching.
    pub fn open() -> io::Result<Self> {
        let mut watch = Self {
            file: std::fs::File::open(MOUNTINFO)?,
            table: None,
            since_table: std::fs::File::open(MOUNTINFO)?,
            moved: false,
        };
        watch.reread();
        Ok(watch)
    }

    /// Reads the table again; call when a change was reported, before the source adjusts to
    /// it. A table that cannot be read is forgotten, and the reconciler then treats a mount
    /// change as it must without one: the index is unsettled until a rescan.
    pub fn reread(&mut self) {
        // Consumed before the read: a change after this point is either in the table read
        // below or reported by `changed_since_table` (or both, which costs a re-read only).
        let _ = poll_now(&self.since_table);
        self.moved = false;
        self.table = MountTable::read()
            .inspect_err(|error| {
                tracing::warn!(%error, "mount changes will unsettle the index");
            })
            .ok()
            .map(Arc::new);
    }

    /// The table as the source last read it.
    pub fn table(&self) -> Option<Arc<MountTable>> {
        self.table.clone()
    }

    /// What to give `poll(2)` to wait for a change along with other descriptors.
    pub fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.file),
            events: libc::POLLPRI,
            revents: 0,
        }
    }

    /// Whether a `pollfd` from [`Self::pollfd`] came back reporting a change.
    pub fn reported(pollfd: &libc::pollfd) -> bool {
        pollfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    /// Whether the table changed since the last poll, without waiting.
    pub fn changed_now(&self) -> io::Result<bool> {
        poll_now(&self.file)
    }

    /// Whether the mount table may have changed since [`Self::table`] was read (a failure to
    /// tell counts as a change). Sticky until the next [`Self::reread`].
    pub fn changed_since_table(&mut self) -> bool {
        if !self.moved {
            self.moved = poll_now(&self.since_table).unwrap_or(true);
        }
        self.moved
    }
}

/// Whether the kernel reports a change of the mount table on `file` (an open mountinfo) since
/// the last poll of that same open file, without waiting.
fn poll_now(file: &std::fs::File) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(file),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&raw mut pollfd, 1, 0) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        // Interrupted: report a change; a needless re-read costs little.
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(true)
        } else {
            Err(error)
        };
    }
    Ok(MountWatch::reported(&pollfd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watch_has_read_the_table() {
        // Whether it reports a change is up to other processes' mounts (tests run in parallel).
        let watch = MountWatch::open().unwrap();
        assert!(watch.changed_now().is_ok());
        assert!(watch.table().is_some());
    }

    #[test]
    fn a_mount_after_the_table_was_read_is_noticed_until_the_next_read() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let mut watch = MountWatch::open().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Whatever other processes mount meanwhile, a mount of our own is a change.
        nix::mount::mount(
            Some("rt-unit"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let unmount = || nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
        let noticed = watch.changed_since_table();
        let still = watch.changed_since_table();
        unmount().unwrap();
        assert!(noticed, "a mount after the read must be noticed");
        assert!(still, "and stay noticed until the next read");
        watch.reread();
        let table = watch.table().unwrap();
        assert!(
            !table
                .mounts
                .values()
                .any(|mount| mount.point == dir.path().as_os_str().as_encoded_bytes()),
            "unmounted before the read"
        );
    }

    const TABLE: &[u8] = b"22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        40 22 0:35 / /tmp/rt-a/home/other rw shared:20 - tmpfs tmpfs rw\n\
        41 22 254:1 /srv/data /mnt/with\\040space rw - ext4 /dev/vda rw\n";

    #[test]
    fn parses_points_with_escapes() {
        let table = MountTable::parse(TABLE).unwrap();
        assert_eq!(table.mounts.len(), 3);
        assert_eq!(table.mounts[&41].point, b"/mnt/with space");
        assert_eq!(table.mounts[&41].root, b"/srv/data");
        assert_eq!(unescape(b"a\\134b\\011c\\012"), b"a\\b\tc\n");
        assert_eq!(unescape(b"trailing\\04"), b"trailing\\04");
        assert!(MountTable::parse(b"x 1 0:1 / / rw\n").is_err());
        assert!(MountTable::parse(b"1 1 0:1 /\n").is_err());
    }

    #[test]
    fn reports_added_removed_and_reused_mounts() {
        let before = MountTable::parse(TABLE).unwrap();
        assert!(before.changed_points(&before).is_empty());
        // 40 unmounted, 41 reused for a mount elsewhere, 42 stacked on /.
        let after = MountTable::parse(
            b"22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
              41 22 0:36 / /tmp/rt-a/home/live/d1 rw - tmpfs tmpfs rw\n\
              42 22 0:37 / / rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        let changed: Vec<Vec<u8>> = before.changed_points(&after).into_iter().collect();
        assert_eq!(
            changed,
            vec![
                b"/".to_vec(),
                b"/mnt/with space".to_vec(),
                b"/tmp/rt-a/home/live/d1".to_vec(),
                b"/tmp/rt-a/home/other".to_vec(),
            ]
        );
    }

    #[test]
    fn reads_this_process_table() {
        let table = MountTable::read().unwrap();
        assert!(table.mounts.values().any(|mount| mount.point == b"/"));
    }

    #[test]
    fn unique_ids_list_what_mountinfo_lists() {
        let Some(unique) = unique::read().unwrap() else {
            eprintln!("skipped: no listmount on this kernel");
            return;
        };
        let text = std::fs::read(MOUNTINFO).unwrap();
        let mountinfo = MountTable::parse(&text).unwrap();
        let described = |table: &MountTable| {
            let mut mounts: Vec<Mount> = table.mounts.values().cloned().collect();
            mounts.sort_by(|a, b| {
                (&a.point, &a.root, &a.device).cmp(&(&b.point, &b.root, &b.device))
            });
            mounts
        };
        // Read one after the other: another process may mount in between, so compare only
        // when both reads agree on the number (retried a few times).
        for _ in 0..5 {
            let again = unique::read().unwrap().unwrap();
            if described(&again) == described(&mountinfo) {
                assert!(again.unique_ids && !mountinfo.unique_ids);
                assert!(again.comparable_with(&unique) && !mountinfo.comparable_with(&unique));
                return;
            }
        }
        panic!(
            "listmount/statmount and mountinfo disagree:\n{:?}\n{:?}",
            described(&unique),
            described(&mountinfo)
        );
    }
}
