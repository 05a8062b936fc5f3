//! The tracker's socket protocol, used by the server and by every client.
//!
//! Wire format: JSON lines over a Unix stream socket. The client writes one request object
//! per line; the server answers each with one response object per line, in order. A line
//! longer than [`MAX_REQUEST_BYTES`] or that does not parse gets an `error` response and the
//! connection is closed; the tracker itself is unaffected.
//!
//! Requests:
//! - `{"request": "query"}` — the roots as of now. Fenced: the answer reflects every
//!   filesystem change that completed before the request was received. Optional
//!   `"wait_ms": N` bounds how long to wait for an unsettled index to settle (0: do not wait);
//!   without it the server's default applies.
//! - `{"request": "status"}` — backend, settledness, counters.
//!
//! Responses:
//! - `{"response": "roots", "report": {...}}` — `report` is exactly `root-tracker scan --json`'s
//!   object (docs/json.md).
//! - `{"response": "status", "status": {...}}`.
//! - `{"response": "error", "error": "unsettled" | "bad_request" | "unauthorized" | "busy" |
//!   "internal", "message": "..."}` — `unsettled` means the tracker cannot be sure of the roots
//!   right now and the caller must not act as if it had an answer.
//!
//! Callers that are not root and not listed with `--reveal-uid`/`--reveal-gid` get censored
//! reports (`report::Disclosure`): every retainer and path is `{censored}`, as Nix censors
//! `--print-roots` for untrusted users. The Nix roots-daemon protocol (server.rs) is separate.

use serde::{Deserialize, Serialize};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Query {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    Status {},
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The report is kept as JSON text: the tracker writes it without building a value tree,
    /// and a client parses only what it needs.
    Roots {
        report: Box<serde_json::value::RawValue>,
    },
    Status {
        status: serde_json::Value,
    },
    Error {
        error: ErrorKind,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The index is not settled (lost hints, mount changes, still bootstrapping).
    Unsettled,
    BadRequest,
    Unauthorized,
    /// The tracker serves its maximum number of connections; try again later.
    Busy,
    Internal,
}

/// A response as it appears on the wire. serde's internally tagged enums buffer their
/// content, which a raw JSON value cannot come from, so [`Response`] is read through this.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    response: WireKind,
    #[serde(default)]
    report: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorKind>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireKind {
    Roots,
    Status,
    Error,
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = WireResponse::deserialize(deserializer)?;
        match wire.response {
            WireKind::Roots => Ok(Self::Roots {
                report: wire
                    .report
                    .ok_or_else(|| D::Error::missing_field("report"))?,
            }),
            WireKind::Status => Ok(Self::Status {
                status: wire
                    .status
                    .ok_or_else(|| D::Error::missing_field("status"))?,
            }),
            WireKind::Error => Ok(Self::Error {
                error: wire.error.ok_or_else(|| D::Error::missing_field("error"))?,
                message: wire.message.unwrap_or_default(),
            }),
        }
    }
}

impl Response {
    pub fn error(error: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            error,
            message: message.into(),
        }
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|error| format!("malformed request: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_garbage() {
        for request in [
            Request::Query { wait_ms: Some(0) },
            Request::Query { wait_ms: None },
            Request::Status {},
        ] {
            let line = serde_json::to_vec(&request).unwrap();
            assert_eq!(parse_request(&line).unwrap(), request);
        }
        assert_eq!(
            parse_request(br#"{"request":"query"}"#).unwrap(),
            Request::Query { wait_ms: None }
        );
        let report =
            serde_json::value::RawValue::from_string(r#"{"roots":[]}"#.to_owned()).unwrap();
        for response in [
            Response::Roots { report },
            Response::Status {
                status: serde_json::json!({"backend": "ebpf"}),
            },
            Response::error(ErrorKind::Unsettled, "lost hints"),
        ] {
            let line = serde_json::to_string(&response).unwrap();
            let back: Response = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
        }
        for bad in [
            &b"{"[..],
            b"{\"request\":\"delete\"}",
            b"\xff",
            b"{\"request\":\"status\",\"x\":1}",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
