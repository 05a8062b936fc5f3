//! The Unix-socket server: accepts connections, decides from `SO_PEERCRED` who is calling and
//! what they may see, reads JSON-lines requests (protocol.rs) and hands them to the tracker
//! loop. Optionally it also serves Nix's roots-daemon protocol on a second socket.
//!
//! Invariants: a misbehaving client (garbage, an oversized or slow line, too many requests or
//! connections) costs only its own connection, never the tracker; and a roots-daemon client
//! never sees a clean end after a list that is not the whole, settled answer.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::{UnixListener, UnixStream};

use crate::protocol::{ErrorKind, MAX_REQUEST_BYTES, Request, Response, parse_request};
use crate::report::{Disclosure, root_targets_json};
use crate::tracker::{Job, JobSender};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path:?}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who may ask, and who may see retainers. Root may always do both.
///
/// `SO_PEERCRED` carries the caller's uid and *primary* gid only, so a gid admits exactly the
/// callers whose primary group it is, not members through supplementary groups.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// May query; retainers and paths are censored (`--allow-uid`).
    pub uids: BTreeSet<u32>,
    /// May query when this is their primary gid; censored (`--allow-gid`).
    pub gids: BTreeSet<u32>,
    /// May query and see everything (`--reveal-uid`).
    pub reveal_uids: BTreeSet<u32>,
    /// May query and see everything when this is their primary gid (`--reveal-gid`).
    pub reveal_gids: BTreeSet<u32>,
}

impl Access {
    /// What a caller with these credentials may see of an answer; `None`: may not ask.
    pub fn disclosure(&self, uid: u32, gid: u32) -> Option<Disclosure> {
        if uid == 0 || self.reveal_uids.contains(&uid) || self.reveal_gids.contains(&gid) {
            Some(Disclosure::Full)
        } else if self.uids.contains(&uid) || self.gids.contains(&gid) {
            Some(Disclosure::Censored)
        } else {
            None
        }
    }
}

/// What one client may cost the tracker.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once, on both sockets together; one more gets `busy` and is closed.
    pub max_connections: usize,
    /// Requests answered on one connection; the next gets `bad_request` and the connection is
    /// closed.
    pub max_requests_per_connection: usize,
    /// How long a connection may take to send one request line.
    pub request_timeout: Duration,
    /// How long a client may take to read one answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_requests_per_connection: 1000,
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
        }
    }
}

/// Nix's roots-daemon protocol ([`handle_nix_roots`]).
#[derive(Clone, Debug)]
pub struct NixRootsConfig {
    pub socket: PathBuf,
    /// Answer even when the only unreadable entries are under `/proc` (processes the tracker
    /// may not inspect), as Nix's own `findRuntimeRoots` ignores them. Off: refuse.
    pub allow_unreadable_runtime: bool,
}

/// Everything the server needs to know before it starts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The JSON-lines socket (protocol.rs).
    pub socket: PathBuf,
    /// Whether and where to serve Nix's roots-daemon protocol.
    pub nix_roots: Option<NixRootsConfig>,
    pub access: Access,
    pub limits: Limits,
}

/// Removes the socket file when the server stops (greetd's and bpfman's habit).
struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> Result<Listener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    // A stale socket from a crashed tracker would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(bind_error(error)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    // Everyone may connect; `Access` decides who gets an answer.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bind_error)?;
    Ok(Listener {
        listener,
        path: path.to_owned(),
    })
}

/// Serves the sockets of `config` until SIGINT/SIGTERM or until `shutdown` is set; sets
/// `shutdown` on exit.
pub fn serve(
    config: ServerConfig,
    jobs: JobSender,
    shutdown: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Bind {
            path: config.socket.clone(),
            source,
        })?;
    let (listener, nix_roots_listener) = {
        let _guard = runtime.enter();
        let listener = bind(&config.socket)?;
        let nix_roots_listener = config
            .nix_roots
            .as_ref()
            .map(|nix_roots| bind(&nix_roots.socket))
            .transpose()?;
        (listener, nix_roots_listener)
    };
    tracing::info!(socket = %config.socket.display(), "listening");
    if let Some(nix_roots) = &config.nix_roots {
        tracing::info!(socket = %nix_roots.socket.display(), "serving the Nix roots-daemon protocol");
    }
    let shared = Arc::new(Shared {
        connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
        access: config.access,
        limits: config.limits,
        nix_roots_allow_unreadable_runtime: config
            .nix_roots
            .is_some_and(|nix_roots| nix_roots.allow_unreadable_runtime),
        jobs,
    });
    Ok(std::thread::spawn(move || {
        runtime.block_on(accept_loop(listener, nix_roots_listener, shared, &shutdown));
        shutdown.store(true, Ordering::Relaxed);
    }))
}

/// What every connection's task reads.
struct Shared {
    access: Access,
    limits: Limits,
    nix_roots_allow_unreadable_runtime: bool,
    jobs: JobSender,
    /// One permit per connection being served.
    connections: Arc<tokio::sync::Semaphore>,
}

/// Which protocol a socket speaks.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    JsonLines,
    NixRoots,
}

async fn accept_loop(
    listener: Listener,
    nix_roots_listener: Option<Listener>,
    shared: Arc<Shared>,
    shutdown: &AtomicBool,
) {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let (accepted, protocol) = tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => {
                if shutdown.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            accepted = listener.listener.accept() => (accepted, Protocol::JsonLines),
            accepted = accept_on(nix_roots_listener.as_ref()) => (accepted, Protocol::NixRoots),
        };
        match accepted {
            Ok((stream, _)) => admit(&shared, stream, protocol),
            Err(error) => tracing::warn!(%error, "accept failed"),
        }
    }
    tracing::info!("server stopping");
}

/// Accepts on `listener`, or waits forever when there is none.
async fn accept_on(
    listener: Option<&Listener>,
) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(listener) => listener.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one accepted connection in its own task, or turns it away when every connection slot
/// is taken.
fn admit(shared: &Arc<Shared>, stream: UnixStream, protocol: Protocol) {
    let disclosure = stream
        .peer_cred()
        .ok()
        .and_then(|cred| shared.access.disclosure(cred.uid(), cred.gid()));
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        turn_away(stream, protocol, shared.limits.max_connections);
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let jobs = shared.jobs.clone();
        let served = match protocol {
            Protocol::JsonLines => {
                handle_connection(stream, disclosure, jobs, &shared.limits).await
            }
            Protocol::NixRoots => {
                let allow = shared.nix_roots_allow_unreadable_runtime;
                handle_nix_roots(stream, disclosure, allow, jobs, &shared.limits).await
            }
        };
        if let Err(error) = served {
            tracing::debug!(%error, ?protocol, "connection ended with an error");
        }
    });
}

/// One refusal, written without waiting, then the connection is closed. A fresh socket's
/// buffer takes one short line; a client that cannot take even that gets nothing. Waiting for
/// it would hold the very resource the limit protects.
fn turn_away(stream: UnixStream, protocol: Protocol, max_connections: usize) {
    let message = format!(
        "the tracker is serving its maximum of {max_connections} connections; try again later"
    );
    tracing::warn!(?protocol, "{message}");
    let refusal = match protocol {
        Protocol::JsonLines => response_line(&Response::error(ErrorKind::Busy, message)),
        Protocol::NixRoots => Ok(nix_refusal(&message)),
    };
    if let (Ok(refusal), Ok(stream)) = (refusal, stream.into_std()) {
        let _ = (&stream).write(&refusal);
    }
}

/// One connection: requests in, responses out, in order. `disclosure` is what the caller may
/// see (`None`: it may not ask). Generic so tests can drive it over `tokio::io::duplex` without
/// a socket.
pub async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    disclosure: Option<Disclosure>,
    jobs: JobSender,
    limits: &Limits,
) -> std::io::Result<()> {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut answered = 0_usize;
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            limits.request_timeout,
            (&mut reader)
                .take(MAX_REQUEST_BYTES as u64)
                .read_until(b'\n', &mut line),
        )
        .await;
        let admitted = match read {
            Err(_) => Err(Response::error(ErrorKind::BadRequest, "request timed out")),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(Response::error(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_REQUEST_BYTES} bytes or not newline-terminated"),
            )),
            Ok(Ok(_)) => match disclosure {
                None => Err(Response::error(
                    ErrorKind::Unauthorized,
                    "this user may not query the tracker (see --allow-uid, --allow-gid)",
                )),
                Some(_) if answered >= limits.max_requests_per_connection => Err(Response::error(
                    ErrorKind::BadRequest,
                    format!(
                        "more than {} requests on one connection; open a new one",
                        limits.max_requests_per_connection
                    ),
                )),
                Some(disclosure) => Ok(disclosure),
            },
        };
        // The caller broke the protocol, may not talk to us, or has asked enough: answer once
        // and hang up.
        let disclosure = match admitted {
            Ok(disclosure) => disclosure,
            Err(refusal) => return write_response(&mut writer, &refusal, limits).await,
        };
        line.pop();
        let request = match parse_request(&line) {
            Ok(request) => request,
            Err(message) => {
                let refusal = Response::error(ErrorKind::BadRequest, message);
                return write_response(&mut writer, &refusal, limits).await;
            }
        };
        let response = ask(&jobs, request, disclosure).await;
        write_response(&mut writer, &response, limits).await?;
        answered += 1;
    }
}

/// Nix's roots-daemon protocol, as `nix store roots-daemon` serves it and
/// `LocalStore::findRuntimeRoots` reads it with `use-roots-daemon = true`: on each connection,
/// every root's store path followed by NUL, then the connection is closed. The client sends
/// nothing. We send the targets of every root kind, registered or not (Nix checks validity
/// itself), from a fenced, settled, complete answer.
///
/// Nix's client (`requestRuntimeRoots`) reads paths until the end of the stream, so it cannot
/// tell a short list from a whole one: whenever we cannot give the whole answer (unsettled,
/// incomplete, not allowed, busy), we send a refusal that is not an absolute path instead, which
/// Nix's `parseStorePath` rejects with an error that aborts the collection.
pub async fn handle_nix_roots<S: AsyncWrite + Unpin>(
    mut stream: S,
    disclosure: Option<Disclosure>,
    allow_unreadable_runtime: bool,
    jobs: JobSender,
    limits: &Limits,
) -> std::io::Result<()> {
    let body = match disclosure {
        None => nix_refusal("this user may not ask for roots (see --allow-uid, --allow-gid)"),
        // Nix's client ignores retainers; it never needs to see one.
        Some(_) => {
            let query = Request::Query { wait_ms: None };
            let response = ask(&jobs, query, Disclosure::Censored).await;
            nix_roots_body(response, allow_unreadable_runtime)
        }
    };
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
    written.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the roots-daemon client did not read its answer in time",
        ))
    })
}

/// The roots-daemon answer for the tracker loop's `response`: NUL-terminated store paths, or
/// a refusal.
fn nix_roots_body(response: Response, allow_unreadable_runtime: bool) -> Vec<u8> {
    let report = match response {
        Response::Roots { report } => report,
        Response::Error { error, message } => {
            let kind = serde_json::to_string(&error).unwrap_or_default();
            return nix_refusal(&format!("{kind}: {message}"));
        }
        Response::Status { .. } => {
            return nix_refusal("internal: the tracker loop answered a query with a status");
        }
    };
    let answer = match root_targets_json(report.get()) {
        Ok(answer) => answer,
        Err(error) => {
            return nix_refusal(&format!(
                "internal: cannot read the tracker's answer: {error}"
            ));
        }
    };
    let whole =
        answer.complete || (allow_unreadable_runtime && answer.unreadable_outside_proc == 0);
    if !whole {
        return nix_refusal(
            "the answer is incomplete: some potential roots could not be read \
             (`root-tracker query --json` as root lists them)",
        );
    }
    let mut body = Vec::with_capacity(answer.targets.iter().map(|path| path.len() + 1).sum());
    for path in answer.targets {
        body.extend_from_slice(&path);
        body.push(0);
    }
    body
}

/// A roots-daemon "path" that Nix's client cannot take for a root: it does not start with `/`,
/// so `parseStorePath` throws ("not an absolute path: 'root-tracker refused ...'") and the
/// collection stops with our reason in its error. NUL-terminated like a path; never empty (an
/// empty string would end Nix's read loop as if the list were over).
pub fn nix_refusal(reason: &str) -> Vec<u8> {
    let mut refusal = format!("root-tracker refused to list roots: {reason}").into_bytes();
    refusal.retain(|&byte| byte != 0);
    refusal.push(0);
    refusal
}

async fn ask(jobs: &JobSender, request: Request, disclosure: Disclosure) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        request,
        disclosure,
        reply,
    };
    if jobs.send(job).is_err() {
        return Response::error(ErrorKind::Internal, "the tracker loop has stopped");
    }
    answer.await.unwrap_or_else(|_| {
        Response::error(ErrorKind::Internal, "the tracker loop dropped the request")
    })
}

fn response_line(response: &Response) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::from)?;
    line.push(b'\n');
    Ok(line)
}

/// The roots response line around its report, which is written from the tracker's buffer as
/// it is: serializing the response would copy an answer of hundreds of MB once more.
/// `response_line` of the same response gives the same bytes (a test checks).
const ROOTS_LINE_START: &[u8] = br#"{"response":"roots","report":"#;
const ROOTS_LINE_END: &[u8] = b"}\n";

async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
    limits: &Limits,
) -> std::io::Result<()> {
    let line = match response {
        Response::Roots { .. } => Vec::new(),
        _ => response_line(response)?,
    };
    let written = tokio::time::timeout(limits.write_timeout, async {
        match response {
            Response::Roots { report } => {
                writer.write_all(ROOTS_LINE_START).await?;
                writer.write_all(report.get().as_bytes()).await?;
                writer.write_all(ROOTS_LINE_END).await?;
            }
            _ => writer.write_all(&line).await?,
        }
        writer.flush().await
    })
    .await;
    written.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its answer in time",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_decides_who_asks_and_who_sees() {
        let access = Access {
            uids: BTreeSet::from([1000]),
            gids: BTreeSet::from([100]),
            reveal_uids: BTreeSet::from([1001]),
            reveal_gids: BTreeSet::from([200]),
        };
        for (uid, gid, expected) in [
            (0, 0, Some(Disclosure::Full)),
            (1000, 1000, Some(Disclosure::Censored)),
            (1002, 100, Some(Disclosure::Censored)),
            (1001, 1001, Some(Disclosure::Full)),
            (1003, 200, Some(Disclosure::Full)),
            (1004, 1004, None),
        ] {
            assert_eq!(access.disclosure(uid, gid), expected, "uid {uid} gid {gid}");
        }
    }

    fn report(complete: bool, unreadable: &str) -> Response {
        let text = format!(
            r#"{{"complete":{complete},"roots":[{{"target":"/s/b"}},{{"target":"/s/a"}},{{"target":"/s/b"}}],"unregistered":[{{"target":"/s/c"}}],"unreadable":[{unreadable}]}}"#
        );
        Response::Roots {
            report: serde_json::value::RawValue::from_string(text).unwrap(),
        }
    }

    /// The roots line written around the report is the line serde would write.
    #[test]
    fn roots_lines_are_written_as_serde_writes_them() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let response = report(true, r#"{"path":"/p\nq"}"#);
        let mut written = Vec::new();
        runtime
            .block_on(write_response(&mut written, &response, &Limits::default()))
            .unwrap();
        assert_eq!(written, response_line(&response).unwrap());
    }

    /// Every answer that is not whole is something Nix's `parseStorePath` throws on.
    #[test]
    fn roots_daemon_answers_are_whole_or_refusals() {
        assert_eq!(
            nix_roots_body(report(true, ""), false),
            b"/s/a\0/s/b\0/s/c\0"
        );
        let proc = r#"{"path":"/proc/{censored}"}"#;
        let home = r#"{"path":"{censored}"}"#;
        assert_eq!(
            nix_roots_body(report(false, proc), true),
            b"/s/a\0/s/b\0/s/c\0"
        );
        for refused in [
            nix_roots_body(report(false, proc), false),
            nix_roots_body(report(false, home), true),
            nix_roots_body(Response::error(ErrorKind::Unsettled, "lost"), true),
        ] {
            assert!(refused.starts_with(b"root-tracker refused"), "{refused:?}");
            assert_eq!(refused.iter().filter(|&&byte| byte == 0).count(), 1);
            assert_eq!(refused.last(), Some(&0));
        }
        assert_eq!(
            nix_refusal("a\0b"),
            b"root-tracker refused to list roots: ab\0"
        );
    }

    #[test]
    fn callers_not_allowed_get_a_refusal_from_the_roots_daemon() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut client, server_side) = tokio::io::duplex(4096);
            // No tracker loop behind it: a refusal must come before any job is sent.
            let (jobs, _receiver) = crate::tracker::job_channel().unwrap();
            handle_nix_roots(server_side, None, true, jobs, &Limits::default())
                .await
                .unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(b"root-tracker refused"), "{answer:?}");
        });
    }
}
