//! The settings of `nix.conf` a collector uses, read as Nix 2.8's `AbstractConfig::applyConfig`
//! reads them: the two that change what it keeps, `keep-derivations` (alias
//! `gc-keep-derivations`, default true) and `keep-outputs` (alias `gc-keep-outputs`, default
//! false), and the two that make `store-gc serve` collect when space runs low, `min-free`
//! (default 0: never) and `max-free` (default: no limit), byte counts with an optional K, M,
//! G or T suffix.
//!
//! Only `$NIX_CONF_DIR/nix.conf` (default `/etc/nix/nix.conf`) and what it includes are read:
//! user configuration files and `NIX_CONFIG` belong to the user who runs `nix-store`, not to
//! the store, and a collector must not keep or drop paths depending on who runs it.

use std::path::{Path, PathBuf};

/// What Nix's `collectGarbage` reads from `settings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// Keep the derivers of live paths (Nix's `gcKeepDerivations`).
    pub keep_derivations: bool,
    /// Keep the outputs of live derivations (Nix's `gcKeepOutputs`).
    pub keep_outputs: bool,
}

impl Default for GcSettings {
    fn default() -> Self {
        Self {
            keep_derivations: true,
            keep_outputs: false,
        }
    }
}

/// Everything read from `nix.conf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NixSettings {
    pub gc: GcSettings,
    /// `min-free`, when set to more than 0.
    pub min_free: Option<u64>,
    /// `max-free`, when set.
    pub max_free: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("illegal configuration line {line:?} in {path}")]
    IllegalLine { path: PathBuf, line: String },
    #[error("file {included} included from {path} not found")]
    MissingInclude { path: PathBuf, included: PathBuf },
    #[error("setting '{name}' in {path} has invalid value {value:?}, expected 'true' or 'false'")]
    NotABool {
        path: PathBuf,
        name: String,
        value: String,
    },
    #[error("setting '{name}' in {path} has invalid value {value:?}: {reason}")]
    NotABytes {
        path: PathBuf,
        name: String,
        value: String,
        reason: String,
    },
    #[error("{path} includes itself (include depth over 32)")]
    IncludeLoop { path: PathBuf },
}

/// Reads `<conf_dir>/nix.conf`. A missing or unreadable file leaves the defaults, as in
/// Nix's `applyConfigFile`, which ignores system errors.
pub fn read_settings(conf_dir: &Path) -> Result<NixSettings, ConfError> {
    let mut settings = NixSettings::default();
    apply_file(&conf_dir.join("nix.conf"), &mut settings, 0)?;
    Ok(settings)
}

/// [`read_settings`], the settings that change what is kept.
pub fn read_gc_settings(conf_dir: &Path) -> Result<GcSettings, ConfError> {
    Ok(read_settings(conf_dir)?.gc)
}

fn apply_file(path: &Path, settings: &mut NixSettings, depth: u32) -> Result<(), ConfError> {
    if depth > 32 {
        return Err(ConfError::IncludeLoop {
            path: path.to_owned(),
        });
    }
    match std::fs::read(path) {
        Ok(contents) => apply_config(&String::from_utf8_lossy(&contents), path, settings, depth),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "configuration file not read");
            Ok(())
        }
    }
}

/// Nix's `applyConfig`: `#` starts a comment, tokens are separated by whitespace, a line is
/// `name = value...` or `include PATH` / `!include PATH` (relative to the including file).
pub fn apply_config(
    contents: &str,
    path: &Path,
    settings: &mut NixSettings,
    depth: u32,
) -> Result<(), ConfError> {
    for raw in contents.split('\n') {
        let line = raw.split('#').next().unwrap_or_default();
        let tokens: Vec<&str> = line.split_ascii_whitespace().collect();
        let illegal = || ConfError::IllegalLine {
            path: path.to_owned(),
            line: line.to_owned(),
        };
        match tokens.as_slice() {
            [] => {}
            [directive @ ("include" | "!include"), file] => {
                let dir = path.parent().unwrap_or(Path::new("/"));
                let included = dir.join(file);
                if included.exists() {
                    apply_file(&included, settings, depth + 1)?;
                } else if *directive == "include" {
                    return Err(ConfError::MissingInclude {
                        path: path.to_owned(),
                        included,
                    });
                }
            }
            ["include" | "!include", ..] => return Err(illegal()),
            [name, "=", values @ ..] => {
                let value = values.join(" ");
                let (bool_slot, bytes_slot) = match *name {
                    "keep-derivations" | "gc-keep-derivations" => {
                        (Some(&mut settings.gc.keep_derivations), None)
                    }
                    "keep-outputs" | "gc-keep-outputs" => {
                        (Some(&mut settings.gc.keep_outputs), None)
                    }
                    "min-free" => (None, Some(&mut settings.min_free)),
                    "max-free" => (None, Some(&mut settings.max_free)),
                    _ => continue,
                };
                if let Some(slot) = bool_slot {
                    *slot = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(ConfError::NotABool {
                                path: path.to_owned(),
                                name: (*name).to_owned(),
                                value,
                            });
                        }
                    };
                }
                if let Some(slot) = bytes_slot {
                    let bytes =
                        crate::cli::parse_bytes(&value).map_err(|reason| ConfError::NotABytes {
                            path: path.to_owned(),
                            name: (*name).to_owned(),
                            value: value.clone(),
                            reason,
                        })?;
                    // min-free 0 is Nix's "off"; max-free is kept as given.
                    *slot = (*name != "min-free" || bytes > 0).then_some(bytes);
                }
            }
            _ => return Err(illegal()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Result<NixSettings, ConfError> {
        let mut settings = NixSettings::default();
        apply_config(text, Path::new("/etc/nix/nix.conf"), &mut settings, 0)?;
        Ok(settings)
    }

    fn parse(text: &str) -> Result<GcSettings, ConfError> {
        Ok(parse_all(text)?.gc)
    }

    #[test]
    fn reads_keep_settings_and_aliases() {
        assert_eq!(parse("").unwrap(), GcSettings::default());
        let settings = parse(
            "# comment\nsandbox = false\nkeep-outputs = true # why\n  gc-keep-derivations   =   false\n",
        )
        .unwrap();
        assert_eq!(
            settings,
            GcSettings {
                keep_derivations: false,
                keep_outputs: true
            }
        );
        // The last assignment wins.
        assert!(
            !parse("keep-outputs = true\nkeep-outputs = false")
                .unwrap()
                .keep_outputs
        );
    }

    #[test]
    fn rejects_what_nix_rejects() {
        assert!(matches!(
            parse("keep-outputs = yes"),
            Err(ConfError::NotABool { .. })
        ));
        assert!(matches!(
            parse("keep-outputs"),
            Err(ConfError::IllegalLine { .. })
        ));
        assert!(matches!(
            parse("keep-outputs true"),
            Err(ConfError::IllegalLine { .. })
        ));
        assert!(parse("!include /nonexistent/file").is_ok());
        assert!(matches!(
            parse("include /nonexistent/file"),
            Err(ConfError::MissingInclude { .. })
        ));
    }

    #[test]
    fn reads_free_space_settings() {
        let none = parse_all("").unwrap();
        assert_eq!((none.min_free, none.max_free), (None, None));
        let set = parse_all("min-free = 1G\nmax-free = 3221225472\n").unwrap();
        assert_eq!(set.min_free, Some(1 << 30));
        assert_eq!(set.max_free, Some(3 << 30));
        // 0 is Nix's default: never collect for space.
        assert_eq!(parse_all("min-free = 0").unwrap().min_free, None);
        assert!(matches!(
            parse_all("min-free = lots"),
            Err(ConfError::NotABytes { .. })
        ));
    }

    #[test]
    fn includes_are_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "include extra.conf\n").unwrap();
        std::fs::write(dir.path().join("extra.conf"), "keep-outputs = true\n").unwrap();
        assert!(read_gc_settings(dir.path()).unwrap().keep_outputs);
    }
}
