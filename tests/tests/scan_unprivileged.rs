//! The problem this project exists for: a traversal run by an unprivileged user cannot read a
//! 0700 home, so it misses the indirect roots inside. Nix then skips them silently and would
//! collect live paths; `root-tracker scan` misses them too, but says so (exit 3, JSON lists the
//! entry). Root's answer, next to it, sees them.

use std::fs;
use std::os::unix::fs::symlink;

use root_tracker::report::bytes_from_json;
use tests::{
    HermeticStore, SystemUser, package_bin, path_bytes, require_root, root_line, roots_lines,
    unreadable_outside_hidden_processes,
};

#[test]
fn unprivileged_scan_cannot_see_a_private_home_and_says_so() {
    require_root();
    let store = HermeticStore::new();
    let private = store.add_file("alices-build", b"a");
    let public = store.add_file("public", b"p");
    let alice = SystemUser::create("alice", &store.path("home/alice"));
    let gcuser = SystemUser::create("gc", &store.path("home/gc"));
    let result = alice.home.join("proj/result");
    fs::create_dir_all(result.parent().unwrap()).unwrap();
    store.add_indirect_root(&result, &private);
    std::os::unix::fs::lchown(&result, Some(alice.uid), Some(alice.gid)).unwrap();
    std::os::unix::fs::chown(result.parent().unwrap(), Some(alice.uid), Some(alice.gid)).unwrap();
    symlink(&public, store.gcroots().join("public")).unwrap();
    // The store belongs to the unprivileged collector's user, as it will in production.
    store.chown_all(&gcuser);
    let private_line = root_line(&result, &private);
    let public_line = root_line(&store.gcroots().join("public"), &public);

    // Root sees both roots, completely (but for processes this sandbox hides from everyone).
    let as_root = store.scan(&[]);
    let lines = roots_lines(&as_root.stdout);
    assert!(
        lines.contains(&private_line) && lines.contains(&public_line),
        "{lines:?}"
    );
    let (json, _) = store.scan_json();
    assert!(
        unreadable_outside_hidden_processes(&json).is_empty(),
        "{json:#}"
    );

    // The unprivileged scan misses alice's root and says the answer is incomplete.
    let mut scan = gcuser.command(package_bin("tracker-cli").as_os_str());
    scan.args(store.scan_command().get_args());
    let unprivileged = scan.output().unwrap();
    let lines = roots_lines(&unprivileged.stdout);
    assert!(lines.contains(&public_line), "{lines:?}");
    assert!(
        !lines.contains(&private_line),
        "a 0700 home must be unreadable to gcuser"
    );
    assert_eq!(
        unprivileged.status.code(),
        Some(3),
        "incomplete answers exit 3"
    );
    let stderr = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(stderr.contains("incomplete"), "{stderr}");

    let mut scan_json = gcuser.command(package_bin("tracker-cli").as_os_str());
    scan_json
        .args(store.scan_command().get_args())
        .arg("--json");
    let json: serde_json::Value =
        serde_json::from_slice(&scan_json.output().unwrap().stdout).unwrap();
    let unreadable = unreadable_outside_hidden_processes(&json);
    let entry = unreadable
        .iter()
        .find(|entry| bytes_from_json(&entry["path"]).unwrap() == path_bytes(&result))
        .unwrap_or_else(|| panic!("alice's result not reported unreadable: {json:#}"));
    assert_eq!(entry["errno"], libc::EACCES);
    let via = bytes_from_json(&entry["via"]).unwrap();
    assert!(
        via.starts_with(path_bytes(&store.gcroots().join("auto/"))),
        "{entry}"
    );

    // Nix as the same user silently skips the root and calls alice's build dead: the bug.
    let nix_as_gcuser = |args: &[&str]| store.nix_store_as(&gcuser, args);
    let nix_roots = nix_as_gcuser(&["--gc", "--print-roots"]);
    assert!(!roots_lines(&nix_roots).contains(&private_line));
    assert!(roots_lines(&nix_roots).contains(&public_line));
    let dead = nix_as_gcuser(&["--gc", "--print-dead"]);
    assert!(
        roots_lines(&dead).contains(&path_bytes(&private).to_vec()),
        "nix-store as gcuser should (wrongly) call alice's build dead:\n{}",
        String::from_utf8_lossy(&dead)
    );
    assert!(!roots_lines(&dead).contains(&path_bytes(&public).to_vec()));
}
