//! The tracker's privilege drop (DESIGN.md invariant 6), for each backend: after start-up every
//! thread of `root-tracker run` holds exactly the capabilities its backend needs, no_new_privs
//! and a seccomp filter, lives in a network namespace of its own and is confined by Landlock
//! (which `status` reports, and which a check run on the tracker thread shows refusing a write);
//! its /proc reader child holds CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE only, no_new_privs and a
//! seccomp filter of its own — and the tracker still answers right: runtime roots of another
//! user's process, a new indirect root in a new directory, and one on a newly mounted tmpfs
//! (which the fanotify backend must mark after the drop). When the reader dies, queries fail.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic on failure, as aya's test README recommends"
)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use root_tracker::layout::StoreLayout;
use root_tracker::report::bytes_from_json;
use root_tracker::scan::{ScanOptions, scan};
use tests::{
    HermeticStore, Holder, SystemUser, TmpfsMount, TrackerProcess, index_part, package_bin,
    path_bytes, require_root,
};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | (1u64 << cap))
}

/// What each backend keeps, and why (privilege.rs says the same in `status`). Not
/// CAP_SYS_PTRACE: the /proc reader makes the ptrace-mode reads.
fn expected_caps(backend: &str) -> u64 {
    match backend {
        "fanotify" => mask(&[CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN]),
        _ => mask(&[CAP_DAC_READ_SEARCH]),
    }
}

/// What the /proc reader keeps, whatever the backend.
fn reader_caps() -> u64 {
    mask(&[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE])
}

/// `Field:\tvalue` lines of a `/proc/.../status` file.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
        .trim()
        .to_owned()
}

fn hex_field(status: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(status, field), 16).unwrap()
}

/// Every thread of `pid` has exactly the expected sets, no_new_privs, a seccomp filter, and
/// the network namespace `net`; there are at least `min_threads`.
fn check_threads(pid: u32, expected: u64, net: &Path, min_threads: usize) {
    let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(
        tasks.len() >= min_threads,
        "expected at least {min_threads} threads in {pid}, found {tasks:?}"
    );
    for task in tasks {
        let status = fs::read_to_string(task.join("status")).unwrap();
        let at = task.display();
        assert_eq!(hex_field(&status, "CapEff"), expected, "CapEff of {at}");
        assert_eq!(hex_field(&status, "CapPrm"), expected, "CapPrm of {at}");
        assert_eq!(hex_field(&status, "CapInh"), 0, "CapInh of {at}");
        assert_eq!(hex_field(&status, "CapAmb"), 0, "CapAmb of {at}");
        assert_eq!(hex_field(&status, "CapBnd"), expected, "CapBnd of {at}");
        assert_eq!(
            status_field(&status, "NoNewPrivs"),
            "1",
            "NoNewPrivs of {at}"
        );
        // 2: SECCOMP_MODE_FILTER.
        assert_eq!(status_field(&status, "Seccomp"), "2", "Seccomp of {at}");
        assert_eq!(
            fs::read_link(task.join("ns/net")).unwrap(),
            net,
            "network namespace of {at}"
        );
    }
}

fn truth(layout: &StoreLayout) -> serde_json::Value {
    let options = ScanOptions {
        runtime: false,
        temp: false,
        ..ScanOptions::default()
    };
    index_part(&scan(layout, &options).unwrap().to_json())
}

/// A fenced query whose index part equals a fresh scan.
fn assert_answers_right(tracker: &TrackerProcess, layout: &StoreLayout, what: &str) {
    let report = tracker.query();
    assert_eq!(
        index_part(&report),
        truth(layout),
        "{what}: the tracker's answer differs from a scan\n{}",
        tracker.log()
    );
}

fn has_root(report: &serde_json::Value, kind: &str, target: &Path) -> bool {
    report["roots"].as_array().unwrap().iter().any(|root| {
        root["kind"] == kind && bytes_from_json(&root["target"]).unwrap() == path_bytes(target)
    })
}

fn privileges_hold(backend: &str) {
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("priv", 4);
    let held = store.add_file("held", b"held by another user's process");
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    fs::create_dir_all(layout.auto_dir()).unwrap();
    let home = store.path("home/user");
    fs::create_dir_all(home.join("proj")).unwrap();
    symlink(&targets[0], home.join("proj/result")).unwrap();
    symlink(home.join("proj/result"), layout.auto_dir().join("a")).unwrap();

    let tracker = TrackerProcess::start(&store, backend, &[]);
    let pid = tracker.pid();

    // What the kernel says, for every thread.
    let own_net = fs::read_link("/proc/self/ns/net").unwrap();
    let tracker_net = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        tracker_net, own_net,
        "the tracker must not share our network namespace"
    );
    check_threads(pid, expected_caps(backend), &tracker_net, 2);
    // Its /proc reader, its only child: the reader's two capabilities, its own filter.
    let reader = tracker
        .reader_pid()
        .expect("the tracker has no /proc reader child");
    check_threads(reader, reader_caps(), &tracker_net, 1);
    // Its namespace has no interface but the loopback.
    let interfaces: Vec<String> = fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .unwrap()
        .lines()
        .skip(2)
        .map(|line| line.split(':').next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(interfaces, ["lo"], "interfaces in the tracker's namespace");

    // What the tracker says.
    let status = tracker.status();
    let privileges = &status["privileges"];
    assert_eq!(privileges["dropped"], true, "{privileges:#}");
    assert_eq!(privileges["no_new_privs"], true, "{privileges:#}");
    let mut kept: Vec<&str> = privileges["capabilities"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    kept.sort_unstable();
    let mut expected_names = vec!["CAP_DAC_READ_SEARCH"];
    if backend == "fanotify" {
        expected_names.push("CAP_SYS_ADMIN");
    }
    expected_names.sort_unstable();
    assert_eq!(kept, expected_names, "{privileges:#}");
    assert_eq!(privileges["network"]["namespace"], "empty namespace");
    assert_eq!(privileges["network"]["seccomp"], true);
    // CAP_SYS_PTRACE is for reading /proc: writing another process's memory is refused.
    let refused = privileges["refused_syscalls"].as_array().unwrap();
    for syscall in ["ptrace", "process_vm_writev", "pidfd_getfd", "mount"] {
        assert!(refused.contains(&syscall.into()), "{privileges:#}");
    }
    assert_eq!(
        refused.contains(&"bpf".into()),
        backend == "fanotify",
        "{privileges:#}"
    );
    // Without --user it stays uid 0, says so, and warns.
    let identity = &privileges["identity"];
    assert_eq!(
        (&identity["user"], &identity["uid"], &identity["uid_0_kept"]),
        (
            &serde_json::Value::Null,
            &serde_json::json!(0),
            &serde_json::json!(true)
        ),
        "{identity:#}"
    );
    assert!(
        tracker.log().contains("no --user: the tracker keeps uid 0"),
        "{}",
        tracker.log()
    );
    check_landlock(&status, reader, &[tracker.dir.path()]);

    // It still answers right after the drop.
    assert_answers_right(&tracker, &layout, "after start-up");

    // Runtime roots of another user's process need CAP_SYS_PTRACE: they must still be read.
    let other = SystemUser::create("priv", &store.path("home/other"));
    let mut holder_command = other.command(package_bin("root-holder").as_os_str());
    holder_command.arg("--open").arg(&held).current_dir("/");
    let holder = Holder::start(holder_command);
    let report = tracker.query();
    assert!(
        has_root(&report, "runtime", &held),
        "the runtime root held by pid {} (uid {}) is missing: {report:#}",
        holder.pid(),
        other.uid
    );
    drop(holder);

    // A new indirect root in a new directory.
    let fresh = home.join("fresh/dir");
    fs::create_dir_all(&fresh).unwrap();
    symlink(&targets[1], fresh.join("result")).unwrap();
    symlink(fresh.join("result"), layout.auto_dir().join("b")).unwrap();
    assert_answers_right(&tracker, &layout, "a new indirect root in a new directory");

    // One on a filesystem mounted after the drop: fanotify must mark it now.
    let mut mount = TmpfsMount::new(&store.path("home/mnt"));
    let on_tmpfs = mount.path.join("proj");
    fs::create_dir_all(&on_tmpfs).unwrap();
    symlink(&targets[2], on_tmpfs.join("result")).unwrap();
    symlink(on_tmpfs.join("result"), layout.auto_dir().join("c")).unwrap();
    assert_answers_right(&tracker, &layout, "an indirect root on a new tmpfs");
    if backend == "fanotify" {
        let marked = tracker.status()["source_checks"]["marked_filesystems"].clone();
        assert!(
            marked
                .as_array()
                .unwrap()
                .iter()
                .any(|path| Path::new(path.as_str().unwrap()).starts_with(&mount.path)),
            "the tmpfs was not marked: {marked}"
        );
    }
    // A change on that filesystem is seen: the link is replaced by one to another path.
    symlink(&targets[3], on_tmpfs.join("result.new")).unwrap();
    fs::rename(on_tmpfs.join("result.new"), on_tmpfs.join("result")).unwrap();
    let report = tracker.query();
    assert!(
        has_root(&report, "indirect", &targets[3]) && !has_root(&report, "indirect", &targets[2]),
        "the replaced link on the tmpfs was not seen: {report:#}"
    );
    assert_answers_right(&tracker, &layout, "a replaced link on the tmpfs");

    // A process of another user whose working directory is in the store.
    let in_store = store.add_dir("cwd", &[("file", b"x")]);
    let mut holder_command = other.command(package_bin("root-holder").as_os_str());
    holder_command.current_dir(&in_store);
    let holder = Holder::start(holder_command);
    let report = tracker.query();
    assert!(
        has_root(&report, "runtime", &in_store),
        "the working directory of pid {} (uid {}) is missing: {report:#}",
        holder.pid(),
        other.uid
    );
    drop(holder);

    // The drop left every thread as it was, also the ones started since.
    check_threads(pid, expected_caps(backend), &tracker_net, 2);
    check_threads(reader, reader_caps(), &tracker_net, 1);
    assert_eq!(tracker.reader_pid(), Some(reader));
    // The reader leaves with the tracker (TrackerProcess::stop waits for it).
    let mut tracker = tracker;
    let stopped = tracker.stop();
    assert!(stopped.success(), "{stopped}:\n{}", tracker.log());
    assert!(
        tests::has_exited(reader),
        "the /proc reader outlived the tracker"
    );
    drop(tracker);
    mount.unmount();
}

/// What `status` says of Landlock and the reader, and what the check it runs on the tracker
/// thread found: a write open of `/dev/null` and a ptrace-mode read of the reader's `/proc`
/// are refused there (neither is refused by anything but a Landlock domain: the file is 0666,
/// and the tracker's uid is the reader's).
fn check_landlock(status: &serde_json::Value, reader: u32, writable: &[&Path]) {
    let privileges = &status["privileges"];
    let landlock = &privileges["landlock"];
    let reader_status = &privileges["proc_reader"];
    assert_eq!(reader_status["pid"], reader, "{privileges:#}");
    let mut reader_kept: Vec<&str> = reader_status["capabilities"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    reader_kept.sort_unstable();
    assert_eq!(reader_kept, ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]);
    assert_eq!(reader_status["no_new_privs"], true);
    assert_eq!(reader_status["seccomp_mode"], 2);
    assert!(
        reader_status["landlock"]
            .as_str()
            .unwrap()
            .starts_with("none: a Landlock domain may not ptrace-access"),
        "{reader_status:#}"
    );
    assert_eq!(status["proc_reader"]["state"], "running", "{status:#}");
    if landlock["kernel_abi"].as_i64().unwrap() < 6 {
        println!("skipping the Landlock checks: kernel Landlock ABI {landlock}");
        return;
    }
    assert_eq!(landlock["state"], "fully_enforced", "{landlock:#}");
    assert_eq!(landlock["threads"], serde_json::json!(["all"]));
    let found: Vec<PathBuf> = landlock["writable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|dir| PathBuf::from(dir.as_str().unwrap()))
        .collect();
    assert_eq!(found, writable);
    assert!(
        landlock["unrestricted"]
            .as_str()
            .unwrap()
            .starts_with(&format!("the /proc reader process (pid {reader})")),
        "{landlock:#}"
    );
    let check = &status["landlock_check"];
    assert_eq!(
        check["thread"], "main",
        "the tracker thread runs the check: {check:#}"
    );
    assert_eq!(
        check["open /dev/null for writing"], "refused (Permission denied)",
        "{check:#}"
    );
    assert_eq!(
        check[format!("readlink /proc/{reader}/exe")],
        "refused (Permission denied)",
        "{check:#}"
    );
}

#[test]
fn fanotify_tracker_drops_privileges_and_still_answers() {
    privileges_hold("fanotify");
}

#[test]
fn ebpf_tracker_drops_privileges_and_still_answers() {
    privileges_hold("ebpf");
}

/// The production layout: the store and its database belong to an ordinary user (the one
/// `store-gc` runs as), nobody has the database open (so its WAL files do not exist), and the
/// tracker, without CAP_DAC_OVERRIDE after the drop, may not create files in `<state>/db`.
/// It must still tell registered roots from unregistered ones, on every later query too.
/// With `as_user`, the tracker runs as a third user (`--user`), neither root nor the owner.
fn user_owned_store_is_answered_after_the_drop(backend: &str, as_user: bool) {
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("owned", 2);
    let home = store.path("home/user/proj");
    fs::create_dir_all(&home).unwrap();
    store.add_indirect_root(&home.join("result"), &targets[0]);
    let owner_home = store.path("home/owner");
    let owner = SystemUser::create("own", &owner_home);
    store.chown_all(&owner);
    let db_dir = store.state_dir.join("db");
    for wal_file in ["db.sqlite-wal", "db.sqlite-shm"] {
        assert!(
            !db_dir.join(wal_file).exists(),
            "{wal_file} exists: this test needs a database nobody has open"
        );
    }
    let tracker_user = as_user.then(|| SystemUser::create("trkdb", &store.path("tracker-home")));
    let tracker = match &tracker_user {
        Some(user) => TrackerProcess::start_as(&store, backend, user, &[]),
        None => TrackerProcess::start(&store, backend, &[]),
    };
    let report = tracker.query();
    assert!(has_root(&report, "indirect", &targets[0]), "{report}");
    // The WAL files root created belong to the owner, whose Nix must keep writing.
    for wal_file in ["db.sqlite-wal", "db.sqlite-shm"] {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(db_dir.join(wal_file)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner.uid, owner.gid),
            "{wal_file}"
        );
    }
    // The owner registers a new path (while the tracker holds the database open) and roots
    // it; the next answer counts it as registered.
    let fresh = store
        .store_dir
        .join(format!("{}-owned-fresh", tests::nix32_from(99)));
    fs::write(&fresh, b"").unwrap();
    std::os::unix::fs::chown(&fresh, Some(owner.uid), Some(owner.gid)).unwrap();
    let second = home.join("second");
    symlink(&fresh, &second).unwrap();
    symlink(&second, store.gcroots().join("auto/second")).unwrap();
    let report = tracker.query();
    assert!(
        !has_root(&report, "indirect", &fresh),
        "not registered yet: {report}"
    );
    let mut register = store.nix_store_command_as(&owner);
    register
        .args(["--register-validity", "--hash-given"])
        .stdin(std::process::Stdio::piped());
    let mut child = register.spawn().unwrap();
    {
        use std::io::Write as _;
        let line = format!("{}\nsha256:{}\n0\n\n0\n", fresh.display(), "0".repeat(64));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }
    assert!(
        child.wait().unwrap().success(),
        "the owner's nix-store failed"
    );
    let report = tracker.query();
    assert!(has_root(&report, "indirect", &fresh), "{report}");
}

#[test]
fn fanotify_tracker_reads_a_user_owned_store_database() {
    user_owned_store_is_answered_after_the_drop("fanotify", false);
}

#[test]
fn ebpf_tracker_reads_a_user_owned_store_database() {
    user_owned_store_is_answered_after_the_drop("ebpf", false);
}

/// The store database is opened as root, before the switch; it is the same for either backend.
#[test]
fn ebpf_tracker_as_user_reads_a_user_owned_store_database() {
    user_owned_store_is_answered_after_the_drop("ebpf", true);
}

/// `Uid:`/`Gid:` of every thread of `pid` are `uid`/`gid` four times (real, effective, saved,
/// filesystem), and no thread has a supplementary group.
fn check_identity(pid: u32, uid: u32, gid: u32) {
    for entry in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let status = fs::read_to_string(task.join("status")).unwrap();
        let at = task.display();
        let ids = |field| -> Vec<u32> {
            status_field(&status, field)
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect()
        };
        assert_eq!(ids("Uid"), [uid; 4], "Uid of {at}");
        assert_eq!(ids("Gid"), [gid; 4], "Gid of {at}");
        assert_eq!(ids("Groups"), Vec::<u32>::new(), "Groups of {at}");
    }
}

/// Every file and directory under `dir` owned by `uid`, except beneath `skip`.
fn owned_by(dir: &Path, uid: u32, skip: &Path, found: &mut Vec<PathBuf>) {
    use std::os::unix::fs::MetadataExt as _;
    if dir.starts_with(skip) {
        return;
    }
    let meta = fs::symlink_metadata(dir).unwrap();
    if meta.uid() == uid {
        found.push(dir.to_owned());
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir).unwrap() {
            owned_by(&entry.unwrap().path(), uid, skip, found);
        }
    }
}

/// The paths of the files `pid` holds open for writing (`O_WRONLY` or `O_RDWR`).
fn open_for_writing(pid: u32) -> Vec<PathBuf> {
    let mut writable = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let (Ok(target), Ok(info)) = (
            fs::read_link(entry.path()),
            fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_str().unwrap()
            )),
        ) else {
            continue; // closed meanwhile
        };
        let flags = u32::from_str_radix(&status_field(&info, "flags"), 8).unwrap();
        let access = flags & libc::O_ACCMODE as u32;
        if target.is_absolute() && access != libc::O_RDONLY as u32 {
            writable.push(target);
        }
    }
    writable
}

/// `root-tracker run --user`: every thread runs as that user (all uids and gids, no groups) with
/// exactly the backend's capabilities, and still answers right: an indirect root in another
/// user's 0700 home (CAP_DAC_READ_SEARCH), one added there after the switch (new fanotify
/// marks or eBPF map updates), another user's runtime root (CAP_SYS_PTRACE), the periodic
/// verification sweep. It owns and holds open for writing nothing but its own directories and
/// files, and removes its socket and WAL files when it stops.
fn runs_as_user(backend: &str) {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("user", 2);
    let held = store.add_file("held", b"held by another user's process");
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    fs::create_dir_all(layout.auto_dir()).unwrap();
    // Alice's home is 0700 and hers: only CAP_DAC_READ_SEARCH reads the link inside.
    let alice = SystemUser::create("alice", &store.path("home/alice"));
    let add_alice_root = |name: &str, target: &Path| {
        let dir = alice.home.join(name);
        fs::create_dir_all(&dir).unwrap();
        symlink(target, dir.join("result")).unwrap();
        std::os::unix::fs::lchown(&dir, Some(alice.uid), Some(alice.gid)).unwrap();
        std::os::unix::fs::lchown(dir.join("result"), Some(alice.uid), Some(alice.gid)).unwrap();
        symlink(dir.join("result"), layout.auto_dir().join(name)).unwrap();
    };
    add_alice_root("proj", &targets[0]);

    // Declared before the tracker, so it is deleted after the tracker is stopped.
    let tracker_user = SystemUser::create("trk", &store.path("tracker-home"));
    let nix_roots_socket = store.path("run/nix-roots/socket");
    let mut tracker = TrackerProcess::start_as(
        &store,
        backend,
        &tracker_user,
        &[
            "--verify-interval-secs",
            "1",
            "--nix-roots-socket",
            nix_roots_socket.to_str().unwrap(),
        ],
    );
    let pid = tracker.pid();
    let (uid, gid) = (tracker_user.uid, tracker_user.gid);

    // What the kernel says, for every thread, and of the reader.
    check_identity(pid, uid, gid);
    let tracker_net = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    check_threads(pid, expected_caps(backend), &tracker_net, 2);
    let reader = tracker
        .reader_pid()
        .expect("the tracker has no /proc reader child");
    check_identity(reader, uid, gid);
    check_threads(reader, reader_caps(), &tracker_net, 1);
    let mut writable = [
        tracker.dir.path().to_owned(),
        nix_roots_socket.parent().unwrap().to_owned(),
    ];
    writable.sort();
    check_landlock(
        &tracker.status(),
        reader,
        &writable.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );

    // What the tracker says, as JSON and as text.
    let identity = tracker.status()["privileges"]["identity"].clone();
    assert_eq!(
        identity,
        serde_json::json!({
            "user": tracker_user.name,
            "uid": uid,
            "gid": gid,
            "groups": [],
            "uid_0_kept": false,
            "note": identity["note"],
        }),
        "{identity:#}"
    );
    let text = std::process::Command::new(package_bin("tracker-cli"))
        .arg("status")
        .arg("--socket")
        .arg(tracker.socket())
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let expected_line = format!(
        "runs as: uid {uid}, gid {gid}, no supplementary groups (user {})",
        tracker_user.name
    );
    assert!(text.lines().any(|line| line == expected_line), "{text}");
    let landlock = tracker.status()["privileges"]["landlock"].clone();
    let expected_line = format!(
        "confined: Landlock {} on threads: {}; /proc reader pid {reader} running (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, seccomp allow-list, no Landlock)",
        landlock["state"].as_str().unwrap(),
        if landlock["state"] == "not_enforced" {
            "none"
        } else {
            "all"
        }
    );
    assert!(text.lines().any(|line| line == expected_line), "{text}");

    // It still answers right: the fenced answer equals a scan, and holds Alice's root.
    let report = tracker.query();
    assert!(has_root(&report, "indirect", &targets[0]), "{report:#}");
    assert_answers_right(&tracker, &layout, "as --user, after start-up");
    // A root added in Alice's home after the switch.
    add_alice_root("later", &targets[1]);
    let report = tracker.query();
    assert!(has_root(&report, "indirect", &targets[1]), "{report:#}");
    assert_answers_right(
        &tracker,
        &layout,
        "as --user, a root added after the switch",
    );
    // Another user's runtime roots: an open file and a path in the environment.
    let mut holder_command = alice.command(package_bin("root-holder").as_os_str());
    holder_command
        .arg("--open")
        .arg(&held)
        .env("HELD_PATH", &targets[1])
        .current_dir("/");
    let holder = Holder::start(holder_command);
    let report = tracker.query();
    let runtime_retainers = |target: &Path| -> Vec<Vec<u8>> {
        report["roots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|root| {
                root["kind"] == "runtime"
                    && bytes_from_json(&root["target"]).unwrap() == path_bytes(target)
            })
            .map(|root| bytes_from_json(&root["retainer"]).unwrap())
            .collect()
    };
    let proc_dir = format!("/proc/{}", holder.pid());
    for (target, what) in [(&held, "fd/"), (&targets[1], "environ")] {
        assert!(
            runtime_retainers(target)
                .iter()
                .any(|retainer| retainer.starts_with(format!("{proc_dir}/{what}").as_bytes())),
            "the runtime root {} in {proc_dir}/{what} (uid {}) is missing: {report:#}",
            target.display(),
            alice.uid
        );
    }
    drop(holder);

    // The verification sweep runs (every second here) without failing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tracker.status()["reconciler"]["verifications"]
        .as_u64()
        .unwrap()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no verification sweep:\n{}",
            tracker.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !tracker.log().contains("failed"),
        "something failed as --user:\n{}",
        tracker.log()
    );

    // It owns nothing but its directory (given by the harness), its index files, its sockets
    // and the socket directory it created; the directory above that stays root's.
    let mut owned = Vec::new();
    owned_by(tracker.dir.path(), uid, &tracker_user.home, &mut owned);
    owned_by(&store.path(""), uid, &tracker_user.home, &mut owned);
    owned.sort();
    let nix_roots_dir = nix_roots_socket.parent().unwrap().to_owned();
    let mut expected: Vec<PathBuf> = ["", "index.sqlite", "index.sqlite-shm", "index.sqlite-wal"]
        .iter()
        .map(|name| tracker.dir.path().join(name))
        .chain([
            tracker.socket(),
            nix_roots_dir.clone(),
            nix_roots_socket.clone(),
        ])
        .map(|path| path.components().collect())
        .collect();
    expected.sort();
    let owned: Vec<PathBuf> = owned
        .iter()
        .map(|path| path.components().collect())
        .collect();
    assert_eq!(owned, expected, "files owned by the tracker's uid");
    assert_eq!(fs::metadata(store.path("run")).unwrap().uid(), 0);
    // Every file it holds open for writing is its own, or the store database's WAL files:
    // SQLite opens them read-write even for a read-only connection (a WAL reader writes its
    // read marks to `-shm`), as root, before the switch (ValidityCache::open_now).
    let store_wal_files = [
        store.state_dir.join("db/db.sqlite-wal"),
        store.state_dir.join("db/db.sqlite-shm"),
    ];
    for path in open_for_writing(pid) {
        assert!(
            path.starts_with(tracker.dir.path())
                || path == Path::new("/dev/null")
                || store_wal_files.contains(&path),
            "the tracker holds {} open for writing",
            path.display()
        );
    }

    // It stops cleanly and, as its user, removes what it made.
    let status = tracker.stop();
    assert!(status.success(), "{status}:\n{}", tracker.log());
    for gone in [
        tracker.socket(),
        nix_roots_socket,
        tracker.dir.path().join("index.sqlite-wal"),
    ] {
        assert!(
            !gone.exists(),
            "{} left behind:\n{}",
            gone.display(),
            tracker.log()
        );
    }
}

#[test]
fn fanotify_tracker_runs_as_user_and_still_answers() {
    runs_as_user("fanotify");
}

#[test]
fn ebpf_tracker_runs_as_user_and_still_answers() {
    runs_as_user("ebpf");
}

/// `root-tracker run ARGS` on `store`, which must exit by itself within 60 s; its status and
/// standard error.
fn run_to_exit(store: &HermeticStore, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(package_bin("tracker-cli"))
        .arg("run")
        .arg("--store-dir")
        .arg(&store.store_dir)
        .arg("--state-dir")
        .arg(&store.state_dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the tracker kept running: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--user` fails closed, with the cause on one line: an unknown user, root, or a directory
/// for the socket that exists and that the user may not write in (the tracker gives away only
/// directories it created).
#[test]
fn run_as_user_fails_closed() {
    require_root();
    let store = HermeticStore::new();
    let tracker_user = SystemUser::create("trkfail", &store.path("tracker-home"));
    let socket = store.path("run/socket");
    let db = store.path("lib/index.sqlite");
    let common = |user: &str| -> Vec<std::ffi::OsString> {
        vec![
            "--backend".into(),
            "fanotify".into(),
            "--socket".into(),
            socket.clone().into(),
            "--db".into(),
            db.clone().into(),
            "--user".into(),
            user.into(),
        ]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
        run_to_exit(&store, &args)
    };
    for (user, expected) in [
        ("rt-no-such-user", "no such user"),
        ("root", "must run as a user other than root"),
        ("0", "must run as a user other than root"),
    ] {
        let (code, stderr) = run(common(user));
        assert_eq!(code, Some(1), "--user {user}: {stderr}");
        assert!(stderr.contains(expected), "--user {user}: {stderr}");
    }
    // The socket's directory exists and is root's: not the tracker's to give away.
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let (code, stderr) = run(common(&tracker_user.name));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is not writable by --user"),
        "a root-owned socket directory: {stderr}"
    );
    // --user and --keep-privileges contradict each other: a usage error.
    let mut args = common(&tracker_user.name);
    args.push("--keep-privileges".into());
    let (code, stderr) = run(args);
    assert_eq!(code, Some(2), "{stderr}");
}

/// The /proc reader leaves when the tracker is killed (its end of their socket closes), and a
/// reader killed under a running tracker makes it fail closed: the next query is refused at
/// once and says why, the index stays unsettled, `status` and the log tell what happened, and
/// the tracker still stops cleanly.
fn reader_death_fails_closed(backend: &str) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    require_root();
    let store = HermeticStore::new();
    let targets = store.register_empty_paths("dead", 1);
    let layout = StoreLayout::new(&store.store_dir, &store.state_dir).unwrap();
    fs::create_dir_all(layout.auto_dir()).unwrap();
    symlink(&targets[0], layout.auto_dir().join("static")).unwrap();

    let mut tracker = TrackerProcess::start(&store, backend, &[]);
    let first_reader = tracker.reader_pid().unwrap();
    kill(Pid::from_raw(tracker.pid() as i32), Signal::SIGKILL).unwrap();
    assert_eq!(
        tests::wait_until_dead(&[first_reader]),
        Vec::<u32>::new(),
        "the /proc reader outlived a tracker killed with SIGKILL"
    );
    tracker.crash_and_restart();

    assert!(has_root(&tracker.query(), "static", &targets[0]));
    let reader = tracker.reader_pid().unwrap();
    assert_ne!(reader, first_reader);
    kill(Pid::from_raw(reader as i32), Signal::SIGKILL).unwrap();
    assert_eq!(tests::wait_until_dead(&[reader]), Vec::<u32>::new());

    let started = std::time::Instant::now();
    for attempt in 0..2 {
        let response = tracker
            .request(br#"{"request":"query","wait_ms":60000}"#)
            .unwrap();
        assert_eq!(
            response["response"], "error",
            "attempt {attempt}: {response}"
        );
        let message = response["message"].as_str().unwrap();
        assert!(
            message.contains("/proc reader is gone") && message.contains("SIGKILL"),
            "attempt {attempt}: {message}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the refusal waited for a rescan that cannot help"
    );
    let status = tracker.status();
    assert_eq!(status["proc_reader"]["state"], "gone", "{status:#}");
    assert_eq!(status["settled"]["state"], "unsettled", "{status:#}");
    assert!(
        status["settled"]["reason"]
            .as_str()
            .unwrap()
            .contains("/proc reader is gone"),
        "{status:#}"
    );
    let log = tracker.log();
    assert!(
        log.contains("the /proc reader is gone") && log.contains("killed by SIGKILL"),
        "{log}"
    );
    let stopped = tracker.stop();
    assert!(stopped.success(), "{stopped}:\n{log}");
}

#[test]
fn fanotify_tracker_fails_closed_without_its_reader() {
    reader_death_fails_closed("fanotify");
}

#[test]
fn ebpf_tracker_fails_closed_without_its_reader() {
    reader_death_fails_closed("ebpf");
}
