//! The admin listener (`[admin] listen`, off unless configured, meant for localhost or a private
//! network): `/healthz` (the process answers), `/readyz` (every target can serve: workers up,
//! an upstream server up; plugins are loaded, or there would be no gateway) and `/metrics`.
//! It bypasses the plugin chain and the access log.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::SharedGateway;
use crate::pipeline::Gateway;

/// Serves one admin connection (HTTP/1.1) until it closes, holding one admin slot.
pub async fn serve<I>(io: I, gateway: SharedGateway, _slot: tokio::sync::OwnedSemaphorePermit)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let gateway = gateway.load_full();
        async move { Ok::<_, Infallible>(answer(&req, &gateway)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service);
    // Short-lived by design: a health probe or a scrape, not a keep-alive session.
    match tokio::time::timeout(std::time::Duration::from_secs(60), conn).await {
        Ok(Err(error)) => tracing::debug!(%error, "admin connection ended with an error"),
        Err(_) => tracing::debug!("admin connection closed after 60 s"),
        Ok(Ok(())) => {}
    }
}

fn answer<B>(req: &Request<B>, gateway: &Gateway) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let mut ready = true;
            let mut report = String::new();
            for (name, target) in gateway.targets.iter() {
                let (mark, what) = match target.readiness() {
                    Ok(what) => ("ok", what),
                    Err(what) => {
                        ready = false;
                        ("NOT READY", what)
                    }
                };
                report.push_str(&format!("{name}: {mark} ({what})\n"));
            }
            report.push_str(&format!(
                "plugins: ok ({} loaded)\n",
                gateway.plugins.plugin_count()
            ));
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, report)
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "the admin listener serves /healthz, /readyz and /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
