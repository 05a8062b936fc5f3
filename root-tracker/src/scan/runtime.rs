//! Runtime roots: Nix's `findRuntimeRoots` on Linux. Store paths held by running processes
//! (`exe`, `cwd`, open fds, mapped files, environment) and named by three kernel sysctls.
//!
//! A process that exits while we read it roots nothing (ENOENT/ESRCH are benign); a process
//! we may not inspect (EACCES) is recorded as unreadable, where Nix silently skips it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use super::Findings;
use crate::report::{Retainer, RootKind};

/// Store-path-like texts found, each with the `/proc` files that named it (Nix's `UncheckedRoots`).
type Unchecked = BTreeMap<Vec<u8>, Vec<Vec<u8>>>;

const KERNEL_SYSCTLS: [&str; 3] = [
    "sys/kernel/modprobe",
    "sys/kernel/fbsplash",
    "sys/kernel/poweroff_cmd",
];

pub(super) fn find_runtime_roots(findings: &mut Findings<'_>, proc_dir: &Path) {
    let mut unchecked = Unchecked::new();
    match fs::read_dir(proc_dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        let name = entry.file_name();
                        if !name.is_empty() && name.as_bytes().iter().all(u8::is_ascii_digit) {
                            process_roots(findings, &entry.path(), &mut unchecked);
                        }
                    }
                    Err(error) => {
                        findings.io_error(proc_dir, None, "readdir", error);
                        break;
                    }
                }
            }
        }
        Err(error) => findings.io_error(proc_dir, None, "opendir", error),
    }
    for sysctl in KERNEL_SYSCTLS {
        let file = proc_dir.join(sysctl);
        match fs::read(&file) {
            Ok(contents) => add_unchecked(&mut unchecked, contents, &file),
            Err(error) => findings.io_error(&file, None, "read", error),
        }
    }
    for (target, files) in unchecked {
        for file in files {
            findings.found_root(
                RootKind::Runtime,
                Retainer::Path(file.clone()),
                &file,
                &target,
            );
        }
    }
}

fn add_unchecked(unchecked: &mut Unchecked, target: Vec<u8>, file: &Path) {
    unchecked
        .entry(target)
        .or_default()
        .push(file.as_os_str().as_bytes().to_vec());
}

/// One `/proc/<pid>`: exe, cwd, every fd, then maps and environ, in Nix's order. A process we
/// may not inspect (EACCES) is recorded once and left, since every other file of it would
/// fail the same way; like Nix, maps and environ are skipped when the fd directory cannot be read.
fn process_roots(findings: &mut Findings<'_>, pid_dir: &Path, unchecked: &mut Unchecked) {
    let _ = inspect_process(findings, pid_dir, unchecked);
}

fn inspect_process(
    findings: &mut Findings<'_>,
    pid_dir: &Path,
    unchecked: &mut Unchecked,
) -> ControlFlow<()> {
    read_proc_link(findings, &pid_dir.join("exe"), unchecked)?;
    read_proc_link(findings, &pid_dir.join("cwd"), unchecked)?;
    let fd_dir = pid_dir.join("fd");
    let entries = match fs::read_dir(&fd_dir) {
        Ok(entries) => entries,
        Err(error) => {
            let _ = proc_error(findings, &fd_dir, "opendir", error);
            return ControlFlow::Break(());
        }
    };
    for entry in entries {
        match entry {
            Ok(entry) if entry.file_name().as_bytes().first() != Some(&b'.') => {
                read_proc_link(findings, &entry.path(), unchecked)?;
            }
            Ok(_) => {}
            Err(error) => {
                let _ = proc_error(findings, &fd_dir, "readdir", error);
                return ControlFlow::Break(());
            }
        }
    }
    let maps_file = pid_dir.join("maps");
    let maps = match fs::read(&maps_file) {
        Ok(maps) => maps,
        Err(error) => {
            let _ = proc_error(findings, &maps_file, "read", error);
            return ControlFlow::Break(());
        }
    };
    for line in maps.split(|&c| c == b'\n') {
        if let Some(path) = mapped_path(line) {
            add_unchecked(unchecked, path.to_vec(), &maps_file);
        }
    }
    let environ_file = pid_dir.join("environ");
    match fs::read(&environ_file) {
        Ok(environ) => {
            let store_dir = findings.layout.store_dir().as_os_str().as_bytes();
            for path in store_paths_in_text(&environ, store_dir) {
                add_unchecked(unchecked, path.to_vec(), &environ_file);
            }
        }
        Err(error) => return proc_error(findings, &environ_file, "read", error),
    }
    ControlFlow::Continue(())
}

fn read_proc_link(
    findings: &mut Findings<'_>,
    file: &Path,
    unchecked: &mut Unchecked,
) -> ControlFlow<()> {
    match fs::read_link(file) {
        Ok(target) => {
            add_unchecked(
                unchecked,
                target.into_os_string().into_encoded_bytes(),
                file,
            );
            ControlFlow::Continue(())
        }
        Err(error) => proc_error(findings, file, "readlink", error),
    }
}

/// ENOENT and ESRCH mean the file or the process is gone: benign. EACCES means the process may
/// not be inspected: recorded, and `Break` so the caller leaves that process.
fn proc_error(
    findings: &mut Findings<'_>,
    path: &Path,
    operation: &'static str,
    error: io::Error,
) -> ControlFlow<()> {
    match error.raw_os_error() {
        Some(libc::ESRCH | libc::ENOENT) => ControlFlow::Continue(()),
        Some(libc::EACCES | libc::EPERM) => {
            findings.io_error(path, None, operation, error);
            ControlFlow::Break(())
        }
        _ => {
            findings.io_error(path, None, operation, error);
            ControlFlow::Continue(())
        }
    }
}

/// Nix matches each maps line against `^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$`: exactly
/// six whitespace-separated fields, the last an absolute path (so paths with spaces never match).
fn mapped_path(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line
        .split(|c| is_regex_space(*c))
        .filter(|field| !field.is_empty());
    let path = fields.nth(5)?;
    (fields.next().is_none() && path.first() == Some(&b'/')).then_some(path)
}

/// `\s` of `std::regex` in the C locale.
fn is_regex_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Every non-overlapping match of Nix's `<storeDir>/[0-9a-z]+[0-9a-zA-Z\+\-\._\?=]*`, leftmost
/// first and greedy, as `std::sregex_iterator` finds them in `/proc/<pid>/environ`.
pub(crate) fn store_paths_in_text<'t>(text: &'t [u8], store_dir: &[u8]) -> Vec<&'t [u8]> {
    let mut found = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let Some(offset) = find(&text[start..], store_dir) else {
            break;
        };
        let begin = start + offset;
        let mut end = begin + store_dir.len();
        let first_ok = text.get(end) == Some(&b'/')
            && text
                .get(end + 1)
                .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
        if !first_ok {
            start = begin + 1;
            continue;
        }
        end += 2;
        while text
            .get(end)
            .is_some_and(|&c| crate::store_path::is_name_char(c))
        {
            end += 1;
        }
        found.push(&text[begin..end]);
        start = end;
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_match_nix_regex() {
        let line = b"7f00-7f01 r-xp 00000000 08:01 1234   /s/store/abc-x/lib/libc.so  ";
        assert_eq!(mapped_path(line), Some(&b"/s/store/abc-x/lib/libc.so"[..]));
        assert_eq!(mapped_path(b"7f00-7f01 rw-p 00000000 00:00 0"), None);
        assert_eq!(mapped_path(b"7f00-7f01 rw-p 00000000 00:00 0 [heap]"), None);
        assert_eq!(mapped_path(b"a b c d e /with space"), None);
    }

    #[test]
    fn environ_matches_are_greedy_and_disjoint() {
        let env = b"A=/s/store/abc-x:/s/store/def-y/bin\0B=/s/store/\0C=/s/storeX/q\0D=/s/store/Up";
        let found = store_paths_in_text(env, b"/s/store");
        assert_eq!(found, vec![&b"/s/store/abc-x"[..], b"/s/store/def-y"]);
    }
}
