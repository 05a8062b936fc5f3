//! This process's mount table: [`MountWatch`] tells when it changed (sources turn that into
//! `Hint::MountsChanged`, which makes the index unsettled until a rescan).

use std::io;

/// Where the kernel lists this process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// An open `/proc/self/mountinfo`, for `poll(2)`: the kernel reports `POLLPRI|POLLERR` once
/// per change of this process's mount table (and `poll` itself consumes the report), whether
/// a mount syscall, an automount expiring or propagation from another namespace made it.
pub struct MountWatch {
    file: std::fs::File,
}

impl MountWatch {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(MOUNTINFO)?,
        })
    }

    /// What to give `poll(2)` to wait for a change along with other descriptors.
    pub fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.file),
            events: libc::POLLPRI,
            revents: 0,
        }
    }

    /// Whether a `pollfd` from [`Self::pollfd`] came back reporting a change.
    pub fn reported(pollfd: &libc::pollfd) -> bool {
        pollfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    /// Whether the table changed since the last poll, without waiting.
    pub fn changed_now(&self) -> io::Result<bool> {
        let mut pollfd = self.pollfd();
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, 0) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            // Interrupted: report a change; a needless re-read costs little.
            return if error.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(error)
            };
        }
        Ok(Self::reported(&pollfd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watch_reports_no_change_until_the_table_changes() {
        let watch = MountWatch::open().unwrap();
        // Whatever a first poll says, a second one with no change in between reports nothing.
        let _ = watch.changed_now().unwrap();
        assert!(!watch.changed_now().unwrap());
    }
}
