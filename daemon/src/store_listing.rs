//! The store directory's entries for a run that deletes nothing, read once and resolved
//! against the graph's names: valid paths as nodes, other entries by name. The directory can
//! be read while the database loads: names read before the graph's name index is published
//! are held (up to [`HOLD_LIMIT`] bytes), then resolved.
//!
//! Invariant: every entry but `.`, `..` and `.links` is counted once, in exactly one of the
//! three lists; a failure to read the directory is an error, never a shorter listing.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{Receiver, TryRecvError};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::graph::{NameIndex, NodeIdx};
use crate::store_path;

/// The name of Nix's hard-link directory inside the store, which the collector skips.
pub const LINKS_DIR: &[u8] = b".links";

/// Names held while the name index is not there yet: beyond this, reading waits for it. At
/// about 40 bytes a name this holds 400k names, the whole directory at 100k paths; at a
/// million, reading still ends with the load (8 MiB made it end later) and the peak memory
/// is the graph's build, when the held names are long gone.
pub const HOLD_LIMIT: usize = 16 << 20;

/// Bytes per `getdents64` call.
const READ_BUFFER: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("reading the store directory")]
    Read(#[source] io::Error),
    /// The name index never came: the load that was to publish it failed (and says why).
    #[error("the store database was not loaded, so the store directory was not resolved")]
    Abandoned,
}

/// What the store directory holds, as `collectGarbage`'s loop sorts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreListing {
    /// Valid paths, in `readdir` order.
    pub valid: Vec<NodeIdx>,
    /// Named like store paths but not valid: only a temp root keeps them.
    pub unregistered: Vec<Vec<u8>>,
    /// Not named like store paths; Nix deletes these too (`deleteFromStore(name)`).
    pub junk: Vec<Vec<u8>>,
    /// Entries examined (all but `.`, `..` and `.links`).
    pub entries: usize,
}

impl StoreListing {
    /// Sorts one entry, resolving valid paths with `find`.
    fn add(&mut self, name: &[u8], find: impl Fn(&[u8]) -> Option<NodeIdx>) {
        if name == b"." || name == b".." || name == LINKS_DIR {
            return;
        }
        self.entries += 1;
        if !store_path::is_valid_basename(name) {
            self.junk.push(name.to_vec());
        } else if let Some(node) = find(name) {
            self.valid.push(node);
        } else {
            self.unregistered.push(name.to_vec());
        }
    }

    /// A listing of the given names, as if read in this order (for tests).
    pub fn from_names(
        names: impl IntoIterator<Item = impl AsRef<[u8]>>,
        find: impl Fn(&[u8]) -> Option<NodeIdx>,
    ) -> Self {
        let mut listing = Self::default();
        for name in names {
            listing.add(name.as_ref(), &find);
        }
        listing
    }
}

/// Reads `store_dir` now, resolving names with `find` (a graph already loaded).
pub fn list(
    store_dir: &Path,
    find: impl Fn(&[u8]) -> Option<NodeIdx>,
) -> Result<StoreListing, ListError> {
    let mut reader = DirReader::open(store_dir).map_err(ListError::Read)?;
    let mut listing = StoreListing::default();
    while reader.fill().map_err(ListError::Read)? {
        for name in reader.names() {
            listing.add(name, &find);
        }
    }
    Ok(listing)
}

/// Reads `store_dir` while the graph loads: names are resolved once `index` delivers the
/// graph's name index, and held until then. [`ListError::Abandoned`] when the sender goes
/// away without sending (the load failed).
pub fn list_while_loading(
    store_dir: &Path,
    index: &Receiver<NameIndex>,
) -> Result<StoreListing, ListError> {
    let mut reader = DirReader::open(store_dir).map_err(ListError::Read)?;
    let mut listing = StoreListing::default();
    let mut held = HeldNames::default();
    let mut names: Option<NameIndex> = None;
    while reader.fill().map_err(ListError::Read)? {
        if names.is_none() {
            names = match index.try_recv() {
                Ok(ready) => Some(ready),
                Err(TryRecvError::Empty) if held.bytes.len() < HOLD_LIMIT => None,
                // Enough held: wait for the index rather than hold the whole directory.
                Err(TryRecvError::Empty) => Some(index.recv().map_err(|_| ListError::Abandoned)?),
                Err(TryRecvError::Disconnected) => return Err(ListError::Abandoned),
            };
            if let Some(ready) = &names {
                held.resolve(&mut listing, ready);
            }
        }
        match &names {
            Some(ready) => {
                for name in reader.names() {
                    listing.add(name, |name| ready.find(name));
                }
            }
            None => {
                for name in reader.names() {
                    held.push(name);
                }
            }
        }
    }
    if names.is_none() {
        let ready = index.recv().map_err(|_| ListError::Abandoned)?;
        held.resolve(&mut listing, &ready);
    }
    Ok(listing)
}

/// Names in one buffer, each as its length (2 bytes: a name lies inside a `getdents64`
/// record, whose length is a `u16`) and its bytes, in the order read.
#[derive(Default)]
struct HeldNames {
    bytes: Vec<u8>,
}

impl HeldNames {
    fn push(&mut self, name: &[u8]) {
        let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&name[..usize::from(len)]);
    }

    fn resolve(&mut self, listing: &mut StoreListing, index: &NameIndex) {
        let mut rest = self.bytes.as_slice();
        while let [low, high, tail @ ..] = rest {
            let len = usize::from(u16::from_ne_bytes([*low, *high]));
            let (name, tail) = tail.split_at(len.min(tail.len()));
            listing.add(name, |name| index.find(name));
            rest = tail;
        }
        self.bytes = Vec::new();
    }
}

/// `getdents64` on a directory with a large buffer, names parsed in place: `readdir` copies
/// each entry, `std::fs::read_dir` also allocates each name.
struct DirReader {
    fd: OwnedFd,
    buffer: Vec<u8>,
    filled: usize,
}

impl DirReader {
    fn open(dir: &Path) -> io::Result<Self> {
        let fd = open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            buffer: vec![0; READ_BUFFER],
            filled: 0,
        })
    }

    /// Reads the next batch of entries; false at the end of the directory.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            // SAFETY: the buffer is valid for writes of its length, which is what the kernel
            // is told it may write; the fd is an open directory owned by `self`.
            let read = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr(),
                    self.buffer.len(),
                )
            };
            if read < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            // 0 <= read <= buffer.len().
            self.filled = read as usize;
            return Ok(read > 0);
        }
    }

    /// The names in the batch last read: `struct linux_dirent64` records, each `d_reclen`
    /// bytes long with the NUL-terminated name at offset 19. The record is padded to 8 bytes
    /// after the NUL, so the NUL is among its last 8 bytes: the search starts there.
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        const NAME_OFFSET: usize = 19;
        let mut rest = &self.buffer[..self.filled];
        std::iter::from_fn(move || {
            let reclen = usize::from(u16::from_ne_bytes([*rest.get(16)?, *rest.get(17)?]));
            let record = rest.get(..reclen)?;
            rest = &rest[reclen..];
            let name = record.get(NAME_OFFSET..)?;
            let from = name.len().saturating_sub(8);
            let nul = |bytes: &[u8]| bytes.iter().position(|&b| b == 0);
            let end = nul(&name[from..])
                .map(|at| from + at)
                .or_else(|| nul(name))
                .unwrap_or(name.len());
            Some(&name[..end])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::graph;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    fn names() -> Vec<String> {
        (0..2000).map(|i| format!("{H}-p{i}")).collect()
    }

    /// The listing with each list in byte order (readdir order aside).
    fn sorted(listing: &StoreListing) -> StoreListing {
        let mut sorted = listing.clone();
        sorted.valid.sort();
        sorted.unregistered.sort();
        sorted.junk.sort();
        sorted
    }

    /// A directory holding every name of `names()` (half of them valid in the graph), an
    /// unregistered store path, junk and `.links`, read both ways.
    #[test]
    fn both_readers_sort_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let all = names();
        for name in &all {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::write(dir.path().join("junk name"), b"").unwrap();
        std::fs::create_dir(dir.path().join(".links")).unwrap();
        let valid: Vec<&str> = all.iter().step_by(2).map(String::as_str).collect();
        let g = graph(&valid, &[]);

        let now = list(dir.path(), |name| g.find(name)).unwrap();
        let sorted_now = sorted(&now);
        assert_eq!(sorted_now.valid, g.nodes().collect::<Vec<_>>());
        assert_eq!(sorted_now.unregistered.len(), all.len() - valid.len());
        assert_eq!(sorted_now.junk, vec![b"junk name".to_vec()]);
        assert_eq!(sorted_now.entries, all.len() + 1);

        // The same, resolving as the graph loads: here the index is there from the start.
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        sender.send(name_index(&valid)).unwrap();
        let loading = list_while_loading(dir.path(), &receiver).unwrap();
        assert_eq!(loading, now, "the same lists, in the same readdir order");

        // Names held before the index came resolve as they would have then.
        let mut held = HeldNames::default();
        let mut direct = StoreListing::default();
        for name in all
            .iter()
            .map(String::as_bytes)
            .chain([&b".links"[..], b"junk"])
        {
            held.push(name);
            direct.add(name, |name| g.find(name));
        }
        let mut resolved = StoreListing::default();
        held.resolve(&mut resolved, &name_index(&valid));
        assert_eq!(resolved, direct);
        assert!(held.bytes.is_empty());
    }

    fn name_index(names: &[&str]) -> NameIndex {
        let mut builder = crate::graph::GraphBuilder::new();
        for name in names {
            builder.add_path(name.as_bytes(), 0).unwrap();
        }
        builder.sort_paths().unwrap();
        builder.name_index().unwrap()
    }

    #[test]
    fn an_abandoned_load_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, receiver) = std::sync::mpsc::sync_channel::<NameIndex>(1);
        drop(sender);
        assert!(matches!(
            list_while_loading(dir.path(), &receiver),
            Err(ListError::Abandoned)
        ));
    }
}
