//! The two settings of `nix.conf` that change what the collector keeps: `keep-derivations`
//! (alias `gc-keep-derivations`, default true) and `keep-outputs` (alias `gc-keep-outputs`,
//! default false), read as Nix 2.8's `AbstractConfig::applyConfig` reads them.
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
    #[error("{path} includes itself (include depth over 32)")]
    IncludeLoop { path: PathBuf },
}

/// Reads `<conf_dir>/nix.conf`. A missing or unreadable file leaves the defaults, as in
/// Nix's `applyConfigFile`, which ignores system errors.
pub fn read_gc_settings(conf_dir: &Path) -> Result<GcSettings, ConfError> {
    let mut settings = GcSettings::default();
    apply_file(&conf_dir.join("nix.conf"), &mut settings, 0)?;
    Ok(settings)
}

fn apply_file(path: &Path, settings: &mut GcSettings, depth: u32) -> Result<(), ConfError> {
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
    settings: &mut GcSettings,
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
                let slot = match *name {
                    "keep-derivations" | "gc-keep-derivations" => &mut settings.keep_derivations,
                    "keep-outputs" | "gc-keep-outputs" => &mut settings.keep_outputs,
                    _ => continue,
                };
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
            _ => return Err(illegal()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GcSettings, ConfError> {
        let mut settings = GcSettings::default();
        apply_config(text, Path::new("/etc/nix/nix.conf"), &mut settings, 0)?;
        Ok(settings)
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
    fn includes_are_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "include extra.conf\n").unwrap();
        std::fs::write(dir.path().join("extra.conf"), "keep-outputs = true\n").unwrap();
        assert!(read_gc_settings(dir.path()).unwrap().keep_outputs);
    }
}
