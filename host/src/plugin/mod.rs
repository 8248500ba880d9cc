//! The plugin chain: WebAssembly components run by wasmtime in a sandbox, called at each phase.
//!
//! [`Chain::load`] compiles every `[[plugins]]` entry once (cached on disk), initialises one instance
//! of each with its config, and keeps instances in a pool per plugin. A hook call takes an instance
//! from the pool, moves the request's [`Exchange`] into its store, calls the guest with a deadline
//! (epochs) and a memory ceiling, moves the exchange back, and returns the instance. An instance
//! that traps, panics, times out or runs out of memory is dropped and replaced; the request gets
//! 500 (or the plugin is skipped with `on_error = "continue"`).

mod bindings;
pub mod cache;
mod engine;
mod exchange;
mod host_impl;
mod wasi;

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Response, StatusCode};
use thread_local::ThreadLocal;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::body::Body;
use crate::builtin;
use crate::config::{Isolation, OnError, PluginConfig, PluginSource};
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::sandbox;
use crate::store::SharedStore;
use crate::target::{Route, TargetId};
use bindings::gatehouse::plugin::types as wit;
pub use exchange::Exchange;
use host_impl::{HostState, PluginInfo};

/// Why a plugin could not be loaded; names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{name}`: {message}")]
pub struct LoadError {
    /// The plugin's name.
    pub name: String,
    /// What went wrong (the plugin's own message for a config error).
    pub message: String,
}

/// The process-wide wasmtime engine and linker, and the epoch ticker behind `time_limit`.
struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
}

fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let engine = Engine::new(&engine::engine_config()).map_err(|e| e.to_string())?;
            let mut linker = Linker::new(&engine);
            wasi::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
            bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(|e| e.to_string())?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("gatehouse-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(sandbox::EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(Runtime { engine, linker })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One instance of a plugin, with its store.
struct Instance {
    store: Store<HostState>,
    bindings: bindings::Plugin,
}

/// Why a hook call failed.
#[derive(Debug)]
struct Failure(String);

/// A loaded plugin: compiled code, settings, and its pool of ready instances.
struct Plugin {
    info: Arc<PluginInfo>,
    pre: bindings::PluginPre<HostState>,
    config: PluginConfig,
    targets: Vec<String>,
    ticks: u64,
    /// Ready instances, per event-loop thread: an instance stays on the core that uses it (no lock,
    /// no cache lines bouncing between cores), and all of them go when the plugin is dropped.
    pool: ThreadLocal<RefCell<Vec<Instance>>>,
    /// The hooks it has and what it needs, as its `init` said.
    caps: wit::Capabilities,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .finish()
    }
}

impl Plugin {
    fn load(
        config: &PluginConfig,
        targets: &[String],
        store: &Arc<SharedStore>,
        metrics: &Arc<Metrics>,
        body_limit: u64,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Plugin, String> {
        let rt = runtime()?;
        let wasm: std::borrow::Cow<'static, [u8]> = match &config.source {
            PluginSource::Builtin(name) => builtin::get(name)
                .ok_or_else(|| format!("no built-in plugin named {name:?}"))?
                .into(),
            PluginSource::File(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .into(),
        };
        let component = cache::load_or_compile(&rt.engine, &wasm, cache_dir)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        let pre = rt
            .linker
            .instantiate_pre(&component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| format!("does not fit the gatehouse:plugin world: {e:#}"))?;
        let mut plugin = Plugin {
            info: Arc::new(PluginInfo {
                name: config.name.clone(),
                namespace: config.namespace.clone(),
                store: Arc::clone(store),
                metrics: Arc::clone(metrics),
                body_limit,
                output: wasi::OutputBudget::new(&config.name),
            }),
            pre,
            config: config.clone(),
            targets: targets.to_vec(),
            ticks: sandbox::deadline_ticks(config.time_limit),
            pool: ThreadLocal::new(),
            caps: wit::Capabilities::empty(),
        };
        // A first instance proves the config is good and tells what the plugin needs; it is not
        // kept, since instances live on the event-loop threads that use them.
        let (_, caps) = plugin.instantiate()?;
        plugin.caps = caps;
        Ok(plugin)
    }

    fn instantiate(&self) -> Result<(Instance, wit::Capabilities), String> {
        let rt = runtime()?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_limit as usize)
            .instances(4)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&rt.engine, HostState::new(Arc::clone(&self.info), limits));
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| describe(&e, &self.config))?;
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        // The guest keeps these handles for the instance's life; each stands for the request (or
        // response) of whichever hook runs.
        let caps = bindings
            .call_init(&mut store, &self.config.config_json, &targets)
            .map_err(|e| describe(&e, &self.config))?
            .map_err(|message| format!("config error: {message}"))?;
        Ok((Instance { store, bindings }, caps))
    }

    fn checkout(&self) -> Result<Instance, Failure> {
        if self.config.isolation == Isolation::Pooled {
            let pool = self.pool.get_or_default();
            if let Some(instance) = pool.borrow_mut().pop() {
                return Ok(instance);
            }
        }
        self.instantiate().map(|(i, _)| i).map_err(Failure)
    }

    fn checkin(&self, instance: Instance) {
        if self.config.isolation == Isolation::Pooled {
            let mut pool = self.pool.get_or_default().borrow_mut();
            if pool.len() < sandbox::POOL_MAX {
                pool.push(instance);
            }
        }
    }

    /// Runs one hook with the exchange moved into the instance's store (swapped with the
    /// placeholder the instance holds between calls, and swapped back after it, whatever happens).
    fn call<R>(
        &self,
        ex: &mut Box<Exchange>,
        hook: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut instance = self.checkout()?;
        let state = instance.store.data_mut();
        std::mem::swap(&mut state.exchange, ex);
        state.in_hook = true;
        instance.store.set_epoch_deadline(self.ticks);
        let result = hook(&instance.bindings, &mut instance.store);
        let state = instance.store.data_mut();
        state.in_hook = false;
        std::mem::swap(&mut state.exchange, ex);
        match result {
            Ok(value) => {
                self.checkin(instance);
                Ok(value)
            }
            // The instance may be half-way through anything: it is dropped, never reused.
            Err(e) => Err(Failure(describe(&e, &self.config))),
        }
    }

    /// Runs a hook the plugin said it has (`init`'s capabilities); others are not called.
    fn hook(
        &self,
        has: wit::Capabilities,
        ex: &mut Box<Exchange>,
        hook: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<()>,
    ) -> Result<(), Failure> {
        if !self.caps.contains(has) {
            return Ok(());
        }
        self.call(ex, hook)
    }

    /// The target a `route` answer names, with its mount point cut from the request's path.
    fn route(&self, route: wit::Route, ex: &Exchange) -> Result<Route, String> {
        let position = route.target as usize;
        let target = TargetId::at(position, self.targets.len()).ok_or_else(|| {
            format!(
                "routed to target #{position} of the {} configured",
                self.targets.len()
            )
        })?;
        let mount = match route.strip_prefix as usize {
            0 => None,
            n => {
                let path = ex.request.uri.path();
                let mount = path
                    .get(..n)
                    .filter(|m| crate::path::below_mount(path, m).is_some())
                    .ok_or_else(|| {
                        format!("strip-prefix of {n} bytes does not end a segment of {path:?}")
                    })?;
                Some(mount.to_string())
            }
        };
        Ok(Route { target, mount })
    }

    fn applies_to(&self, ex: &Exchange) -> bool {
        let c = &self.config;
        if !c.paths.is_empty() {
            let path = ex.request.uri.path();
            if !c
                .paths
                .iter()
                .any(|p| crate::path::below_mount(path, p.trim_end_matches('/')).is_some())
            {
                return false;
            }
        }
        if !c.hosts.is_empty() {
            let Some(host) = ex.host().map(str::to_ascii_lowercase) else {
                return false;
            };
            if !c.hosts.iter().any(|pattern| host_matches(pattern, &host)) {
                return false;
            }
        }
        true
    }

    /// Logs a failed call and says whether the request goes on.
    fn failed(&self, hook: &'static str, failure: &Failure) -> Result<(), HttpError> {
        tracing::error!(plugin = %self.info.name, hook, reason = %failure.0, "plugin failed; instance replaced");
        self.info.metrics.plugin_failure(&self.info.name, hook);
        match self.config.on_error {
            OnError::Continue => Ok(()),
            OnError::Fail => Err(HttpError::Internal),
        }
    }
}

/// `example.com` matches itself; `*.example.com` matches any name below it (not itself).
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// A trap, in words a user can act on.
fn describe(error: &wasmtime::Error, config: &PluginConfig) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("ran longer than its time_limit ({:?})", config.time_limit)
        }
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "trapped (a panic or abort in the plugin; its message, if any, is logged above)".into()
        }
        _ => {
            let text = format!("{error:#}");
            if text.contains("forcing trap when growing memory") {
                format!(
                    "ran out of memory (memory_limit {} bytes)",
                    config.memory_limit
                )
            } else {
                text
            }
        }
    }
}

/// Which plugins' `on-request` ran for a request (bit i: plugin i), so `on-response` and `on-log`
/// run for exactly those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran(u64);

impl Ran {
    fn set(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    fn clear(&mut self, i: usize) {
        self.0 &= !(1 << i);
    }

    fn has(self, i: usize) -> bool {
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
    next: usize,
    /// The route a plugin chose so far.
    route: Option<Route>,
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
}

/// The loaded chain of a configuration.
#[derive(Debug)]
pub struct Chain {
    plugins: Vec<Plugin>,
    store: Arc<SharedStore>,
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
            config.server.limits.body_buffer_size,
            config.server.plugin_cache_dir.as_deref(),
        )
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
        let client = ex.client.map(|a| host_impl::wit_ip(a.ip()));
        while let Some(plugin) = self.plugins.get(progress.next) {
            let i = progress.next;
            if !plugin.applies_to(ex) {
                progress.next += 1;
                continue;
            }
            if plugin.caps.contains(wit::Capabilities::REQUEST_BODY) && ex.body.is_none() {
                return Ok(Decision::ReadBody);
            }
            progress.next += 1;
            progress.ran.set(i);
            if !plugin.caps.contains(wit::Capabilities::ON_REQUEST) {
                continue;
            }
            let head = plugin
                .caps
                .contains(wit::Capabilities::REQUEST_HEAD)
                .then(|| ex.head());
            let action = plugin.call(ex, |b, store| {
                // Only a response given during this very call counts (not one from another hook).
                store.data_mut().local = None;
                let action = b.call_on_request(
                    &mut *store,
                    head.as_ref().map(host_impl::lent_head),
                    client,
                )?;
                Ok((action, store.data_mut().local.take()))
            });
            let answer = match action {
                Ok((wit::Action::Continue, _)) => Ok(None),
                Ok((wit::Action::Route(route), _)) => plugin.route(route, ex).map(|r| {
                    progress.route = Some(r);
                    None
                }),
                Ok((wit::Action::Respond, local)) => local
                    .ok_or_else(|| "answered `respond` without calling `request.respond`".into())
                    .and_then(local_response)
                    .map(Some),
                Err(failure) => Err(failure.0),
            };
            match answer {
                Ok(None) => {}
                Ok(Some(response)) => return Ok(Decision::Respond(response)),
                // A failed plugin gets no on-response for this request.
                Err(reason) => {
                    progress.ran.clear(i);
                    plugin.failed("on-request", &Failure(reason))?;
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
            if !ran.has(i) {
                continue;
            }
            let outcome = plugin.hook(wit::Capabilities::ON_RESPONSE, ex, |b, store| {
                b.call_on_response(&mut *store)
            });
            if let Err(failure) = outcome {
                plugin.failed("on-response", &failure)?;
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
            let outcome = plugin.hook(wit::Capabilities::ON_LOG, ex, |b, store| {
                b.call_on_log(&mut *store, wit_entry.clone())
            });
            if let Err(failure) = outcome {
                let _ = plugin.failed("on-log", &failure);
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
fn local_response(local: wit::LocalResponse) -> Result<Response<Body>, String> {
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
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    let headers = response.headers_mut();
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
    *response.body_mut() = Body::full(Bytes::from(local.body));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn host_patterns() {
        assert!(host_matches("example.com", "example.com"));
        assert!(!host_matches("example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
    }
}
