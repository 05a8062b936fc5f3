//! The /proc reader: a small process, forked at the privilege drop, that makes the running
//! tracker's ptrace-mode `/proc` reads, so that every thread of the tracker itself can be
//! confined by Landlock. Invariant: once it is installed, no answer is given without it — if it
//! is gone, queries fail; they never come back without runtime roots.
//!
//! Why another process: a Landlock domain may not ptrace-access a process outside it, and
//! `/proc/<pid>/{exe,cwd,fd/*,maps,environ}` (runtime roots, as Nix's `findRuntimeRoots` reads
//! them) and `/proc/<pid>/task/<tid>/{syscall,cwd,fd/*}` (the eBPF fence and its resolution of
//! relative names) are ptrace-mode reads: under a domain they fail with EACCES/EPERM (checked on
//! this kernel, Linux 6.18, Landlock ABI 7). For the same reason the reader is *not* in a
//! Landlock domain, not even one of its own that would forbid every write: the rule holds for
//! any domain, whatever accesses it handles, and no ABI so far exempts ptrace from it (scoping,
//! ABI 6, only adds signals and abstract Unix sockets). What confines the reader instead
//! (`privilege::confine_reader`): CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE only (checked: without
//! the first, other users' `fd/` and `environ` are refused; without the second, `exe`, `cwd`,
//! `maps`, `environ` and `syscall`), the tracker's uid, no_new_privs, the tracker's empty network
//! namespace, a seccomp allow-list (files opened read-only, `write` to stderr only, `sendto`/
//! `recvfrom` on its socket only; any other syscall kills it), no file descriptor but stdio and
//! its socket, and requests that name no path: it reads `/proc` only.
//!
//! Lifetime: the reader ends when its socket reports end-of-file, which happens once the tracker
//! process is gone, however it ended. `PR_SET_PDEATHSIG` is set as well, but a parent in a
//! Landlock domain that scopes signals (ABI 6 and later) cannot deliver it to a process outside
//! its domain (checked on 6.18), so end-of-file is what counts. If the reader dies, the tracker
//! cannot start another — the privileges for that were dropped — so it fails closed: it logs
//! why, keeps its index unsettled and refuses every query; its supervisor (systemd's
//! `Restart=`) restarts it.
//!
//! Wire format, over a `SOCK_SEQPACKET` socketpair: a message is one or more packets of at most
//! [`PACKET_BYTES`]: an 8-byte message id (little-endian), one byte that is 1 on the message's
//! last packet, then the next piece of the message, JSON (paths as [`crate::report::JsonBytes`]
//! writes them: bytes, never lossy UTF-8). The tracker sends one request at a time and takes the
//! answer with the same id, dropping answers to requests it gave up waiting for; the reader
//! answers in order. Message 0 is the reader's `hello`, what it enforced on itself.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::layout::StoreLayout;
use crate::scan::runtime::{RuntimeRoots, read_runtime_roots};

/// Largest packet on the socket, header included; well under the default socket buffer.
pub const PACKET_BYTES: usize = 32 * 1024;
const HEADER_BYTES: usize = 9;
/// Largest request the reader accepts (a fence's thread list).
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Largest answer the tracker accepts (runtime roots of every process).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// The reader's socket, after it closed every other descriptor but stdio.
pub const READER_FD: RawFd = 3;

/// How long the tracker waits for the reader to confine itself and say so.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a walk of every process may take. A `/proc` read can block on a process's memory
/// map lock; without the reader the tracker thread would block with it.
const RUNTIME_ROOTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fence's or a name resolution's few reads may take.
const THREAD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error(
        "the /proc reader (pid {pid}) is gone: {reason}; runtime roots cannot be read, so no answer is given until the tracker is restarted"
    )]
    Gone { pid: i32, reason: String },
    #[error("the /proc reader (pid {pid}) did not answer within {timeout:?}")]
    Timeout { pid: i32, timeout: Duration },
    #[error("the /proc reader (pid {pid}) could not read /proc: {message}")]
    Failed { pid: i32, message: String },
    #[error("cannot start the /proc reader: {step}")]
    Spawn {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("the /proc reader could not confine itself: {message}")]
    Refused { message: String },
    #[error("a /proc reader was started already")]
    Twice,
}

/// What the tracker asks. No request names a path: the reader reads only `/proc`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// [`read_runtime_roots`] of `/proc`.
    RuntimeRoots {},
    /// [`read_thread_syscall`] of each `(tgid, tid)`, in order.
    ThreadSyscalls { threads: Vec<(u32, u32)> },
    /// [`read_task_dir`].
    TaskDir {
        tgid: u32,
        tid: u32,
        fd: Option<i32>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case", deny_unknown_fields)]
enum Response {
    Hello { privileges: ReaderPrivileges },
    RuntimeRoots { found: RuntimeRoots },
    ThreadSyscalls { states: Vec<ThreadSyscall> },
    TaskDir { dir: Option<WireBytes> },
    Error { message: String },
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireBytes(#[serde(with = "crate::report::json_bytes")] Vec<u8>);

/// What the reader enforced on itself, read back from the kernel; `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderPrivileges {
    pub pid: u32,
    /// Effective, permitted and bounding sets (inheritable and ambient are empty), with why.
    pub capabilities: BTreeMap<String, String>,
    pub no_new_privs: bool,
    /// Real, effective, saved and filesystem uid (all the tracker's).
    pub uid: u32,
    /// `Seccomp:` of its status: 2, a filter.
    pub seccomp_mode: u32,
    /// Everything its filter lets through; any other syscall kills it.
    pub allowed_syscalls: Vec<String>,
    /// Why it is not confined by Landlock.
    pub landlock: String,
}

/// Where a thread is, from the first field of `/proc/<tgid>/task/<tid>/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadSyscall {
    /// Blocked in this syscall (-1: blocked outside any).
    Number(i64),
    /// The thread is gone.
    Gone,
    /// Running, or the file could not be read or parsed.
    Unknown,
}

/// `/proc/<tgid>/task/<tid>/syscall` ("<nr> <args…>", "-1 …" outside a syscall, or "running").
/// Needs CAP_SYS_PTRACE (a ptrace-attach-mode check) for another user's thread.
pub fn read_thread_syscall(tgid: u32, tid: u32) -> ThreadSyscall {
    let path = format!("/proc/{tgid}/task/{tid}/syscall");
    match std::fs::read(&path) {
        Ok(contents) => {
            let first = contents
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            match std::str::from_utf8(first).ok().map(str::parse::<i64>) {
                Some(Ok(nr)) => ThreadSyscall::Number(nr),
                _ => ThreadSyscall::Unknown,
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => ThreadSyscall::Gone,
        Err(_) => ThreadSyscall::Unknown,
    }
}

/// The directory a thread's relative path starts from, as `readlink` of
/// `/proc/<tgid>/task/<tid>/cwd` (`fd` None) or `…/fd/<fd>` gives it; `None` if unreadable.
pub fn read_task_dir(tgid: u32, tid: u32, fd: Option<i32>) -> Option<PathBuf> {
    let link = match fd {
        None => format!("/proc/{tgid}/task/{tid}/cwd"),
        Some(fd) => format!("/proc/{tgid}/task/{tid}/fd/{fd}"),
    };
    std::fs::read_link(link).ok()
}

/// [`read_runtime_roots`], through the reader once it is installed.
pub fn runtime_roots(layout: &StoreLayout, proc_dir: &Path) -> Result<RuntimeRoots, ReaderError> {
    let Some(answer) = with_reader(|reader| {
        match reader.ask(&Request::RuntimeRoots {}, RUNTIME_ROOTS_TIMEOUT)? {
            Response::RuntimeRoots { found } => Ok(found),
            other => Err(reader.unexpected(&other)),
        }
    }) else {
        return Ok(read_runtime_roots(layout, proc_dir));
    };
    answer
}

/// [`read_thread_syscall`] of each thread, through the reader once it is installed. If the
/// reader cannot answer, every thread may still be inside (the fence then waits, and reports
/// lost hints at its deadline).
pub fn thread_syscalls(threads: &[(u32, u32)]) -> Vec<ThreadSyscall> {
    let read_here = || {
        threads
            .iter()
            .map(|&(tgid, tid)| read_thread_syscall(tgid, tid))
            .collect()
    };
    let request = Request::ThreadSyscalls {
        threads: threads.to_vec(),
    };
    let answer = with_reader(|reader| match reader.ask(&request, THREAD_TIMEOUT)? {
        Response::ThreadSyscalls { states } if states.len() == threads.len() => Ok(states),
        other => Err(reader.unexpected(&other)),
    });
    match answer {
        None => read_here(),
        Some(Ok(states)) => states,
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot read the threads' syscalls; the fence assumes they are still inside");
            vec![ThreadSyscall::Unknown; threads.len()]
        }
    }
}

/// [`read_task_dir`], through the reader once it is installed; `None` when it cannot answer
/// either (callers then fall back as for a directory that is gone).
pub fn task_dir(tgid: u32, tid: u32, fd: Option<i32>) -> Option<PathBuf> {
    let request = Request::TaskDir { tgid, tid, fd };
    let answer = with_reader(|reader| match reader.ask(&request, THREAD_TIMEOUT)? {
        Response::TaskDir { dir } => Ok(dir),
        other => Err(reader.unexpected(&other)),
    });
    match answer {
        None => read_task_dir(tgid, tid, fd),
        Some(Ok(dir)) => dir.map(|dir| PathBuf::from(std::ffi::OsString::from_vec(dir.0))),
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot resolve a relative name");
            None
        }
    }
}

/// Why the reader can no longer answer, if it cannot; looks at its socket first, so a reader
/// that died is noticed (and logged) here even with no request pending.
pub fn failure() -> Option<String> {
    with_reader(|reader| {
        reader.notice_death();
        reader.gone.clone()
    })
    .flatten()
}

/// The reader's pid and state, for `status`; `null` when there is none.
pub fn status() -> serde_json::Value {
    with_reader(|reader| {
        reader.notice_death();
        serde_json::json!({
            "pid": reader.pid.as_raw(),
            "state": if reader.gone.is_some() { "gone" } else { "running" },
            "reason": reader.gone,
            "requests": reader.requests,
            "timeouts": reader.timeouts,
        })
    })
    .unwrap_or(serde_json::Value::Null)
}

static READER: OnceLock<Mutex<ReaderClient>> = OnceLock::new();

fn with_reader<T>(ask: impl FnOnce(&mut ReaderClient) -> T) -> Option<T> {
    let reader = READER.get()?;
    let mut reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
    Some(ask(&mut reader))
}

/// The tracker's end.
struct ReaderClient {
    socket: OwnedFd,
    pid: Pid,
    next_id: u64,
    /// Why it can no longer answer, once it cannot.
    gone: Option<String>,
    requests: u64,
    timeouts: u64,
}

impl ReaderClient {
    fn ask(&mut self, request: &Request, timeout: Duration) -> Result<Response, ReaderError> {
        if let Some(reason) = &self.gone {
            return Err(self.gone_error(reason.clone()));
        }
        self.next_id += 1;
        self.requests += 1;
        let id = self.next_id;
        let deadline = Instant::now() + timeout;
        let message = serde_json::to_vec(request).unwrap_or_default();
        match send_message(self.socket.as_raw_fd(), id, &message, Some(deadline)) {
            Ok(()) => {}
            Err(PacketError::Timeout) => {
                // Part of the message may be out: the stream is no longer usable.
                return Err(self.fail("its socket stayed full".to_owned()));
            }
            Err(error) => return Err(self.fail_with(error)),
        }
        loop {
            match receive_message(self.socket.as_fd(), Some(deadline), MAX_RESPONSE_BYTES) {
                Ok((got, bytes)) if got == id => {
                    return match serde_json::from_slice(&bytes) {
                        Ok(Response::Error { message }) => Err(ReaderError::Failed {
                            pid: self.pid.as_raw(),
                            message,
                        }),
                        Ok(response) => Ok(response),
                        Err(error) => {
                            Err(self.fail(format!("it sent a malformed answer: {error}")))
                        }
                    };
                }
                // The answer to a request we stopped waiting for.
                Ok((got, _)) if got < id => continue,
                Ok((got, _)) => {
                    return Err(self.fail(format!("it answered request {got} before it was asked")));
                }
                Err(PacketError::Timeout) => {
                    self.timeouts += 1;
                    return Err(ReaderError::Timeout {
                        pid: self.pid.as_raw(),
                        timeout,
                    });
                }
                Err(error) => return Err(self.fail_with(error)),
            }
        }
    }

    fn unexpected(&mut self, response: &Response) -> ReaderError {
        let kind = serde_json::to_value(response)
            .ok()
            .and_then(|value| value["response"].as_str().map(str::to_owned))
            .unwrap_or_default();
        self.fail(format!("it sent an answer of the wrong kind ({kind})"))
    }

    fn gone_error(&self, reason: String) -> ReaderError {
        ReaderError::Gone {
            pid: self.pid.as_raw(),
            reason,
        }
    }

    fn fail_with(&mut self, error: PacketError) -> ReaderError {
        match error {
            PacketError::Closed => {
                let reason = self.exit_status();
                self.fail(reason)
            }
            other => self.fail(other.to_string()),
        }
    }

    /// Marks the reader unusable, for good, and says so once in the log. A reader that is still
    /// running gets end-of-file on its socket and exits (this process may not signal it: a
    /// Landlock domain that scopes signals cannot reach a process outside it).
    fn fail(&mut self, reason: String) -> ReaderError {
        if self.gone.is_none() {
            tracing::error!(
                pid = self.pid.as_raw(),
                %reason,
                "the /proc reader is gone: runtime roots (and the eBPF fence's thread states) can no longer be read, so every query fails from now on; a new reader cannot be started after the privilege drop: restart the tracker"
            );
            let _ = nix::sys::socket::shutdown(
                self.socket.as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            );
            self.gone = Some(reason.clone());
        }
        self.gone_error(reason)
    }

    /// Notices a reader that died since the last request (its end of the socket closed).
    fn notice_death(&mut self) {
        if self.gone.is_some() {
            return;
        }
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok()
            && fds[0].revents().is_some_and(|revents| {
                revents.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR)
            })
        {
            let reason = self.exit_status();
            self.fail(reason);
        }
    }

    /// How the reader ended, once its socket closed: only its exit closes it, so the wait
    /// returns at once (and reaps it).
    fn exit_status(&self) -> String {
        match nix::sys::wait::waitpid(self.pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => format!("it exited with status {code}"),
            Ok(WaitStatus::Signaled(_, signal, _)) => format!("it was killed by {signal}"),
            Ok(other) => format!("its socket closed ({other:?})"),
            Err(errno) => format!("its socket closed (wait: {errno})"),
        }
    }
}

/// Forks the reader. Call it while this process has one thread (the child is a copy of it),
/// after the uid switch and before the capability sets are lowered: the child lowers its own
/// to the reader's, which needs CAP_SETPCAP still there. Returns what the reader enforced on
/// itself, as it read it back from the kernel; from then on every read of this module goes
/// through it.
pub fn spawn(layout: &StoreLayout) -> Result<ReaderPrivileges, ReaderError> {
    if READER.get().is_some() {
        return Err(ReaderError::Twice);
    }
    let spawn_error = |step| move |source| ReaderError::Spawn { step, source };
    let (tracker_end, reader_end) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(spawn_error("socketpair"))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the caller guarantees a single thread, so no lock is held by a thread that does
    // not exist in the child; the child never returns from `reader_main`.
    match unsafe { nix::unistd::fork() }.map_err(spawn_error("fork"))? {
        nix::unistd::ForkResult::Child => reader_main(reader_end, parent, layout),
        nix::unistd::ForkResult::Parent { child } => {
            drop(reader_end);
            let mut client = ReaderClient {
                socket: tracker_end,
                pid: child,
                next_id: 0,
                gone: None,
                requests: 0,
                timeouts: 0,
            };
            let hello = receive_message(
                client.socket.as_fd(),
                Some(Instant::now() + HELLO_TIMEOUT),
                MAX_RESPONSE_BYTES,
            );
            let privileges = match hello {
                Ok((0, bytes)) => match serde_json::from_slice(&bytes) {
                    Ok(Response::Hello { privileges }) => privileges,
                    Ok(Response::Error { message }) => {
                        return Err(ReaderError::Refused { message });
                    }
                    Ok(other) => return Err(client.unexpected(&other)),
                    Err(error) => return Err(client.fail(format!("malformed hello: {error}"))),
                },
                Ok((id, _)) => return Err(client.fail(format!("it began with message {id}"))),
                Err(PacketError::Timeout) => {
                    return Err(client.fail(format!("no hello within {HELLO_TIMEOUT:?}")));
                }
                Err(error) => return Err(client.fail_with(error)),
            };
            tracing::info!(pid = child.as_raw(), capabilities = ?privileges.capabilities.keys().collect::<Vec<_>>(), "the /proc reader confined itself");
            READER
                .set(Mutex::new(client))
                .map_err(|_| ReaderError::Twice)?;
            Ok(privileges)
        }
    }
}

/// The reader process: moves its socket to [`READER_FD`], closes everything else but stdio,
/// confines itself, says hello and answers until the tracker's end closes.
fn reader_main(socket: OwnedFd, parent: Pid, layout: &StoreLayout) -> ! {
    use std::os::fd::IntoRawFd as _;
    let socket = socket.into_raw_fd();
    // SAFETY: dup2 and close_range take integers; every descriptor closed here belongs to
    // objects of the tracker that this process never uses again (it leaves with _exit, so no
    // destructor runs either).
    let moved = unsafe {
        (socket == READER_FD || libc::dup2(socket, READER_FD) == READER_FD)
            && libc::syscall(
                libc::SYS_close_range,
                (READER_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            ) == 0
    };
    if !moved {
        tracing::error!(error = %Errno::last(), "the /proc reader cannot close the tracker's descriptors");
        // SAFETY: _exit ends the process without running anything inherited.
        unsafe { libc::_exit(1) }
    }
    let hello = match crate::privilege::confine_reader(READER_FD, parent) {
        Ok(privileges) => Response::Hello { privileges },
        Err(error) => {
            let message = format!("{:#}", anyhow::Error::from(error));
            let reply = serde_json::to_vec(&Response::Error { message }).unwrap_or_default();
            let _ = send_message(READER_FD, 0, &reply, None);
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    };
    if send_message(
        READER_FD,
        0,
        &serde_json::to_vec(&hello).unwrap_or_default(),
        None,
    )
    .is_err()
    {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: READER_FD is this process's open socket from here on, never closed before exit.
    let socket = unsafe { BorrowedFd::borrow_raw(READER_FD) };
    let code = serve(socket, layout);
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Answers requests until end-of-file (0) or a broken stream (1).
fn serve(socket: BorrowedFd<'_>, layout: &StoreLayout) -> i32 {
    let proc_dir = Path::new("/proc");
    loop {
        let (id, bytes) = match receive_message(socket, None, MAX_REQUEST_BYTES) {
            Ok(message) => message,
            Err(PacketError::Closed) => return 0,
            Err(error) => {
                tracing::error!(%error, "the /proc reader stops: its request stream is broken");
                return 1;
            }
        };
        let response = match serde_json::from_slice::<Request>(&bytes) {
            Ok(Request::RuntimeRoots {}) => Response::RuntimeRoots {
                found: read_runtime_roots(layout, proc_dir),
            },
            Ok(Request::ThreadSyscalls { threads }) => Response::ThreadSyscalls {
                states: threads
                    .into_iter()
                    .map(|(tgid, tid)| read_thread_syscall(tgid, tid))
                    .collect(),
            },
            Ok(Request::TaskDir { tgid, tid, fd }) => Response::TaskDir {
                dir: read_task_dir(tgid, tid, fd)
                    .map(|dir| WireBytes(dir.into_os_string().into_encoded_bytes())),
            },
            Err(error) => Response::Error {
                message: format!("malformed request: {error}"),
            },
        };
        let reply = match serde_json::to_vec(&response) {
            Ok(reply) => reply,
            Err(error) => serde_json::to_vec(&Response::Error {
                message: format!("cannot encode the answer: {error}"),
            })
            .unwrap_or_default(),
        };
        if let Err(error) = send_message(socket.as_raw_fd(), id, &reply, None) {
            if !matches!(error, PacketError::Closed) {
                tracing::error!(%error, "the /proc reader cannot answer");
            }
            return 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PacketError {
    #[error("the other end closed the socket")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("a packet is malformed: {0}")]
    Malformed(String),
    #[error("a message exceeds {limit} bytes")]
    TooLong { limit: usize },
    #[error("socket error: {0}")]
    Io(Errno),
}

/// Sends `message` as packets of id `id`; waits for room until `deadline` (`None`: forever).
fn send_message(
    socket: RawFd,
    id: u64,
    message: &[u8],
    deadline: Option<Instant>,
) -> Result<(), PacketError> {
    let mut pieces = message.chunks(PACKET_BYTES - HEADER_BYTES).peekable();
    let mut packet = Vec::with_capacity(PACKET_BYTES);
    // An empty message is still one (last) packet.
    let mut first = true;
    while first || pieces.peek().is_some() {
        first = false;
        let piece = pieces.next().unwrap_or_default();
        packet.clear();
        packet.extend_from_slice(&id.to_le_bytes());
        packet.push(u8::from(pieces.peek().is_none()));
        packet.extend_from_slice(piece);
        loop {
            // SAFETY: `socket` is an open descriptor for the whole call.
            let fd = unsafe { BorrowedFd::borrow_raw(socket) };
            wait_for(fd, nix::poll::PollFlags::POLLOUT, deadline)?;
            match nix::sys::socket::send(
                socket,
                &packet,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(_) => break,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(PacketError::Closed),
                Err(errno) => return Err(PacketError::Io(errno)),
            }
        }
    }
    Ok(())
}

/// Receives one whole message: its id and its bytes. Packets of an earlier message that was
/// cut short (its reader gave up) are dropped when a new id starts.
fn receive_message(
    socket: BorrowedFd<'_>,
    deadline: Option<Instant>,
    limit: usize,
) -> Result<(u64, Vec<u8>), PacketError> {
    let mut buffer = vec![0u8; PACKET_BYTES + 1];
    let mut message: Option<(u64, Vec<u8>)> = None;
    loop {
        wait_for(socket, nix::poll::PollFlags::POLLIN, deadline)?;
        let length =
            match nix::sys::socket::recv(socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Err(PacketError::Closed),
                Ok(length) => length,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Err(PacketError::Closed),
                Err(errno) => return Err(PacketError::Io(errno)),
            };
        if !(HEADER_BYTES..=PACKET_BYTES).contains(&length) {
            return Err(PacketError::Malformed(format!("{length} bytes")));
        }
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&buffer[..8]);
        let id = u64::from_le_bytes(id_bytes);
        let last = match buffer[8] {
            0 => false,
            1 => true,
            other => return Err(PacketError::Malformed(format!("flag {other}"))),
        };
        let (current, bytes) = match message.take() {
            Some((current, bytes)) if current == id => (current, bytes),
            _ => (id, Vec::new()),
        };
        let mut bytes = bytes;
        if bytes.len() + length - HEADER_BYTES > limit {
            return Err(PacketError::TooLong { limit });
        }
        bytes.extend_from_slice(&buffer[HEADER_BYTES..length]);
        if last {
            return Ok((current, bytes));
        }
        message = Some((current, bytes));
    }
}

/// Waits until `socket` is ready for `events` (or hung up), until `deadline`.
fn wait_for(
    socket: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: Option<Instant>,
) -> Result<(), PacketError> {
    loop {
        let timeout = match deadline {
            None => nix::poll::PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(PacketError::Timeout);
                }
                // Rounded up, so a remainder under a millisecond still waits.
                let millis = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
                nix::poll::PollTimeout::from(millis)
            }
        };
        let mut fds = [nix::poll::PollFd::new(socket, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(PacketError::Io(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    /// Messages of any size arrive whole and in order; a cut-short message is dropped when the
    /// next one starts; the limit holds; end-of-file is told apart.
    #[test]
    fn messages_survive_packets() {
        let (a, b) = pair();
        let big: Vec<u8> = (0..(PACKET_BYTES * 3 + 17)).map(|i| i as u8).collect();
        let deadline = || Some(Instant::now() + Duration::from_secs(5));
        let sender = std::thread::spawn({
            let big = big.clone();
            let fd = a.as_raw_fd();
            move || {
                send_message(fd, 1, b"", deadline()).unwrap();
                send_message(fd, 2, &big, deadline()).unwrap();
                // The first packet of message 3, then message 4 whole.
                let mut packet = 3u64.to_le_bytes().to_vec();
                packet.push(0);
                packet.extend_from_slice(b"cut");
                nix::sys::socket::send(fd, &packet, MsgFlags::empty()).unwrap();
                send_message(fd, 4, b"whole", deadline()).unwrap();
                send_message(fd, 5, &[b'x'; 2000], deadline()).unwrap();
            }
        });
        let receive = |limit| receive_message(b.as_fd(), deadline(), limit);
        assert_eq!(receive(usize::MAX).unwrap(), (1, Vec::new()));
        assert_eq!(receive(usize::MAX).unwrap(), (2, big.clone()));
        assert_eq!(receive(usize::MAX).unwrap(), (4, b"whole".to_vec()));
        assert!(matches!(
            receive(1000),
            Err(PacketError::TooLong { limit: 1000 })
        ));
        sender.join().unwrap();
        drop(a);
        assert!(matches!(receive(usize::MAX), Err(PacketError::Closed)));
        assert!(matches!(
            receive_message(b.as_fd(), Some(Instant::now()), 10),
            Err(PacketError::Closed | PacketError::Timeout)
        ));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, b) = pair();
        let started = Instant::now();
        assert!(matches!(
            receive_message(b.as_fd(), Some(started + Duration::from_millis(30)), 10),
            Err(PacketError::Timeout)
        ));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    /// Requests and answers keep their bytes: a path that is not UTF-8 comes back as it was.
    #[test]
    fn wire_types_round_trip() {
        let request = Request::TaskDir {
            tgid: 7,
            tid: 8,
            fd: Some(3),
        };
        let text = serde_json::to_vec(&request).unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&text).unwrap(), request);
        let response = Response::TaskDir {
            dir: Some(WireBytes(b"/home/a\n\xff".to_vec())),
        };
        let text = serde_json::to_vec(&response).unwrap();
        match serde_json::from_slice::<Response>(&text).unwrap() {
            Response::TaskDir { dir } => assert_eq!(dir.unwrap().0, b"/home/a\n\xff"),
            other => panic!("{other:?}"),
        }
    }

    /// The reads a reader makes equal the reads made here (no reader is installed in tests):
    /// this thread is inside no syscall while it reads, and its working directory is ours.
    #[test]
    fn direct_reads_of_this_thread() {
        let pid = std::process::id();
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert_eq!(
            task_dir(pid, tid, None).unwrap(),
            std::env::current_dir().unwrap()
        );
        // A thread reading its own syscall file is inside that read.
        assert_eq!(
            thread_syscalls(&[(pid, tid)]),
            [ThreadSyscall::Number(libc::SYS_read)]
        );
        assert_eq!(thread_syscalls(&[(pid, u32::MAX)]), [ThreadSyscall::Gone]);
    }
}
