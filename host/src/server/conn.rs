//! One client connection: HTTP/1.1 or HTTP/2 through hyper, the keep-alive timer, graceful close.

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::peer::Peer;
use crate::pipeline::{self, Activity, ConnCtx, PlainListener};
use crate::server::SharedGateway;
use crate::server::idle::Connections;
use crate::server::wire::WireGuard;

/// The hyper connection builder for a set of limits (HTTP/1.1 and HTTP/2 by prior knowledge).
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The wire guard enforces the head timeout; hyper's would also cut idle keep-alive connections.
        .header_read_timeout(None)
        // hyper refuses buffers under 8 KiB; smaller head limits are enforced by the wire guard.
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    builder
}

/// Serves one accepted connection (after its PROXY header and TLS handshake, if any) until it
/// closes, idles out, or shutdown closes it.
pub async fn serve<I>(
    io: I,
    peer: Peer,
    plain: Option<Arc<PlainListener>>,
    gateway: SharedGateway,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Copied out, so an idle keep-alive connection does not keep a reloaded-away gateway alive.
    let limits = gateway.load().limits.clone();
    let keepalive = limits.keepalive_timeout;
    let send_timeout = limits.send_timeout;
    let (io, verdicts) = WireGuard::new(
        io,
        limits.max_header_size,
        Some(limits.header_read_timeout),
        Some(limits.send_timeout),
    );
    let activity = Arc::new(Activity::default());
    let registration = connections.register(Arc::clone(&activity));
    let client = peer.client;
    let ctx = Arc::new(ConnCtx {
        peer,
        verdicts,
        activity: Arc::clone(&activity),
        plain,
        tunnel: std::sync::Mutex::new(None),
    });
    let service_ctx = Arc::clone(&ctx);
    let service =
        service_fn(move |req| pipeline::handle(gateway.load_full(), Arc::clone(&service_ctx), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let mut draining = false;
    // Checked at least every send_timeout: a stalled response must be noticed while requests run.
    let idle_check = tokio::time::sleep(keepalive.min(send_timeout));
    tokio::pin!(idle_check);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client = ?client, %error, "connection ended with an error");
                }
                // A connection that became a tunnel keeps its slot until the tunnel closes.
                if let Some(tunnel) = ctx.take_tunnel() {
                    let _ = tunnel.await;
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // Another client needs the slot (`max_connections`) and this one has been idle longest.
            () = registration.close.notified(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut idle_check => {
                let now = Instant::now();
                // A response the client takes nothing of for send_timeout (an HTTP/2 stream whose
                // window stays shut, say) ends the connection: nothing holds its file or buffers.
                match activity.send_stalled_for() {
                    Some(stalled) if stalled >= send_timeout => {
                        tracing::debug!(client = ?client, "the client took no response data within send_timeout: connection closed");
                        return;
                    }
                    Some(stalled) => {
                        idle_check.as_mut().reset(now + (send_timeout - stalled));
                        continue;
                    }
                    None => {}
                }
                if draining {
                    idle_check.as_mut().reset(now + send_timeout);
                    continue;
                }
                match activity.idle_for(now) {
                    Some(idle) if idle >= keepalive => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(idle) => {
                        idle_check.as_mut().reset(now + (keepalive - idle).min(send_timeout));
                    }
                    // A request runs: look again when a stall could first be noticed.
                    None => idle_check.as_mut().reset(now + keepalive.min(send_timeout)),
                }
            }
        }
    }
}
