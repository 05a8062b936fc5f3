//! Temp roots: Nix's `findTempRoots`. Each client process keeps `temproots/<pid>` locked while
//! it lives and appends NUL-terminated store paths to it; a file whose lock we can take
//! belongs to a dead process and roots nothing.
//!
//! Invariant: anything we cannot read or parse stops the collection, as it stops Nix's: a temp
//! root we skipped could be a path a build is about to use.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::layout::{StoreLayout, canon_path};
use crate::store_path::{self, HashPart};

#[derive(Debug, thiserror::Error)]
pub enum TempRootsError {
    #[error("cannot read the temp roots directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("temp roots file {path} is not named after a process id")]
    BadName { path: PathBuf },
    #[error("cannot {operation} temp roots file {path}")]
    File {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("temp roots file {path} holds {entry:?}, which is not a store path")]
    BadEntry { path: PathBuf, entry: String },
}

/// The temp roots of live clients: Nix compares them by hash part only, so that a path's
/// `.lock`, `.chroot` and `.check` siblings count too (`Shared::tempRoots` in `collectGarbage`).
#[derive(Debug, Default)]
pub struct TempRoots {
    hashes: HashSet<HashPart>,
    /// Basenames, in the order found (for counts and `--json`).
    basenames: Vec<Vec<u8>>,
    /// Files of dead owners (removed when `remove_stale` was asked).
    pub stale_files: usize,
}

impl TempRoots {
    pub fn contains_hash(&self, hash: &HashPart) -> bool {
        self.hashes.contains(hash)
    }

    /// The distinct hash parts.
    pub fn hash_parts(&self) -> impl Iterator<Item = &HashPart> {
        self.hashes.iter()
    }

    /// Adds a root received while collecting (the GC socket).
    pub fn insert(&mut self, basename: &[u8]) {
        if let Some(hash) = store_path::hash_part(basename) {
            self.hashes.insert(hash);
            self.basenames.push(basename.to_vec());
        }
    }

    pub fn basenames(&self) -> &[Vec<u8>] {
        &self.basenames
    }

    pub fn len(&self) -> usize {
        self.basenames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.basenames.is_empty()
    }
}

/// Reads every `temproots/<pid>` file. With `remove_stale`, files of dead owners are removed
/// the way Nix removes them (unlink, then write `d` so a client that opened the file before
/// the unlink and then got the lock sees a non-empty file and starts over, `addTempRoot`).
pub fn find_temp_roots(
    layout: &StoreLayout,
    remove_stale: bool,
) -> Result<TempRoots, TempRootsError> {
    let dir = layout.temproots_dir();
    let mut roots = TempRoots::default();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        // `nix-store --init` creates it; a store without it has no clients.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(roots),
        Err(source) => return Err(TempRootsError::ReadDir { path: dir, source }),
    };
    for entry in entries {
        let entry = entry.map_err(|source| TempRootsError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        // Hidden files keep the directory alive for some package managers; Nix skips them.
        if name.as_bytes().first() == Some(&b'.') {
            continue;
        }
        read_file(
            layout,
            &entry.path(),
            name.as_bytes(),
            remove_stale,
            &mut roots,
        )?;
    }
    Ok(roots)
}

fn read_file(
    layout: &StoreLayout,
    path: &Path,
    name: &[u8],
    remove_stale: bool,
    roots: &mut TempRoots,
) -> Result<(), TempRootsError> {
    let file_error = |operation| {
        move |source| TempRootsError::File {
            path: path.to_owned(),
            operation,
            source,
        }
    };
    // Nix parses the name with `std::stoi` and aborts the GC when it is not a number.
    if parse_pid(name).is_none() {
        return Err(TempRootsError::BadName {
            path: path.to_owned(),
        });
    }
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        // It's okay if the file has disappeared (its owner exited).
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(file_error("open")(error)),
    };
    let mut file: File = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            roots.stale_files += 1;
            if remove_stale {
                tracing::info!(path = %path.display(), "removing stale temporary roots file");
                fs::remove_file(path).map_err(file_error("remove"))?;
                lock.write_all(b"d").map_err(file_error("write"))?;
            }
            return Ok(());
        }
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, errno)) => return Err(file_error("lock")(std::io::Error::from(errno))),
    };
    let mut contents = Vec::new();
    file.read_to_end(&mut contents)
        .map_err(file_error("read"))?;
    // Only NUL-terminated entries count: a trailing fragment is still being written.
    let mut entries: Vec<&[u8]> = contents.split(|&c| c == 0).collect();
    entries.pop();
    for entry in entries {
        let bad = || TempRootsError::BadEntry {
            path: path.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
        };
        // Nix's `parseStorePath`: canonicalise, the parent must be the store dir.
        let canonical =
            canon_path(Path::new(std::ffi::OsStr::from_bytes(entry))).ok_or_else(bad)?;
        let basename = layout
            .store_basename(canonical.as_os_str().as_bytes())
            .filter(|name| store_path::is_valid_basename(name))
            .ok_or_else(bad)?;
        roots.insert(basename);
    }
    Ok(())
}

/// `std::stoi`: optional leading whitespace and sign, then at least one digit; the rest ignored.
fn parse_pid(name: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(name).ok()?.trim_start();
    let (sign, digits) = match text.as_bytes().first()? {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        _ => (1, text),
    };
    let end = digits
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let value: i64 = digits[..end].parse().ok()?;
    i32::try_from(sign * value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_parsing_follows_stoi() {
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b"123abc"), Some(123));
        assert_eq!(parse_pid(b"abc"), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn live_files_count_dead_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let layout =
            StoreLayout::new(&dir.path().join("store"), &dir.path().join("state")).unwrap();
        fs::create_dir_all(layout.temproots_dir()).unwrap();
        let store = layout.store_dir().to_str().unwrap().to_owned();
        let live_path = layout.temproots_dir().join("100");
        fs::write(
            &live_path,
            format!("{store}/0123456789abcdfghijklmnpqrsvwxyz-a\0{store}/1123456789abcdfghijklmnpqrsvwxyz-partial"),
        )
        .unwrap();
        // Held by "its owner": another open file description with the lock.
        let _held = Flock::lock(File::open(&live_path).unwrap(), FlockArg::LockExclusive).unwrap();
        let dead_path = layout.temproots_dir().join("200");
        fs::write(
            &dead_path,
            format!("{store}/2123456789abcdfghijklmnpqrsvwxyz-b\0"),
        )
        .unwrap();

        let roots = find_temp_roots(&layout, false).unwrap();
        assert_eq!(
            roots.basenames(),
            &[b"0123456789abcdfghijklmnpqrsvwxyz-a".to_vec()]
        );
        assert!(roots.contains_hash(b"0123456789abcdfghijklmnpqrsvwxyz"));
        assert_eq!(roots.stale_files, 1);
        assert!(dead_path.exists(), "a dry run changes nothing");

        find_temp_roots(&layout, true).unwrap();
        assert!(!dead_path.exists());
        assert!(live_path.exists());
    }
}
