//! Shared by the `store-gc` tests: running `store-gc` as a user against a hermetic store and a
//! tracker, and building random store graphs with the real Nix (derivations instantiated by
//! `nix-instantiate`, outputs and plain paths registered with `nix-store --register-validity`).

#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing, as in the harness"
)]

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::{HermeticStore, Rng, SystemUser, nix32_from, package_bin};

/// `store-gc collect ARGS` run as `user` against `store`, asking the tracker at `socket`.
/// The Nix variables are removed so that only the flags aim it at the store.
pub fn store_gc_command(user: &SystemUser, store: &HermeticStore, socket: &Path) -> Command {
    let mut command = user.command(package_bin("store-gc").as_os_str());
    command
        .env_remove("NIX_STORE_DIR")
        .env_remove("NIX_STATE_DIR")
        .env_remove("NIX_CONF_DIR")
        .arg("collect")
        .arg("--tracker-socket")
        .arg(socket)
        .arg("--store-dir")
        .arg(&store.store_dir)
        .arg("--state-dir")
        .arg(&store.state_dir)
        .arg("--conf-dir")
        .arg(store.path("conf"));
    command
}

pub fn store_gc(user: &SystemUser, store: &HermeticStore, socket: &Path, args: &[&str]) -> Output {
    let mut command = store_gc_command(user, store, socket);
    command.args(args);
    command.output().unwrap()
}

/// Panics with stderr unless `output` succeeded; returns stdout.
pub fn success(output: Output, what: &str) -> Vec<u8> {
    assert!(
        output.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Arguments for `TrackerProcess::start`: allow `uid` (unless empty) to query, and reveal
/// link paths to it, as a collector that removes stale auto links as Nix does must see them
/// (a censored answer confirms no stale link, and store-gc then removes none).
pub fn tracker_args(uid: &str) -> Vec<&str> {
    if uid.is_empty() {
        Vec::new()
    } else {
        vec!["--reveal-uid", uid]
    }
}

/// What a random store was made of, for assertions and failure messages.
#[derive(Debug, Default)]
pub struct RandomStore {
    pub keep_derivations: Option<bool>,
    pub keep_outputs: Option<bool>,
    pub drvs: Vec<PathBuf>,
    pub outputs_registered: usize,
    pub plain: usize,
    pub foreign_derivers: usize,
    pub roots: Vec<String>,
    /// Paths valid in the database, all present on disk.
    pub valid: Vec<PathBuf>,
    /// A valid path nothing refers to and nothing roots: dead whatever the settings.
    pub orphan: PathBuf,
    /// Temp roots a live client should hold (valid path, unregistered on-disk entry).
    pub temp_roots: Vec<PathBuf>,
}

impl RandomStore {
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let _ = write!(
            text,
            "keep-derivations {:?}, keep-outputs {:?}, {} drvs, {} outputs, {} plain ({} with a deriver that does not list them), {} valid; roots: {}",
            self.keep_derivations,
            self.keep_outputs,
            self.drvs.len(),
            self.outputs_registered,
            self.plain,
            self.foreign_derivers,
            self.valid.len(),
            self.roots.join(", ")
        );
        text
    }
}

fn chance(rng: &mut Rng, percent: usize) -> bool {
    rng.below(100) < percent
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// Builds a random store graph in `store` (still owned by root): settings in nix.conf,
/// derivations, registered outputs and plain paths with references, roots of every static
/// kind, a stray unregistered entry. Temp roots are only chosen (`temp_roots`), since the
/// client holding them must run as the store's owner.
pub fn generate(store: &HermeticStore, rng: &mut Rng, seed: u64) -> RandomStore {
    let mut made = RandomStore::default();
    write_settings(store, rng, &mut made);

    // Derivations, each depending on some earlier ones (so .drv files refer to .drv files
    // and to sources), some with two outputs.
    let drv_count = 4 + rng.below(12);
    let mut expression = String::from("let\n");
    for index in 0..drv_count {
        let outputs = if chance(rng, 30) {
            r#"[ "out" "dev" ]"#
        } else {
            r#"[ "out" ]"#
        };
        let mut deps = String::new();
        for _ in 0..rng.below(3) {
            if index > 0 {
                let dep = rng.below(index);
                deps.push_str(&format!(" d{dep}"));
            }
        }
        let src = if chance(rng, 50) {
            format!(r#"src = builtins.toFile "s{seed}-{index}" "{index}";"#)
        } else {
            String::new()
        };
        let _ = writeln!(
            expression,
            r#"  d{index} = derivation {{ name = "d{seed}-{index}"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = {outputs}; deps = [{deps} ]; {src} }};"#
        );
    }
    expression.push_str("in [");
    for index in 0..drv_count {
        let _ = write!(expression, " d{index}");
    }
    expression.push_str(" ]\n");
    let file = store.path(&format!("src/drvs-{seed}.nix"));
    fs::write(&file, &expression).unwrap();
    let mut instantiate = Command::new("nix-instantiate");
    instantiate
        .env_remove("NIX_REMOTE")
        .envs(store.nix_env())
        .arg(&file);
    let stdout = success(instantiate.output().unwrap(), "nix-instantiate");
    made.drvs = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(made.drvs.len(), drv_count, "{expression}");

    // Everything valid so far (derivations and their sources), then each output the
    // derivations declare, as (drv, output path).
    made.valid = valid_paths(store);
    let mut unbuilt: Vec<(PathBuf, PathBuf)> = derivation_outputs(store);

    // New registrations, in creation order: each refers only to earlier paths (a DAG, as
    // register-validity requires).
    let new_count = 30 + rng.below(90);
    let mut registration = Vec::new();
    for index in 0..=new_count {
        let last = index == new_count;
        let (path, deriver) = if !last && !unbuilt.is_empty() && chance(rng, 40) {
            let (drv, output) = unbuilt.swap_remove(rng.below(unbuilt.len()));
            made.outputs_registered += 1;
            (output, Some(drv))
        } else {
            made.plain += 1;
            let path = store.store_dir.join(format!(
                "{}-p{seed}-{index}",
                nix32_from(seed * 1000 + index as u64)
            ));
            let deriver = match rng.below(10) {
                _ if last => None,
                0 => {
                    made.foreign_derivers += 1;
                    Some(pick(rng, &made.drvs).clone())
                }
                1 => Some(
                    store
                        .store_dir
                        .join(format!("{}-ghost.drv", nix32_from(seed * 1000 + 999))),
                ),
                _ => None,
            };
            (path, deriver)
        };
        let mut references = Vec::new();
        if !last {
            for _ in 0..rng.below(4) {
                let reference = pick(rng, &made.valid).clone();
                if !references.contains(&reference) {
                    references.push(reference);
                }
            }
        }
        fs::write(&path, b"").unwrap();
        let _ = write!(
            registration,
            "{}\nsha256:{}\n0\n{}\n{}\n",
            path.display(),
            "0".repeat(64),
            deriver
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            references.len()
        );
        for reference in &references {
            let _ = writeln!(registration, "{}", reference.display());
        }
        if last {
            made.orphan = path;
        } else {
            made.valid.push(path);
        }
    }
    store.register_validity(&registration);

    make_roots(store, rng, &mut made);
    made.valid.push(made.orphan.clone());

    if chance(rng, 50) {
        // An entry named like a store path that nobody registered: dead.
        let stray = store
            .store_dir
            .join(format!("{}-stray", nix32_from(seed + 7_000_000)));
        fs::write(stray, b"").unwrap();
    }
    if chance(rng, 50) {
        // A valid path and an unregistered on-disk entry held as temp roots.
        let candidates: Vec<PathBuf> = made
            .valid
            .iter()
            .filter(|path| **path != made.orphan)
            .cloned()
            .collect();
        let pending = store
            .store_dir
            .join(format!("{}-pending", nix32_from(seed + 8_000_000)));
        fs::write(&pending, b"").unwrap();
        made.temp_roots = vec![pick(rng, &candidates).clone(), pending];
    }
    made
}

fn write_settings(store: &HermeticStore, rng: &mut Rng, made: &mut RandomStore) {
    let mut conf = fs::read_to_string(store.path("conf/nix.conf")).unwrap();
    for (names, slot) in [
        (
            ["keep-derivations", "gc-keep-derivations"],
            &mut made.keep_derivations,
        ),
        (["keep-outputs", "gc-keep-outputs"], &mut made.keep_outputs),
    ] {
        match rng.below(3) {
            0 => {}
            choice => {
                let value = choice == 1;
                let name = pick(rng, &names);
                let _ = writeln!(conf, "{name} = {value}");
                *slot = Some(value);
            }
        }
    }
    fs::write(store.path("conf/nix.conf"), conf).unwrap();
}

fn make_roots(store: &HermeticStore, rng: &mut Rng, made: &mut RandomStore) {
    let candidates = made.valid.clone();
    for index in 0..1 + rng.below(4) {
        let target = pick(rng, &candidates);
        symlink(target, store.gcroots().join(format!("r{index}"))).unwrap();
        made.roots
            .push(format!("gcroots/r{index} -> {}", target.display()));
    }
    for index in 0..rng.below(3) {
        let target = pick(rng, &candidates);
        let link = store.path(&format!("home/u{index}/result"));
        indirect_root(store, &link, target, &format!("u{index}"));
        made.roots
            .push(format!("{} -> {}", link.display(), target.display()));
    }
    for index in 0..rng.below(2) {
        let target = pick(rng, &candidates);
        symlink(target, store.profiles().join(format!("p{index}-1-link"))).unwrap();
        made.roots
            .push(format!("profiles/p{index}-1-link -> {}", target.display()));
    }
    if chance(rng, 30) {
        // An indirect root whose link is gone: Nix drops it (and deletes the auto link).
        let target = pick(rng, &candidates);
        let link = store.path("home/gone/result");
        indirect_root(store, &link, target, "gone");
        fs::remove_file(&link).unwrap();
        made.roots
            .push(format!("(dangling) -> {}", target.display()));
    }
    if chance(rng, 30) {
        // A root naming a store path that is not valid: ignored.
        let bogus = store.unregistered_path("not-there");
        symlink(&bogus, store.gcroots().join("bogus")).unwrap();
    }
}

/// `link -> target` plus `gcroots/auto/<name> -> link`, as `nix-store --add-root --indirect`
/// makes them, without `-r` (which would try to build a derivation target).
fn indirect_root(store: &HermeticStore, link: &Path, target: &Path, name: &str) {
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(target, link).unwrap();
    fs::create_dir_all(store.gcroots().join("auto")).unwrap();
    symlink(link, store.gcroots().join("auto").join(name)).unwrap();
}

fn db(store: &HermeticStore) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        store.state_dir.join("db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// Every valid path, in path order.
pub fn valid_paths(store: &HermeticStore) -> Vec<PathBuf> {
    let db = db(store);
    let mut statement = db
        .prepare("SELECT path FROM ValidPaths ORDER BY path")
        .unwrap();
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|path| PathBuf::from(path.unwrap()))
        .collect()
}

/// (derivation, output path) for every output every valid derivation declares.
fn derivation_outputs(store: &HermeticStore) -> Vec<(PathBuf, PathBuf)> {
    let db = db(store);
    let mut statement = db
        .prepare("SELECT v.path, d.path FROM DerivationOutputs d JOIN ValidPaths v ON d.drv = v.id ORDER BY v.path, d.id")
        .unwrap();
    statement
        .query_map([], |row| {
            Ok((
                PathBuf::from(row.get::<_, String>(0)?),
                PathBuf::from(row.get::<_, String>(1)?),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Lines of a `--print-dead`/`--print-live` output.
pub fn lines(output: &[u8]) -> Vec<&[u8]> {
    output
        .split(|&c| c == b'\n')
        .filter(|line| !line.is_empty())
        .collect()
}
