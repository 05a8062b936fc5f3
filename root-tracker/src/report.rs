//! What a scan (or, later, a query) found: roots, and everything that keeps the answer from
//! being complete or that Nix would act on (stale links, dead temp-root files).
//!
//! Rendering lives here too, in two forms: Nix's `--print-roots` text, byte for byte, and JSON
//! (paths as strings when they are UTF-8, else as `{"hex": "..."}`; see `docs/json.md`).

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::Arc;

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
/// Paths are shared (`Arc`): the live index keeps each once for the root, its entry and the
/// paths it watches, and an answer built from the index copies no path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Retainer {
    Path(Arc<[u8]>),
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
    pub link: Arc<[u8]>,
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

    /// The report as a JSON value (docs/json.md). Large answers are written with
    /// [`MergedReport`] instead, without building a value tree.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(MergedReport::new(&[self])).unwrap_or(serde_json::Value::Null)
    }
}

/// What a caller may see of an answer. Mirrors the `censor` flag of Nix's
/// `LocalStore::findRoots`: callers that are not trusted learn which store paths are roots,
/// never which links, processes or files hold them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Disclosure {
    /// Everything: retainers, links, stale links, unreadable paths.
    #[default]
    Full,
    /// Every retainer, link and path written as [`CENSORED`]; targets, kinds, counts,
    /// `complete` and the errno/operation of unreadable entries are kept.
    Censored,
}

/// What a censored answer shows instead of a path (Nix's `censored`).
pub const CENSORED: &str = "{censored}";

/// A censored unreadable path keeps only whether it lies under `/proc`: a collector may
/// tolerate unreadable runtime roots as Nix's `findRuntimeRoots` does, and needs to know which
/// entries those are. A pid says nothing about whose link it is.
const CENSORED_PROC: &str = "/proc/{censored}";

/// Several normalized reports of one store read as one: the live index's part and the part
/// read at query time. Borrows, so answering a query copies no root; serializes straight to
/// JSON (docs/json.md), so no value tree of a million roots is ever built.
pub struct MergedReport<'a> {
    layout: &'a StoreLayout,
    disclosure: Disclosure,
    roots: Vec<&'a Root>,
    unregistered: Vec<&'a Root>,
    stale_links: Vec<&'a StaleLink>,
    stale_temp_roots: Vec<&'a [u8]>,
    unreadable: Vec<&'a Unreadable>,
}

/// The canonical order of roots (`ScanReport::normalize`).
fn by_printed(a: &Root, b: &Root) -> std::cmp::Ordering {
    (a.retainer.printed(), &a.target, a.kind, &a.link).cmp(&(
        b.retainer.printed(),
        &b.target,
        b.kind,
        &b.link,
    ))
}

/// Concatenates sorted lists and restores their order. The stable sort finds the sorted runs,
/// so this is a merge, linear in the total length.
fn merged<'a, T: PartialEq + 'a>(
    lists: impl Iterator<Item = &'a [T]>,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<&'a T> {
    let mut all: Vec<&T> = lists.flatten().collect();
    all.sort_by(|a, b| order(a, b));
    all.dedup();
    all
}

impl<'a> MergedReport<'a> {
    /// `parts` must share one layout and each be normalized.
    pub fn new(parts: &[&'a ScanReport]) -> Self {
        let layout = parts.first().map_or_else(
            || unreachable!("a merged report has at least one part"),
            |part| &part.layout,
        );
        Self {
            layout,
            disclosure: Disclosure::Full,
            roots: merged(parts.iter().map(|part| &part.roots[..]), by_printed),
            unregistered: merged(parts.iter().map(|part| &part.unregistered[..]), by_printed),
            stale_links: merged(parts.iter().map(|part| &part.stale_links[..]), Ord::cmp),
            stale_temp_roots: {
                let mut files: Vec<&[u8]> = parts
                    .iter()
                    .flat_map(|part| part.stale_temp_roots.iter().map(Vec::as_slice))
                    .collect();
                files.sort_unstable();
                files.dedup();
                files
            },
            unreadable: merged(parts.iter().map(|part| &part.unreadable[..]), Ord::cmp),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.unreadable.is_empty()
    }

    /// The same answer, written for a caller who may see only `disclosure`.
    pub fn disclosed(mut self, disclosure: Disclosure) -> Self {
        if disclosure == Disclosure::Censored {
            // The canonical order is by printed retainer, then target; with every retainer
            // the same, that is by target, so `--print-roots` readers that drop repeated
            // neighbours print each `{censored} -> target` once, as Nix's set does.
            let by_target = |a: &&Root, b: &&Root| (&a.target, a.kind).cmp(&(&b.target, b.kind));
            self.roots.sort_by(by_target);
            self.unregistered.sort_by(by_target);
        }
        self.disclosure = disclosure;
        self
    }

    /// The answer as one line of JSON.
    pub fn to_json_string(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A path as `disclosure` lets it be shown.
fn disclosed_path(path: &[u8], disclosure: Disclosure) -> JsonBytes<'_> {
    match disclosure {
        Disclosure::Full => JsonBytes(path),
        Disclosure::Censored => JsonBytes(CENSORED.as_bytes()),
    }
}

/// A root as docs/json.md shows it.
struct RootJson<'a>(&'a Root, &'a StoreLayout, Disclosure);

impl Serialize for RootJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let RootJson(root, layout, disclosure) = *self;
        // Keys in byte order, as every object of a report (see `MergedReport`'s `Serialize`).
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("kind", &root.kind)?;
        map.serialize_entry("link", &disclosed_path(&root.link, disclosure))?;
        map.serialize_entry(
            "retainer",
            &disclosed_path(&root.retainer.printed(), disclosure),
        )?;
        map.serialize_entry("target", &JsonBytes(&layout.print_store_path(&root.target)))?;
        map.end()
    }
}

/// A sequence serialized from an iterator, without collecting it.
struct SeqJson<I>(std::cell::RefCell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for SeqJson<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let items = self.0.borrow_mut().take();
        serializer.collect_seq(items.into_iter().flatten())
    }
}

fn seq<I: Iterator>(items: I) -> SeqJson<I> {
    SeqJson(std::cell::RefCell::new(Some(items)))
}

fn roots_json<'b>(
    roots: &'b [&'b Root],
    layout: &'b StoreLayout,
    disclosure: Disclosure,
) -> SeqJson<impl Iterator<Item = RootJson<'b>> + 'b> {
    seq(roots
        .iter()
        .map(move |root| RootJson(root, layout, disclosure)))
}

impl Serialize for MergedReport<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let layout = self.layout;
        let disclosure = self.disclosure;
        let counts: std::collections::BTreeMap<&str, usize> = RootKind::ALL
            .into_iter()
            .map(|kind| {
                let count = self.roots.iter().filter(|root| root.kind == kind).count();
                (kind.as_str(), count)
            })
            .collect();
        // Keys in byte order, in every object: the order of a `serde_json::Value`, so the
        // tracker's answer, `query --json` and `scan --json` (streamed from this, never built
        // as a value tree) print the same bytes.
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("complete", &self.is_complete())?;
        map.serialize_entry("counts", &counts)?;
        map.serialize_entry("roots", &roots_json(&self.roots, layout, disclosure))?;
        map.serialize_entry(
            "stale_links",
            &seq(self.stale_links.iter().map(|stale| {
                let mut entry = std::collections::BTreeMap::new();
                entry.insert("link", disclosed_path(&stale.link, disclosure));
                entry.insert("target", disclosed_path(&stale.target, disclosure));
                entry
            })),
        )?;
        map.serialize_entry(
            "stale_temp_roots",
            &seq(self
                .stale_temp_roots
                .iter()
                .map(|file| disclosed_path(file, disclosure))),
        )?;
        map.serialize_entry(
            "state_dir",
            &JsonBytes(layout.state_dir().as_os_str().as_encoded_bytes()),
        )?;
        map.serialize_entry(
            "store_dir",
            &JsonBytes(layout.store_dir().as_os_str().as_encoded_bytes()),
        )?;
        map.serialize_entry(
            "unreadable",
            &seq(self
                .unreadable
                .iter()
                .map(|entry| UnreadableJson(entry, disclosure))),
        )?;
        map.serialize_entry(
            "unregistered",
            &roots_json(&self.unregistered, layout, disclosure),
        )?;
        map.end()
    }
}

struct UnreadableJson<'a>(&'a Unreadable, Disclosure);

impl Serialize for UnreadableJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let UnreadableJson(entry, disclosure) = *self;
        let path = match disclosure {
            Disclosure::Censored if entry.path.starts_with(b"/proc/") => {
                JsonBytes(CENSORED_PROC.as_bytes())
            }
            _ => disclosed_path(&entry.path, disclosure),
        };
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("errno", &entry.errno)?;
        map.serialize_entry(
            "error",
            &std::io::Error::from_raw_os_error(entry.errno).to_string(),
        )?;
        map.serialize_entry("operation", entry.operation)?;
        map.serialize_entry("path", &path)?;
        map.serialize_entry(
            "via",
            &entry
                .via
                .as_deref()
                .map(|via| disclosed_path(via, disclosure)),
        )?;
        map.end()
    }
}

/// `--print-roots` text from a report's JSON text (what a tracker sends): the roots are already
/// in canonical order; each (retainer, target) pair is printed once.
pub fn write_print_roots_json(report: &str, out: &mut impl Write) -> io::Result<()> {
    #[derive(serde::Deserialize)]
    struct Printed {
        roots: Vec<PrintedRoot>,
    }
    #[derive(serde::Deserialize, PartialEq)]
    struct PrintedRoot {
        retainer: OwnedJsonBytes,
        target: OwnedJsonBytes,
    }
    let Printed { roots } = serde_json::from_str(report).map_err(io::Error::from)?;
    let mut previous: Option<&PrintedRoot> = None;
    for root in &roots {
        if previous == Some(root) {
            continue;
        }
        out.write_all(&root.retainer.0)?;
        out.write_all(b" -> ")?;
        out.write_all(&root.target.0)?;
        out.write_all(b"\n")?;
        previous = Some(root);
    }
    Ok(())
}

/// What the Nix roots-daemon protocol sends of a report: the store path of every root and
/// unregistered root (Nix checks validity itself), each once in byte order.
pub struct RootTargets {
    pub complete: bool,
    /// Unreadable entries that are not under `/proc` (runtime roots of processes we may not
    /// inspect, which Nix's `findRuntimeRoots` ignores too).
    pub unreadable_outside_proc: usize,
    pub targets: std::collections::BTreeSet<Vec<u8>>,
}

/// Reads [`RootTargets`] from a report's JSON text (what the tracker loop answers).
pub fn root_targets_json(report: &str) -> serde_json::Result<RootTargets> {
    #[derive(serde::Deserialize)]
    struct Targets {
        complete: bool,
        roots: Vec<Target>,
        unregistered: Vec<Target>,
        unreadable: Vec<UnreadablePath>,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        target: OwnedJsonBytes,
    }
    #[derive(serde::Deserialize)]
    struct UnreadablePath {
        path: OwnedJsonBytes,
    }
    let Targets {
        complete,
        roots,
        unregistered,
        unreadable,
    } = serde_json::from_str(report)?;
    Ok(RootTargets {
        complete,
        unreadable_outside_proc: unreadable
            .iter()
            .filter(|entry| !entry.path.0.starts_with(b"/proc/"))
            .count(),
        targets: roots
            .into_iter()
            .chain(unregistered)
            .map(|root| root.target.0)
            .collect(),
    })
}

/// The part of a report a client needs to choose its exit status.
#[derive(serde::Deserialize)]
pub struct Completeness {
    pub complete: bool,
    pub unreadable: Vec<serde::de::IgnoredAny>,
}

/// Bytes read back from what [`JsonBytes`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedJsonBytes(pub Vec<u8>);

impl<'de> serde::Deserialize<'de> for OwnedJsonBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Hex { hex: String },
        }
        match Written::deserialize(deserializer)? {
            Written::Text(text) => Ok(Self(text.into_bytes())),
            Written::Hex { hex } => decode_hex(&hex)
                .map(Self)
                .ok_or_else(|| serde::de::Error::custom("malformed hex path")),
        }
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
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

/// `#[serde(with = "crate::report::json_bytes")]` for a `Vec<u8>` field: written as
/// [`JsonBytes`] writes, read back as [`OwnedJsonBytes`] reads (the /proc reader's wire format).
pub(crate) mod json_bytes {
    pub(crate) fn serialize<S: serde::Serializer>(
        bytes: &[u8],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&super::JsonBytes(bytes), serializer)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        <super::OwnedJsonBytes as serde::Deserialize>::deserialize(deserializer)
            .map(|bytes| bytes.0)
    }
}

/// Decodes what [`JsonBytes`] wrote; `None` for anything else.
pub fn bytes_from_json(value: &serde_json::Value) -> Option<Vec<u8>> {
    match value {
        serde_json::Value::String(text) => Some(text.as_bytes().to_vec()),
        serde_json::Value::Object(map) => decode_hex(map.get("hex")?.as_str()?),
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

    fn sample() -> ScanReport {
        let layout = StoreLayout::new("/s".as_ref(), "/v".as_ref()).unwrap();
        let path = |name: &str| StorePath::from_base_name(name.as_bytes()).unwrap();
        let a = path("0123456789abcdfghijklmnpqrsvwx00-a");
        let b = path("0123456789abcdfghijklmnpqrsvwx01-b");
        let root = |retainer: Retainer, target: &StorePath, kind, link: &[u8]| Root {
            retainer,
            target: target.clone(),
            kind,
            link: link.into(),
        };
        let mut report = ScanReport {
            layout,
            roots: vec![
                root(
                    Retainer::Path(b"/home/x/result"[..].into()),
                    &b,
                    RootKind::Indirect,
                    b"/v/gcroots/auto/1",
                ),
                root(
                    Retainer::Path(b"/v/gcroots/a"[..].into()),
                    &a,
                    RootKind::Static,
                    b"/v/gcroots/a",
                ),
                root(Retainer::Temp(42), &b, RootKind::Temp, b"/v/temproots/42"),
                root(
                    Retainer::Path(b"/proc/7/exe"[..].into()),
                    &a,
                    RootKind::Runtime,
                    b"/proc/7/exe",
                ),
            ],
            unregistered: Vec::new(),
            stale_links: vec![StaleLink {
                link: b"/v/gcroots/auto/2"[..].into(),
                target: b"/home/y/gone".to_vec(),
            }],
            stale_temp_roots: vec![b"/v/temproots/9".to_vec()],
            unreadable: vec![
                Unreadable {
                    path: b"/proc/8/fd".to_vec(),
                    via: None,
                    operation: "opendir",
                    errno: 13,
                },
                Unreadable {
                    path: b"/home/z/r".to_vec(),
                    via: Some(b"/v/gcroots/auto/3".to_vec()),
                    operation: "readlink",
                    errno: 13,
                },
            ],
        };
        report.normalize();
        report
    }

    /// The streamed JSON is byte for byte what a value tree of it prints (keys in byte order),
    /// so `scan --json`, streamed, prints what it printed when it built the tree, and the
    /// tracker's answer prints the same.
    #[test]
    fn streamed_json_has_the_bytes_of_a_value_tree() {
        let report = sample();
        assert!(!report.unreadable.is_empty() && !report.stale_links.is_empty());
        let streamed = MergedReport::new(&[&report]);
        assert_eq!(
            serde_json::to_string_pretty(&streamed).unwrap(),
            serde_json::to_string_pretty(&report.to_json()).unwrap()
        );
    }

    /// Nix's `findRoots(censor = true)`: targets, kinds and counts stay; no path does.
    #[test]
    fn censored_answers_keep_targets_and_counts_but_no_path() {
        let report = sample();
        let full: serde_json::Value =
            serde_json::from_str(&MergedReport::new(&[&report]).to_json_string().unwrap()).unwrap();
        let text = MergedReport::new(&[&report])
            .disclosed(Disclosure::Censored)
            .to_json_string()
            .unwrap();
        for secret in [
            "/home/",
            "/v/gcroots",
            "/v/temproots",
            "/proc/7",
            "/proc/8",
            "temp:42",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let censored: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(censored["counts"], full["counts"]);
        assert_eq!(censored["complete"], false);
        let targets = |json: &serde_json::Value| {
            let mut targets: Vec<_> = json["roots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|root| (root["target"].clone(), root["kind"].clone()))
                .collect();
            targets.sort_by_key(|pair| pair.to_owned().0.to_string() + &pair.1.to_string());
            targets
        };
        assert_eq!(targets(&censored), targets(&full));
        for root in censored["roots"].as_array().unwrap() {
            assert_eq!(root["retainer"], CENSORED);
            assert_eq!(root["link"], CENSORED);
        }
        assert_eq!(
            censored["stale_links"],
            serde_json::json!([{"link": CENSORED, "target": CENSORED}])
        );
        assert_eq!(censored["stale_temp_roots"], serde_json::json!([CENSORED]));
        let unreadable = &censored["unreadable"];
        assert_eq!(unreadable[0]["path"], CENSORED);
        assert_eq!(unreadable[0]["via"], CENSORED);
        assert_eq!(unreadable[0]["errno"], 13);
        assert_eq!(unreadable[0]["operation"], "readlink");
        assert_eq!(unreadable[1]["path"], CENSORED_PROC);
        assert_eq!(unreadable[1]["via"], serde_json::Value::Null);

        // `--print-roots` of a censored answer: one line per target, as Nix prints it.
        let mut printed = Vec::new();
        write_print_roots_json(&text, &mut printed).unwrap();
        assert_eq!(
            String::from_utf8(printed).unwrap(),
            "{censored} -> /s/0123456789abcdfghijklmnpqrsvwx00-a\n\
             {censored} -> /s/0123456789abcdfghijklmnpqrsvwx01-b\n"
        );

        let targets = root_targets_json(&text).unwrap();
        assert!(!targets.complete);
        assert_eq!(targets.unreadable_outside_proc, 1);
        assert_eq!(targets.targets.len(), 2);
    }
}
