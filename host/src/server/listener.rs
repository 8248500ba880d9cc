//! Listening sockets: TCP (IPv4 and IPv6) and Unix-domain.

use std::net::SocketAddr;
use std::path::PathBuf;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

/// How many connections the kernel queues before we accept them.
const BACKLOG: i32 = 1024;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain socket; the path is removed again at shutdown.
    Unix(UnixListener, PathBuf),
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: String,
    source: std::io::Error,
}

impl Listener {
    /// Binds one configured address. Must run inside the tokio runtime.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, BindError> {
        let wrap = |source| BindError {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(sa) => bind_tcp(*sa).map(Listener::Tcp).map_err(wrap),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(wrap)?;
                UnixListener::bind(path)
                    .map(|l| Listener::Unix(l, path.clone()))
                    .map_err(wrap)
            }
        }
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("?({e})"), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]:80` and `0.0.0.0:80` can then both be listed, as in nginx.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A socket file left by a previous run would make bind fail; anything else at that path is kept.
fn remove_stale_socket(path: &PathBuf) -> std::io::Result<()> {
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
