//! Asks the tracker how it is doing (`{"request":"status"}`, docs/protocol.md) for the metrics
//! of `store-gc serve`: whether its index is settled and how far behind the kernel it runs.
//! Kept apart from [`crate::tracker_client`], whose `query` decides what a collection trusts.
//!
//! Invariant: this answer is only ever displayed; no collection decision depends on it (a
//! collection asks for a fenced `query` and is refused there when the index is unsettled).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::metrics::TrackerHealth;
use crate::tracker_client::TrackerError;

/// A status answer is a few kilobytes; anything much larger is not one.
const MAX_ANSWER: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
enum Response {
    Status {
        status: Status,
    },
    Error {
        error: String,
        #[serde(default)]
        message: String,
    },
}

#[derive(Deserialize)]
struct Status {
    settled: Settled,
    #[serde(default)]
    lag: Lag,
}

#[derive(Deserialize)]
struct Settled {
    state: String,
}

#[derive(Default, Deserialize)]
struct Lag {
    from_kernel_event: Option<LagSummary>,
    from_receipt: Option<LagSummary>,
}

#[derive(Deserialize)]
struct LagSummary {
    p99_ms: f64,
}

/// One `status` request, answered within `timeout`.
pub fn status(socket: &Path, timeout: Duration) -> Result<TrackerHealth, TrackerError> {
    let line =
        crate::tracker_client::ask(socket, b"{\"request\":\"status\"}\n", timeout, MAX_ANSWER)?;
    parse(&line)
}

fn parse(line: &[u8]) -> Result<TrackerHealth, TrackerError> {
    let response: Response =
        serde_json::from_slice(line).map_err(|error| TrackerError::BadResponse {
            reason: error.to_string(),
        })?;
    match response {
        Response::Status { status } => Ok(TrackerHealth {
            settled: status.settled.state == "settled",
            lag_from_kernel_p99_ms: status.lag.from_kernel_event.map(|lag| lag.p99_ms),
            lag_from_receipt_p99_ms: status.lag.from_receipt.map(|lag| lag.p99_ms),
        }),
        Response::Error { error, message } => Err(match error.as_str() {
            "unauthorized" => TrackerError::Unauthorized { message },
            _ => TrackerError::Refused {
                kind: error,
                message,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settled_and_lag() {
        let health = parse(
            br#"{"response":"status","status":{"backend":"fanotify","settled":{"state":"settled"},
               "generation":3,"lag":{"from_kernel_event":null,
               "from_receipt":{"samples":4,"last_ms":0.5,"p50_ms":0.4,"p99_ms":1.5,"max_ms":2.0}}}}"#,
        )
        .unwrap();
        assert_eq!(
            health,
            TrackerHealth {
                settled: true,
                lag_from_kernel_p99_ms: None,
                lag_from_receipt_p99_ms: Some(1.5),
            }
        );
        let unsettled = parse(
            br#"{"response":"status","status":{"settled":{"state":"unsettled","reason":"overflow"},
               "lag":{"from_kernel_event":null,"from_receipt":null}}}"#,
        )
        .unwrap();
        assert!(!unsettled.settled);
        assert!(matches!(
            parse(br#"{"response":"error","error":"unauthorized","message":"uid 5"}"#),
            Err(TrackerError::Unauthorized { .. })
        ));
        assert!(matches!(parse(b""), Err(TrackerError::BadResponse { .. })));
    }
}
