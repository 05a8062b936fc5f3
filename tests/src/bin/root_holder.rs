//! Holds store paths the ways a running program does, for runtime- and temp-root tests.
//!
//! Arguments: `--open FILE` (keep an fd), `--map FILE` (keep a read-only mapping),
//! `--temproot DIR ENTRY...` (write NUL-terminated ENTRYs to `DIR/<own pid>` and keep a shared
//! flock on it, as a Nix client does). Its cwd and environment are set by the caller. Prints `ready`
//! once everything is held, then holds until standard input closes.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut held_files = Vec::new();
    let mut mappings = Vec::new();
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "--open" => {
                index += 1;
                held_files.push(File::open(&args[index]).expect("--open FILE"));
            }
            "--map" => {
                index += 1;
                let file = File::open(&args[index]).expect("--map FILE");
                let len = file.metadata().expect("stat mapped file").len() as usize;
                // SAFETY: a fresh read-only private mapping of a file we opened; never unmapped
                // while in use (it lives until exit) and never read through a Rust reference.
                let address = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len.max(1),
                        libc::PROT_READ,
                        libc::MAP_PRIVATE,
                        file.as_raw_fd(),
                        0,
                    )
                };
                assert_ne!(address, libc::MAP_FAILED, "mmap failed");
                mappings.push(address as usize);
            }
            "--temproot" => {
                index += 1;
                let path = std::path::Path::new(&args[index]).join(std::process::id().to_string());
                let mut file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(path)
                    .expect("--temproot DIR");
                // SAFETY: flock on an fd we own.
                let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
                assert_eq!(locked, 0, "flock failed");
                while index + 1 < args.len() && !args[index + 1].starts_with("--") {
                    index += 1;
                    file.write_all(args[index].as_bytes())
                        .expect("write temp root");
                    file.write_all(b"\0").expect("write temp root");
                }
                held_files.push(file);
            }
            other => panic!("unknown argument {other:?}"),
        }
        index += 1;
    }
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held_files);
    drop(mappings);
}
