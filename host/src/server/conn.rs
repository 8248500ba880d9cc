//! One client connection: HTTP/1.1 or HTTP/2 through hyper, the keep-alive and send timers,
//! graceful close, protocol switches (tunnels), and parking.
//!
//! Parking: an HTTP/1.1 connection idle for [`PARK_AFTER`] hands its bytes back from hyper
//! (hyper's connection, its read and write buffers, are dropped) and waits on the socket with
//! nothing but the socket; the next request starts a new hyper connection on it. So ten thousand
//! idle keep-alive connections cost the kernel's socket state and a few hundred bytes each here,
//! as in nginx, rather than hyper's buffers (tens of KiB each).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::peer::Peer;
use crate::pipeline::{self, Activity, ConnCtx, PlainListener};
use crate::server::SharedGateway;
use crate::server::idle::{Connections, Registration};
use crate::server::io::{Park, Prefixed, sniff};
use crate::server::wire::WireGuard;

/// How long an HTTP/1.1 connection is idle before its hyper state is dropped.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// hyper's connection builders for a set of limits.
#[derive(Debug)]
pub struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// The builders for a set of limits.
pub fn builder(limits: &Limits) -> Builders {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // The wire guard enforces the head timeout; hyper's would also cut idle keep-alive connections.
        .header_read_timeout(None)
        // hyper refuses buffers under 8 KiB; smaller head limits are enforced by the wire guard.
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    Builders { http1, http2 }
}

/// The protocol a connection speaks, when TLS' ALPN already said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// `h2`.
    Http2,
    /// `http/1.1`.
    Http1,
}

/// The timers of a connection, copied out of its limits (a parked connection keeps nothing more).
#[derive(Debug, Clone, Copy)]
struct Timers {
    keepalive: Duration,
    send: Duration,
    head: Duration,
}

/// What a connection's task holds besides the byte stream.
struct Conn {
    ctx: Arc<ConnCtx>,
    activity: Arc<Activity>,
    registration: Registration,
    shutdown: CancellationToken,
    timers: Timers,
}

/// Serves one accepted connection (after its PROXY header and TLS handshake, if any) until it
/// closes, idles out, or shutdown closes it.
#[allow(clippy::too_many_arguments)]
pub async fn serve<I>(
    io: I,
    peer: Peer,
    plain: Option<Arc<PlainListener>>,
    negotiated: Option<Negotiated>,
    gateway: SharedGateway,
    builders: Arc<Builders>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
{
    let (max_head, timers) = {
        let gateway = gateway.load();
        let l = &gateway.limits;
        (
            l.max_header_size,
            Timers {
                keepalive: l.keepalive_timeout,
                send: l.send_timeout,
                head: l.header_read_timeout,
            },
        )
    };
    let mut io = io;
    let activity = Arc::new(Activity::default());
    let registration = connections.register(Arc::clone(&activity));
    // Without ALPN, the first bytes say: HTTP/2's preface, or an HTTP/1 request. Until they come
    // the connection is idle: closable for a new client, and within the head timeout.
    let (sniffed, http2) = match negotiated {
        Some(n) => (Bytes::new(), n == Negotiated::Http2),
        None => tokio::select! {
            sniffed = tokio::time::timeout(timers.head, sniff(&mut io)) => match sniffed {
                Ok(Ok(sniffed)) => sniffed,
                _ => return,
            },
            () = registration.close.notified() => return,
            () = shutdown.cancelled() => return,
        },
    };
    let (guard, verdicts) = WireGuard::new(
        Prefixed::new(sniffed, io),
        max_head,
        Some(timers.head),
        Some(timers.send),
    );
    let ctx = Arc::new(ConnCtx {
        peer,
        verdicts,
        activity: Arc::clone(&activity),
        plain,
        tunnel: std::sync::Mutex::new(None),
    });
    let service_ctx = Arc::clone(&ctx);
    // Each request's future is boxed: hyper then keeps a pointer, not the whole pipeline's state,
    // per connection (and can hand the connection back between requests, which needs an `Unpin`
    // future).
    let service = service_fn(move |req| {
        Box::pin(pipeline::handle(
            gateway.load_full(),
            Arc::clone(&service_ctx),
            req,
        ))
    });
    let conn = Conn {
        ctx,
        activity,
        registration,
        shutdown,
        timers,
    };
    if http2 {
        let hyper = builders
            .http2
            .serve_connection(TokioIo::new(guard), service);
        // Boxed: an HTTP/1.1 connection's task does not carry HTTP/2's state.
        Box::pin(conn.run_http2(hyper)).await;
    } else {
        // Bytes hyper read ahead go back in front of the guard, which has seen them already.
        conn.run_http1(Prefixed::new(Bytes::new(), guard), &builders.http1, service)
            .await;
    }
}

/// Why the timers woke a connection.
enum Tick {
    /// Go on.
    Wait,
    /// Close gracefully: idle past keep-alive.
    Drain,
    /// Drop now: a response stalled past send_timeout.
    Stalled,
    /// Idle long enough to park (HTTP/1.1).
    Park,
}

impl Conn {
    /// The keep-alive, send-stall and park checks; reschedules `timer`.
    fn tick(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>, parking: bool) -> Tick {
        let now = Instant::now();
        let Timers {
            keepalive, send, ..
        } = self.timers;
        // A response the client takes nothing of for send_timeout (an HTTP/2 stream whose window
        // stays shut, say) ends the connection: nothing holds its file or buffers.
        if let Some(stalled) = self.activity.send_stalled_for() {
            if stalled >= send {
                return Tick::Stalled;
            }
            timer.reset(now + (send - stalled));
            return Tick::Wait;
        }
        match self.activity.idle_for(now) {
            Some(idle) if idle >= keepalive => Tick::Drain,
            Some(idle) if parking && idle >= PARK_AFTER && self.activity.has_served() => Tick::Park,
            Some(idle) => {
                let next = if parking {
                    PARK_AFTER
                        .saturating_sub(idle)
                        .max(Duration::from_millis(10))
                } else {
                    (keepalive - idle).min(send)
                };
                timer.reset(now + next);
                Tick::Wait
            }
            // A request runs: look again when a stall or the end of it could be noticed.
            None => {
                let next = if parking {
                    PARK_AFTER
                } else {
                    keepalive.min(send)
                };
                timer.reset(now + next);
                Tick::Wait
            }
        }
    }

    async fn run_http2<F>(self, hyper: F)
    where
        F: std::future::Future<Output = hyper::Result<()>> + GracefulShutdown,
    {
        let hyper = std::pin::pin!(hyper);
        let mut hyper = hyper;
        let mut draining = false;
        let timer = tokio::time::sleep(self.timers.keepalive.min(self.timers.send));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                result = hyper.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    hyper.as_mut().graceful();
                }
                () = self.registration.close.notified(), if !draining => {
                    draining = true;
                    hyper.as_mut().graceful();
                }
                () = &mut timer => match self.tick(timer.as_mut(), false) {
                    Tick::Stalled => {
                        tracing::debug!("the client took no response data within send_timeout: connection closed");
                        return;
                    }
                    Tick::Drain if !draining => {
                        draining = true;
                        hyper.as_mut().graceful();
                    }
                    _ => {}
                },
            }
        }
    }

    async fn run_http1<IO, S>(
        self,
        stream: Prefixed<WireGuard<Prefixed<IO>>>,
        builder: &hyper::server::conn::http1::Builder,
        service: S,
    ) where
        IO: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
        S: hyper::service::HttpService<hyper::body::Incoming> + Clone + Unpin + Send + 'static,
        S::Future: Unpin + Send + 'static,
        S::ResBody: 'static,
        <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut stream = stream;
        loop {
            // Boxed, and gone once the connection idles: a parked connection's task holds the
            // stream and this loop, nothing of hyper's.
            let cycle = Box::pin(self.serve_until_idle(stream, builder, service.clone())).await;
            stream = match cycle {
                Cycle::Done => return,
                Cycle::Tunnel(stream, tunnel) => {
                    tunnel.run(stream).await;
                    return;
                }
                Cycle::Idle(stream) => stream,
            };
            if !stream.has_prefix() {
                // Parked: wait for the next request, or the end.
                stream.inner_mut().park();
                let idle = self
                    .activity
                    .idle_for(Instant::now())
                    .unwrap_or(Duration::ZERO);
                let left = self.timers.keepalive.saturating_sub(idle);
                tokio::select! {
                    ready = stream.readable() => if ready.is_err() { return },
                    () = tokio::time::sleep(left) => return,
                    () = self.shutdown.cancelled() => return,
                    () = self.registration.close.notified() => return,
                }
            }
        }
    }

    /// Serves requests on `stream` until the connection closes, turns into a tunnel, or has been
    /// idle for [`PARK_AFTER`] (then hyper hands the stream back, with any bytes it read ahead).
    async fn serve_until_idle<IO, S>(
        &self,
        stream: Prefixed<WireGuard<Prefixed<IO>>>,
        builder: &hyper::server::conn::http1::Builder,
        service: S,
    ) -> Cycle<Prefixed<WireGuard<Prefixed<IO>>>>
    where
        IO: AsyncRead + AsyncWrite + Park + Unpin + Send + 'static,
        S: hyper::service::HttpService<hyper::body::Incoming> + Unpin + Send + 'static,
        S::Future: Unpin + Send + 'static,
        S::ResBody: 'static,
        <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut hyper = builder.serve_connection(TokioIo::new(stream), service);
        let timer = tokio::time::sleep(PARK_AFTER.min(self.timers.keepalive));
        tokio::pin!(timer);
        let mut draining = false;
        let mut parking = false;
        let outcome = loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| hyper.poll_without_shutdown(cx)) => break result,
                () = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    std::pin::Pin::new(&mut hyper).graceful_shutdown();
                }
                () = self.registration.close.notified(), if !draining => {
                    draining = true;
                    std::pin::Pin::new(&mut hyper).graceful_shutdown();
                }
                () = &mut timer => match self.tick(timer.as_mut(), !draining && !parking) {
                    Tick::Stalled => {
                        tracing::debug!("the client took no response data within send_timeout: connection closed");
                        return Cycle::Done;
                    }
                    Tick::Drain if !draining => {
                        draining = true;
                        std::pin::Pin::new(&mut hyper).graceful_shutdown();
                    }
                    Tick::Park => {
                        parking = true;
                        std::pin::Pin::new(&mut hyper).graceful_shutdown();
                        timer.as_mut().reset(Instant::now() + self.timers.send);
                    }
                    _ => {}
                },
            }
        };
        if let Err(error) = outcome {
            tracing::debug!(%error, "connection ended with an error");
            return Cycle::Done;
        }
        let parts = hyper.into_parts();
        let mut stream = parts.io.into_inner();
        stream.unread(parts.read_buf);
        // A protocol switch: the client's side of the tunnel is this very stream.
        if let Some(tunnel) = self.ctx.take_tunnel() {
            return Cycle::Tunnel(stream, tunnel);
        }
        if draining || !parking {
            // Done without our asking: the client closed, or asked to.
            return Cycle::Done;
        }
        Cycle::Idle(stream)
    }
}

/// How a stretch of serving ended.
enum Cycle<S> {
    /// The connection is over.
    Done,
    /// It idled: hyper handed the stream back.
    Idle(S),
    /// It switched protocols: run the tunnel on the stream.
    Tunnel(S, crate::pipeline::Tunnel),
}

/// hyper's graceful shutdown, for the HTTP/2 connection future.
pub trait GracefulShutdown {
    /// Starts a graceful shutdown.
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
