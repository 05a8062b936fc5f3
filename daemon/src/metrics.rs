//! What `store-gc serve` knows about its collections, in the Prometheus text exposition format
//! (version 0.0.4), served over a minimal HTTP/1.0 endpoint for scrapers.
//!
//! Invariant: every number comes from a finished run's [`Summary`] (the same place the run's
//! log line comes from) or is read live at scrape time (free space, tracker status); nothing is
//! counted twice, and every family is exported, with zeros, from the first scrape on.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::collect::{PhaseMillis, Summary};

/// Why a collection was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `--interval` elapsed.
    Schedule,
    /// Free space fell below `--min-free`.
    FreeSpace,
}

impl Trigger {
    pub const ALL: [Self; 2] = [Self::Schedule, Self::FreeSpace];

    pub fn label(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::FreeSpace => "free_space",
        }
    }
}

/// How a collection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The roots could not be trusted (tracker unreachable, unsettled, ...): nothing deleted.
    Refused,
    /// Anything else went wrong.
    Error,
}

impl Outcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Refused, Self::Error];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// The phases of [`PhaseMillis`], by label.
fn phases(ms: &PhaseMillis) -> [(&'static str, u64); 8] {
    [
        ("lock", ms.lock),
        ("roots", ms.roots),
        ("temp_roots", ms.temp_roots),
        ("load", ms.load),
        ("liveness", ms.liveness),
        ("links", ms.links),
        ("report", ms.report),
        ("total", ms.total),
    ]
}

/// The roots of a [`Summary`], by kind label.
fn root_kinds(summary: &Summary) -> [(&'static str, usize); 6] {
    let roots = &summary.roots;
    [
        ("static", roots.static_),
        ("indirect", roots.indirect),
        ("runtime", roots.runtime),
        ("tracker_temp", roots.tracker_temp),
        ("temp", roots.temp),
        ("gc_socket", roots.gc_socket),
    ]
}

/// Counters and last-run values, updated once per finished collection.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Indexed by `Trigger as usize`, then `Outcome as usize`.
    runs: [[u64; 3]; 2],
    deleted_paths: u64,
    freed_bytes: u64,
    /// Sum of each phase's milliseconds over successful runs, in [`phases`] order.
    phase_ms_sum: [u64; 8],
    /// The last successful run.
    last_success: Option<LastSuccess>,
    running: bool,
}

#[derive(Debug)]
struct LastSuccess {
    at: SystemTime,
    summary: Summary,
}

impl Metrics {
    pub fn set_running(&mut self, running: bool) {
        self.running = running;
    }

    /// Records a finished run; `summary` is present exactly when `outcome` is [`Outcome::Ok`].
    pub fn record(&mut self, trigger: Trigger, outcome: Outcome, summary: Option<&Summary>) {
        self.runs[trigger as usize][outcome as usize] += 1;
        let Some(summary) = summary else {
            return;
        };
        self.deleted_paths = self.deleted_paths.saturating_add(summary.deleted as u64);
        self.freed_bytes = self.freed_bytes.saturating_add(summary.freed_bytes);
        for (sum, (_, ms)) in self.phase_ms_sum.iter_mut().zip(phases(&summary.ms)) {
            *sum = sum.saturating_add(ms);
        }
        self.last_success = Some(LastSuccess {
            at: SystemTime::now(),
            summary: summary.clone(),
        });
    }

    pub fn runs(&self, trigger: Trigger, outcome: Outcome) -> u64 {
        self.runs[trigger as usize][outcome as usize]
    }
}

/// What is read at scrape time rather than kept.
#[derive(Clone, Debug, Default)]
pub struct LiveValues {
    /// Bytes available to the store's owner on the store's filesystem (`None`: statvfs failed).
    pub free_bytes: Option<u64>,
    /// `--min-free`, when set.
    pub min_free_bytes: Option<u64>,
    /// The tracker's `status`, or `None` when it did not answer.
    pub tracker: Option<TrackerHealth>,
}

/// The part of the tracker's `status` answer the metrics show (docs/protocol.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackerHealth {
    pub settled: bool,
    /// `lag.from_kernel_event.p99_ms` (`None` for fanotify, or before the first change).
    pub lag_from_kernel_p99_ms: Option<f64>,
    /// `lag.from_receipt.p99_ms` (`None` before the first change).
    pub lag_from_receipt_p99_ms: Option<f64>,
}

/// Renders `metrics` and `live` in the text exposition format.
pub fn render(metrics: &Metrics, live: &LiveValues) -> String {
    let mut out = Exposition::default();

    out.family(
        "store_gc_runs_total",
        "counter",
        "Collections finished, by what started them and how they ended (refused: the tracker could not vouch for the roots, nothing was deleted).",
    );
    for trigger in Trigger::ALL {
        for outcome in Outcome::ALL {
            out.sample(
                "store_gc_runs_total",
                &[("trigger", trigger.label()), ("outcome", outcome.label())],
                metrics.runs(trigger, outcome) as f64,
            );
        }
    }
    out.family(
        "store_gc_running",
        "gauge",
        "1 while a collection is in progress.",
    );
    out.sample(
        "store_gc_running",
        &[],
        f64::from(u8::from(metrics.running)),
    );

    out.family(
        "store_gc_deleted_paths_total",
        "counter",
        "Store paths deleted.",
    );
    out.sample(
        "store_gc_deleted_paths_total",
        &[],
        metrics.deleted_paths as f64,
    );
    out.family(
        "store_gc_freed_bytes_total",
        "counter",
        "Bytes freed by deletions (as Nix counts them).",
    );
    out.sample(
        "store_gc_freed_bytes_total",
        &[],
        metrics.freed_bytes as f64,
    );

    out.family(
        "store_gc_phase_seconds_total",
        "counter",
        "Time spent in each phase, summed over successful collections.",
    );
    let zero = PhaseMillis::default();
    for ((phase, _), sum) in phases(&zero).into_iter().zip(metrics.phase_ms_sum) {
        out.sample(
            "store_gc_phase_seconds_total",
            &[("phase", phase)],
            sum as f64 / 1e3,
        );
    }

    let last = metrics.last_success.as_ref();
    out.family(
        "store_gc_last_success_timestamp_seconds",
        "gauge",
        "When the last successful collection finished (Unix time; 0: never).",
    );
    let at = last
        .and_then(|last| last.at.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |since| since.as_secs_f64());
    out.sample("store_gc_last_success_timestamp_seconds", &[], at);
    out.family(
        "store_gc_last_phase_seconds",
        "gauge",
        "Time spent in each phase by the last successful collection.",
    );
    let last_ms = last.map_or(zero, |last| last.summary.ms.clone());
    for (phase, ms) in phases(&last_ms) {
        out.sample(
            "store_gc_last_phase_seconds",
            &[("phase", phase)],
            ms as f64 / 1e3,
        );
    }
    out.family(
        "store_gc_last_roots",
        "gauge",
        "Roots used by the last successful collection, by kind (tracker_temp: temp roots the tracker reported; temp: read from temproots/; gc_socket: received during the run).",
    );
    if let Some(last) = last {
        for (kind, count) in root_kinds(&last.summary) {
            out.sample("store_gc_last_roots", &[("kind", kind)], count as f64);
        }
    }
    out.family(
        "store_gc_last_paths",
        "gauge",
        "Store entries the last successful collection judged alive or dead.",
    );
    if let Some(last) = last {
        out.sample(
            "store_gc_last_paths",
            &[("state", "alive")],
            last.summary.alive as f64,
        );
        out.sample(
            "store_gc_last_paths",
            &[("state", "dead")],
            last.summary.dead as f64,
        );
    }

    out.family(
        "store_gc_store_free_bytes",
        "gauge",
        "Bytes available to the store's owner on the store's filesystem (statvfs), at scrape time.",
    );
    if let Some(free) = live.free_bytes {
        out.sample("store_gc_store_free_bytes", &[], free as f64);
    }
    out.family(
        "store_gc_min_free_bytes",
        "gauge",
        "min-free (--min-free, else nix.conf): below this much free space a collection starts.",
    );
    if let Some(min_free) = live.min_free_bytes {
        out.sample("store_gc_min_free_bytes", &[], min_free as f64);
    }

    out.family(
        "store_gc_tracker_up",
        "gauge",
        "1 if the root tracker answered a status request at scrape time.",
    );
    out.sample(
        "store_gc_tracker_up",
        &[],
        f64::from(u8::from(live.tracker.is_some())),
    );
    out.family(
        "store_gc_tracker_index_settled",
        "gauge",
        "1 if the tracker's root index is settled (a collection may run), 0 if not.",
    );
    if let Some(tracker) = &live.tracker {
        out.sample(
            "store_gc_tracker_index_settled",
            &[],
            f64::from(u8::from(tracker.settled)),
        );
    }
    out.family(
        "store_gc_tracker_lag_p99_seconds",
        "gauge",
        "99th percentile of how long changes take to reach the tracker's index, over its last 1024 batches, from the kernel event or from the tracker's receipt.",
    );
    if let Some(tracker) = &live.tracker {
        for (from, p99_ms) in [
            ("kernel_event", tracker.lag_from_kernel_p99_ms),
            ("receipt", tracker.lag_from_receipt_p99_ms),
        ] {
            if let Some(p99_ms) = p99_ms.filter(|ms| ms.is_finite()) {
                out.sample(
                    "store_gc_tracker_lag_p99_seconds",
                    &[("from", from)],
                    p99_ms / 1e3,
                );
            }
        }
    }
    out.text
}

/// Text exposition format writer: `# HELP` and `# TYPE` once per family, then samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape backslash, double quote and newline.
fn escape_label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Go's `ParseFloat` reads Rust's `Display` of a finite f64 (never exponent notation); the
/// special values have their own spelling.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

/// The media type scrapers expect for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head we read; a scraper's GET is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one HTTP/1.x request on `stream` and closes it: `GET /metrics` (or `HEAD`) is
/// answered with `body()`; anything else gets a 404, 405 or 400. One request per connection
/// (`Connection: close`), which every scraper handles.
pub async fn serve_http<S, F, Fut>(mut stream: S, body: F) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return respond(&mut stream, "408 Request Timeout", "", false).await,
    };
    let Some(head) = head else {
        return respond(&mut stream, "400 Bad Request", "bad request\n", false).await;
    };
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !words
        .next()
        .is_some_and(|version| version.starts_with("HTTP/1."))
    {
        return respond(&mut stream, "400 Bad Request", "bad request\n", false).await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, "405 Method Not Allowed", "GET only\n", false).await;
    }
    // Scrapers may add a query string (`?name[]=...`); the whole exposition is returned.
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "try /metrics\n", head_only).await;
    }
    let body = body().await;
    respond(&mut stream, "200 OK", &body, head_only).await
}

/// Reads up to the blank line ending the request head; returns its first line, or `None`
/// when the head is malformed, too long, or the peer closed early.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            let line = head.split(|&byte| byte == b'\n').next().unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(std::str::from_utf8(line).ok().map(str::to_owned));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..read]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{Action, RootCounts};

    fn summary() -> Summary {
        Summary {
            action: Action::Delete,
            keep_derivations: true,
            keep_outputs: false,
            roots: RootCounts {
                static_: 2,
                indirect: 1,
                ..RootCounts::default()
            },
            valid_paths: 10,
            references: 5,
            graph_bytes: 100,
            store_entries: 10,
            alive: 4,
            dead: 6,
            dead_nar_bytes: 600,
            deleted: 6,
            freed_bytes: 4096,
            stopped_early: false,
            liveness_method: Some(crate::liveness::Method::NixWalk),
            ms: PhaseMillis {
                roots: 12,
                total: 1500,
                ..PhaseMillis::default()
            },
        }
    }

    /// Every line is a HELP or TYPE comment or `name{labels} value`; each family is declared
    /// once and its samples follow its TYPE line, together (scrapers reject a family split
    /// in two).
    fn assert_well_formed(text: &str) {
        let mut declared: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            assert_eq!(declared.last(), Some(&name), "{line} outside its family");
        }
    }

    #[test]
    fn exports_every_family_from_the_start() {
        let text = render(&Metrics::default(), &LiveValues::default());
        assert_well_formed(&text);
        assert!(text.contains("store_gc_runs_total{trigger=\"schedule\",outcome=\"ok\"} 0\n"));
        assert!(text.contains("store_gc_last_success_timestamp_seconds 0\n"));
        assert!(text.contains("store_gc_tracker_up 0\n"));
        assert!(text.contains("# TYPE store_gc_tracker_lag_p99_seconds gauge\n"));
    }

    #[test]
    fn records_runs_from_the_summary() {
        let mut metrics = Metrics::default();
        metrics.record(Trigger::Schedule, Outcome::Ok, Some(&summary()));
        metrics.record(Trigger::Schedule, Outcome::Ok, Some(&summary()));
        metrics.record(Trigger::FreeSpace, Outcome::Refused, None);
        let live = LiveValues {
            free_bytes: Some(1 << 30),
            min_free_bytes: Some(1 << 20),
            tracker: Some(TrackerHealth {
                settled: true,
                lag_from_kernel_p99_ms: None,
                lag_from_receipt_p99_ms: Some(2.5),
            }),
        };
        let text = render(&metrics, &live);
        assert_well_formed(&text);
        for line in [
            "store_gc_runs_total{trigger=\"schedule\",outcome=\"ok\"} 2",
            "store_gc_runs_total{trigger=\"free_space\",outcome=\"refused\"} 1",
            "store_gc_deleted_paths_total 12",
            "store_gc_freed_bytes_total 8192",
            "store_gc_phase_seconds_total{phase=\"total\"} 3",
            "store_gc_last_phase_seconds{phase=\"roots\"} 0.012",
            "store_gc_last_roots{kind=\"static\"} 2",
            "store_gc_last_paths{state=\"dead\"} 6",
            "store_gc_store_free_bytes 1073741824",
            "store_gc_tracker_index_settled 1",
            "store_gc_tracker_lag_p99_seconds{from=\"receipt\"} 0.0025",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        }
        assert!(!text.contains("from=\"kernel_event\""));
    }

    #[test]
    fn escapes_as_the_format_requires() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1e-7), "0.0000001");
        assert_eq!(format_value(3.0), "3");
    }

    async fn exchange(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request).await.unwrap();
        serve_http(server, || async { "body\n".to_owned() })
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn answers_get_metrics_only() {
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(ok.ends_with("\r\n\r\nbody\n"), "{ok}");
        let head = exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(head.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"));
        assert!(
            exchange(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 404")
        );
        assert!(
            exchange(b"POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 405")
        );
        assert!(
            exchange(b"nonsense\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 400")
        );
        let huge = vec![b'a'; MAX_REQUEST_HEAD * 2];
        assert!(exchange(&huge).await.starts_with("HTTP/1.0 400"));
    }
}
