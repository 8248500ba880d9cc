//! A loaded plugin and its instances: compile, instantiate, check out, call with a deadline,
//! check in; a failed call's instance is dropped.

use std::cell::RefCell;
use std::sync::Arc;

use thread_local::ThreadLocal;
use wasmtime::{Store, StoreLimitsBuilder};

use super::answers::Answers;
use super::exchange::Exchange;
use super::host_impl::{HostState, PluginInfo};
use super::limit::RateLimit;
use super::memo::ClientMemo;
use super::{bindings, cache, runtime, wasi, wit};
use crate::builtin;
use crate::config::{Isolation, OnError, PluginConfig, PluginSource};
use crate::error::HttpError;
use crate::metrics::{Metrics, PluginCallMetrics};
use crate::sandbox;
use crate::store::SharedStore;
use crate::target::{Route, TargetId};

/// One instance of a plugin, with its store.
pub(super) struct Instance {
    pub(super) store: Store<HostState>,
    pub(super) bindings: bindings::Plugin,
}

/// Why a hook call failed.
#[derive(Debug)]
pub(super) struct Failure {
    /// What went wrong, for the log.
    pub(super) reason: String,
    /// The shared store was unreachable and the plugin's `store_errors` is `closed`.
    pub(super) store_unavailable: bool,
}

impl Failure {
    /// The plugin's own failure.
    pub(super) fn plugin(reason: String) -> Failure {
        Failure {
            reason,
            store_unavailable: false,
        }
    }
}

/// A loaded plugin: compiled code, settings, and its pool of ready instances.
pub(super) struct Plugin {
    pub(super) info: Arc<PluginInfo>,
    pub(super) pre: bindings::PluginPre<HostState>,
    pub(super) config: PluginConfig,
    pub(super) targets: Vec<String>,
    pub(super) ticks: u64,
    /// Ready instances, per event-loop thread: an instance stays on the core that uses it (no lock,
    /// no cache lines bouncing between cores), and all of them go when the plugin is dropped.
    pub(super) pool: ThreadLocal<RefCell<Vec<Instance>>>,
    /// The hooks it has and what it needs, as its `init` said.
    pub(super) caps: wit::Capabilities,
    /// The rate rule its `init` handed the host, applied before its `on-request`.
    pub(super) limit: Option<RateLimit>,
    /// Clients whose `continue` holds (`request.continue-for-client`).
    pub(super) clients: ClientMemo,
    /// What its calls count into.
    calls: PluginCallMetrics,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .finish()
    }
}

impl Plugin {
    pub(super) fn load(
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
                store_errors: config.store_errors,
                metrics: Arc::clone(metrics),
                body_limit,
                output: wasi::OutputBudget::new(&config.name),
                answers: Answers::new(store.kv_budget()),
            }),
            pre,
            config: config.clone(),
            targets: targets.to_vec(),
            ticks: sandbox::deadline_ticks(config.time_limit),
            pool: ThreadLocal::new(),
            caps: wit::Capabilities::empty(),
            limit: None,
            clients: ClientMemo::default(),
            calls: metrics.plugin_calls(&config.name),
        };
        // A first instance proves the config is good and tells what the plugin needs; it is not
        // kept, since instances live on the event-loop threads that use them.
        let (mut first, caps) = plugin.instantiate()?;
        plugin.caps = caps;
        // Every instance's `init` hands over the same rule; the first one's is kept.
        if let Some(rule) = first.store.data_mut().rate_rule.take() {
            plugin.limit = Some(RateLimit::new(rule, &plugin.info)?);
        }
        Ok(plugin)
    }

    pub(super) fn instantiate(&self) -> Result<(Instance, wit::Capabilities), String> {
        let rt = runtime()?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_limit as usize)
            .instances(4)
            .tables(16)
            .table_elements(sandbox::MAX_TABLE_ELEMENTS)
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

    pub(super) fn checkout(&self) -> Result<Instance, Failure> {
        if self.config.isolation == Isolation::Pooled {
            let pool = self.pool.get_or_default();
            if let Some(instance) = pool.borrow_mut().pop() {
                return Ok(instance);
            }
        }
        self.instantiate().map(|(i, _)| i).map_err(Failure::plugin)
    }

    pub(super) fn checkin(&self, instance: Instance) {
        if self.config.isolation == Isolation::Pooled {
            let mut pool = self.pool.get_or_default().borrow_mut();
            if pool.len() < sandbox::POOL_MAX {
                pool.push(instance);
            }
        }
    }

    /// Runs one hook with the exchange moved into the instance's store (swapped with the
    /// placeholder the instance holds between calls, and swapped back after it, whatever happens).
    pub(super) fn call<R>(
        &self,
        which: Hook,
        ex: &mut Box<Exchange>,
        hook: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let started = std::time::Instant::now();
        let metrics = &self.calls;
        metrics.calls[which as usize].inc();
        let result = self.call_timed(which, ex, hook);
        metrics.seconds[which as usize].inc_by(started.elapsed().as_secs_f64());
        result
    }

    fn call_timed<R>(
        &self,
        which: Hook,
        ex: &mut Box<Exchange>,
        hook: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut instance = self.checkout()?;
        let state = instance.store.data_mut();
        std::mem::swap(&mut state.exchange, ex);
        state.in_hook = true;
        state.in_on_request = matches!(which, Hook::Request);
        state.reads.clear();
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
            Err(e) => Err(Failure {
                store_unavailable: e.downcast_ref::<crate::store::Unavailable>().is_some(),
                reason: describe(&e, &self.config),
            }),
        }
    }

    /// Runs a hook the plugin said it has (`init`'s capabilities); others are not called.
    pub(super) fn hook(
        &self,
        which: Hook,
        ex: &mut Box<Exchange>,
        hook: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<()>,
    ) -> Result<(), Failure> {
        if !self.caps.contains(which.capability()) {
            return Ok(());
        }
        self.call(which, ex, hook)
    }

    /// The target a `route` answer names, with its mount point cut from the request's path.
    pub(super) fn route(&self, route: wit::Route, ex: &Exchange) -> Result<Route, String> {
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

    pub(super) fn applies_to(&self, ex: &Exchange) -> bool {
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
    pub(super) fn failed(&self, which: Hook, failure: &Failure) -> Result<(), HttpError> {
        let hook = which.name();
        if failure.store_unavailable {
            // Logged once by the store; the plugin asked to fail closed.
            return Err(HttpError::ServiceUnavailable);
        }
        tracing::error!(plugin = %self.info.name, hook, reason = %failure.reason, "plugin failed; instance replaced");
        self.info.metrics.plugin_failure(&self.info.name, hook);
        match self.config.on_error {
            OnError::Continue => Ok(()),
            OnError::Fail => Err(HttpError::Internal),
        }
    }
}

/// A plugin's hooks, in the order of [`PluginCallMetrics`]' arrays.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hook {
    Request = 0,
    Response = 1,
    Log = 2,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Request => "on-request",
            Hook::Response => "on-response",
            Hook::Log => "on-log",
        }
    }

    fn capability(self) -> wit::Capabilities {
        match self {
            Hook::Request => wit::Capabilities::ON_REQUEST,
            Hook::Response => wit::Capabilities::ON_RESPONSE,
            Hook::Log => wit::Capabilities::ON_LOG,
        }
    }
}

/// `example.com` matches itself; `*.example.com` matches any name below it (not itself).
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// A trap, in words a user can act on.
pub(super) fn describe(error: &wasmtime::Error, config: &PluginConfig) -> String {
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
