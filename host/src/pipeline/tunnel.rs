//! A protocol switch (a WebSocket through an upstream): once the server answered 101, the
//! client's connection and the server's are joined and bytes copied both ways until either
//! side closes. The connection's task runs it, so the connection's slot is held for as long.

use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Outcome;
use super::{ConnCtx, RequestGuard};
use crate::body::Body;
use crate::error::HttpError;
use crate::upstream::UpstreamUpgrade;

/// A 101 sent to the client, waiting for the connection to hand over its stream.
pub struct Tunnel {
    server: hyper::upgrade::OnUpgrade,
    _slot: Box<dyn std::any::Any + Send>,
    _in_flight: RequestGuard,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Copies bytes between `client` (the connection, once hyper is done with it) and the server
    /// until either closes.
    pub async fn run<S>(self, client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server = match self.server.await {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!(%error, "the server's side of a protocol switch failed");
                return;
            }
        };
        let (mut client, mut server) = (client, TokioIo::new(server));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(%error, "tunnel closed");
        }
    }
}

/// Prepares the tunnel of a 101 answer for the connection to run once the 101 is sent; a 101
/// that cannot be joined becomes a 502.
pub(super) fn join(outcome: &mut Outcome, conn: &ConnCtx) {
    let server = outcome
        .response
        .extensions_mut()
        .remove::<UpstreamUpgrade>()
        .and_then(|u| u.take());
    let Some((server, slot)) = server else {
        tracing::warn!("a 101 Switching Protocols without a server side to join: 502");
        outcome.response = super::error_response(&HttpError::BadGateway, http::Version::HTTP_11);
        return;
    };
    conn.verdicts.upgrade();
    conn.set_tunnel(Tunnel {
        server,
        _slot: Box::new(slot),
        _in_flight: conn.activity.begin(),
    });
}

/// Whether a response switches protocols.
pub(super) fn is_switch(response: &Response<Body>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
}
