//! A client of root-tracker's socket (docs/protocol.md): one fenced `query`, one answer.
//!
//! Wire format: JSON lines over a Unix stream socket. We write
//! `{"request":"query","wait_ms":N}\n` and read one line: `{"response":"roots","report":{...}}`
//! or `{"response":"error","error":"unsettled"|"unauthorized"|...,"message":...}`.
//! Only the subset of the report the collector needs is typed here (docs/json.md); unknown
//! fields are ignored so the tracker can grow its report.
//!
//! Invariant: every failure is an error variant, and the caller deletes nothing on any of them.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `root-tracker run` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/root-tracker/socket";

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("the root tracker is unreachable at {socket}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the root tracker at {socket} failed")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the root tracker is unsettled and cannot vouch for its roots: {message}")]
    Unsettled { message: String },
    #[error(
        "the root tracker refused us (unauthorized; run it with --allow-uid for this user): {message}"
    )]
    Unauthorized { message: String },
    #[error("the root tracker answered with error '{kind}': {message}")]
    Refused { kind: String, message: String },
    #[error("the root tracker sent a response we cannot use: {reason}")]
    BadResponse { reason: String },
}

/// A path in the tracker's JSON: a string when UTF-8, else `{"hex": "..."}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum JsonPath {
    Text(String),
    Hex { hex: String },
}

impl JsonPath {
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrackerError> {
        match self {
            Self::Text(text) => Ok(text.as_bytes().to_vec()),
            Self::Hex { hex } => {
                let bad = || TrackerError::BadResponse {
                    reason: format!("invalid hex path {hex:?}"),
                };
                if hex.len() % 2 != 0 {
                    return Err(bad());
                }
                (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                            .ok_or_else(bad)
                    })
                    .collect()
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    Static,
    Indirect,
    Runtime,
    Temp,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReportRoot {
    pub kind: RootKind,
    pub retainer: JsonPath,
    pub target: JsonPath,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReportUnreadable {
    pub path: JsonPath,
    pub via: Option<JsonPath>,
    pub operation: String,
    pub errno: i32,
    #[serde(default)]
    pub error: String,
}

/// The part of the tracker's report (`root-tracker scan --json`) the collector reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    pub store_dir: JsonPath,
    pub state_dir: JsonPath,
    pub complete: bool,
    pub roots: Vec<ReportRoot>,
    pub unreadable: Vec<ReportUnreadable>,
    /// `gcroots/auto` links whose target the tracker found missing (`{censored}` unless the
    /// tracker reveals links to us).
    #[serde(default)]
    pub stale_links: Vec<ReportStaleLink>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReportStaleLink {
    pub link: JsonPath,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
enum Response {
    Roots {
        report: Report,
    },
    Error {
        error: String,
        #[serde(default)]
        message: String,
    },
    Status {},
}

/// Asks the tracker at `socket` for the roots as of now (a fenced query), letting it wait up
/// to `wait_ms` for an unsettled index to settle.
pub fn query(socket: &Path, wait_ms: u64) -> Result<Report, TrackerError> {
    // The tracker answers within `wait_ms` plus its fence; a tracker that hangs beyond that
    // must not hang the collector forever.
    let timeout = Duration::from_millis(wait_ms.saturating_add(60_000));
    let request = format!("{{\"request\":\"query\",\"wait_ms\":{wait_ms}}}\n");
    let line = ask(socket, request.as_bytes(), timeout, u64::MAX)?;
    if line.is_empty() {
        return Err(TrackerError::BadResponse {
            reason: "the tracker closed the connection without answering".to_owned(),
        });
    }
    parse_response(&line)
}

/// One request line to the tracker at `socket`, one answer line back (at most `max_bytes`),
/// each way within `timeout`. An empty answer means the tracker closed the connection.
pub(crate) fn ask(
    socket: &Path,
    request: &[u8],
    timeout: Duration,
    max_bytes: u64,
) -> Result<Vec<u8>, TrackerError> {
    let stream = UnixStream::connect(socket).map_err(|source| TrackerError::Unreachable {
        socket: socket.to_owned(),
        source,
    })?;
    let io_error = |source| TrackerError::Io {
        socket: socket.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    (&stream).write_all(request).map_err(io_error)?;
    let mut line = Vec::new();
    BufReader::new((&stream).take(max_bytes))
        .read_until(b'\n', &mut line)
        .map_err(io_error)?;
    Ok(line)
}

fn parse_response(line: &[u8]) -> Result<Report, TrackerError> {
    let response: Response =
        serde_json::from_slice(line).map_err(|error| TrackerError::BadResponse {
            reason: error.to_string(),
        })?;
    match response {
        Response::Roots { report } => Ok(report),
        Response::Error { error, message } => Err(match error.as_str() {
            "unsettled" => TrackerError::Unsettled { message },
            "unauthorized" => TrackerError::Unauthorized { message },
            _ => TrackerError::Refused {
                kind: error,
                message,
            },
        }),
        Response::Status {} => Err(TrackerError::BadResponse {
            reason: "a status answer to a query".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports_and_errors() {
        let report = parse_response(
            br#"{"response":"roots","report":{"store_dir":"/s","state_dir":{"hex":"2f74"},"complete":false,
               "counts":{},"roots":[{"kind":"indirect","retainer":"/h/r","link":"/a","target":"/s/x"}],
               "unregistered":[],"unreadable":[{"path":"/proc/1/fd","via":null,"operation":"opendir","errno":13,"error":"denied"}]}}"#,
        )
        .unwrap();
        assert_eq!(report.state_dir.to_bytes().unwrap(), b"/t");
        assert_eq!(report.roots[0].kind, RootKind::Indirect);
        assert_eq!(report.unreadable[0].errno, 13);
        assert!(matches!(
            parse_response(br#"{"response":"error","error":"unsettled","message":"lost events"}"#),
            Err(TrackerError::Unsettled { message }) if message == "lost events"
        ));
        assert!(matches!(
            parse_response(br#"{"response":"error","error":"unauthorized","message":""}"#),
            Err(TrackerError::Unauthorized { .. })
        ));
        assert!(matches!(
            parse_response(br#"{"response":"error","error":"internal","message":"x"}"#),
            Err(TrackerError::Refused { .. })
        ));
        assert!(matches!(
            parse_response(b"garbage"),
            Err(TrackerError::BadResponse { .. })
        ));
        assert!(matches!(
            parse_response(br#"{"response":"status","status":{}}"#),
            Err(TrackerError::BadResponse { .. })
        ));
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            query(&dir.path().join("socket"), 0),
            Err(TrackerError::Unreachable { .. })
        ));
    }
}
