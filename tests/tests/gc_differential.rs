//! Differential: `store-gc collect --print-dead` / `--print-live`, run as the unprivileged
//! owner of the store with roots from a running tracker, print exactly what root's
//! `nix-store --gc --print-dead` / `--print-live` (Debian's nix-bin 2.8) print for random
//! store graphs, roots and keep-derivations/keep-outputs settings.
//!
//! Every seed asserts both sets are non-empty, so two empty outputs can never pass.
//! Replay one seed: `RT_GC_SEED=<seed> cargo test -p tests --test gc_differential`;
//! more seeds: `RT_GC_SEEDS=<count>`.

mod gc_common;

use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;

use gc_common::{RandomStore, generate, lines, store_gc, success};
use tests::{
    HermeticStore, Holder, Rng, SystemUser, TrackerProcess, nix32_from, package_bin, require_root,
};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RT_GC_SEED") {
        return vec![seed.parse().expect("RT_GC_SEED must be a number")];
    }
    let count: u64 = std::env::var("RT_GC_SEEDS")
        .ok()
        .map(|count| count.parse().expect("RT_GC_SEEDS must be a number"))
        .unwrap_or(20);
    (1..=count).collect()
}

#[test]
fn print_dead_and_live_match_nix_on_random_stores() {
    require_root();
    for seed in seeds() {
        eprintln!(
            "seed {seed} (replay: RT_GC_SEED={seed} cargo test -p tests --test gc_differential)"
        );
        one_seed(seed);
    }
}

fn one_seed(seed: u64) {
    let store = HermeticStore::new();
    let mut rng = Rng::new(seed);
    let made: RandomStore = generate(&store, &mut rng, seed);
    let gcuser = SystemUser::create("gc", &store.path("home/gc"));
    store.chown_all(&gcuser);
    // Temp roots belong to a live client of the store, which runs as the store's owner.
    let _holder = (!made.temp_roots.is_empty()).then(|| {
        let mut command = gcuser.command(package_bin("root-holder").as_os_str());
        command
            .arg("--temproot")
            .arg(store.state_dir.join("temproots"))
            .args(&made.temp_roots);
        Holder::start(command)
    });
    let uid = gcuser.uid.to_string();
    let tracker = TrackerProcess::start(&store, "fanotify", &gc_common::tracker_args(&uid));
    let context = || {
        format!(
            "seed {seed}: {}\nreplay: RT_GC_SEED={seed} cargo test -p tests --test gc_differential",
            made.describe()
        )
    };

    let flags = ["--allow-unreadable-runtime"];
    let ours_dead = success(
        store_gc(
            &gcuser,
            &store,
            &tracker.socket(),
            &[&flags[..], &["--print-dead"]].concat(),
        ),
        "store-gc --print-dead",
    );
    let ours_live = success(
        store_gc(
            &gcuser,
            &store,
            &tracker.socket(),
            &[&flags[..], &["--print-live"]].concat(),
        ),
        "store-gc --print-live",
    );
    // Nix after us: it removes stale auto links and dead temp-root files as it goes.
    let nix_dead = store.nix_store(&["--gc", "--print-dead"]);
    let nix_live = store.nix_store(&["--gc", "--print-live"]);

    assert_eq!(
        String::from_utf8_lossy(&ours_dead),
        String::from_utf8_lossy(&nix_dead),
        "--print-dead: store-gc (left) differs from nix-store (right)\n{}",
        context()
    );
    assert_eq!(
        String::from_utf8_lossy(&ours_live),
        String::from_utf8_lossy(&nix_live),
        "--print-live: store-gc (left) differs from nix-store (right)\n{}",
        context()
    );
    let dead = lines(&nix_dead);
    let live = lines(&nix_live);
    assert!(!live.is_empty(), "nothing alive: {}", context());
    assert!(
        dead.contains(&made.orphan.as_os_str().as_bytes()),
        "the orphan must be dead: {}",
        context()
    );
    for temp in &made.temp_roots {
        assert!(
            live.contains(&temp.as_os_str().as_bytes()),
            "temp root {} must be alive: {}",
            temp.display(),
            context()
        );
    }
}

/// A database where Nix's walk depends on the order: a rooted path whose `deriver` column names
/// a derivation that does not list it among its outputs. With keep-derivations (the default)
/// `store-gc` must walk as Nix does (`--json` says `nix-walk`); without it that edge is unused,
/// and it decides by closure. Either way it prints what `nix-store` prints.
#[test]
fn a_deriver_not_listing_its_output_falls_back_to_the_walk() {
    require_root();
    for (keep_derivations, method) in [(true, "nix-walk"), (false, "closure")] {
        let store = HermeticStore::new();
        if !keep_derivations {
            let conf = store.path("conf/nix.conf");
            let text = fs::read_to_string(&conf).unwrap() + "keep-derivations = false\n";
            fs::write(&conf, text).unwrap();
        }
        let expression = store.path("src/d.nix");
        fs::write(
            &expression,
            r#"derivation { name = "d"; system = "x86_64-linux"; builder = "/bin/sh"; src = builtins.toFile "s" "s"; }"#,
        )
        .unwrap();
        let mut instantiate = Command::new("nix-instantiate");
        instantiate
            .env_remove("NIX_REMOTE")
            .envs(store.nix_env())
            .arg(&expression);
        let drv = success(instantiate.output().unwrap(), "nix-instantiate");
        let drv = PathBuf::from(String::from_utf8(drv).unwrap().trim());
        let output = store
            .store_dir
            .join(format!("{}-not-listed", nix32_from(41)));
        fs::write(&output, b"").unwrap();
        let registration = format!(
            "{}\nsha256:{}\n0\n{}\n0\n",
            output.display(),
            "0".repeat(64),
            drv.display()
        );
        store.register_validity(registration.as_bytes());
        symlink(&output, store.gcroots().join("r")).unwrap();

        let gcuser = SystemUser::create("gc", &store.path("home/gc"));
        store.chown_all(&gcuser);
        let uid = gcuser.uid.to_string();
        let tracker = TrackerProcess::start(&store, "fanotify", &gc_common::tracker_args(&uid));
        let run = |action: &[&str]| {
            success(
                store_gc(
                    &gcuser,
                    &store,
                    &tracker.socket(),
                    &[&["--allow-unreadable-runtime"], action].concat(),
                ),
                "store-gc",
            )
        };
        let summary: serde_json::Value = serde_json::from_slice(&run(&["--dry-run", "--json"]))
            .expect("store-gc --json prints JSON");
        assert_eq!(
            summary["liveness_method"], method,
            "keep-derivations {keep_derivations}: {summary}"
        );
        let ours_dead = run(&["--print-dead"]);
        let ours_live = run(&["--print-live"]);
        let nix_dead = store.nix_store(&["--gc", "--print-dead"]);
        let nix_live = store.nix_store(&["--gc", "--print-live"]);
        assert_eq!(
            String::from_utf8_lossy(&ours_dead),
            String::from_utf8_lossy(&nix_dead),
            "--print-dead, keep-derivations {keep_derivations}"
        );
        assert_eq!(
            String::from_utf8_lossy(&ours_live),
            String::from_utf8_lossy(&nix_live),
            "--print-live, keep-derivations {keep_derivations}"
        );
        assert!(lines(&nix_live).contains(&output.as_os_str().as_bytes()));
        if !keep_derivations {
            assert!(lines(&nix_dead).contains(&drv.as_os_str().as_bytes()));
        }
    }
}
