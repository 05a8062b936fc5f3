//! Whether the tracker's answer can be trusted, and the roots it names.
//!
//! Invariant (DESIGN.md, "fail closed"): an answer that may be missing a root is refused,
//! listing what could not be read. The one tolerated gap, with `--allow-unreadable-runtime`,
//! is an unreadable entry under `/proc`: Nix's `findRuntimeRoots` ignores EACCES there too, and
//! this sandbox's pid 1 hides `/proc/1` even from root. Any other unreadable entry (a private
//! home, a gcroots directory) still refuses.

use std::os::unix::ffi::OsStrExt as _;

use crate::layout::StoreLayout;
use crate::store_path;
use crate::tracker_client::{Report, RootKind, TrackerError};

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(
        "the root tracker's answer is incomplete, so nothing is collected; unreadable: {}{}",
        entries.join("; "),
        if *only_runtime { " (all under /proc: --allow-unreadable-runtime tolerates these, as Nix does)" } else { "" }
    )]
    Incomplete {
        entries: Vec<String>,
        only_runtime: bool,
    },
    #[error("the root tracker watches {tracker}, not {ours}")]
    WrongStore { tracker: String, ours: String },
    #[error(
        "the root tracker named {target:?} as a root, which is not a store path of {store_dir}"
    )]
    BadTarget { target: String, store_dir: String },
    #[error(transparent)]
    Tracker(#[from] TrackerError),
}

/// A root the tracker vouches for: its store path basename and how it was found.
#[derive(Clone, Debug)]
pub struct TrackedRoot {
    pub kind: RootKind,
    pub retainer: Vec<u8>,
    pub basename: Vec<u8>,
}

/// Roots from a trusted tracker answer.
#[derive(Debug, Default)]
pub struct TrackedRoots {
    pub roots: Vec<TrackedRoot>,
    /// Unreadable `/proc` entries that `--allow-unreadable-runtime` let through, rendered.
    pub tolerated: Vec<String>,
    /// `gcroots/auto` links the tracker found stale, by path; none when it censors links.
    pub stale_links: Vec<Vec<u8>>,
}

impl TrackedRoots {
    pub fn count(&self, kind: RootKind) -> usize {
        self.roots.iter().filter(|root| root.kind == kind).count()
    }
}

/// Checks the report against our store and the completeness policy, and extracts the roots.
pub fn accept_report(
    report: &Report,
    layout: &StoreLayout,
    allow_unreadable_runtime: bool,
) -> Result<TrackedRoots, RootsError> {
    check_store(report, layout)?;
    let tolerated = check_complete(report, allow_unreadable_runtime)?;
    let roots = extract_roots(report, layout)?;
    let mut stale_links = Vec::new();
    for stale in &report.stale_links {
        let link = stale.link.to_bytes()?;
        // A censored link names nothing we could check; it is left in place.
        if link.first() == Some(&b'/') {
            stale_links.push(link);
        }
    }
    Ok(TrackedRoots {
        roots,
        tolerated,
        stale_links,
    })
}

/// The tracker must watch the store we collect, or its roots mean nothing here.
pub fn check_store(report: &Report, layout: &StoreLayout) -> Result<(), RootsError> {
    let ours_store = layout.store_dir().as_os_str().as_bytes();
    let ours_state = layout.state_dir().as_os_str().as_bytes();
    for (theirs, ours) in [
        (&report.store_dir, ours_store),
        (&report.state_dir, ours_state),
    ] {
        let theirs = theirs.to_bytes()?;
        if theirs != ours {
            return Err(RootsError::WrongStore {
                tracker: String::from_utf8_lossy(&theirs).into_owned(),
                ours: String::from_utf8_lossy(ours).into_owned(),
            });
        }
    }
    Ok(())
}

/// The completeness policy (module header); returns the tolerated entries, rendered.
pub fn check_complete(
    report: &Report,
    allow_unreadable_runtime: bool,
) -> Result<Vec<String>, RootsError> {
    let mut tolerated = Vec::new();
    let mut entries = Vec::new();
    let mut only_runtime = true;
    for entry in &report.unreadable {
        let path = entry.path.to_bytes()?;
        let mut text = String::from_utf8_lossy(&path).into_owned();
        if let Some(via) = &entry.via {
            text.push_str(&format!(
                " (via {})",
                String::from_utf8_lossy(&via.to_bytes()?)
            ));
        }
        text.push_str(&format!(
            ": {}: {} (errno {})",
            entry.operation, entry.error, entry.errno
        ));
        let runtime = path.starts_with(b"/proc/");
        only_runtime &= runtime;
        if runtime && allow_unreadable_runtime {
            tolerated.push(text);
        } else {
            entries.push(text);
        }
    }
    if !report.complete && report.unreadable.is_empty() {
        entries.push("(the tracker says incomplete without naming an entry)".to_owned());
        only_runtime = false;
    }
    if !entries.is_empty() {
        return Err(RootsError::Incomplete {
            entries,
            only_runtime,
        });
    }
    for text in &tolerated {
        tracing::warn!(entry = %text, "tolerating an unreadable runtime root entry (--allow-unreadable-runtime)");
    }
    Ok(tolerated)
}

/// The roots of a report, as store path basenames.
pub fn extract_roots(
    report: &Report,
    layout: &StoreLayout,
) -> Result<Vec<TrackedRoot>, RootsError> {
    let ours_store = layout.store_dir().as_os_str().as_bytes();
    let mut roots = Vec::with_capacity(report.roots.len());
    for root in &report.roots {
        let target = root.target.to_bytes()?;
        let basename = layout
            .store_basename(&target)
            .filter(|name| store_path::is_valid_basename(name))
            .ok_or_else(|| RootsError::BadTarget {
                target: String::from_utf8_lossy(&target).into_owned(),
                store_dir: String::from_utf8_lossy(ours_store).into_owned(),
            })?;
        roots.push(TrackedRoot {
            kind: root.kind,
            retainer: root.retainer.to_bytes()?,
            basename: basename.to_vec(),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn report(unreadable: &str, complete: bool) -> Report {
        serde_json::from_str(&format!(
            r#"{{"store_dir":"/s","state_dir":"/v","complete":{complete},
               "roots":[{{"kind":"static","retainer":"/v/gcroots/a","link":"/v/gcroots/a","target":"/s/0123456789abcdfghijklmnpqrsvwxyz-a"}}],
               "unreadable":[{unreadable}]}}"#
        ))
        .unwrap()
    }

    const PROC: &str = r#"{"path":"/proc/1/fd","via":null,"operation":"opendir","errno":13,"error":"Permission denied"}"#;
    const HOME: &str = r#"{"path":"/home/alice/result","via":"/v/gcroots/auto/x","operation":"readlink","errno":13,"error":"Permission denied"}"#;

    #[test]
    fn incomplete_answers_are_refused_unless_only_proc_and_allowed() {
        let layout = StoreLayout::new(Path::new("/s"), Path::new("/v")).unwrap();
        let complete = accept_report(&report("", true), &layout, false).unwrap();
        assert_eq!(
            complete.roots[0].basename,
            b"0123456789abcdfghijklmnpqrsvwxyz-a"
        );

        let proc_only = report(PROC, false);
        assert!(matches!(
            accept_report(&proc_only, &layout, false),
            Err(RootsError::Incomplete {
                only_runtime: true,
                ..
            })
        ));
        let tolerated = accept_report(&proc_only, &layout, true).unwrap();
        assert_eq!(tolerated.tolerated.len(), 1);

        let home = report(&format!("{PROC},{HOME}"), false);
        let error = accept_report(&home, &layout, true).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/home/alice/result (via /v/gcroots/auto/x)"),
            "{error}"
        );
        assert!(!error.to_string().contains("/proc/1/fd"), "{error}");

        assert!(matches!(
            accept_report(&report("", false), &layout, true),
            Err(RootsError::Incomplete { .. })
        ));
    }

    #[test]
    fn another_store_is_refused() {
        let layout = StoreLayout::new(Path::new("/other"), Path::new("/v")).unwrap();
        assert!(matches!(
            accept_report(&report("", true), &layout, false),
            Err(RootsError::WrongStore { .. })
        ));
    }
}
