//! Listening sockets: TCP (IPv4 and IPv6) and Unix-domain.
//!
//! Each event-loop thread gets its own TCP socket bound to the same address with `SO_REUSEPORT`, so
//! the kernel spreads connections across the loops, as nginx's `reuseport` does. Sockets are bound
//! before any runtime exists and handed to a loop as plain std sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ListenAddr;

/// How many connections the kernel queues before we accept them.
const BACKLOG: i32 = 1024;

/// One configured address, bound once per event loop.
#[derive(Debug)]
pub enum Bound {
    /// TCP: one socket per loop, same address.
    Tcp(Vec<std::net::TcpListener>),
    /// A Unix-domain socket (shared by the loops); the path is removed again at shutdown.
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// The socket one event loop accepts on.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix-domain.
    Unix(tokio::net::UnixListener),
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: String,
    source: std::io::Error,
}

impl Bound {
    /// Binds one configured address for `loops` event loops.
    pub fn bind(addr: &ListenAddr, loops: usize) -> Result<Bound, BindError> {
        let wrap = |source| BindError {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(sa) => {
                let first = bind_tcp(*sa).map_err(wrap)?;
                // Port 0: the others must join the port the first one got.
                let actual = first.local_addr().map_err(wrap)?;
                let mut all = vec![first];
                for _ in 1..loops {
                    all.push(bind_tcp(actual).map_err(wrap)?);
                }
                Ok(Bound::Tcp(all))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(wrap)?;
                let listener = std::os::unix::net::UnixListener::bind(path).map_err(wrap)?;
                listener.set_nonblocking(true).map_err(wrap)?;
                Ok(Bound::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> String {
        match self {
            Bound::Tcp(all) => all
                .first()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(|| "?".to_string(), |a| a.to_string()),
            Bound::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// The socket for event loop `index`, registered with the calling thread's runtime.
    pub fn for_loop(&self, index: usize) -> std::io::Result<Listener> {
        match self {
            Bound::Tcp(all) => {
                let socket = all
                    .get(index)
                    .ok_or_else(|| std::io::Error::other("no socket for this loop"))?;
                tokio::net::TcpListener::from_std(socket.try_clone()?).map(Listener::Tcp)
            }
            Bound::Unix(listener, _) => {
                tokio::net::UnixListener::from_std(listener.try_clone()?).map(Listener::Unix)
            }
        }
    }

    /// Removes a Unix socket's file; nothing for TCP.
    pub fn remove_socket_file(&self) {
        if let Bound::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]:80` and `0.0.0.0:80` can then both be listed, as in nginx.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A socket file left by a previous run would make bind fail; anything else at that path is kept.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a non-socket file is in the way",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
