//! Builds the eBPF programs (`root-tracker-ebpf`) for the BPF target with aya-build and leaves the
//! object at `$OUT_DIR/root-tracker-ebpf`, where `source::ebpf` embeds it.
//!
//! The eBPF crate needs a toolchain with `rust-src` (for `-Z build-std=core`) and `bpf-linker`:
//! `nightly` by default, or the toolchain named by `ROOT_TRACKER_EBPF_TOOLCHAIN` (e.g. `stable`
//! together with `RUSTC_BOOTSTRAP=1`). `cargo xtask setup` installs whichever is missing.

use std::{env, fs, path::Path};

use anyhow::{Context as _, anyhow};

const TOOLCHAIN_VAR: &str = "ROOT_TRACKER_EBPF_TOOLCHAIN";
const EBPF_PACKAGE: &str = "root-tracker-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    println!("cargo:rerun-if-env-changed=RUSTC_BOOTSTRAP");

    let toolchain_name = match env::var(TOOLCHAIN_VAR) {
        Ok(name) if !name.is_empty() => Some(name),
        Ok(_) | Err(env::VarError::NotPresent) => None,
        Err(env::VarError::NotUnicode(name)) => {
            return Err(anyhow!("{TOOLCHAIN_VAR} is not valid UTF-8: {name:?}"));
        }
    };
    let toolchain = match toolchain_name.as_deref() {
        Some(name) => aya_build::Toolchain::Custom(name),
        None => aya_build::Toolchain::Nightly,
    };

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .context("root-tracker has no parent directory (it must sit in the workspace)")?
        .join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .to_str()
        .with_context(|| format!("eBPF crate path is not UTF-8: {}", ebpf_dir.display()))?;

    let package = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], toolchain).with_context(|| {
        format!(
            "building the eBPF programs ({EBPF_PACKAGE}) with toolchain `{}` failed; \
             run `cargo xtask setup` to install the eBPF toolchain (rust-src, bpf-linker) \
             and use the environment it prints (e.g. {TOOLCHAIN_VAR}=stable RUSTC_BOOTSTRAP=1)",
            toolchain_name.as_deref().unwrap_or("nightly"),
        )
    })?;

    // With AYA_BUILD_SKIP=1 aya-build builds nothing; an empty object keeps the library
    // compiling, and `SymlinkWatch::attach` then reports that the programs are missing.
    let out_dir = env::var_os("OUT_DIR").context("OUT_DIR not set")?;
    let object = Path::new(&out_dir).join(EBPF_PACKAGE);
    if !object.exists() {
        fs::write(&object, b"")
            .with_context(|| format!("writing placeholder {}", object.display()))?;
    }
    Ok(())
}
