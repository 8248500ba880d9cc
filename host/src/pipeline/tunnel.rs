//! A protocol switch (a WebSocket through an upstream): once the server answered 101, the
//! client's connection and the server's are joined and bytes copied both ways until either
//! side closes. The connection's slot is held for as long.

use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::ConnCtx;
use super::session::Outcome;
use crate::body::Body;
use crate::error::HttpError;
use crate::upstream::UpstreamUpgrade;

/// Joins the two sides of a 101 answer; a 101 that cannot be joined becomes a 502.
pub(super) fn join(outcome: &mut Outcome, conn: &ConnCtx) {
    let server = outcome
        .response
        .extensions_mut()
        .remove::<UpstreamUpgrade>()
        .and_then(|u| u.take());
    let client = outcome
        .exchange
        .as_mut()
        .and_then(|ex| ex.request.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let (Some((server, slot)), Some(client)) = (server, client) else {
        tracing::warn!("a 101 Switching Protocols that cannot be joined to the client: 502");
        outcome.response = super::error_response(&HttpError::BadGateway, http::Version::HTTP_11);
        return;
    };
    conn.verdicts.upgrade();
    let in_flight = conn.activity.begin();
    let (done, waiting) = tokio::sync::oneshot::channel::<()>();
    conn.set_tunnel(waiting);
    tokio::spawn(async move {
        let _held = (in_flight, slot, done);
        let (client, server) = tokio::join!(client, server);
        let (Ok(client), Ok(server)) = (client, server) else {
            tracing::debug!("a protocol switch failed before the tunnel opened");
            return;
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(%error, "tunnel closed");
        }
    });
}

/// Whether a response switches protocols.
pub(super) fn is_switch(response: &Response<Body>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
}
