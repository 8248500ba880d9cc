//! Active health checks: every `interval`, a GET of `path` to each server; `fails` bad answers in
//! a row take a server out, `passes` good ones bring it back. Runs on the background runtime until
//! the target is dropped (a reload replaces it).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::connect::Connector;
use super::server::Server;
use crate::config::HealthCheck;

/// Starts the checks; they stop when the returned guard drops.
pub fn start(
    target: &str,
    servers: &[Arc<Server>],
    connectors: &[Connector],
    check: &HealthCheck,
    http2: bool,
) -> Result<DropGuard, String> {
    let token = CancellationToken::new();
    let guard = token.clone().drop_guard();
    let (target, servers, connectors, check) = (
        target.to_string(),
        servers.to_vec(),
        connectors.to_vec(),
        check.clone(),
    );
    crate::background::spawn(async move {
        let clients: Vec<Client<Connector, Empty<Bytes>>> = connectors
            .into_iter()
            .map(|connector| {
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(0)
                    .http2_only(http2)
                    .set_host(false)
                    .build(connector)
            })
            .collect();
        let mut interval = tokio::time::interval(check.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = interval.tick() => {}
            }
            let probes = servers.iter().zip(&clients).map(|(server, client)| {
                let check = &check;
                async move {
                    let ok = probe(client, server, check).await;
                    (server, ok)
                }
            });
            for (server, result) in futures_util::future::join_all(probes).await {
                let ok = result.is_ok();
                match server.checked(ok, check.fails, check.passes) {
                    Some(true) => {
                        tracing::info!(target = %target, server = %server.label, "upstream server passed its health checks: back in")
                    }
                    Some(false) => {
                        tracing::warn!(target = %target, server = %server.label, reason = %result.err().unwrap_or_default(), "upstream server failed its health checks: left out")
                    }
                    None => {}
                }
            }
        }
    })?;
    Ok(guard)
}

async fn probe(
    client: &Client<Connector, Empty<Bytes>>,
    server: &Server,
    check: &HealthCheck,
) -> Result<(), String> {
    let host = super::host_of(&server.endpoint);
    let request = http::Request::get(format!("http://{host}{}", check.path))
        .header(http::header::HOST, &host)
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(check.timeout, client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if (check.expect.0..=check.expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
