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
// The cause is part of the message and not a `source`: error chains print it once.
#[error("cannot listen on {addr}: {cause}")]
pub struct BindError {
    addr: String,
    cause: std::io::Error,
}

impl Bound {
    /// Binds one configured address for `loops` event loops.
    pub fn bind(addr: &ListenAddr, loops: usize) -> Result<Bound, BindError> {
        let wrap = |cause| BindError {
            addr: addr.to_string(),
            cause,
        };
        match addr {
            ListenAddr::Tcp(sa) => {
                if sa.port() != 0 {
                    ensure_free(*sa).map_err(wrap)?;
                }
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

    /// Hands out the sockets, one per event loop: each loop owns (and at shutdown closes) its own,
    /// so the kernel stops accepting connections the moment the loops stop.
    pub fn into_loop_sockets(self, loops: usize) -> std::io::Result<Vec<LoopSocket>> {
        match self {
            Bound::Tcp(all) => Ok(all.into_iter().map(LoopSocket::Tcp).collect()),
            Bound::Unix(listener, _) => {
                let mut out = Vec::with_capacity(loops);
                for _ in 1..loops {
                    out.push(LoopSocket::Unix(listener.try_clone()?));
                }
                out.push(LoopSocket::Unix(listener));
                Ok(out)
            }
        }
    }

    /// The TCP port bound (the real one when 0 was asked for).
    pub fn port(&self) -> Option<u16> {
        match self {
            Bound::Tcp(all) => all
                .first()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.port()),
            Bound::Unix(..) => None,
        }
    }

    /// The Unix socket file to remove at shutdown, if any.
    pub fn socket_file(&self) -> Option<PathBuf> {
        match self {
            Bound::Unix(_, path) => Some(path.clone()),
            Bound::Tcp(_) => None,
        }
    }
}

/// A bound socket owned by one event loop, not yet registered with its runtime.
#[derive(Debug)]
pub enum LoopSocket {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// Unix-domain (a duplicate of the shared socket).
    Unix(std::os::unix::net::UnixListener),
}

impl LoopSocket {
    /// Registers the socket with the calling thread's runtime.
    pub fn into_listener(self) -> std::io::Result<Listener> {
        match self {
            LoopSocket::Tcp(s) => tokio::net::TcpListener::from_std(s).map(Listener::Tcp),
            LoopSocket::Unix(s) => tokio::net::UnixListener::from_std(s).map(Listener::Unix),
        }
    }
}

/// `SO_REUSEPORT` would let a second server (another Gatehouse started by mistake, say) join the
/// port and silently take half of its connections; a plain bind first refuses a port in use.
fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    let socket = tcp_socket(addr)?;
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                "address already in use (is another server, or another gatehouse, listening there?)",
            )
        } else {
            e
        }
    })
}

/// A TCP socket for `addr`, set up as every listener (and the free-port probe) wants it.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]:80` and `0.0.0.0:80` can then both be listed, as in nginx.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = tcp_socket(addr)?;
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
