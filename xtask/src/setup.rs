//! `cargo xtask setup`: installs what building and testing need — Debian packages, a Rust
//! toolchain that can build the eBPF crate, and `bpf-linker` — and reports what it found or did.
//!
//! Idempotent: every step probes first and is a no-op (a few quick commands) when its piece is
//! present. The report carries the environment later cargo commands need (set only when the eBPF
//! crate must be built with stable + `RUSTC_BOOTSTRAP=1`).

use std::{
    ffi::OsStr,
    fmt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Debian packages: LLVM 22 to build `bpf-linker` against, the real Nix used as test oracle,
/// and GNU time, which the benchmarks read peak memory from.
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "nix-bin", "time"];
/// Where `llvm-22-dev` puts LLVM; `/usr/bin/llvm-config` is an older LLVM and must not win.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The `bpf-linker` series that matches the pinned aya and LLVM 22.
const BPF_LINKER_SERIES: &str = "0.13";
/// Toolchain the eBPF crate is built with by default (see `root-tracker/build.rs`).
const NIGHTLY: &str = "nightly";
/// Fallback toolchain, used with `RUSTC_BOOTSTRAP=1` when no nightly can be installed.
const STABLE: &str = "stable";
/// Read by `root-tracker/build.rs` to pick the eBPF toolchain.
const TOOLCHAIN_VAR: &str = "ROOT_TRACKER_EBPF_TOOLCHAIN";
/// Runs the fuzz targets (`root-tracker/fuzz`) in `cargo xtask test`.
const CARGO_FUZZ: &str = "cargo-fuzz";

/// Whether a piece was already there or had to be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Present,
    Installed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Present => "already present",
            Self::Installed => "installed",
        })
    }
}

impl EbpfToolchain {
    /// The toolchain name, for `cargo +NAME` (the fuzz targets build with it too).
    pub fn name(self) -> &'static str {
        match self {
            Self::Nightly => NIGHTLY,
            Self::StableWithBootstrap => STABLE,
        }
    }
}

/// The toolchain path taken for the eBPF crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfToolchain {
    /// `nightly` with `rust-src` (the default the build script expects).
    Nightly,
    /// `stable` with `rust-src`, unlocked with `RUSTC_BOOTSTRAP=1` (no nightly available).
    StableWithBootstrap,
}

/// One setup step: what it concerns, whether it installed anything, and what it found.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// What `run` found and did.
#[derive(Debug, Clone)]
pub struct SetupReport {
    pub steps: Vec<Step>,
    pub ebpf_toolchain: EbpfToolchain,
    /// Variables to set for later cargo commands (build, test, clippy), in order.
    pub env: Vec<(&'static str, &'static str)>,
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{:<15} {} ({})", step.name, step.outcome, step.detail)?;
        }
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match self.ebpf_toolchain {
            EbpfToolchain::Nightly => write!(
                f,
                "eBPF crate builds with `{NIGHTLY}`; no environment needed"
            ),
            EbpfToolchain::StableWithBootstrap => write!(
                f,
                "eBPF crate builds with `{STABLE}` (no nightly); set for later cargo commands: {}",
                env.join(" ")
            ),
        }
    }
}

/// Runs every setup step in order and reports; stops at the first step that fails.
pub fn run() -> anyhow::Result<SetupReport> {
    let mut steps = vec![ensure_apt_packages(APT_PACKAGES)?];
    let (ebpf_toolchain, toolchain_step) = ensure_ebpf_toolchain(NIGHTLY)?;
    steps.push(toolchain_step);
    steps.push(ensure_bpf_linker()?);
    steps.push(ensure_cargo_fuzz()?);
    let env = match ebpf_toolchain {
        EbpfToolchain::Nightly => Vec::new(),
        EbpfToolchain::StableWithBootstrap => {
            vec![(TOOLCHAIN_VAR, STABLE), ("RUSTC_BOOTSTRAP", "1")]
        }
    };
    Ok(SetupReport {
        steps,
        ebpf_toolchain,
        env,
    })
}

/// Installs the Debian packages not yet installed (one `apt-get update`, one install).
pub(crate) fn ensure_apt_packages(packages: &[&str]) -> anyhow::Result<Step> {
    let mut missing = Vec::new();
    for &package in packages {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(Step {
            name: "apt packages",
            outcome: Outcome::Present,
            detail: packages.join(", "),
        });
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_visible(apt_get().arg("update"), "apt-get update")?;
    run_visible(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )?;
    for &package in &missing {
        if !dpkg_installed(package)? {
            bail!("apt-get install succeeded but {package} is still not installed");
        }
    }
    Ok(Step {
        name: "apt packages",
        outcome: Outcome::Installed,
        detail: missing.join(", "),
    })
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// Whether dpkg reports `package` as installed. A package dpkg has never heard of is missing.
fn dpkg_installed(package: &str) -> anyhow::Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this a Debian-based system?)")?;
    // dpkg-query exits non-zero for unknown packages; that only means "not installed".
    Ok(output.status.success() && is_installed_status(&String::from_utf8_lossy(&output.stdout)))
}

/// `${Status}` is "want flag status", e.g. `install ok installed` or `deinstall ok config-files`.
fn is_installed_status(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

/// Makes sure a toolchain with `rust-src` can build the eBPF crate: `preferred` (nightly) if it
/// exists or can be installed, else stable (to be used with `RUSTC_BOOTSTRAP=1`).
fn ensure_ebpf_toolchain(preferred: &str) -> anyhow::Result<(EbpfToolchain, Step)> {
    if let Some(version) = toolchain_rustc_version(preferred) {
        let outcome = ensure_rust_src(preferred)?;
        eprintln!("setup: eBPF toolchain: using existing `{preferred}` ({version})");
        return Ok((
            EbpfToolchain::Nightly,
            Step {
                name: "eBPF toolchain",
                outcome,
                detail: format!("{preferred} with rust-src: {version}"),
            },
        ));
    }

    eprintln!("setup: no `{preferred}` toolchain; installing it with rust-src");
    let installed = Command::new("rustup")
        .args(["toolchain", "install", preferred, "--profile", "minimal"])
        .args(["--component", "rust-src"])
        .status()
        .context("running rustup (is rustup installed?)")?
        .success();
    if installed && let Some(version) = toolchain_rustc_version(preferred) {
        eprintln!("setup: eBPF toolchain: installed `{preferred}` ({version})");
        return Ok((
            EbpfToolchain::Nightly,
            Step {
                name: "eBPF toolchain",
                outcome: Outcome::Installed,
                detail: format!("{preferred} with rust-src: {version}"),
            },
        ));
    }

    eprintln!(
        "setup: could not install `{preferred}`; falling back to `{STABLE}` with rust-src and \
         RUSTC_BOOTSTRAP=1 (set {TOOLCHAIN_VAR}={STABLE} RUSTC_BOOTSTRAP=1 for cargo commands)"
    );
    let version = toolchain_rustc_version(STABLE)
        .with_context(|| format!("no `{preferred}` and no `{STABLE}` toolchain found"))?;
    let outcome = ensure_rust_src(STABLE)?;
    Ok((
        EbpfToolchain::StableWithBootstrap,
        Step {
            name: "eBPF toolchain",
            outcome,
            detail: format!(
                "{STABLE} with rust-src and RUSTC_BOOTSTRAP=1 (no {preferred}): {version}"
            ),
        },
    ))
}

/// `rustc --version` of `toolchain`, if that toolchain is installed and runs.
fn toolchain_rustc_version(toolchain: &str) -> Option<String> {
    probe(Command::new("rustup").args(["run", toolchain, "rustc", "--version"]))
}

/// Adds `rust-src` to `toolchain` unless it is there (needed by `-Z build-std=core`).
fn ensure_rust_src(toolchain: &str) -> anyhow::Result<Outcome> {
    let installed = probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .with_context(|| format!("listing the components of toolchain `{toolchain}`"))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(Outcome::Present);
    }
    run_visible(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]),
        "rustup component add rust-src",
    )?;
    Ok(Outcome::Installed)
}

/// Installs `bpf-linker` 0.13 against Debian's LLVM 22 unless a 0.13.x is on `PATH`.
fn ensure_bpf_linker() -> anyhow::Result<Step> {
    if let Some(version) = bpf_linker_version()
        && is_wanted_bpf_linker(&version)
    {
        return Ok(Step {
            name: "bpf-linker",
            outcome: Outcome::Present,
            detail: version,
        });
    }
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if !llvm_config.exists() {
        bail!(
            "{} is missing: bpf-linker needs llvm-22-dev (the apt step should have installed it)",
            llvm_config.display()
        );
    }

    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_SERIES} against LLVM 22 (this takes minutes)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search_path = std::env::split_paths(&path).collect::<Vec<_>>();
    search_path.insert(0, Path::new(LLVM_PREFIX).join("bin"));
    let search_path =
        std::env::join_paths(search_path).context("building PATH for cargo install")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_visible(
        Command::new(&cargo)
            .args(["install", "bpf-linker", "--version"])
            .arg(format!("^{BPF_LINKER_SERIES}"))
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("RUSTFLAGS", format!("-L {LLVM_PREFIX}/lib"))
            .env("PATH", search_path),
        "cargo install bpf-linker",
    )?;

    let version = bpf_linker_version().context(
        "bpf-linker was installed but `bpf-linker --version` fails; is cargo's bin directory \
         (usually ~/.cargo/bin) on PATH?",
    )?;
    if !is_wanted_bpf_linker(&version) {
        bail!(
            "after installing, `bpf-linker --version` reports {version:?}, not \
             {BPF_LINKER_SERIES}.x: another bpf-linker comes first on PATH"
        );
    }
    Ok(Step {
        name: "bpf-linker",
        outcome: Outcome::Installed,
        detail: version,
    })
}

/// Installs `cargo-fuzz` unless `cargo fuzz --version` works. It needs a nightly (or
/// `RUSTC_BOOTSTRAP=1`) only to run, which the eBPF toolchain step provides.
fn ensure_cargo_fuzz() -> anyhow::Result<Step> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = || probe(Command::new(&cargo).args(["fuzz", "--version"]));
    if let Some(version) = version() {
        return Ok(Step {
            name: CARGO_FUZZ,
            outcome: Outcome::Present,
            detail: version,
        });
    }
    eprintln!("setup: installing {CARGO_FUZZ} (about a minute)");
    run_visible(
        Command::new(&cargo).args(["install", CARGO_FUZZ, "--locked"]),
        "cargo install cargo-fuzz",
    )?;
    let version = version().context(
        "cargo-fuzz was installed but `cargo fuzz --version` fails; is cargo's bin directory \
         (usually ~/.cargo/bin) on PATH?",
    )?;
    Ok(Step {
        name: CARGO_FUZZ,
        outcome: Outcome::Installed,
        detail: version,
    })
}

fn bpf_linker_version() -> Option<String> {
    probe(Command::new("bpf-linker").arg("--version"))
}

/// `bpf-linker --version` prints e.g. `bpf-linker 0.13.0`.
fn is_wanted_bpf_linker(version_line: &str) -> bool {
    version_line
        .split_whitespace()
        .nth(1)
        .and_then(|version| version.strip_prefix(BPF_LINKER_SERIES))
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Runs a probe quietly; its trimmed stdout if it ran and succeeded.
fn probe(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs an installing command with its output shown; fails with `what` if it does not succeed.
fn run_visible(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let program = command.get_program().to_owned();
    eprintln!("setup: running {}", display_command(command));
    let status = command
        .status()
        .with_context(|| format!("{what}: could not start {}", program.to_string_lossy()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn display_command(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        assert!(is_installed_status("install ok installed"));
        assert!(!is_installed_status("deinstall ok config-files"));
        assert!(!is_installed_status("install ok half-installed"));
        assert!(!is_installed_status(""));
    }

    #[test]
    fn bpf_linker_version_series() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.0"));
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.12"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.130.0"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.12.1"));
        assert!(!is_wanted_bpf_linker("garbage"));
    }
}
