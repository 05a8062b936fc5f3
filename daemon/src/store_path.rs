//! Store path names, checked as Nix 2.8 checks them (`StorePath::StorePath`, `checkName`).
//!
//! Invariant: a name accepted here is one `maybeParseStorePath` accepts, so the collector
//! classifies the entries of the store directory exactly as Nix does.

/// Length of the base-32 hash part of a store path name.
pub const HASH_LEN: usize = 32;

/// The hash part of a store path basename, e.g. `b6gvzjyb2pg0kjfwrjmg1vfhh54ad73z`.
pub type HashPart = [u8; HASH_LEN];

/// Nix's `StorePath` constructor on a basename: at least `HASH_LEN + 1` bytes, a hash part of
/// base-32 characters (digits and lower-case letters but `e`, `o`, `u`, `t`), then a name of
/// 1–211 characters from `[0-9a-zA-Z+-._?=]`. Like Nix, the separator byte is not checked.
pub fn is_valid_basename(basename: &[u8]) -> bool {
    if basename.len() < HASH_LEN + 1 {
        return false;
    }
    let (hash, rest) = basename.split_at(HASH_LEN);
    let name = &rest[1..];
    hash.iter().all(|&c| HASH_CHARS[usize::from(c)])
        && !name.is_empty()
        && name.len() <= 211
        && name.iter().all(|&c| NAME_CHARS[usize::from(c)])
}

/// Bytes allowed in a hash part: digits and lower-case letters but `e`, `o`, `u`, `t`
/// (a table: the collector checks every entry of the store directory).
const HASH_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = (b.is_ascii_digit() || b.is_ascii_lowercase())
            && !matches!(b, b'e' | b'o' | b'u' | b't');
        c += 1;
    }
    table
};

/// Bytes allowed in a name: `[0-9a-zA-Z+-._?=]`.
const NAME_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] =
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=');
        c += 1;
    }
    table
};

/// The hash part of a basename that [`is_valid_basename`] accepted.
pub fn hash_part(basename: &[u8]) -> Option<HashPart> {
    basename.get(..HASH_LEN)?.try_into().ok()
}

/// Nix's `StorePath::isDerivation`: the name ends in `.drv`.
pub fn is_derivation(basename: &[u8]) -> bool {
    basename.len() > HASH_LEN + 1 && basename.ends_with(b".drv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_nix() {
        assert!(is_valid_basename(
            b"0123456789abcdfghijklmnpqrsvwxyz-hello-1.0"
        ));
        assert!(is_valid_basename(b"0123456789abcdfghijklmnpqrsvwxyz-a.drv"));
        // Nix does not check the separator.
        assert!(is_valid_basename(b"0123456789abcdfghijklmnpqrsvwxyz_x"));
        for bad in [
            &b"0123456789abcdfghijklmnpqrsvwxyz-"[..],
            b"0123456789abcdfghijklmnpqrsvwxye-x",
            b"0123456789abcdfghijklmnpqrsvwxyZ-x",
            b"0123456789abcdfghijklmnpqrsvwxyz-a b",
            b"short-x",
            b".links",
        ] {
            assert!(!is_valid_basename(bad), "{}", String::from_utf8_lossy(bad));
        }
        let long = [&b"0123456789abcdfghijklmnpqrsvwxyz-"[..], &[b'a'; 212]].concat();
        assert!(!is_valid_basename(&long));
        assert!(is_derivation(b"0123456789abcdfghijklmnpqrsvwxyz-a.drv"));
        assert!(!is_derivation(b"0123456789abcdfghijklmnpqrsvwxyz-a"));
    }

    #[test]
    fn character_tables_are_nix_character_classes() {
        for c in 0..=255u8 {
            let hash = (c.is_ascii_digit() || c.is_ascii_lowercase()) && !b"eout".contains(&c);
            let name = c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
            assert_eq!(HASH_CHARS[usize::from(c)], hash, "{c}");
            assert_eq!(NAME_CHARS[usize::from(c)], name, "{c}");
        }
    }
}
