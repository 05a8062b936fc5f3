//! Differential tests: `root-tracker scan` prints exactly what `nix-store --gc --print-roots`
//! (Debian's nix-bin, the real Nix) prints for the same hermetic store, case by case.
//!
//! Every case also asserts the roots it built are in Nix's answer, so that two empty outputs
//! can never pass. Our scan runs first because Nix deletes stale auto links and dead temp-root
//! files while it prints.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use root_tracker::report::bytes_from_json;
use tests::{
    HermeticStore, Holder, join_bytes, package_bin, path_bytes, root_line, roots_lines,
    unreadable_outside_hidden_processes,
};

/// Runs both, asserts byte equality and a truthful exit status, and returns Nix's output.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a panic is the test failing"
)]
fn assert_same_roots(store: &HermeticStore) -> Vec<u8> {
    let (json, _) = store.scan_json();
    let ours = store.scan(&[]);
    let nix = store.nix_print_roots();
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&nix),
        "root-tracker scan (left) differs from nix-store --gc --print-roots (right)"
    );
    assert_eq!(
        ours.stdout, nix,
        "outputs differ in bytes that are not UTF-8"
    );
    let unexpected = unreadable_outside_hidden_processes(&json);
    assert!(
        unexpected.is_empty(),
        "unexpected unreadable entries: {unexpected:#?}"
    );
    let complete = json["unreadable"].as_array().unwrap().is_empty();
    let expected_code = if complete { 0 } else { 3 };
    assert_eq!(
        ours.status.code(),
        Some(expected_code),
        "exit status must say whether complete"
    );
    nix
}

fn assert_has(output: &[u8], link: &Path, target: &Path) {
    let line = root_line(link, target);
    assert!(
        roots_lines(output).contains(&line),
        "expected root {:?} in:\n{}",
        String::from_utf8_lossy(&line),
        String::from_utf8_lossy(output)
    );
}

fn assert_lacks(output: &[u8], needle: &Path) {
    let needle = path_bytes(needle);
    assert!(
        !output.windows(needle.len()).any(|w| w == needle),
        "did not expect {:?} in:\n{}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(output)
    );
}

#[test]
fn direct_roots_at_several_depths() {
    let store = HermeticStore::new();
    let top = store.add_file("top", b"1");
    let deep = store.add_file("deep", b"2");
    let tool = store.add_dir("pkg", &[("tool", b"#!/bin/sh\n")]);
    let made = store.add_file("made-by-nix", b"3");
    let gcroots = store.gcroots();
    symlink(&top, gcroots.join("top")).unwrap();
    fs::create_dir_all(gcroots.join("a/b/c")).unwrap();
    symlink(&deep, gcroots.join("a/b/c/deep")).unwrap();
    // A link to a file inside a store path roots the whole store path.
    symlink(tool.join("tool"), gcroots.join("a/subpath")).unwrap();
    // Real Nix: a root made by `--add-root` inside gcroots is both direct and indirect.
    store.nix_store(&[
        "--add-root",
        gcroots.join("made").to_str().unwrap(),
        "-r",
        made.to_str().unwrap(),
    ]);

    let nix = assert_same_roots(&store);
    assert_has(&nix, &gcroots.join("top"), &top);
    assert_has(&nix, &gcroots.join("a/b/c/deep"), &deep);
    assert_has(&nix, &gcroots.join("a/subpath"), &tool);
    assert_has(&nix, &gcroots.join("made"), &made);
}

#[test]
fn profiles_and_per_user_profiles() {
    let store = HermeticStore::new();
    let system = store.add_file("system", b"s");
    let user_old = store.add_file("user-old", b"u1");
    let user_new = store.add_file("user-new", b"u2");
    let profiles = store.profiles();
    store.set_profile(&profiles.join("system"), &system);
    let alice = profiles.join("per-user/alice/profile");
    fs::create_dir_all(alice.parent().unwrap()).unwrap();
    store.set_profile(&alice, &user_old);
    store.set_profile(&alice, &user_new);

    let nix = assert_same_roots(&store);
    assert_has(&nix, &profiles.join("system-1-link"), &system);
    assert_has(
        &nix,
        &profiles.join("per-user/alice/profile-1-link"),
        &user_old,
    );
    assert_has(
        &nix,
        &profiles.join("per-user/alice/profile-2-link"),
        &user_new,
    );
}

#[test]
fn indirect_roots_valid_and_dangling() {
    let store = HermeticStore::new();
    let valid = store.add_file("valid", b"v");
    let dangling = store.add_file("dangling", b"d");
    let home = store.path("home/alice");
    fs::create_dir_all(home.join("proj")).unwrap();
    fs::create_dir_all(home.join("gone")).unwrap();
    store.add_indirect_root(&home.join("proj/result"), &valid);
    store.add_indirect_root(&home.join("gone/result"), &dangling);
    fs::remove_file(home.join("gone/result")).unwrap();

    let (json, _) = store.scan_json();
    let stale: Vec<_> = json["stale_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stale| bytes_from_json(&stale["target"]).unwrap())
        .collect();
    assert_eq!(stale, vec![path_bytes(&home.join("gone/result")).to_vec()]);
    let auto_links = || fs::read_dir(store.gcroots().join("auto")).unwrap().count();
    assert_eq!(auto_links(), 2, "the scanner must not delete stale links");

    let nix = assert_same_roots(&store);
    assert_has(&nix, &home.join("proj/result"), &valid);
    assert_lacks(&nix, &dangling);
    assert_eq!(
        auto_links(),
        1,
        "Nix deletes the stale auto link (documents the oracle)"
    );
}

#[test]
fn indirect_chains_relative_targets_directories_and_files() {
    let store = HermeticStore::new();
    let two_hop = store.add_file("two-hop", b"2");
    let three_hop = store.add_file("three-hop", b"3");
    let relative = store.add_file("relative", b"r");
    let relative_store_text = store.add_file("relative-store-text", b"t");
    let home = store.path("home/bob");
    let auto = store.gcroots().join("auto");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&auto).unwrap();

    // auto -> hop1 -> store: the one extra readlink Nix does lands in the store.
    symlink(&two_hop, home.join("hop1")).unwrap();
    symlink(home.join("hop1"), auto.join("a")).unwrap();
    // auto -> chain1 -> chain2 -> store: two more hops, so Nix does not see it.
    symlink(&three_hop, home.join("chain2")).unwrap();
    symlink(home.join("chain2"), home.join("chain1")).unwrap();
    symlink(home.join("chain1"), auto.join("b")).unwrap();
    // An auto link with a relative text is resolved against its directory.
    symlink(&relative, home.join("rel-result")).unwrap();
    symlink("../../../home/bob/rel-result", auto.join("c")).unwrap();
    // A user link whose text is relative is never "in the store", even if it resolves there.
    let store_base = relative_store_text.file_name().unwrap().to_str().unwrap();
    symlink(
        format!("../../store/{store_base}"),
        home.join("relative-store"),
    )
    .unwrap();
    symlink(home.join("relative-store"), auto.join("d")).unwrap();
    // Targets that are a directory and a regular file: neither roots nor stale.
    fs::create_dir_all(home.join("somedir")).unwrap();
    fs::write(home.join("somefile"), b"x").unwrap();
    symlink(home.join("somedir"), auto.join("e")).unwrap();
    symlink(home.join("somefile"), auto.join("f")).unwrap();
    // A dangling link outside gcroots/auto is ignored and not stale.
    symlink(
        home.join("nothing"),
        store.gcroots().join("dangling-direct"),
    )
    .unwrap();

    let (json, _) = store.scan_json();
    assert!(
        json["stale_links"].as_array().unwrap().is_empty(),
        "{json:#}"
    );

    let nix = assert_same_roots(&store);
    assert_has(&nix, &home.join("hop1"), &two_hop);
    assert_has(&nix, &home.join("rel-result"), &relative);
    assert_lacks(&nix, &three_hop);
    assert_lacks(&nix, &relative_store_text);
    assert!(
        home.join("relative-store").exists(),
        "the relative link really resolves"
    );
}

#[test]
fn regular_file_roots_and_unregistered_paths() {
    let store = HermeticStore::new();
    let by_name = store.add_file("by-name", b"n");
    let gcroots = store.gcroots();
    fs::write(gcroots.join(by_name.file_name().unwrap()), b"").unwrap();
    fs::write(gcroots.join("not-a-store-path"), b"").unwrap();
    let unregistered = store.unregistered_path("unregistered");
    fs::write(gcroots.join(unregistered.file_name().unwrap()), b"").unwrap();
    symlink(&unregistered, gcroots.join("to-unregistered")).unwrap();

    let (json, _) = store.scan_json();
    let skipped: Vec<_> = json["unregistered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|root| bytes_from_json(&root["retainer"]).unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{json:#}");

    let nix = assert_same_roots(&store);
    assert_has(&nix, &gcroots.join(by_name.file_name().unwrap()), &by_name);
    assert_lacks(&nix, &unregistered);
}

#[test]
fn names_with_spaces_tabs_newlines_and_invalid_utf8() {
    let store = HermeticStore::new();
    let target = store.add_file("odd", b"o");
    let indirect_target = store.add_file("odd-indirect", b"i");
    let gcroots = store.gcroots();
    let names: [&[u8]; 4] = [
        b"with space",
        b"with\ttab",
        b"with\nnewline",
        b"bad-\xff\xfe-utf8",
    ];
    for name in names {
        symlink(&target, join_bytes(&gcroots, name)).unwrap();
    }
    let home = join_bytes(&store.path("home"), b"we ird\n\xff dir");
    fs::create_dir_all(&home).unwrap();
    store.add_indirect_root(&join_bytes(&home, b"res\tult"), &indirect_target);

    let nix = assert_same_roots(&store);
    for name in names {
        let line = root_line(&join_bytes(&gcroots, name), &target);
        assert!(
            nix.windows(line.len()).any(|w| w == line.as_slice()),
            "missing {name:?}"
        );
    }
    let line = root_line(&join_bytes(&home, b"res\tult"), &indirect_target);
    assert!(nix.windows(line.len()).any(|w| w == line.as_slice()));

    // JSON keeps every byte: invalid UTF-8 comes back through the hex form.
    let (json, _) = store.scan_json();
    let retainers: Vec<Vec<u8>> = json["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|root| bytes_from_json(&root["retainer"]).unwrap())
        .collect();
    for name in names {
        assert!(retainers.contains(&path_bytes(&join_bytes(&gcroots, name)).to_vec()));
    }
}

#[test]
fn runtime_roots_of_a_process() {
    let store = HermeticStore::new();
    // The holder runs from a copy inside the store, so its executable is a root too.
    let holder_dir = store.path("src/holder");
    fs::create_dir_all(&holder_dir).unwrap();
    fs::copy(package_bin("root-holder"), holder_dir.join("root-holder")).unwrap();
    let exe_path = store.add(&holder_dir);
    let cwd_path = store.add_dir("cwd", &[("f", b"c")]);
    let fd_path = store.add_dir("fd", &[("data", b"fd")]);
    let map_path = store.add_dir("map", &[("data", b"mapped")]);
    let env_path = store.add_file("env", b"e");

    let mut command = Command::new(exe_path.join("root-holder"));
    command
        .current_dir(&cwd_path)
        .env("HELD_PATH", format!("{}:/usr/bin", env_path.display()))
        .arg("--open")
        .arg(fd_path.join("data"))
        .arg("--map")
        .arg(map_path.join("data"));
    let holder = Holder::start(command);
    let proc_dir = Path::new("/proc").join(holder.pid().to_string());

    let nix = assert_same_roots(&store);
    assert_has(&nix, &proc_dir.join("exe"), &exe_path);
    assert_has(&nix, &proc_dir.join("cwd"), &cwd_path);
    assert_has(&nix, &proc_dir.join("maps"), &map_path);
    assert_has(&nix, &proc_dir.join("environ"), &env_path);
    let fd_line = root_line(Path::new("/"), &fd_path);
    let fd_suffix = &fd_line[1..];
    let fd_rooted = roots_lines(&nix).iter().any(|line| {
        line.starts_with(path_bytes(&proc_dir.join("fd/"))) && line.ends_with(fd_suffix)
    });
    assert!(
        fd_rooted,
        "open fd not a root:\n{}",
        String::from_utf8_lossy(&nix)
    );
    drop(holder);
}

#[test]
fn temp_roots_of_live_and_dead_owners() {
    let store = HermeticStore::new();
    let live = store.add_file("live", b"l");
    let dead = store.add_file("dead", b"d");
    let temproots = store.state_dir.join("temproots");
    let mut command = Command::new(package_bin("root-holder"));
    command.arg("--temproot").arg(&temproots).arg(&live);
    let holder = Holder::start(command);
    // A dead owner: the file exists but nobody holds its lock.
    let mut dead_contents = path_bytes(&dead).to_vec();
    dead_contents.push(0);
    fs::write(temproots.join("999999999"), dead_contents).unwrap();

    let (json, _) = store.scan_json();
    assert_eq!(
        json["stale_temp_roots"].as_array().unwrap().len(),
        1,
        "{json:#}"
    );

    let nix = assert_same_roots(&store);
    let label = format!("{{temp:{}}}", holder.pid());
    assert_has(&nix, Path::new(&label), &live);
    assert_lacks(&nix, &dead);
    drop(holder);
}

/// Large directories are walked by several threads; the answer must not change.
#[test]
fn thousands_of_indirect_roots_in_one_auto_dir() {
    let store = HermeticStore::new();
    let paths = store.register_empty_paths("many", 6000);
    let auto = store.gcroots().join("auto");
    fs::create_dir_all(&auto).unwrap();
    for (index, path) in paths.iter().enumerate() {
        let home = store.path(&format!("home/u{}", index / 100));
        fs::create_dir_all(&home).unwrap();
        let result = home.join(format!("result-{index}"));
        // Every tenth user link is gone: a stale auto link among the live ones.
        if index % 10 != 0 {
            symlink(path, &result).unwrap();
        }
        symlink(&result, auto.join(format!("link-{index}"))).unwrap();
    }
    let (json, _) = store.scan_json();
    assert_eq!(json["stale_links"].as_array().unwrap().len(), 600);
    let nix = assert_same_roots(&store);
    assert_eq!(roots_lines(&nix).len(), 5400);
}
