//! The chain of one configuration: the hooks in order, and what they decided.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Response, StatusCode};

use super::exchange::Exchange;
use super::instance::{Failure, Hook, Plugin};
use super::limit::Limit;
use super::{LoadError, host_impl, wit};
use crate::body::Body;
use crate::config::PluginConfig;
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::sandbox;
use crate::store::SharedStore;
use crate::target::Route;

/// Which plugins' `on-request` ran for a request (bit i: plugin i), so `on-response` and `on-log`
/// run for exactly those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran(u64);

impl Ran {
    pub(super) fn set(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    pub(super) fn clear(&mut self, i: usize) {
        self.0 &= !(1 << i);
    }

    pub(super) fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// How far `on-request` has got through the chain for one request: the chain stops before a
/// plugin that needs the body until the pipeline has read it, then goes on from there.
#[derive(Debug, Default)]
pub struct Progress {
    /// The plugins whose `on-request` ran (and so get `on-response` and `on-log`).
    pub ran: Ran,
    /// The next plugin to consider.
    pub(super) next: usize,
    /// The route a plugin chose so far.
    pub(super) route: Option<Route>,
    /// How many times the request has waited (`request.wait-for`).
    pub(super) waits: u8,
    /// The plugins whose rate rule has taken from this request (a plugin that waits is called
    /// again, its rule is not applied again).
    pub(super) limited: Ran,
    /// The plugins that asked this request to wait (their next call is owed, not memoized).
    pub(super) waited: Ran,
}

/// What the chain decided for a request.
#[derive(Debug)]
pub enum Decision {
    /// Serve from a target: the one a plugin chose, or (`None`) the default.
    Serve(Option<Route>),
    /// Answer with this response (a plugin's local response).
    Respond(Response<Body>),
    /// The next plugin needs the request body: read it into the exchange and call
    /// [`Chain::on_request`] again.
    ReadBody,
    /// A plugin asked the request to wait (request collapsing): wait, then call
    /// [`Chain::on_request`] again, which calls that plugin again.
    Wait(crate::store::Waiter),
}

/// The loaded chain of a configuration.
#[derive(Debug)]
pub struct Chain {
    pub(super) plugins: Vec<Plugin>,
    pub(super) store: Arc<SharedStore>,
}

impl Chain {
    /// Loads and initialises every plugin of the chain, or says which one failed and why.
    pub fn load(
        configs: &[PluginConfig],
        targets: &[String],
        store: Arc<SharedStore>,
        metrics: &Arc<Metrics>,
        body_limit: u64,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Chain, LoadError> {
        if let Some(extra) = configs.get(crate::config::MAX_CHAIN) {
            return Err(LoadError {
                name: extra.name.clone(),
                message: format!("a chain holds at most {} plugins", crate::config::MAX_CHAIN),
            });
        }
        let plugins = configs
            .iter()
            .map(|c| {
                Plugin::load(c, targets, &store, metrics, body_limit, cache_dir).map_err(
                    |message| LoadError {
                        name: c.name.clone(),
                        message,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain { plugins, store })
    }

    /// The chain of a validated config (`[[plugins]]`, with its targets and limits).
    pub fn for_config(
        config: &crate::config::Config,
        store: Arc<SharedStore>,
        metrics: &Arc<Metrics>,
    ) -> Result<Chain, LoadError> {
        // In the order `Targets::build` numbers them: a route's position is its target's.
        let targets: Vec<String> = config.targets.keys().cloned().collect();
        Chain::load(
            &config.plugins,
            &targets,
            store,
            metrics,
            config.server.limits.plugin_body_size,
            config.server.plugin_cache_dir.as_deref(),
        )
    }

    /// How many plugins the chain has.
    pub fn plugin_count(&self) -> usize {
        self.plugins.len()
    }

    /// The key-value store and counters (kept across reloads).
    pub fn store(&self) -> &Arc<SharedStore> {
        &self.store
    }

    /// Runs `on-request` in order until a plugin answers, or until a plugin that needs the body
    /// is next while the body is unread.
    pub fn on_request(
        &self,
        ex: &mut Box<Exchange>,
        progress: &mut Progress,
    ) -> Result<Decision, HttpError> {
        // Plugins cannot change the client's address; the head they can, so it is taken per call.
        let client = ex.client.map(host_impl::wit_ip);
        while let Some(plugin) = self.plugins.get(progress.next) {
            let i = progress.next;
            if !plugin.applies_to(ex) {
                progress.next += 1;
                continue;
            }
            // The plugin's rate rule, applied by the host before any body is read, once (not again
            // after a wait or the body). A refusal runs none of the plugin's hooks.
            if let Some(limit) = &plugin.limit
                && !progress.limited.has(i)
            {
                progress.limited.set(i);
                match limit.apply(ex, &plugin.info)? {
                    Limit::Pass(mut fields) => ex.stage_response_fields(i, &mut fields),
                    Limit::Refuse(response) => return Ok(Decision::Respond(response)),
                }
            }
            // A `continue` the plugin said holds for this client (not for the call a wait owes).
            if !progress.waited.has(i) && plugin.clients.holds(ex.client, std::time::Instant::now) {
                progress.ran.set(i);
                progress.next += 1;
                continue;
            }
            if plugin.caps.contains(wit::Capabilities::REQUEST_BODY) && ex.body.is_none() {
                return Ok(Decision::ReadBody);
            }
            progress.next += 1;
            if !plugin.caps.contains(wit::Capabilities::ON_REQUEST) {
                progress.ran.set(i);
                continue;
            }
            // An answer the plugin left with the host: none of its hooks run for this request.
            if progress.waits == 0
                && let Some(mut response) =
                    plugin
                        .info
                        .answers
                        .answer(ex, &self.store, crate::store::now_ms)
            {
                // Its rate rule's fields, as on every response the rule lets through.
                ex.response_fields_onto(i, response.headers_mut());
                return Ok(Decision::Respond(response));
            }
            progress.ran.set(i);
            let head = plugin
                .caps
                .contains(wit::Capabilities::REQUEST_HEAD)
                .then(|| ex.head());
            let action = plugin.call(Hook::Request, ex, |b, store| {
                // Only a response (or answer) given during this very call counts.
                store.data_mut().local = None;
                store.data_mut().offered = None;
                store.data_mut().staged.clear();
                store.data_mut().continue_for_client = None;
                store.data_mut().changed_request = false;
                let action = b.call_on_request(
                    &mut *store,
                    head.as_ref().map(host_impl::lent_head),
                    client,
                )?;
                let data = store.data_mut();
                let staged = std::mem::take(&mut data.staged);
                // A call that changed the request decides more than the client's `continue`.
                let holds = data
                    .continue_for_client
                    .take()
                    .filter(|_| !data.changed_request);
                Ok((
                    action,
                    data.local.take(),
                    data.offered.take(),
                    staged,
                    holds,
                ))
            });
            // Fields for the response count only from a call that succeeded (below).
            let (action, mut staged) = match action {
                Ok((action, local, offered, staged, holds)) => {
                    // Kept only for a plain `continue`: no fields, no wait.
                    if let (wit::Action::Continue, Some(ms)) = (&action, holds)
                        && staged.is_empty()
                        && ex.wait.is_none()
                    {
                        let ttl = Duration::from_millis(u64::from(ms));
                        plugin
                            .clients
                            .keep(ex.client, std::time::Instant::now(), ttl);
                    }
                    (Ok((action, local, offered)), staged)
                }
                Err(failure) => (Err(failure), http::HeaderMap::new()),
            };
            // A wait counts only with `continue`, and only so many times per request.
            let wait = ex.wait.take();
            if let (Ok((wit::Action::Continue, ..)), Some(waiter)) = (&action, wait)
                && progress.waits < sandbox::MAX_WAITS
            {
                progress.waits += 1;
                progress.waited.set(i);
                progress.next = i;
                return Ok(Decision::Wait(waiter));
            }
            let answer = match action {
                Ok((wit::Action::Continue, ..)) => Ok(None),
                Ok((wit::Action::Route(route), ..)) => plugin
                    .route(route, ex)
                    .map(|r| {
                        progress.route = Some(r);
                        None
                    })
                    .map_err(Failure::plugin),
                Ok((wit::Action::Respond, local, offered)) => local
                    .ok_or_else(|| "answered `respond` without calling `request.respond`".into())
                    .and_then(local_response)
                    .map(|response| {
                        if let Some((key, answer)) = offered {
                            // Within the budget (checked when offered); one that no longer
                            // fits beside its URL's other answers is simply not kept.
                            let _ = plugin.info.answers.offer(key, answer);
                        }
                        Some(response)
                    })
                    .map_err(Failure::plugin),
                Err(failure) => Err(failure),
            };
            if answer.is_ok() {
                ex.stage_response_fields(i, &mut staged);
            }
            match answer {
                Ok(None) => {}
                Ok(Some(response)) => return Ok(Decision::Respond(response)),
                // A failed plugin gets no on-response for this request.
                Err(failure) => {
                    progress.ran.clear(i);
                    plugin.failed(Hook::Request, &failure)?;
                }
            }
        }
        Ok(Decision::Serve(progress.route.take()))
    }

    /// Whether a plugin that will see this response wants its body in memory.
    pub fn wants_response_body(&self, ran: Ran) -> bool {
        self.plugins
            .iter()
            .enumerate()
            .any(|(i, p)| ran.has(i) && p.caps.contains(wit::Capabilities::RESPONSE_BODY))
    }

    /// Runs `on-response` in reverse order over the plugins whose `on-request` ran.
    pub fn on_response(&self, ex: &mut Box<Exchange>, ran: Ran) -> Result<(), HttpError> {
        for (i, plugin) in self.plugins.iter().enumerate().rev() {
            // Also a plugin whose own call failed: its rate rule's fields still hold.
            ex.set_response_fields(i);
            if !ran.has(i) {
                continue;
            }
            let outcome = plugin.hook(Hook::Response, ex, |b, store| {
                b.call_on_response(&mut *store)
            });
            if let Err(failure) = outcome {
                plugin.failed(Hook::Response, &failure)?;
            }
        }
        Ok(())
    }

    /// Whether any plugin that ran still wants the log hook.
    pub fn wants_log(&self, ran: Ran) -> bool {
        self.plugins
            .iter()
            .enumerate()
            .any(|(i, p)| ran.has(i) && p.caps.contains(wit::Capabilities::ON_LOG))
    }

    /// Runs `on-log` (in reverse order) once the response is sent; failures are only logged.
    pub fn on_log(&self, ex: &mut Box<Exchange>, ran: Ran, entry: &LogEntry) {
        let wit_entry = wit::LogEntry {
            status: entry.status,
            bytes_sent: entry.bytes_sent,
            duration_us: entry.duration.as_micros() as u64,
            target: entry.target.as_deref(),
        };
        for (i, plugin) in self.plugins.iter().enumerate().rev() {
            if !ran.has(i) {
                continue;
            }
            let outcome = plugin.hook(Hook::Log, ex, |b, store| {
                b.call_on_log(&mut *store, wit_entry.clone())
            });
            if let Err(failure) = outcome {
                let _ = plugin.failed(Hook::Log, &failure);
            }
        }
    }
}

/// What the log phase tells plugins.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes_sent: u64,
    /// From arrival to the last byte.
    pub duration: Duration,
    /// The target that answered.
    pub target: Option<String>,
}

/// A plugin's local response as an HTTP response; a bad status, header or oversized body is the
/// plugin's error.
pub(super) fn local_response(local: wit::LocalResponse) -> Result<Response<Body>, String> {
    let (status, headers, body) = local_parts(local)?;
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A plugin's local response as status, fields (with `content-length`) and body.
pub(super) fn local_parts(
    local: wit::LocalResponse,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let status = StatusCode::from_u16(local.status)
        .map_err(|_| format!("invalid status {}", local.status))?;
    if local.body.len() > sandbox::MAX_PLUGIN_BODY {
        return Err(format!(
            "local response body of {} bytes is larger than the {} bytes a plugin may send",
            local.body.len(),
            sandbox::MAX_PLUGIN_BODY
        ));
    }
    if local.headers.len() > sandbox::MAX_PLUGIN_HEADERS {
        return Err(format!(
            "local response with {} header fields; a plugin may send at most {}",
            local.headers.len(),
            sandbox::MAX_PLUGIN_HEADERS
        ));
    }
    let mut headers = http::HeaderMap::with_capacity(local.headers.len() + 1);
    for h in local.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?} in a local response", h.name))?;
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from(h.value))
            .map_err(|_| "a header value with CR, LF or NUL in a local response".to_string())?;
        headers.append(name, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(local.body.len()));
    Ok((status, headers, Bytes::from(local.body)))
}
