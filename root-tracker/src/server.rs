//! The Unix-socket server: accepts connections, checks who is calling (`SO_PEERCRED`), reads
//! JSON-lines requests (protocol.rs) and hands them to the tracker loop.
//!
//! Invariant: a misbehaving client (garbage, an oversized line, a dropped connection) costs
//! only its own connection, never the tracker.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::UnixListener;

use crate::protocol::{ErrorKind, MAX_REQUEST_BYTES, Request, Response, parse_request};
use crate::tracker::{Job, JobSender};

/// How long a connection may take to send one request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path:?}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who may ask. Root always may.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub uids: BTreeSet<u32>,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid)
    }
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

/// Serves `socket` until SIGINT/SIGTERM or until `shutdown` is set; sets `shutdown` on exit.
pub fn serve(
    socket: &Path,
    access: Access,
    jobs: JobSender,
    shutdown: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Bind {
            path: socket.to_owned(),
            source,
        })?;
    let listener = {
        let _guard = runtime.enter();
        bind(socket)?
    };
    tracing::info!(socket = %socket.display(), "listening");
    Ok(std::thread::spawn(move || {
        runtime.block_on(accept_loop(listener, access, jobs, &shutdown));
        shutdown.store(true, Ordering::Relaxed);
    }))
}

async fn accept_loop(listener: Listener, access: Access, jobs: JobSender, shutdown: &AtomicBool) {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => {
                if shutdown.load(Ordering::Relaxed) {
                    break;
                }
            }
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().map(|cred| cred.uid()).ok();
                    let access = access.clone();
                    let jobs = jobs.clone();
                    tokio::spawn(async move {
                        let allowed = uid.is_some_and(|uid| access.allows(uid));
                        if let Err(error) = handle_connection(stream, allowed, jobs).await {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
    tracing::info!("server stopping");
}

/// One connection: requests in, responses out, in order. Generic so tests can drive it over
/// `tokio::io::duplex` without a socket.
pub async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    allowed: bool,
    jobs: JobSender,
) -> std::io::Result<()> {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut reader)
                .take(MAX_REQUEST_BYTES as u64)
                .read_until(b'\n', &mut line),
        )
        .await;
        let response = match read {
            Err(_) => Some(Response::error(ErrorKind::BadRequest, "request timed out")),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) if line.last() != Some(&b'\n') => Some(Response::error(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_REQUEST_BYTES} bytes or not newline-terminated"),
            )),
            Ok(Ok(_)) if !allowed => Some(Response::error(
                ErrorKind::Unauthorized,
                "this user may not query the tracker (see --allow-uid)",
            )),
            Ok(Ok(_)) => None,
        };
        if let Some(response) = response {
            // The caller broke the protocol or may not talk to us: answer once and hang up.
            write_response(&mut writer, &response).await?;
            return Ok(());
        }
        line.pop();
        let response = match parse_request(&line) {
            Ok(request) => ask(&jobs, request).await,
            Err(message) => {
                write_response(
                    &mut writer,
                    &Response::error(ErrorKind::BadRequest, message),
                )
                .await?;
                return Ok(());
            }
        };
        write_response(&mut writer, &response).await?;
    }
}

async fn ask(jobs: &JobSender, request: Request) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if jobs.send(Job { request, reply }).is_err() {
        return Response::error(ErrorKind::Internal, "the tracker loop has stopped");
    }
    answer.await.unwrap_or_else(|_| {
        Response::error(ErrorKind::Internal, "the tracker loop dropped the request")
    })
}

async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::from)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}
