//! Where a store lives: store dir, state dir and configuration dir, canonicalised lexically
//! as Nix canonicalises `NIX_STORE_DIR` and `NIX_STATE_DIR` (`canonPath`), so that the paths
//! we print are the paths `nix-store` prints.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{what} must be an absolute path, got {path:?}")]
    NotAbsolute { what: &'static str, path: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLayout {
    store_dir: PathBuf,
    state_dir: PathBuf,
}

impl StoreLayout {
    pub fn new(store_dir: &Path, state_dir: &Path) -> Result<Self, LayoutError> {
        let canon = |what, dir: &Path| {
            canon_path(dir).ok_or_else(|| LayoutError::NotAbsolute {
                what,
                path: dir.to_owned(),
            })
        };
        Ok(Self {
            store_dir: canon("store dir", store_dir)?,
            state_dir: canon("state dir", state_dir)?,
        })
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `<state>/db/db.sqlite`: Nix's store database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("db/db.sqlite")
    }

    /// `<state>/db/reserved`: space Nix keeps in reserve (`gc-reserved-space`, 8 MiB by
    /// default) so that a collection can start on a full disk; a deleting collection frees it.
    pub fn reserved_path(&self) -> PathBuf {
        self.state_dir.join("db/reserved")
    }

    /// `<state>/temproots`: one file per client process, NUL-terminated store paths.
    pub fn temproots_dir(&self) -> PathBuf {
        self.state_dir.join("temproots")
    }

    /// `<store>/<basename>` as bytes, as Nix's `printStorePath` prints it.
    pub fn print_store_path(&self, basename: &[u8]) -> Vec<u8> {
        let mut path = Vec::with_capacity(self.store_dir.as_os_str().len() + 1 + basename.len());
        self.append_store_path(&mut path, basename);
        path
    }

    /// [`Self::print_store_path`], appended to `out`.
    pub fn append_store_path(&self, out: &mut Vec<u8>, basename: &[u8]) {
        out.extend_from_slice(self.store_dir.as_os_str().as_bytes());
        out.push(b'/');
        out.extend_from_slice(basename);
    }

    /// Nix's `isInStore` on raw link text: the text starts with `<store>/`.
    pub fn is_in_store(&self, text: &[u8]) -> bool {
        text.strip_prefix(self.store_dir.as_os_str().as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'/'))
    }

    /// The basename of `path` when it is `<store>/<basename>` exactly (Nix's `parseStorePath`
    /// after `canonPath`; validity of the name is checked separately).
    pub fn store_basename<'a>(&self, path: &'a [u8]) -> Option<&'a [u8]> {
        let rest = path.strip_prefix(self.store_dir.as_os_str().as_bytes())?;
        let basename = rest.strip_prefix(b"/")?;
        (!basename.is_empty() && !basename.contains(&b'/')).then_some(basename)
    }
}

/// Nix's `canonPath` without following symlinks: absolute, no `.`/`..`/empty components,
/// no trailing slash. `None` for a relative path.
pub fn canon_path(path: &Path) -> Option<PathBuf> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in bytes.split(|&c| c == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(PathBuf::from(OsStr::from_bytes(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_like_nix() {
        assert_eq!(
            canon_path(Path::new("/a//b/./c/../d/")),
            Some(PathBuf::from("/a/b/d"))
        );
        assert_eq!(canon_path(Path::new("/")), Some(PathBuf::from("/")));
        assert_eq!(canon_path(Path::new("a/b")), None);
    }

    #[test]
    fn store_basenames() {
        let layout = StoreLayout::new(Path::new("/nix/store/"), Path::new("/nix/var/nix")).unwrap();
        assert_eq!(
            layout.store_basename(b"/nix/store/abc-x"),
            Some(&b"abc-x"[..])
        );
        assert_eq!(layout.store_basename(b"/nix/store/abc-x/bin"), None);
        assert_eq!(layout.store_basename(b"/nix/storex/abc"), None);
        assert_eq!(layout.print_store_path(b"abc"), b"/nix/store/abc");
    }
}
