//! Privilege drop after attach (DESIGN.md invariant 6): once the source and the state watch are
//! attached, the tracker switches to the unprivileged user of `--user` (if given), forks its
//! /proc reader (`proc_reader.rs`), keeps only the capabilities its loop still uses, sets
//! no_new_privs, leaves the network for an empty network namespace, and confines every one of
//! its threads with Landlock: they may write only beneath the index's and the sockets'
//! directories.
//!
//! Invariant: [`drop_privileges`] runs while the process has exactly one thread, so every thread
//! started later inherits the new uid, the reduced sets and the Landlock domain, and the reader
//! is forked from a process with nothing else running; what was kept and enforced is read back
//! from the kernel and reported as found, never as intended.
//!
//! With `--user NAME` every uid and gid (real, effective, saved, filesystem) becomes that user's
//! and the supplementary groups are cleared. The securebits are locked first, with
//! `SECBIT_NO_SETUID_FIXUP`, so that the kernel leaves the capability sets alone when the uids
//! leave 0; the sets are then lowered as without `--user`, and CAP_SETUID/CAP_SETGID go with
//! everything else. Before the switch the tracker hands that user the directories it created for
//! its index and sockets and the index's files (`lchown`, never following a link), so it can
//! keep writing them; a directory that already existed is not given away and must already be
//! writable by the user. A uid that owns nothing outside its own directories cannot write
//! root-owned files, which uid 0 without `CAP_DAC_OVERRIDE` could: root owns `/etc/passwd`.
//! Callers' `SO_PEERCRED` uid 0 is still root.
//!
//! The capabilities kept for reading reach further than reading, whatever the uid:
//! CAP_SYS_PTRACE lets `ptrace`, `process_vm_writev` and `pidfd_getfd` act inside a root
//! process (checked on this kernel: a non-root process with CAP_SYS_PTRACE attaches to root's
//! and takes its fds), and CAP_SYS_ADMIN (fanotify) lets `mount` cover any file and `bpf` load
//! programs. The seccomp filter refuses those syscalls to every thread ([`refused_syscalls`]).
//!
//! Landlock confines every thread of the tracker process. A Landlock domain may not
//! ptrace-access a process outside it, so the ptrace-mode `/proc` reads (runtime roots as Nix's
//! `findRuntimeRoots` reads them, the eBPF fence's `/proc/<pid>/task/<tid>/syscall`) are made by
//! the /proc reader, a process forked before the domain exists and kept out of it: it holds
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH only, and a seccomp allow-list that opens files
//! read-only and writes to nothing but stderr and its socket ([`confine_reader`]; the reasons
//! it has no Landlock domain are in `proc_reader.rs`).
//!
//! Without `--user` the process stays uid 0 (a warning recommends `--user`, and `status` says
//! so): without `CAP_DAC_OVERRIDE`, `CAP_FOWNER` and `CAP_CHOWN` it still owns every root-owned
//! file; Landlock keeps its writes to its directories, but the reader, which Landlock cannot
//! confine, keeps CAP_SYS_PTRACE as uid 0, and as `--user` the kernel's owner checks stop it
//! from opening what root owns (`/proc/<pid>/mem` of root's processes, say) even where a
//! syscall filter cannot tell a write from a read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;

/// Why the privilege drop failed. Any of these stops `root-tracker run`: a tracker that meant to
/// drop and could not must not carry on with everything.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "{count} threads exist at the privilege drop; capabilities are per thread, so the others would keep theirs"
    )]
    OtherThreads { count: usize },
    #[error("cannot count this process's threads in /proc/self/task")]
    Threads {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {step} the capability sets")]
    Capabilities {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set the securebits that stop uid 0 from regaining capabilities")]
    Securebits {
        #[source]
        source: Errno,
    },
    #[error("cannot set no_new_privs")]
    NoNewPrivs {
        #[source]
        source: Errno,
    },
    #[error("cannot move into an empty network namespace")]
    Network {
        #[source]
        source: Errno,
    },
    #[error("cannot install the seccomp filter (non-Unix sockets, namespaces, ptrace, mounts)")]
    Seccomp {
        #[source]
        source: seccompiler::Error,
    },
    #[error("the {backend} source stopped working with the reduced capabilities: {message}")]
    SourceProbe {
        backend: &'static str,
        message: String,
    },
    #[error("the kernel reports {set} = {found:?} after the drop, expected {expected:?}")]
    Verify {
        set: &'static str,
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("cannot create the socket's directory {path:?} before confining writes")]
    SocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot look up the user {spec:?} for --user")]
    UserLookup {
        spec: String,
        #[source]
        source: Errno,
    },
    #[error("--user {spec:?}: no such user in the password database")]
    UnknownUser { spec: String },
    #[error(
        "--user {spec:?} is uid {uid}, gid {gid}: the tracker must run as a user other than root whose primary group is not root's"
    )]
    PrivilegedUser { spec: String, uid: u32, gid: u32 },
    #[error("cannot create the tracker's directory {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {path:?} to the --user {user:?}")]
    HandOver {
        path: PathBuf,
        user: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot switch to the uid and gid of --user {user:?} (uid {uid}, gid {gid}): {step}")]
    SwitchUser {
        user: String,
        uid: u32,
        gid: u32,
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot read this thread's uids and gids back from /proc/thread-self/status")]
    ReadIdentity {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel reports uids {uids:?}, gids {gids:?}, groups {groups:?} after the switch, expected uid {uid} and gid {gid} everywhere and no groups"
    )]
    VerifyIdentity {
        uids: Vec<u32>,
        gids: Vec<u32>,
        groups: Vec<u32>,
        uid: u32,
        gid: u32,
    },
    #[error("cannot start the /proc reader")]
    Reader {
        #[source]
        source: crate::proc_reader::ReaderError,
    },
    #[error("cannot confine the /proc reader: {step}")]
    ReaderSetup {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("the tracker ended before its /proc reader was ready")]
    ReaderOrphaned,
    #[error(
        "{path:?} is not writable by --user {user:?}; the tracker keeps its index or socket there (give that directory to the user, or name one the tracker creates)"
    )]
    NotWritable {
        path: PathBuf,
        user: String,
        #[source]
        source: Errno,
    },
}

/// The unprivileged user `run --user` switches to, from the password database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerUser {
    pub name: String,
    pub uid: u32,
    /// The user's primary group; the only group the tracker keeps.
    pub gid: u32,
}

impl TrackerUser {
    /// `spec` is a user name or a numeric uid; either must have a password-database entry,
    /// which gives the primary group. Root, and a user whose primary group is root's, are
    /// refused: switching to them would keep the write access the switch is meant to remove.
    /// Call it before the privilege drop: the lookup may load NSS modules and read files.
    pub fn lookup(spec: &str) -> Result<Self, PrivilegeError> {
        let found = match spec.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(spec),
        }
        .map_err(|source| PrivilegeError::UserLookup {
            spec: spec.to_owned(),
            source,
        })?;
        let user = found.ok_or_else(|| PrivilegeError::UnknownUser {
            spec: spec.to_owned(),
        })?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        if uid == 0 || gid == 0 {
            return Err(PrivilegeError::PrivilegedUser {
                spec: spec.to_owned(),
                uid,
                gid,
            });
        }
        Ok(Self {
            name: user.name,
            uid,
            gid,
        })
    }
}

/// Creates each of `dirs` that is missing, with its missing parents, and returns the ones this
/// call created (each once). Only those are the tracker's to give to `--user`
/// ([`hand_over`]); a directory that existed before may be shared (`/run`, a state dir).
pub fn create_own_dirs(dirs: &[&Path]) -> Result<Vec<PathBuf>, PrivilegeError> {
    let mut created: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let create_error = |source| PrivilegeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(dir) {
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(create_error(error)),
        }
        std::fs::create_dir_all(dir).map_err(create_error)?;
        if !created.iter().any(|known| known == dir) {
            created.push(dir.to_path_buf());
        }
    }
    Ok(created)
}

/// Gives `user` the directories the tracker created for itself and those of `files` that
/// exist (the index database and its `-wal`/`-shm`), so that it can keep writing them after the
/// switch and remove its sockets and WAL files at exit. `lchown`: a link left in these
/// directories by an earlier run as that user is changed itself, never what it points to (and
/// SQLite opens every file with `O_NOFOLLOW`). Call it while still root (CAP_CHOWN).
pub fn hand_over(
    user: &TrackerUser,
    created_dirs: &[PathBuf],
    files: &[PathBuf],
) -> Result<(), PrivilegeError> {
    let hand_over_error = |path: &Path| {
        let path = path.to_path_buf();
        let user = user.name.clone();
        move |source| PrivilegeError::HandOver { path, user, source }
    };
    for dir in created_dirs {
        std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))
            .map_err(hand_over_error(dir))?;
    }
    for file in files {
        match std::os::unix::fs::lchown(file, Some(user.uid), Some(user.gid)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(hand_over_error(file)(error)),
        }
    }
    tracing::info!(user = %user.name, dirs = ?created_dirs, files = ?files, "handed the tracker's own files to its user");
    Ok(())
}

/// Which capabilities the tracker loop still uses after attach, each with the reason. Not
/// CAP_SYS_PTRACE: its ptrace-mode `/proc` reads are the reader's ([`reader_needs`]).
fn needed(backend: &str) -> Vec<(Capability, &'static str)> {
    let mut keep = vec![(
        Capability::CAP_DAC_READ_SEARCH,
        "read every user's links and directories (0700 homes), temp-root files, and resolve fanotify directory handles (open_by_handle_at)",
    )];
    if backend == "fanotify" {
        keep.push((
            Capability::CAP_SYS_ADMIN,
            "add and remove FAN_MARK_FILESYSTEM marks when a watched path reaches another filesystem or mounts change",
        ));
    }
    keep
}

/// What [`drop_privileges`] achieved, as read back from the kernel; serialized into `status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Privileges {
    /// False only with `--keep-privileges`.
    pub dropped: bool,
    /// The capabilities left in the effective, permitted and bounding sets, and why each stays.
    pub capabilities: BTreeMap<String, String>,
    pub no_new_privs: bool,
    /// `SECBIT_NOROOT` and friends, locked: an exec as uid 0 gains nothing.
    pub securebits_locked: bool,
    pub network: Network,
    /// What the seccomp filter refuses every thread: the network, namespaces, io_uring, and
    /// what would turn the capabilities kept for reading into writing as root (ptrace,
    /// mounts, and for fanotify new BPF programs).
    pub refused_syscalls: Vec<String>,
    pub landlock: Landlock,
    /// The uid and gids the process runs as.
    pub identity: Identity,
    /// The /proc reader process and what it enforced on itself (`null` with
    /// `--keep-privileges`, which reads `/proc` in the tracker itself).
    pub proc_reader: Option<crate::proc_reader::ReaderPrivileges>,
}

/// Who the tracker runs as, read back from the kernel (`/proc/thread-self/status`); after the
/// drop every thread has the same, since they all start after it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Identity {
    /// `--user`'s name; `null` without it.
    pub user: Option<String>,
    /// Effective uid (with `--user`, real, saved and filesystem uid are checked to be the same).
    pub uid: u32,
    /// Effective gid (likewise checked with `--user`).
    pub gid: u32,
    /// Supplementary groups (none with `--user`).
    pub groups: Vec<u32>,
    /// True without `--user`: uid 0, which owns every root-owned file.
    pub uid_0_kept: bool,
    pub note: String,
}

/// What the kernel lists for this thread: real, effective, saved and filesystem ids.
struct KernelIds {
    uids: Vec<u32>,
    gids: Vec<u32>,
    groups: Vec<u32>,
}

impl KernelIds {
    fn read() -> Result<Self, PrivilegeError> {
        let status = std::fs::read_to_string("/proc/thread-self/status")
            .map_err(|source| PrivilegeError::ReadIdentity { source })?;
        let field = |name: &str| -> Result<Vec<u32>, PrivilegeError> {
            let malformed = || PrivilegeError::ReadIdentity {
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("no well-formed {name} line"),
                ),
            };
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .ok_or_else(malformed)?;
            line.split_whitespace()
                .map(|id| id.parse().map_err(|_| malformed()))
                .collect()
        };
        Ok(Self {
            uids: field("Uid")?,
            gids: field("Gid")?,
            groups: field("Groups")?,
        })
    }

    /// The identity `status` reports; with `user`, fails unless every id is that user's.
    fn identity(self, user: Option<&TrackerUser>) -> Result<Identity, PrivilegeError> {
        let effective = |ids: &[u32]| ids.get(1).copied().unwrap_or(u32::MAX);
        let Some(user) = user else {
            return Ok(Identity {
                user: None,
                uid: effective(&self.uids),
                gid: effective(&self.gids),
                groups: self.groups,
                uid_0_kept: true,
                note: "uid 0 kept (no --user): it owns every root-owned file; Landlock keeps the \
                       tracker's writes to its directories and the /proc reader opens nothing for \
                       writing, but a uid of its own is the wall that holds if either fails"
                    .to_owned(),
            });
        };
        let all = |ids: &[u32], id: u32| ids.len() == 4 && ids.iter().all(|&found| found == id);
        if !all(&self.uids, user.uid) || !all(&self.gids, user.gid) || !self.groups.is_empty() {
            return Err(PrivilegeError::VerifyIdentity {
                uids: self.uids,
                gids: self.gids,
                groups: self.groups,
                uid: user.uid,
                gid: user.gid,
            });
        }
        Ok(Identity {
            user: Some(user.name.clone()),
            uid: user.uid,
            gid: user.gid,
            groups: Vec::new(),
            uid_0_kept: false,
            note: "real, effective, saved and filesystem uid and gid are --user's; no supplementary groups".to_owned(),
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Network {
    /// "empty namespace": a network namespace of our own, holding only a down loopback.
    pub namespace: String,
    /// A seccomp filter refuses `socket`/`socketpair` for every family but AF_UNIX, and
    /// `setns`, `unshare` and `io_uring_setup`, so even CAP_SYS_ADMIN cannot get back out
    /// (the whole list is `Privileges::refused_syscalls`).
    pub seccomp: bool,
}

/// Landlock's state on the tracker process (every thread; see the module header).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Landlock {
    /// "fully_enforced", "partially_enforced" (the kernel lacks part of ABI 6: e.g. no TCP
    /// rules before ABI 4) or "not_enforced" (no Landlock, or `--keep-privileges`).
    pub state: String,
    /// The kernel's Landlock ABI (0: none).
    pub kernel_abi: i32,
    /// The threads it applies to: `["all"]` once enforced.
    pub threads: Vec<String>,
    /// Where those threads may create, write, remove or rename.
    pub writable: Vec<PathBuf>,
    pub unrestricted: String,
}

impl Privileges {
    /// What `--keep-privileges` reports: nothing dropped.
    pub fn kept() -> Self {
        Self {
            dropped: false,
            capabilities: BTreeMap::from([(
                "all".to_owned(),
                "--keep-privileges (debugging)".to_owned(),
            )]),
            no_new_privs: no_new_privs().unwrap_or(false),
            securebits_locked: false,
            network: Network {
                namespace: "host".to_owned(),
                seccomp: false,
            },
            refused_syscalls: Vec::new(),
            landlock: Landlock {
                state: "not_enforced".to_owned(),
                kernel_abi: landlock_abi(),
                threads: Vec::new(),
                writable: Vec::new(),
                unrestricted: "every thread (--keep-privileges)".to_owned(),
            },
            proc_reader: None,
            identity: KernelIds::read()
                .and_then(|ids| ids.identity(None))
                .unwrap_or_else(|error| Identity {
                    user: None,
                    uid: u32::MAX,
                    gid: u32::MAX,
                    groups: Vec::new(),
                    uid_0_kept: true,
                    note: format!("unknown: {error}"),
                }),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Drops what the tracker loop does not need. Call it after the source and the state watch are
/// attached, and everything else that needs uid 0 is open, and before any other thread starts.
/// With `user`, every uid and gid becomes that user's, and each of `writable` (the
/// directories of the index and the sockets) must then be writable by it. `probe` exercises
/// the source with the reduced effective set, as the final uid (e.g. a map update): before
/// Linux 6.5 a system with `kernel.unprivileged_bpf_disabled` set refuses every `bpf()`
/// command without CAP_BPF, even on maps already open, and then CAP_BPF (CAP_SYS_ADMIN where
/// CAP_BPF is unknown) is kept. The /proc reader is forked on the way, after the uid switch:
/// from then on this process's ptrace-mode `/proc` reads go through it (`proc_reader.rs`).
pub fn drop_privileges(
    backend: &'static str,
    user: Option<&TrackerUser>,
    writable: &[&Path],
    layout: &crate::layout::StoreLayout,
    probe: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Privileges, PrivilegeError> {
    let others = wait_for_single_thread()?;
    if others != 0 {
        return Err(PrivilegeError::OtherThreads { count: others + 1 });
    }
    // An empty network namespace first: unshare needs CAP_SYS_ADMIN, which may go below. The
    // tracker's socket is path-bound, and path-bound Unix sockets connect across namespaces.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| PrivilegeError::Network { source })?;
    // Before the uid switch: SECBIT_NO_SETUID_FIXUP makes the kernel keep the capability sets
    // when the uids leave 0 (otherwise it would empty them), so the sets are lowered below by
    // name, the same way with and without --user, and nothing depends on SECBIT_KEEP_CAPS.
    lock_securebits()?;
    if let Some(user) = user {
        // Still single-threaded: credentials are per thread, and every thread started later
        // inherits these.
        switch_user(user)?;
    }
    // Still one thread, in the empty network namespace, as --user, with every capability the
    // reader may keep: it lowers its own sets (CAP_SETPCAP is still there for its bounding set).
    let proc_reader =
        crate::proc_reader::spawn(layout).map_err(|source| PrivilegeError::Reader { source })?;

    let mut keep = needed(backend);
    let caps_error = |step| move |source| PrivilegeError::Capabilities { step, source };
    // CAP_SETPCAP stays effective until the bounding set is done.
    let set_effective = |keep: &[(Capability, &str)]| {
        let mut effective: CapsHashSet = keep.iter().map(|(cap, _)| *cap).collect();
        effective.insert(Capability::CAP_SETPCAP);
        caps::set(None, CapSet::Effective, &effective).map_err(caps_error("lower"))
    };
    set_effective(&keep)?;
    if let Err(message) = probe() {
        let supported = caps::runtime::thread_all_supported();
        let extra = if supported.contains(&Capability::CAP_BPF) {
            Capability::CAP_BPF
        } else {
            Capability::CAP_SYS_ADMIN
        };
        tracing::warn!(%message, capability = %extra, "the source needs another capability after attach; keeping it");
        if !keep.iter().any(|(cap, _)| *cap == extra) {
            keep.push((
                extra,
                "this kernel refuses bpf() on open maps without it (unprivileged_bpf_disabled, Linux < 6.5)",
            ));
        }
        set_effective(&keep)?;
        probe().map_err(|message| PrivilegeError::SourceProbe { backend, message })?;
    }
    let kept: CapsHashSet = keep.iter().map(|(cap, _)| *cap).collect();

    keep_only(&kept)?;

    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(set).map_err(|source| PrivilegeError::NoNewPrivs { source })?;
    // A seccomp filter needs no_new_privs (or CAP_SYS_ADMIN) to be installed.
    forbid_syscalls(backend)?;

    verify(&kept)?;
    let identity = KernelIds::read()?.identity(user)?;
    if let Some(user) = user {
        // Now, without CAP_DAC_OVERRIDE, access(2) answers for the user.
        check_writable(user, writable)?;
    }
    let privileges = Privileges {
        dropped: true,
        capabilities: keep
            .iter()
            .map(|(cap, why)| (cap.to_string(), (*why).to_owned()))
            .collect(),
        no_new_privs: no_new_privs().unwrap_or(false),
        securebits_locked: true,
        network: Network {
            namespace: "empty namespace".to_owned(),
            seccomp: true,
        },
        refused_syscalls: refused_syscalls(backend)
            .into_iter()
            .map(|(name, _)| name.to_owned())
            .collect(),
        landlock: Landlock {
            state: "not_enforced".to_owned(),
            kernel_abi: landlock_abi(),
            threads: Vec::new(),
            writable: Vec::new(),
            unrestricted: "every thread (not applied yet)".to_owned(),
        },
        identity,
        proc_reader: Some(proc_reader),
    };
    tracing::info!(
        capabilities = ?privileges.capabilities.keys().collect::<Vec<_>>(),
        no_new_privs = privileges.no_new_privs,
        uid = privileges.identity.uid,
        gid = privileges.identity.gid,
        "privileges dropped; network: empty namespace, non-Unix sockets refused"
    );
    Ok(privileges)
}

/// Supplementary groups cleared, then real, effective and saved gid, then uid (the filesystem
/// ids follow the effective ones). Needs CAP_SETGID and CAP_SETUID, which the capability
/// reduction that follows removes; with `SECBIT_NO_SETUID_FIXUP` locked the kernel leaves the
/// capability sets as they were.
fn switch_user(user: &TrackerUser) -> Result<(), PrivilegeError> {
    let switch_error = |step| {
        move |source| PrivilegeError::SwitchUser {
            user: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
            step,
            source,
        }
    };
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setgroups(&[]).map_err(switch_error("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(switch_error("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(switch_error("setresuid"))?;
    Ok(())
}

/// Each of `dirs` must be writable and searchable by the user: the index's WAL files and the
/// sockets are created and removed there.
fn check_writable(user: &TrackerUser, dirs: &[&Path]) -> Result<(), PrivilegeError> {
    use nix::unistd::AccessFlags;
    for dir in dirs {
        nix::unistd::access(*dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|source| {
            PrivilegeError::NotWritable {
                path: dir.to_path_buf(),
                user: user.name.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// How long a thread that was joined may take to leave `/proc/self/task`.
const THREAD_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts the other threads that can still run user code. A joined thread (the eBPF attach
/// runs in one, with its own mount namespace) stays listed while the kernel tears it down, but
/// it has released its memory map by then and never returns to user space: a task without
/// one (no `VmSize` line) or a zombie does not count. The kernel gives no notice of the
/// moment between the join and the release of the map, so this looks again, for a bounded
/// time, until only such tasks are left.
fn wait_for_single_thread() -> Result<usize, PrivilegeError> {
    let deadline = std::time::Instant::now() + THREAD_EXIT_GRACE;
    let own = nix::unistd::gettid().as_raw().to_string();
    loop {
        let mut others = 0;
        for entry in std::fs::read_dir("/proc/self/task")
            .map_err(|source| PrivilegeError::Threads { source })?
        {
            let entry = entry.map_err(|source| PrivilegeError::Threads { source })?;
            if entry.file_name().to_str() == Some(own.as_str()) {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue; // gone
            };
            let exiting = status.lines().any(|line| {
                line.starts_with("State:") && (line.contains("(zombie)") || line.contains("(dead)"))
            }) || !status.lines().any(|line| line.starts_with("VmSize:"));
            if !exiting {
                others += 1;
            }
        }
        if others == 0 || std::time::Instant::now() >= deadline {
            return Ok(others);
        }
        std::thread::yield_now();
    }
}

/// Reads the sets back: the kernel's word, not our intention, goes into `status`.
fn verify(kept: &CapsHashSet) -> Result<(), PrivilegeError> {
    let names = |set: &CapsHashSet| {
        let mut names: Vec<String> = set.iter().map(ToString::to_string).collect();
        names.sort();
        names
    };
    for (set, name, expected) in [
        (CapSet::Effective, "CapEff", kept.clone()),
        (CapSet::Permitted, "CapPrm", kept.clone()),
        (CapSet::Inheritable, "CapInh", CapsHashSet::new()),
        (CapSet::Ambient, "CapAmb", CapsHashSet::new()),
        (CapSet::Bounding, "CapBnd", kept.clone()),
    ] {
        let is_bounding = name == "CapBnd";
        let found = caps::read(None, set).map_err(|source| PrivilegeError::Capabilities {
            step: "read back",
            source,
        })?;
        // The bounding set may lack a kept capability the container never had.
        let matches = if is_bounding {
            found.is_subset(&expected)
        } else {
            found == expected
        };
        if !matches {
            return Err(PrivilegeError::Verify {
                set: name,
                found: names(&found),
                expected: names(&expected),
            });
        }
    }
    Ok(())
}

/// `SECBIT_NOROOT`, `SECBIT_NO_SETUID_FIXUP`, `SECBIT_NO_CAP_AMBIENT_RAISE`, each locked: uid 0
/// regains no capability by exec, and nothing can undo that. The tracker never execs; this
/// closes the door for code that would. `SECBIT_NO_SETUID_FIXUP` also keeps the capability
/// sets through the `--user` switch ([`switch_user`]), which would otherwise empty them.
fn lock_securebits() -> Result<(), PrivilegeError> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) takes integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
    Errno::result(set)
        .map(drop)
        .map_err(|source| PrivilegeError::Securebits { source })
}

fn no_new_privs() -> Result<bool, Errno> {
    // SAFETY: prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) takes integer arguments only.
    let value = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    Errno::result(value).map(|value| value == 1)
}

/// The syscalls the filter refuses to every thread (some only for some arguments, see
/// [`syscall_filter`]), by name, for `status`.
fn refused_syscalls(backend: &str) -> Vec<(&'static str, i64)> {
    let mut refused = vec![
        // The network namespace is empty, but CAP_SYS_ADMIN (kept for fanotify) could `setns`
        // back into the host's through `/proc/1/ns/net`; io_uring's IORING_OP_SOCKET (and its
        // file operations) would bypass this filter.
        ("socket (all but AF_UNIX)", libc::SYS_socket),
        ("socketpair (all but AF_UNIX)", libc::SYS_socketpair),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        // CAP_SYS_PTRACE is kept to *read* other processes' /proc entries. With these it would
        // write another process's memory or take its file descriptors — a root process's,
        // whatever our uid — and so write anything as root.
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
        // CAP_SYS_ADMIN (fanotify) would let it mount over any file; the tracker mounts nothing
        // after attach.
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
    ];
    if backend != "ebpf" {
        // With CAP_SYS_ADMIN, new BPF or perf programs could write other processes' memory.
        // The eBPF backend keeps bpf() for its map updates, without CAP_SYS_ADMIN (unless an
        // old kernel needs it: see `drop_privileges`).
        refused.push(("bpf", libc::SYS_bpf));
        refused.push(("perf_event_open", libc::SYS_perf_event_open));
    }
    refused
}

/// The seccomp filter for `backend`: every syscall of [`refused_syscalls`] fails with EPERM
/// (`socket` and `socketpair` for every family but AF_UNIX: tokio's signal pipe and our
/// clients' are Unix sockets).
fn syscall_filter(backend: &str) -> Result<seccompiler::BpfProgram, PrivilegeError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let seccomp_error = |source| PrivilegeError::Seccomp { source };
    let backend_error = |source| PrivilegeError::Seccomp {
        source: seccompiler::Error::Backend(source),
    };
    let not_unix = || -> Result<Vec<SeccompRule>, seccompiler::Error> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )?])?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in refused_syscalls(backend) {
        let rule = if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
            not_unix().map_err(seccomp_error)?
        } else {
            Vec::new()
        };
        rules.insert(nr, rule);
    }
    let arch = std::env::consts::ARCH.try_into().map_err(backend_error)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(backend_error)?;
    filter.try_into().map_err(backend_error)
}

/// Installs [`syscall_filter`] on this thread; every later thread inherits it.
fn forbid_syscalls(backend: &str) -> Result<(), PrivilegeError> {
    let program = syscall_filter(backend)?;
    seccompiler::apply_filter(&program).map_err(|source| PrivilegeError::Seccomp { source })
}

/// The /proc reader's capabilities, each with the reason (both checked on this kernel: without
/// either, another user's process is refused some of these reads).
fn reader_needs() -> Vec<(Capability, &'static str)> {
    vec![
        (
            Capability::CAP_DAC_READ_SEARCH,
            "open other users' /proc/<pid>/fd (mode 0500) and /proc/<pid>/environ (0400)",
        ),
        (
            Capability::CAP_SYS_PTRACE,
            "ptrace-mode reads of other users' /proc/<pid>/{exe,cwd,fd/*,maps,environ} (runtime roots) and /proc/<pid>/task/<tid>/{syscall,cwd,fd/*} (the eBPF fence and relative names)",
        ),
    ]
}

/// Lowers this thread's capabilities to `kept`: the bounding set first (which needs
/// CAP_SETPCAP in the effective set), then ambient and inheritable cleared, effective and
/// permitted set to `kept`. Used by the tracker's drop and by the /proc reader's.
fn keep_only(kept: &CapsHashSet) -> Result<(), PrivilegeError> {
    let caps_error = |step| move |source| PrivilegeError::Capabilities { step, source };
    for cap in caps::runtime::thread_all_supported() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_error("shrink the bounding set of"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error("clear the ambient set of"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("clear the inheritable set of"))?;
    caps::set(None, CapSet::Effective, kept).map_err(caps_error("lower"))?;
    caps::set(None, CapSet::Permitted, kept).map_err(caps_error("lower"))?;
    Ok(())
}

/// Why the reader has no Landlock domain (`proc_reader.rs` says more).
const READER_NOT_LANDLOCKED: &str = "none: a Landlock domain may not ptrace-access processes outside it (any domain: no ABI exempts ptrace), and the reader's every read is ptrace-mode; its seccomp allow-list refuses writes instead";

/// Runs in the /proc reader, forked by [`drop_privileges`] (one thread, the tracker's uid,
/// every capability still there): keeps [`reader_needs`] only, sets no_new_privs, becomes
/// non-dumpable, asks for SIGKILL when the tracker's thread ends, then installs
/// [`reader_syscall_filter`]. Returns what the kernel reports afterwards.
pub(crate) fn confine_reader(
    socket: std::os::fd::RawFd,
    parent: nix::unistd::Pid,
) -> Result<crate::proc_reader::ReaderPrivileges, PrivilegeError> {
    let keep = reader_needs();
    let kept: CapsHashSet = keep.iter().map(|(cap, _)| *cap).collect();
    let caps_error = |step| move |source| PrivilegeError::Capabilities { step, source };
    let mut effective = kept.clone();
    effective.insert(Capability::CAP_SETPCAP);
    caps::set(None, CapSet::Effective, &effective).map_err(caps_error("lower"))?;
    keep_only(&kept)?;
    let setup_error = |step| move |source| PrivilegeError::ReaderSetup { step, source };
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(set).map_err(|source| PrivilegeError::NoNewPrivs { source })?;
    // Other processes of its uid (the tracker's threads) may not attach to it or read its
    // memory; its /proc files become root's.
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    Errno::result(set).map_err(setup_error("PR_SET_DUMPABLE"))?;
    verify(&kept)?;
    let no_new_privs = no_new_privs().unwrap_or(false);
    // Last of the credential changes, which reset it. The tracker may have ended since the
    // fork, before the signal was asked for: then the reader is an orphan already.
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    Errno::result(set).map_err(setup_error("PR_SET_PDEATHSIG"))?;
    if nix::unistd::getppid() != parent {
        return Err(PrivilegeError::ReaderOrphaned);
    }
    let (filter, allowed) = reader_syscall_filter(socket)?;
    seccompiler::apply_filter(&filter).map_err(|source| PrivilegeError::Seccomp { source })?;
    // Read back through the filter: openat read-only and read are allowed.
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|source| PrivilegeError::ReadIdentity { source })?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let seccomp_mode = field("Seccomp").parse().unwrap_or(0);
    let uids: Vec<u32> = field("Uid")
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect();
    Ok(crate::proc_reader::ReaderPrivileges {
        pid: std::process::id(),
        capabilities: keep
            .iter()
            .map(|(cap, why)| (cap.to_string(), (*why).to_owned()))
            .collect(),
        no_new_privs,
        uid: uids.get(1).copied().unwrap_or(u32::MAX),
        seccomp_mode,
        allowed_syscalls: allowed.into_iter().map(str::to_owned).collect(),
        landlock: READER_NOT_LANDLOCKED.to_owned(),
    })
}

/// Which arguments a syscall of the reader's allow-list may take.
#[derive(Clone, Copy, Debug)]
enum ReaderArgs {
    Any,
    /// The first argument is this descriptor.
    Fd(i32),
    /// `openat` without any flag that writes, creates or truncates.
    ReadOnly,
    /// Memory that is never made executable.
    NotExecutable,
    /// `tgkill` of itself (`abort` on a panic).
    OwnProcess,
}

/// The reader's allow-list: what reading `/proc`, answering on `socket` and logging to stderr
/// take. Everything else kills it: no file opened for writing, no write but to stderr, no
/// socket, no exec, no ptrace, no mount — the tracker's refusals ([`refused_syscalls`]) and more.
fn reader_syscalls(socket: i32) -> Vec<(&'static str, i64, ReaderArgs)> {
    use ReaderArgs::{Any, Fd, NotExecutable, OwnProcess, ReadOnly};
    let mut allowed = vec![
        ("read", libc::SYS_read, Any),
        (
            "write (stderr only)",
            libc::SYS_write,
            Fd(libc::STDERR_FILENO),
        ),
        ("sendto (its socket only)", libc::SYS_sendto, Fd(socket)),
        ("recvfrom (its socket only)", libc::SYS_recvfrom, Fd(socket)),
        ("ppoll", libc::SYS_ppoll, Any),
        ("openat (read-only)", libc::SYS_openat, ReadOnly),
        ("close", libc::SYS_close, Any),
        ("getdents64", libc::SYS_getdents64, Any),
        ("readlinkat", libc::SYS_readlinkat, Any),
        ("newfstatat", libc::SYS_newfstatat, Any),
        ("fstat", libc::SYS_fstat, Any),
        ("statx", libc::SYS_statx, Any),
        ("lseek", libc::SYS_lseek, Any),
        ("mmap (not executable)", libc::SYS_mmap, NotExecutable),
        (
            "mprotect (not executable)",
            libc::SYS_mprotect,
            NotExecutable,
        ),
        ("munmap", libc::SYS_munmap, Any),
        ("mremap", libc::SYS_mremap, Any),
        ("brk", libc::SYS_brk, Any),
        ("madvise", libc::SYS_madvise, Any),
        ("futex", libc::SYS_futex, Any),
        ("sched_yield", libc::SYS_sched_yield, Any),
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask, Any),
        ("rt_sigaction", libc::SYS_rt_sigaction, Any),
        ("rt_sigreturn", libc::SYS_rt_sigreturn, Any),
        ("sigaltstack", libc::SYS_sigaltstack, Any),
        ("clock_gettime", libc::SYS_clock_gettime, Any),
        ("gettimeofday", libc::SYS_gettimeofday, Any),
        ("getrandom", libc::SYS_getrandom, Any),
        ("getpid", libc::SYS_getpid, Any),
        ("gettid", libc::SYS_gettid, Any),
        ("getppid", libc::SYS_getppid, Any),
        ("restart_syscall", libc::SYS_restart_syscall, Any),
        ("tgkill (itself only)", libc::SYS_tgkill, OwnProcess),
        ("exit", libc::SYS_exit, Any),
        ("exit_group", libc::SYS_exit_group, Any),
    ];
    #[cfg(target_arch = "x86_64")]
    allowed.extend([
        ("readlink", libc::SYS_readlink, Any),
        ("poll", libc::SYS_poll, Any),
    ]);
    allowed
}

/// [`reader_syscalls`] as a seccomp program (any other syscall: `SECCOMP_RET_KILL_PROCESS`),
/// and the names for `status`.
fn reader_syscall_filter(
    socket: i32,
) -> Result<(seccompiler::BpfProgram, Vec<&'static str>), PrivilegeError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let seccomp_error = |source| PrivilegeError::Seccomp { source };
    let backend_error = |source| PrivilegeError::Seccomp {
        source: seccompiler::Error::Backend(source),
    };
    let writes = (libc::O_WRONLY
        | libc::O_RDWR
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_APPEND
        | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u64;
    let own_pid = u64::from(std::process::id());
    let rule = |args: ReaderArgs| -> Result<Vec<SeccompRule>, seccompiler::Error> {
        let condition = match args {
            ReaderArgs::Any => return Ok(Vec::new()),
            ReaderArgs::Fd(fd) => {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, fd as u64)?
            }
            ReaderArgs::ReadOnly => SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(writes),
                0,
            )?,
            ReaderArgs::NotExecutable => SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )?,
            ReaderArgs::OwnProcess => {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, own_pid)?
            }
        };
        Ok(vec![SeccompRule::new(vec![condition])?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut names = Vec::new();
    for (name, nr, args) in reader_syscalls(socket) {
        rules.insert(nr, rule(args).map_err(seccomp_error)?);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let arch = std::env::consts::ARCH.try_into().map_err(backend_error)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(backend_error)?;
    let program = filter.try_into().map_err(backend_error)?;
    Ok((program, names))
}

fn landlock_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) reads no memory
    // and returns the ABI version or -1.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(abi).unwrap_or(0).max(0)
}

/// Confines this thread — the only one, so every thread started later too (the server's, the
/// scan workers') — with Landlock: writes, creations, removals and renames only beneath
/// `writable` (created first if missing, as the server would), no TCP bind or connect, no
/// abstract Unix sockets or signals outside the domain. Reads stay unrestricted. Best effort: a
/// kernel without (part of) Landlock runs anyway, and `privileges.landlock` says how much was
/// enforced. Call it after [`drop_privileges`], which forked the /proc reader outside the domain.
pub fn confine_writes(
    privileges: &mut Privileges,
    writable: &[&Path],
) -> Result<(), PrivilegeError> {
    let others = wait_for_single_thread()?;
    if others != 0 {
        return Err(PrivilegeError::OtherThreads { count: others + 1 });
    }
    let mut writable = writable.to_vec();
    writable.sort();
    writable.dedup();
    for dir in &writable {
        std::fs::create_dir_all(dir).map_err(|source| PrivilegeError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match restrict_this_thread(&writable) {
        Ok(state) => {
            tracing::info!(state = %state, writable = ?writable, "every thread confined by Landlock");
            privileges.landlock.state = state;
        }
        Err(error) => {
            tracing::warn!(%error, "Landlock not enforced");
            privileges.landlock.state = "not_enforced".to_owned();
        }
    }
    if privileges.landlock.state != "not_enforced" {
        privileges.landlock.threads = vec!["all".to_owned()];
        privileges.landlock.writable = writable.iter().map(|dir| dir.to_path_buf()).collect();
    }
    privileges.landlock.unrestricted = match &privileges.proc_reader {
        Some(reader) => format!(
            "the /proc reader process (pid {}): a Landlock domain may not ptrace-access processes outside it, and runtime roots and the eBPF fence are ptrace-mode /proc reads; it keeps {} and a seccomp allow-list that opens files read-only and writes only to stderr and its socket",
            reader.pid,
            reader
                .capabilities
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        None => "no /proc reader".to_owned(),
    };
    if privileges.landlock.state == "not_enforced" {
        privileges.landlock.unrestricted = format!(
            "every thread (Landlock not enforced); {}",
            privileges.landlock.unrestricted
        );
    }
    Ok(())
}

/// What this thread may do that Landlock forbids, tried now and reported (for `status`, so that
/// a test or an operator sees the kernel's word, not the intention): opening `/dev/null` for
/// writing (harmless if it were allowed) and reading the link `/proc/<reader>/exe` (ptrace-mode:
/// refused from inside a domain to a process outside it).
pub fn landlock_self_check(reader_pid: Option<u32>) -> serde_json::Value {
    let outcome = |result: std::io::Result<()>| match result {
        Ok(()) => "allowed".to_owned(),
        Err(error) => format!(
            "refused ({})",
            Errno::from_raw(error.raw_os_error().unwrap_or(0)).desc()
        ),
    };
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map(drop);
    let mut check = serde_json::json!({
        "thread": thread,
        "open /dev/null for writing": outcome(write),
    });
    if let Some(pid) = reader_pid {
        check[format!("readlink /proc/{pid}/exe")] =
            outcome(std::fs::read_link(format!("/proc/{pid}/exe")).map(drop)).into();
    }
    check
}

fn restrict_this_thread(writable: &[&Path]) -> Result<String, landlock::RulesetError> {
    use landlock::{
        ABI, Access as _, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr as _,
        RulesetCreatedAttr as _, RulesetStatus, Scope,
    };
    // The newest ABI this code is tested against; older kernels get what they support.
    let abi = ABI::V6;
    let write = AccessFs::from_write(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(write)?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for dir in writable {
        match PathFd::new(dir) {
            Ok(fd) => ruleset = ruleset.add_rule(PathBeneath::new(fd, write))?,
            // Then nothing is writable there: fails closed for that directory.
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot open a writable directory for Landlock")
            }
        }
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully_enforced",
        RulesetStatus::PartiallyEnforced => "partially_enforced",
        RulesetStatus::NotEnforced => "not_enforced",
    }
    .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_made_here_are_the_trackers() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        let fresh = tmp.path().join("new/run");
        let created = create_own_dirs(&[&existing, &fresh, &fresh]).unwrap();
        assert_eq!(created, std::slice::from_ref(&fresh));
        assert!(fresh.is_dir());
        // A second start finds it: nothing is given away twice.
        assert_eq!(create_own_dirs(&[&fresh]).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn root_and_unknown_users_are_refused() {
        for spec in ["root", "0"] {
            assert!(
                matches!(
                    TrackerUser::lookup(spec),
                    Err(PrivilegeError::PrivilegedUser { uid: 0, .. })
                ),
                "{spec}"
            );
        }
        assert!(matches!(
            TrackerUser::lookup("rt-no-such-user-anywhere"),
            Err(PrivilegeError::UnknownUser { .. })
        ));
    }

    /// In a forked child (the filter cannot be taken off again): what the filter refuses fails
    /// with EPERM, what the tracker needs still works.
    #[test]
    fn the_syscall_filter_refuses_ptrace_and_the_network() {
        let program = syscall_filter("fanotify").unwrap();
        // SAFETY: the child makes only async-signal-safe calls (prctl, seccomp, raw syscalls)
        // and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let refused = |result: libc::c_long| result == -1 && Errno::last() == Errno::EPERM;
                let mut failures = 0;
                if seccompiler::apply_filter(&program).is_err() {
                    failures |= 1;
                }
                // SAFETY: each call takes integer arguments, or null pointers the kernel does
                // not read before the filter refuses the call.
                unsafe {
                    if !refused(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)) {
                        failures |= 2;
                    }
                    let pid = libc::getppid();
                    if !refused(libc::syscall(
                        libc::SYS_process_vm_writev,
                        pid,
                        0,
                        0,
                        0,
                        0,
                        0,
                    )) {
                        failures |= 4;
                    }
                    if !refused(libc::c_long::from(libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM,
                        0,
                    ))) {
                        failures |= 8;
                    }
                    if libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) < 0 {
                        failures |= 16;
                    }
                    if !refused(libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0)) {
                        failures |= 32;
                    }
                    libc::_exit(failures);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "bit 1: not installed, 2: ptrace, 4: process_vm_writev, 8: AF_INET, 16: AF_UNIX refused, 32: mount"
                );
            }
        }
    }

    /// Every syscall the tracker's filter refuses, for either backend, is outside the reader's
    /// allow-list: the reader's filter is at least as strict.
    #[test]
    fn the_reader_filter_is_stricter_than_the_trackers() {
        let allowed: Vec<i64> = reader_syscalls(3).iter().map(|(_, nr, _)| *nr).collect();
        for backend in ["ebpf", "fanotify"] {
            for (name, nr) in refused_syscalls(backend) {
                assert!(!allowed.contains(&nr), "{name} is allowed to the reader");
            }
        }
        for (name, nr) in [
            ("execve", libc::SYS_execve),
            ("socket", libc::SYS_socket),
            ("connect", libc::SYS_connect),
            ("unlinkat", libc::SYS_unlinkat),
            ("renameat2", libc::SYS_renameat2),
            ("ftruncate", libc::SYS_ftruncate),
            ("openat2", libc::SYS_openat2),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("capset", libc::SYS_capset),
            ("prctl", libc::SYS_prctl),
        ] {
            assert!(!allowed.contains(&nr), "{name} is allowed to the reader");
        }
    }

    /// Runs `body` in a forked child under the reader's filter (for socket fd 3); its status.
    fn under_reader_filter(body: fn() -> i32) -> nix::sys::wait::WaitStatus {
        let (program, _) = reader_syscall_filter(3).unwrap();
        // SAFETY: the child makes only async-signal-safe calls (seccomp, raw syscalls) and
        // leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl with integer arguments; _exit ends the child.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if seccompiler::apply_filter(&program).is_err() {
                        libc::_exit(100);
                    }
                    libc::_exit(body())
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    /// What the reader does passes its filter; a write open, a write to a descriptor but
    /// stderr, and an exec kill it.
    #[test]
    fn the_reader_filter_allows_reading_and_kills_writers() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        fn reads() -> i32 {
            // SAFETY: each call gets a NUL-terminated path and a buffer of the size it is told.
            unsafe {
                let fd = libc::openat(
                    libc::AT_FDCWD,
                    c"/proc/self/status".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                let mut buffer = [0u8; 64];
                let read = libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len());
                let link = libc::readlinkat(
                    libc::AT_FDCWD,
                    c"/proc/self/exe".as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                );
                let dir = libc::openat(
                    libc::AT_FDCWD,
                    c"/proc".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                );
                let written = libc::write(libc::STDERR_FILENO, buffer.as_ptr().cast(), 0);
                i32::from(fd < 0 || read <= 0 || link <= 0 || dir < 0 || written < 0)
            }
        }
        fn opens_for_writing() -> i32 {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_WRONLY) };
            0
        }
        fn writes_to_stdout() -> i32 {
            // SAFETY: a zero-length write.
            unsafe { libc::write(libc::STDOUT_FILENO, c"".as_ptr().cast(), 0) };
            0
        }
        fn execs() -> i32 {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated path and a NULL-terminated argv.
            unsafe { libc::execv(c"/bin/true".as_ptr(), argv.as_ptr()) };
            0
        }
        let status = under_reader_filter(reads);
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "reading under the filter: {status:?}"
        );
        for (what, body) in [
            ("open for writing", opens_for_writing as fn() -> i32),
            ("write to stdout", writes_to_stdout),
            ("exec", execs),
        ] {
            let status = under_reader_filter(body);
            assert!(
                matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                "{what}: {status:?}"
            );
        }
    }

    #[test]
    fn identity_is_read_from_the_kernel() {
        let ids = KernelIds::read().unwrap();
        assert_eq!(ids.uids.len(), 4);
        assert_eq!(ids.gids.len(), 4);
        let uid = nix::unistd::geteuid().as_raw();
        let identity = ids.identity(None).unwrap();
        assert_eq!(identity.uid, uid);
        // A --user this thread is not: the check refuses it.
        let other = TrackerUser {
            name: "other".to_owned(),
            uid: uid.wrapping_add(1),
            gid: 12345,
        };
        assert!(matches!(
            KernelIds::read().unwrap().identity(Some(&other)),
            Err(PrivilegeError::VerifyIdentity { .. })
        ));
    }
}
