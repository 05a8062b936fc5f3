//! The GC socket, `<state>/gc-socket/socket`, served while a collection runs, as in Nix 2.8's
//! `collectGarbage`: a client that cannot take the shared GC lock connects, writes a store path
//! followed by `\n`, and waits for the byte `1`. We add its hash part to the temp roots before
//! answering, and if that path is the one being deleted right now, we answer only once its
//! closure is done (`pending`), so the client never re-creates a path while we delete it.
//! Anything that is not a store path gets `1` too and is logged (Nix: "received garbage").
//!
//! Invariant: a root is in the shared set before its client hears `1`.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::layout::{StoreLayout, canon_path};
use crate::liveness::TempRootGate;
use crate::store_path::{self, HashPart};
use crate::temp_roots::TempRoots;

/// Longest line read from a client: PATH_MAX and its newline.
const MAX_LINE: u64 = 4097;
/// Clients served at once.
const MAX_CLIENTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum GcSocketError {
    #[error("cannot serve the GC socket {path}")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct Shared {
    /// Hash parts of every temp root: read from `temproots/` and received on the socket.
    temp_roots: HashSet<HashPart>,
    /// Hash part of the path whose closure is being decided or deleted.
    pending: Option<HashPart>,
    /// Roots received on the socket, for the summary.
    received: usize,
}

/// The temp roots shared between the walk and the socket's client threads.
#[derive(Debug, Default)]
pub struct SharedTempRoots {
    shared: Mutex<Shared>,
    wakeup: Condvar,
}

impl SharedTempRoots {
    pub fn new(initial: &TempRoots) -> Self {
        let roots = Self::default();
        roots.add_all(initial);
        roots
    }

    /// Adds the temp roots read from `temproots/`.
    pub fn add_all(&self, found: &TempRoots) {
        let mut shared = self.lock();
        for basename in found.basenames() {
            if let Some(hash) = store_path::hash_part(basename) {
                shared.temp_roots.insert(hash);
            }
        }
    }

    /// A poisoned lock only means a client thread panicked; the set itself is still sound
    /// (insertions are single operations), and refusing to look at it would be worse.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a root from a client, waiting while its path is the one being deleted.
    fn add_from_client(&self, hash: HashPart) {
        let mut shared = self.lock();
        shared.temp_roots.insert(hash);
        shared.received += 1;
        while shared.pending == Some(hash) {
            shared = self
                .wakeup
                .wait(shared)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn received(&self) -> usize {
        self.lock().received
    }

    fn shut_down(&self) {
        self.lock().pending = None;
        self.wakeup.notify_all();
    }
}

impl TempRootGate for SharedTempRoots {
    fn is_temp_root_else_pending(&self, hash: &HashPart) -> bool {
        let mut shared = self.lock();
        if shared.temp_roots.contains(hash) {
            return true;
        }
        shared.pending = Some(*hash);
        false
    }

    fn release_pending(&self) {
        self.lock().pending = None;
        self.wakeup.notify_all();
    }

    fn hashes(&self) -> Vec<HashPart> {
        self.lock().temp_roots.iter().copied().collect()
    }
}

/// The running server; stopped (clients disconnected, threads joined) on drop. The socket
/// file stays, as Nix leaves it: a client that connects later gets ECONNREFUSED and retries
/// the GC lock, which is free by then.
pub struct GcSocket {
    roots: Arc<SharedTempRoots>,
    shutdown: Option<OwnedFd>,
    server: Option<JoinHandle<()>>,
}

impl GcSocket {
    /// Nix's `createUnixDomainSocket(path, 0666)` (unlink, bind, chmod, listen) and the
    /// server thread.
    pub fn serve(layout: &StoreLayout, roots: Arc<SharedTempRoots>) -> Result<Self, GcSocketError> {
        let dir = layout.state_dir().join("gc-socket");
        let path = dir.join("socket");
        let serve_error = |source| GcSocketError::Serve {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(serve_error)?;
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(serve_error(error));
            }
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(serve_error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(serve_error)?;
        listener.set_nonblocking(true).map_err(serve_error)?;
        let (shutdown_read, shutdown_write) =
            nix::unistd::pipe().map_err(|errno| serve_error(errno.into()))?;
        let server_roots = Arc::clone(&roots);
        let layout = layout.clone();
        let server = std::thread::Builder::new()
            .name("gc-socket".to_owned())
            .spawn(move || serve_loop(&listener, &shutdown_read, &server_roots, &layout))
            .map_err(serve_error)?;
        Ok(Self {
            roots,
            shutdown: Some(shutdown_write),
            server: Some(server),
        })
    }

    pub fn roots(&self) -> &Arc<SharedTempRoots> {
        &self.roots
    }
}

impl Drop for GcSocket {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = nix::unistd::write(&shutdown, b"x");
        }
        self.roots.shut_down();
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn serve_loop(
    listener: &UnixListener,
    shutdown: &OwnedFd,
    roots: &Arc<SharedTempRoots>,
    layout: &StoreLayout,
) {
    let mut clients: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(shutdown.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => {
                tracing::error!(%errno, "polling the GC socket failed; no more clients are served");
                break;
            }
        }
        if fds[0].any().unwrap_or(true) {
            break;
        }
        match listener.accept() {
            // Every local user may connect; past this many clients at once a new one is closed
            // at once (its `addTempRoot` fails, so its path is never left unprotected).
            Ok((stream, _)) if clients.len() >= MAX_CLIENTS => {
                tracing::warn!(
                    clients = clients.len(),
                    "GC socket: too many clients; closing a new one"
                );
                drop(stream);
            }
            Ok((stream, _)) => {
                let Ok(handle) = stream.try_clone() else {
                    continue;
                };
                let roots = Arc::clone(roots);
                let layout = layout.clone();
                let spawned = std::thread::Builder::new()
                    .name("gc-socket-client".to_owned())
                    .spawn(move || serve_client(stream, &roots, &layout));
                match spawned {
                    Ok(thread) => clients.push((handle, thread)),
                    Err(error) => tracing::error!(%error, "cannot start a GC socket client thread"),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => tracing::warn!(%error, "accepting a GC socket client failed"),
        }
        clients.retain(|(_, thread)| !thread.is_finished());
    }
    tracing::debug!("GC roots server shutting down");
    for (stream, thread) in clients {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = thread.join();
    }
}

/// One client: store paths, one per line, each answered with `1`.
fn serve_client(stream: UnixStream, roots: &SharedTempRoots, layout: &StoreLayout) {
    // Accepted sockets may inherit the listener's non-blocking flag; the client thread blocks.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        // A store path is shorter than PATH_MAX: a longer line is not one, and the socket is
        // open to every local user, so it is not read any further.
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Nix's `readLine` returns the line without its newline; EOF mid-line is an error.
        let Some(path) = line.strip_suffix(b"\n") else {
            return;
        };
        match parse_store_path(layout, path) {
            Some(hash) => {
                tracing::debug!(path = %String::from_utf8_lossy(path), "got new GC root");
                roots.add_from_client(hash);
            }
            None => tracing::error!(
                received = %String::from_utf8_lossy(path),
                "received garbage instead of a root from client"
            ),
        }
        if writer.write_all(b"1").is_err() {
            return;
        }
    }
}

/// Nix's `maybeParseStorePath`: canonicalise, the parent must be the store dir, the name valid.
fn parse_store_path(layout: &StoreLayout, path: &[u8]) -> Option<HashPart> {
    let canonical = canon_path(Path::new(std::ffi::OsStr::from_bytes(path)))?;
    let basename = layout.store_basename(canonical.as_os_str().as_bytes())?;
    if !store_path::is_valid_basename(basename) {
        return None;
    }
    store_path::hash_part(basename)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_add_roots_and_get_an_ack() {
        let dir = tempfile::tempdir().unwrap();
        let layout =
            StoreLayout::new(&dir.path().join("store"), &dir.path().join("state")).unwrap();
        let roots = Arc::new(SharedTempRoots::new(&TempRoots::default()));
        let server = GcSocket::serve(&layout, Arc::clone(&roots)).unwrap();
        let socket = layout.state_dir().join("gc-socket/socket");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);

        let mut client = UnixStream::connect(&socket).unwrap();
        let store = layout.store_dir().to_str().unwrap().to_owned();
        let hash = *b"0123456789abcdfghijklmnpqrsvwxyz";
        assert!(!roots.is_temp_root_else_pending(&hash));
        roots.release_pending();
        let mut ack = [0u8; 1];
        client
            .write_all(format!("{store}/0123456789abcdfghijklmnpqrsvwxyz-x\n").as_bytes())
            .unwrap();
        client.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, b"1");
        assert!(
            roots.is_temp_root_else_pending(&hash),
            "the root is in before the ack"
        );
        // Garbage is acknowledged too, and adds nothing.
        client.write_all(b"/elsewhere/not-a-path\n").unwrap();
        client.read_exact(&mut ack).unwrap();
        assert_eq!(roots.received(), 1);
        drop(server);
        // The server is gone: the connection is closed.
        assert_eq!(client.read(&mut ack).unwrap(), 0);
    }
}
