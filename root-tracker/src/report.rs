//! What a scan (or, later, a query) found: roots, and everything that keeps the answer from
//! being complete or that Nix would act on (stale links, dead temp-root files).
//!
//! Rendering lives here too, in two forms: Nix's `--print-roots` text, byte for byte, and JSON
//! (paths as strings when they are UTF-8, else as `{"hex": "..."}`; see `docs/json.md`).

use std::borrow::Cow;
use std::io::{self, Write};

use serde::Serialize;
use serde::ser::{SerializeMap as _, Serializer};

use crate::layout::StoreLayout;
use crate::store_path::StorePath;

/// How a root was found. Mirrors the parts of Nix's `findRoots` and the index's row kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// A symlink or regular file under `gcroots/` or `profiles/` that names a store path itself.
    Static,
    /// A link under `gcroots/` to a link elsewhere (e.g. `~/proj/result`) into the store.
    Indirect,
    /// A store path held by a running process, or named by a kernel sysctl.
    Runtime,
    /// A store path listed in a live client's `temproots/<pid>` file.
    Temp,
}

impl RootKind {
    pub const ALL: [Self; 4] = [Self::Static, Self::Indirect, Self::Runtime, Self::Temp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Indirect => "indirect",
            Self::Runtime => "runtime",
            Self::Temp => "temp",
        }
    }
}

/// What holds a store path alive, as `--print-roots` prints it on the left of `->`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Retainer {
    Path(Vec<u8>),
    /// A live temp-roots owner: printed as `{temp:PID}`.
    Temp(i64),
}

impl Retainer {
    pub fn printed(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Path(path) => Cow::Borrowed(path),
            Self::Temp(pid) => Cow::Owned(format!("{{temp:{pid}}}").into_bytes()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Root {
    pub retainer: Retainer,
    pub target: StorePath,
    pub kind: RootKind,
    /// The entry the scanner found it through: the `gcroots/auto` link of an indirect root,
    /// the `/proc` file of a runtime root, the `temproots` file of a temp root, else the retainer.
    pub link: Vec<u8>,
}

/// A link under `gcroots/auto` whose target does not exist. Nix deletes these; we report them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleLink {
    pub link: Vec<u8>,
    pub target: Vec<u8>,
}

/// A potential root that could not be read: the answer may be missing a root because of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unreadable {
    pub path: Vec<u8>,
    /// The root link that led here, when it is not `path` itself.
    pub via: Option<Vec<u8>>,
    /// The operation that failed: `lstat`, `readlink`, `opendir`, `read`, `parse`, ...
    pub operation: &'static str,
    pub errno: i32,
}

#[derive(Clone, Debug)]
pub struct ScanReport {
    pub layout: StoreLayout,
    /// Roots naming valid (registered) store paths, sorted as Nix sorts `--print-roots`.
    pub roots: Vec<Root>,
    /// Roots naming store paths that are not registered; Nix skips them ("skipping invalid root").
    pub unregistered: Vec<Root>,
    pub stale_links: Vec<StaleLink>,
    /// `temproots/<pid>` files whose owner no longer holds the lock. Nix deletes them.
    pub stale_temp_roots: Vec<Vec<u8>>,
    pub unreadable: Vec<Unreadable>,
}

impl ScanReport {
    /// Sorts every list into its canonical order, so reports compare and print deterministically.
    pub fn normalize(&mut self) {
        let by_printed = |a: &Root, b: &Root| {
            (a.retainer.printed(), &a.target, a.kind, &a.link).cmp(&(
                b.retainer.printed(),
                &b.target,
                b.kind,
                &b.link,
            ))
        };
        self.roots.sort_by(by_printed);
        self.roots.dedup();
        self.unregistered.sort_by(by_printed);
        self.unregistered.dedup();
        self.stale_links.sort();
        self.stale_links.dedup();
        self.stale_temp_roots.sort();
        self.unreadable.sort();
        self.unreadable.dedup();
    }

    /// True when nothing that could hold a root was left unread.
    pub fn is_complete(&self) -> bool {
        self.unreadable.is_empty()
    }

    /// The (retainer, store path) pairs `--print-roots` prints: each once, in byte order
    /// (`roots` is sorted by them, so equal pairs are neighbours).
    fn printed_pairs(&self) -> Vec<(Cow<'_, [u8]>, &StorePath)> {
        let mut pairs: Vec<_> = self
            .roots
            .iter()
            .map(|root| (root.retainer.printed(), &root.target))
            .collect();
        pairs.dedup();
        pairs
    }

    /// Number of lines `--print-roots` prints.
    pub fn printed_len(&self) -> usize {
        self.printed_pairs().len()
    }

    pub fn count(&self, kind: RootKind) -> usize {
        self.roots.iter().filter(|root| root.kind == kind).count()
    }

    /// Writes `LINK -> STOREPATH` lines exactly as `nix-store --gc --print-roots` does: the
    /// transposed set of (retainer, store path) pairs, each once, in byte order, unescaped.
    pub fn write_print_roots(&self, out: &mut impl Write) -> io::Result<()> {
        for (retainer, target) in self.printed_pairs() {
            out.write_all(&retainer)?;
            out.write_all(b" -> ")?;
            out.write_all(&self.layout.print_store_path(target))?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let root_json = |root: &Root| {
            serde_json::json!({
                "kind": root.kind,
                "retainer": JsonBytes(&root.retainer.printed()),
                "link": JsonBytes(&root.link),
                "target": JsonBytes(&self.layout.print_store_path(&root.target)),
            })
        };
        let counts: serde_json::Map<_, _> = RootKind::ALL
            .into_iter()
            .map(|kind| (kind.as_str().to_owned(), self.count(kind).into()))
            .collect();
        serde_json::json!({
            "store_dir": JsonBytes(self.layout.store_dir().as_os_str().as_encoded_bytes()),
            "state_dir": JsonBytes(self.layout.state_dir().as_os_str().as_encoded_bytes()),
            "complete": self.is_complete(),
            "counts": counts,
            "roots": self.roots.iter().map(root_json).collect::<Vec<_>>(),
            "unregistered": self.unregistered.iter().map(root_json).collect::<Vec<_>>(),
            "stale_links": self.stale_links.iter().map(|stale| serde_json::json!({
                "link": JsonBytes(&stale.link),
                "target": JsonBytes(&stale.target),
            })).collect::<Vec<_>>(),
            "stale_temp_roots": self.stale_temp_roots.iter().map(|file| JsonBytes(file)).collect::<Vec<_>>(),
            "unreadable": self.unreadable.iter().map(|entry| serde_json::json!({
                "path": JsonBytes(&entry.path),
                "via": entry.via.as_deref().map(JsonBytes),
                "operation": entry.operation,
                "errno": entry.errno,
                "error": std::io::Error::from_raw_os_error(entry.errno).to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// `--print-roots` text from a report's JSON (what a tracker sends): the roots are already in
/// canonical order; each (retainer, target) pair is printed once.
pub fn write_print_roots_json(report: &serde_json::Value, out: &mut impl Write) -> io::Result<()> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed report");
    let roots = report["roots"].as_array().ok_or_else(malformed)?;
    let mut previous: Option<(Vec<u8>, Vec<u8>)> = None;
    for root in roots {
        let retainer = bytes_from_json(&root["retainer"]).ok_or_else(malformed)?;
        let target = bytes_from_json(&root["target"]).ok_or_else(malformed)?;
        let pair = (retainer, target);
        if previous.as_ref() == Some(&pair) {
            continue;
        }
        out.write_all(&pair.0)?;
        out.write_all(b" -> ")?;
        out.write_all(&pair.1)?;
        out.write_all(b"\n")?;
        previous = Some(pair);
    }
    Ok(())
}

/// The one place bytes become JSON: a string when they are UTF-8, else `{"hex": "2f..."}`,
/// so that no path is ever silently altered on the way out.
#[derive(Clone, Copy)]
pub struct JsonBytes<'a>(pub &'a [u8]);

impl Serialize for JsonBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex)?;
                map.end()
            }
        }
    }
}

/// Decodes what [`JsonBytes`] wrote; `None` for anything else.
pub fn bytes_from_json(value: &serde_json::Value) -> Option<Vec<u8>> {
    match value {
        serde_json::Value::String(text) => Some(text.as_bytes().to_vec()),
        serde_json::Value::Object(map) => {
            let hex = map.get("hex")?.as_str()?;
            if hex.len() % 2 != 0 {
                return None;
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bytes_round_trip() {
        for bytes in [&b"/home/a b\n\tc"[..], b"/x/\xff\xfe", b""] {
            let value = serde_json::to_value(JsonBytes(bytes)).unwrap();
            assert_eq!(bytes_from_json(&value).as_deref(), Some(bytes));
        }
        let value = serde_json::to_value(JsonBytes(b"\xff")).unwrap();
        assert_eq!(value, serde_json::json!({"hex": "ff"}));
    }
}
