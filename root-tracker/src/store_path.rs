//! Store paths and the lexical path functions Nix uses to recognise them.
//!
//! Nix decides whether a link "is in the store" on the raw link text, by prefix, and parses
//! store paths after a purely lexical `canonPath`. These functions mirror `isInDir`,
//! `canonPath`, `dirOf`, `baseNameOf`, `Store::toStorePath` and `StorePath::StorePath` of Nix 2.8
//! byte for byte, so that our answers are Nix's answers. Paths are bytes throughout.

use std::fmt;
use std::sync::Arc;

/// Length of the base-32 hash part of a store path's base name.
pub const HASH_LEN: usize = 32;

/// Longest name part Nix accepts (`checkName`).
const MAX_NAME_LEN: usize = 211;

/// The base name of a store path (`<hash>-<name>`), validated as Nix's `StorePath` constructor
/// validates it. Comparison is bytewise, as Nix orders its `std::set<StorePath>`. Shared, so
/// the roots of the live index and the answers built from it hold one copy of each name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    base_name: Arc<[u8]>,
}

impl StorePath {
    /// Parses a base name the way `StorePath::StorePath(std::string_view)` does.
    /// Nix does not check that the character after the hash is `-`, and neither do we.
    pub fn from_base_name(base_name: &[u8]) -> Option<Self> {
        if base_name.len() < HASH_LEN + 1 {
            return None;
        }
        let (hash, rest) = base_name.split_at(HASH_LEN);
        if !hash.iter().all(|&c| is_nix32_char(c)) {
            return None;
        }
        let name = &rest[1..];
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.iter().all(|&c| is_name_char(c)) {
            return None;
        }
        Some(Self {
            base_name: base_name.into(),
        })
    }

    pub fn base_name(&self) -> &[u8] {
        &self.base_name
    }

    /// The hash part, always 32 ASCII characters.
    pub fn hash_part(&self) -> &[u8] {
        &self.base_name[..HASH_LEN]
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validated to be ASCII in `from_base_name`.
        f.write_str(&String::from_utf8_lossy(&self.base_name))
    }
}

/// Nix's base-32 alphabet: digits and lower-case letters without `e`, `o`, `u`, `t`.
fn is_nix32_char(c: u8) -> bool {
    (c.is_ascii_digit() || c.is_ascii_lowercase()) && !matches!(c, b'e' | b'o' | b'u' | b't')
}

/// Characters `checkName` allows in the name part.
pub fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// Nix's `canonPath(path, false)`: removes `.`, `..` and repeated slashes lexically, without
/// looking at the filesystem. Returns `None` for a relative path (Nix throws there).
pub fn canon_path(path: &[u8]) -> Option<Vec<u8>> {
    if path.first() != Some(&b'/') {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for component in path.split(|&c| c == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if let Some(slash) = out.iter().rposition(|&c| c == b'/') {
                    out.truncate(slash);
                }
            }
            name => {
                out.push(b'/');
                out.extend_from_slice(name);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

/// Nix's `absPath(path, dir)`: resolves a relative path against `dir`, then `canon_path`.
pub fn abs_path(path: &[u8], dir: &[u8]) -> Vec<u8> {
    let joined;
    let absolute = if path.first() == Some(&b'/') {
        path
    } else {
        joined = [dir, b"/", path].concat();
        &joined
    };
    // `absolute` starts with '/' whenever `dir` does; the scanner only passes absolute dirs.
    canon_path(absolute).unwrap_or_else(|| absolute.to_vec())
}

/// Nix's `dirOf`: everything before the last slash (`/` for a top-level name, `.` for none).
pub fn dir_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        None => b".",
        Some(0) => b"/",
        Some(pos) => &path[..pos],
    }
}

/// Nix's `baseNameOf`: the last component, ignoring one trailing slash.
pub fn base_name_of(path: &[u8]) -> &[u8] {
    if path.is_empty() {
        return path;
    }
    let mut last = path.len() - 1;
    if path[last] == b'/' && last > 0 {
        last -= 1;
    }
    let start = path[..=last]
        .iter()
        .rposition(|&c| c == b'/')
        .map_or(0, |pos| pos + 1);
    &path[start..=last]
}

/// Nix's `isInDir(path, dir)`: `path` lies strictly below `dir`, decided on the text.
pub fn is_in_dir(path: &[u8], dir: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && path.len() >= dir.len() + 2
        && path.starts_with(dir)
        && path[dir.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "wz3hk2kngnp2f0zw027hzdggx7vjl9fh";

    #[test]
    fn store_path_validation_matches_nix() {
        let ok = |s: &str| StorePath::from_base_name(s.as_bytes()).is_some();
        assert!(ok(&format!("{HASH}-hello-2.12")));
        assert!(ok(&format!("{HASH}-a+b-c.d_e?f=g")));
        // Nix does not check the separator.
        assert!(ok(&format!("{HASH}Xhello")));
        assert!(!ok(&format!("{HASH}-")), "empty name");
        assert!(!ok(HASH), "no name");
        assert!(!ok(&format!("{}e-x", &HASH[..31])), "'e' is not base-32");
        assert!(
            !ok(&format!("{}-x", HASH.to_uppercase())),
            "upper case hash"
        );
        assert!(!ok(&format!("{HASH}-a b")), "space in name");
        assert!(!ok(&format!("{HASH}-{}", "x".repeat(212))), "name too long");
        assert!(ok(&format!("{HASH}-{}", "x".repeat(211))));
    }

    #[test]
    fn canon_path_is_lexical() {
        let c = |s: &str| canon_path(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(c("/a//b/./c/../d/"), Some("/a/b/d".into()));
        assert_eq!(c("/.."), Some("/".into()));
        assert_eq!(c("/a/.../b"), Some("/a/.../b".into()));
        assert_eq!(c("rel"), None);
    }

    #[test]
    fn dir_and_base_names() {
        assert_eq!(dir_of(b"/a/b"), b"/a");
        assert_eq!(dir_of(b"/a"), b"/");
        assert_eq!(dir_of(b"a"), b".");
        assert_eq!(base_name_of(b"/a/b"), b"b");
        assert_eq!(base_name_of(b"/a/b/"), b"b");
        assert_eq!(abs_path(b"../x", b"/h/p"), b"/h/x");
        assert_eq!(abs_path(b"/s//y", b"/h"), b"/s/y");
    }

    #[test]
    fn is_in_dir_needs_a_component() {
        assert!(is_in_dir(b"/nix/store/x", b"/nix/store"));
        assert!(!is_in_dir(b"/nix/store/", b"/nix/store"));
        assert!(!is_in_dir(b"/nix/storex/y", b"/nix/store"));
        assert!(!is_in_dir(b"nix/store/x", b"nix/store"));
    }
}
