//! Temp roots: Nix's `findTempRoots`. Each client keeps `temproots/<pid>` locked while it
//! lives; a file we can lock has a dead owner and roots nothing (Nix deletes it, we report it).

use std::fs::{self, File};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::Findings;
use crate::report::{Retainer, RootKind};

pub(super) fn find_temp_roots(findings: &mut Findings<'_>) {
    let dir = findings.layout.temproots_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) => return findings.io_error(&dir, None, "opendir", error),
    };
    for entry in entries {
        match entry {
            Ok(entry) => {
                let name = entry.file_name();
                // Hidden files keep the directory alive for some package managers; Nix skips them.
                if name.as_bytes().first() != Some(&b'.') {
                    temp_roots_file(findings, &entry.path(), name.as_bytes());
                }
            }
            Err(error) => return findings.io_error(&dir, None, "readdir", error),
        }
    }
}

fn temp_roots_file(findings: &mut Findings<'_>, path: &Path, name: &[u8]) {
    let link = path.as_os_str().as_bytes();
    // Nix parses the name with `std::stoi` and aborts the GC when it is not a number.
    let Some(pid) = parse_pid(name) else {
        return findings.unreadable_entry(link, None, "parse", libc::EINVAL);
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return findings.io_error(path, None, "open", error),
    };
    // A lock we can take means the owner is dead. Released when `_lock` drops, without
    // writing the "d" marker: the scanner never changes the store's state.
    file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_lock) => {
            findings.stale_temp_roots.push(link.to_vec());
            return;
        }
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, errno)) => return findings.unreadable_entry(link, None, "flock", errno as i32),
    };
    let mut contents = Vec::new();
    if let Err(error) = file.read_to_end(&mut contents) {
        return findings.io_error(path, None, "read", error);
    }
    // Only NUL-terminated entries count: a trailing fragment is still being written.
    let mut entries: Vec<&[u8]> = contents.split(|&c| c == 0).collect();
    entries.pop();
    for entry in entries {
        match findings.layout.parse_store_path(entry) {
            Some(target) => findings.push_root(
                RootKind::Temp,
                Retainer::Temp(pid),
                link.into(),
                target,
                false,
            ),
            // Nix's `parseStorePath` throws here and the whole GC stops.
            None => findings.unreadable_entry(link, None, "parse", libc::EINVAL),
        }
    }
}

/// `std::stoi`: optional leading whitespace and sign, then at least one digit; the rest ignored.
fn parse_pid(name: &[u8]) -> Option<i64> {
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
    i32::try_from(sign * value).ok().map(i64::from)
}

#[cfg(test)]
mod tests {
    use super::parse_pid;

    #[test]
    fn pid_parsing_follows_stoi() {
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b"123abc"), Some(123));
        assert_eq!(parse_pid(b" 7"), Some(7));
        assert_eq!(parse_pid(b"abc"), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }
}
