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
use crate::layout::StoreLayout;
use crate::report::{Retainer, RootKind};

/// Store-path-like texts found, each with the `/proc` files that named it (Nix's `UncheckedRoots`).
type Unchecked = BTreeMap<Vec<u8>, Vec<Vec<u8>>>;

const KERNEL_SYSCTLS: [&str; 3] = [
    "sys/kernel/modprobe",
    "sys/kernel/fbsplash",
    "sys/kernel/poweroff_cmd",
];

/// What one walk of `/proc` found, before the store database says which roots are registered:
/// the runtime roots in Nix's order (by target, then the order the files were read) and the
/// failed reads in the order they happened. The running tracker gets it from its /proc reader
/// process (`proc_reader.rs`), which calls [`read_runtime_roots`] as `scan` does.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeRoots {
    roots: Vec<RuntimeRoot>,
    errors: Vec<ProcReadError>,
}

/// A `/proc` file (or kernel sysctl) naming a path in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeRoot {
    #[serde(with = "crate::report::json_bytes")]
    file: Vec<u8>,
    /// The text as read (a link target, a mapped file, a match in the environment).
    #[serde(with = "crate::report::json_bytes")]
    target: Vec<u8>,
}

/// A read that failed, as [`Findings::io_error`] takes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcReadError {
    #[serde(with = "crate::report::json_bytes")]
    path: Vec<u8>,
    operation: Operation,
    errno: i32,
}

/// The reads [`read_runtime_roots`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Operation {
    Opendir,
    Readdir,
    Readlink,
    Read,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Opendir => "opendir",
            Self::Readdir => "readdir",
            Self::Readlink => "readlink",
            Self::Read => "read",
        }
    }
}

impl RuntimeRoots {
    /// Hands what was found to `findings`, as if it had walked `/proc` itself: the failed
    /// reads first (vanished entries are dropped there), then each root (`found_root`).
    pub(crate) fn add_to(self, findings: &mut Findings<'_>) {
        for error in self.errors {
            let path = Path::new(std::ffi::OsStr::from_bytes(&error.path));
            findings.io_error(
                path,
                None,
                error.operation.as_str(),
                io::Error::from_raw_os_error(error.errno),
            );
        }
        for root in self.roots {
            let file: std::sync::Arc<[u8]> = root.file.into();
            findings.found_root(
                RootKind::Runtime,
                Retainer::Path(file.clone()),
                file,
                &root.target,
            );
        }
    }
}

/// Nix's `findRuntimeRoots`: every process's links, maps and environment under `proc_dir`, and
/// the kernel sysctls. Needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH for other users' processes.
/// Only texts that name a store path are kept ([`StoreLayout::to_store_path`], as `found_root`
/// decides), so the running tracker's reader sends no more than the roots.
pub fn read_runtime_roots(layout: &StoreLayout, proc_dir: &Path) -> RuntimeRoots {
    let mut walk = ProcWalk {
        store_dir: layout.store_dir().as_os_str().as_bytes(),
        unchecked: Unchecked::new(),
        errors: Vec::new(),
    };
    match fs::read_dir(proc_dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        let name = entry.file_name();
                        if !name.is_empty() && name.as_bytes().iter().all(u8::is_ascii_digit) {
                            let _ = walk.inspect_process(&entry.path());
                        }
                    }
                    Err(error) => {
                        walk.error(proc_dir, Operation::Readdir, error);
                        break;
                    }
                }
            }
        }
        Err(error) => walk.error(proc_dir, Operation::Opendir, error),
    }
    for sysctl in KERNEL_SYSCTLS {
        let file = proc_dir.join(sysctl);
        match fs::read(&file) {
            Ok(contents) => walk.add_unchecked(contents, &file),
            Err(error) => walk.error(&file, Operation::Read, error),
        }
    }
    let mut roots = Vec::new();
    for (target, files) in walk.unchecked {
        if layout.to_store_path(&target).is_none() {
            continue;
        }
        for file in files {
            roots.push(RuntimeRoot {
                file,
                target: target.clone(),
            });
        }
    }
    RuntimeRoots {
        roots,
        errors: walk.errors,
    }
}

/// The state of one [`read_runtime_roots`] walk.
struct ProcWalk<'a> {
    store_dir: &'a [u8],
    unchecked: Unchecked,
    errors: Vec<ProcReadError>,
}

impl ProcWalk<'_> {
    fn add_unchecked(&mut self, target: Vec<u8>, file: &Path) {
        self.unchecked
            .entry(target)
            .or_default()
            .push(file.as_os_str().as_bytes().to_vec());
    }

    fn error(&mut self, path: &Path, operation: Operation, error: io::Error) {
        self.errors.push(ProcReadError {
            path: path.as_os_str().as_bytes().to_vec(),
            operation,
            errno: error.raw_os_error().unwrap_or(libc::EIO),
        });
    }

    /// One `/proc/<pid>`: exe, cwd, every fd, then maps and environ, in Nix's order. A process
    /// we may not inspect (EACCES) is recorded once and left, since every other file of it
    /// would fail the same way; like Nix, maps and environ are skipped when the fd directory
    /// cannot be read.
    fn inspect_process(&mut self, pid_dir: &Path) -> ControlFlow<()> {
        self.read_proc_link(&pid_dir.join("exe"))?;
        self.read_proc_link(&pid_dir.join("cwd"))?;
        let fd_dir = pid_dir.join("fd");
        let entries = match fs::read_dir(&fd_dir) {
            Ok(entries) => entries,
            Err(error) => {
                let _ = self.proc_error(&fd_dir, Operation::Opendir, error);
                return ControlFlow::Break(());
            }
        };
        for entry in entries {
            match entry {
                Ok(entry) if entry.file_name().as_bytes().first() != Some(&b'.') => {
                    self.read_proc_link(&entry.path())?;
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = self.proc_error(&fd_dir, Operation::Readdir, error);
                    return ControlFlow::Break(());
                }
            }
        }
        let maps_file = pid_dir.join("maps");
        let maps = match fs::read(&maps_file) {
            Ok(maps) => maps,
            Err(error) => {
                let _ = self.proc_error(&maps_file, Operation::Read, error);
                return ControlFlow::Break(());
            }
        };
        for line in maps.split(|&c| c == b'\n') {
            if let Some(path) = mapped_path(line) {
                self.add_unchecked(path.to_vec(), &maps_file);
            }
        }
        let environ_file = pid_dir.join("environ");
        match fs::read(&environ_file) {
            Ok(environ) => {
                for path in store_paths_in_text(&environ, self.store_dir) {
                    self.add_unchecked(path.to_vec(), &environ_file);
                }
            }
            Err(error) => return self.proc_error(&environ_file, Operation::Read, error),
        }
        ControlFlow::Continue(())
    }

    fn read_proc_link(&mut self, file: &Path) -> ControlFlow<()> {
        match fs::read_link(file) {
            Ok(target) => {
                self.add_unchecked(target.into_os_string().into_encoded_bytes(), file);
                ControlFlow::Continue(())
            }
            Err(error) => self.proc_error(file, Operation::Readlink, error),
        }
    }

    /// ENOENT and ESRCH mean the file or the process is gone: benign. EACCES means the process
    /// may not be inspected: recorded, and `Break` so the caller leaves that process.
    fn proc_error(
        &mut self,
        path: &Path,
        operation: Operation,
        error: io::Error,
    ) -> ControlFlow<()> {
        match error.raw_os_error() {
            Some(libc::ESRCH | libc::ENOENT) => ControlFlow::Continue(()),
            Some(libc::EACCES | libc::EPERM) => {
                self.error(path, operation, error);
                ControlFlow::Break(())
            }
            _ => {
                self.error(path, operation, error);
                ControlFlow::Continue(())
            }
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
