//! Where a store lives: its store directory and its state directory.
//!
//! Both are canonicalised lexically, as Nix canonicalises `NIX_STORE_DIR` and `NIX_STATE_DIR`
//! (`Settings::Settings`), so prefix tests on link text agree with Nix's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::store_path::{StorePath, base_name_of, canon_path, dir_of, is_in_dir};

/// Nix's default store directory.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Nix's default state directory.
pub const DEFAULT_STATE_DIR: &str = "/nix/var/nix";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLayout {
    store_dir: Vec<u8>,
    state_dir: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{what} must be an absolute path, got {path:?}")]
    NotAbsolute { what: &'static str, path: PathBuf },
}

impl StoreLayout {
    pub fn new(store_dir: &Path, state_dir: &Path) -> Result<Self, LayoutError> {
        let canon = |what, dir: &Path| {
            canon_path(dir.as_os_str().as_bytes()).ok_or_else(|| LayoutError::NotAbsolute {
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
        as_path(&self.store_dir)
    }

    pub fn state_dir(&self) -> &Path {
        as_path(&self.state_dir)
    }

    /// `<state>/gcroots`: static and indirect roots.
    pub fn gcroots_dir(&self) -> PathBuf {
        self.state_dir().join("gcroots")
    }

    /// `<state>/gcroots/auto`: the indirect-root links Nix creates and removes when stale.
    pub fn auto_dir(&self) -> PathBuf {
        self.state_dir().join("gcroots/auto")
    }

    /// `<state>/profiles`.
    pub fn profiles_dir(&self) -> PathBuf {
        self.state_dir().join("profiles")
    }

    /// `<state>/temproots`: one file per client process, NUL-separated store paths.
    pub fn temproots_dir(&self) -> PathBuf {
        self.state_dir().join("temproots")
    }

    /// `<state>/db/db.sqlite`: Nix's store database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir().join("db/db.sqlite")
    }

    /// Nix's `Store::isInStore`, on the raw text of a path or link.
    pub fn is_in_store(&self, text: &[u8]) -> bool {
        is_in_dir(text, &self.store_dir)
    }

    /// Nix's `Store::toStorePath(...).first`: the store path that `text` lies in or under.
    /// `None` where Nix throws `BadStorePath` (or the text is not in the store at all).
    pub fn to_store_path(&self, text: &[u8]) -> Option<StorePath> {
        if !self.is_in_store(text) {
            return None;
        }
        let after_dir = self.store_dir.len() + 1;
        let end = text[after_dir..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(text.len(), |pos| after_dir + pos);
        self.parse_store_path(&text[..end])
    }

    /// Nix's `Store::parseStorePath`: a full path whose directory is the store dir.
    pub fn parse_store_path(&self, text: &[u8]) -> Option<StorePath> {
        let canon = canon_path(text)?;
        if dir_of(&canon) != self.store_dir.as_slice() {
            return None;
        }
        StorePath::from_base_name(base_name_of(&canon))
    }

    /// Nix's `Store::printStorePath`: `<store>/<base name>`.
    pub fn print_store_path(&self, path: &StorePath) -> Vec<u8> {
        [self.store_dir.as_slice(), b"/", path.base_name()].concat()
    }
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> StoreLayout {
        StoreLayout::new(Path::new("/s//store/"), Path::new("/s/state")).unwrap()
    }

    const P: &str = "/s/store/wz3hk2kngnp2f0zw027hzdggx7vjl9fh-f";

    #[test]
    fn store_dir_is_canonical() {
        assert_eq!(layout().store_dir(), Path::new("/s/store"));
    }

    #[test]
    fn to_store_path_takes_the_first_component() {
        let l = layout();
        let sp = l.to_store_path(format!("{P}/bin/tool").as_bytes()).unwrap();
        assert_eq!(l.print_store_path(&sp), P.as_bytes());
        assert!(l.to_store_path(P.as_bytes()).is_some());
        assert!(l.to_store_path(b"/s/store//x").is_none());
        assert!(l.to_store_path(b"/s/store/short").is_none());
        assert!(
            l.to_store_path(format!("{P} (deleted)").as_bytes())
                .is_none()
        );
        assert!(l.to_store_path(format!("..{P}").as_bytes()).is_none());
    }

    #[test]
    fn relative_layout_is_refused() {
        assert!(StoreLayout::new(Path::new("store"), Path::new("/s")).is_err());
    }
}
