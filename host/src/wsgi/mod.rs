//! The `wsgi` target: Python WSGI applications in supervised worker processes (Gunicorn's job).
//!
//! The front buffers each request, builds its environ ([`environ`]), and sends it over a multiplexed
//! socket ([`frame`]) to a worker process ([`pool`]) that embeds CPython ([`worker`]) — the
//! interpreter the user means ([`interpreter`]).

pub mod environ;
pub mod frame;
mod inbox;
pub mod interpreter;
pub mod pool;
pub mod transport;
pub mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use http::Response;
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::config::WsgiConfig;
use crate::error::HttpError;
use crate::peer::Peer;
use crate::request_body::RequestBody;
use interpreter::Interpreter;
use pool::{Pool, PoolConfig, PoolError};

/// The environment variable carrying a worker's [`WorkerSpec`] (JSON).
pub const WORKER_ENV: &str = "GATEHOUSE_WORKER";

/// Everything a worker process needs to know, passed from the front as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// `module:callable` or `module:factory()`.
    pub app: String,
    /// This worker's id (unique per spawn).
    pub worker_id: u32,
    /// The front's socket to connect to.
    pub socket: PathBuf,
    /// Connections to open to it: one per front event loop.
    pub lanes: usize,
    /// Threads serving requests in this worker.
    pub threads: usize,
    /// Worker processes in the pool (for `wsgi.multiprocess`).
    pub workers: usize,
    /// Directory to change to before loading the app (it also goes first on `sys.path`).
    pub chdir: Option<PathBuf>,
    /// Extra `sys.path` entries.
    pub pythonpath: Vec<PathBuf>,
    /// The interpreter whose paths the embedded one takes.
    pub interpreter: Interpreter,
}

/// A WSGI application served by a pool of workers.
#[derive(Debug)]
pub struct WsgiTarget {
    pool: Pool,
    script_name: String,
    workers: usize,
}

/// Why a WSGI target could not start.
#[derive(Debug, thiserror::Error)]
pub enum WsgiError {
    /// No usable Python interpreter.
    #[error(transparent)]
    Interpreter(#[from] interpreter::InterpreterError),
    /// The workers did not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl WsgiTarget {
    /// Finds the interpreter, starts the workers and waits until they have loaded the app; each
    /// worker opens `lanes` connections, one per front event loop.
    pub fn start(
        name: &str,
        config: &WsgiConfig,
        lanes: usize,
        metrics: crate::metrics::WsgiMetrics,
        budget: std::sync::Arc<crate::request_body::BodyBudget>,
    ) -> Result<WsgiTarget, WsgiError> {
        let command = interpreter::choose(config.python.as_deref(), config.virtualenv.as_deref());
        let interpreter = interpreter::probe(&command)?;
        let spec = WorkerSpec {
            app: config.app.clone(),
            worker_id: 0,
            socket: PathBuf::new(),
            lanes: lanes.max(1),
            threads: config.threads,
            workers: config.workers,
            chdir: Some(config.chdir.clone()),
            pythonpath: config.pythonpath.clone(),
            interpreter,
        };
        let pool = Pool::start(PoolConfig {
            name: name.to_string(),
            workers: config.workers,
            timeout: config.timeout,
            queue_timeout: config.queue_timeout,
            prefetch: config.prefetch,
            backlog: config.backlog,
            spec,
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_requests: config.max_requests,
            max_requests_jitter: config.max_requests_jitter,
            graceful_timeout: config.graceful_timeout,
            metrics,
            response_buffer: config.response_buffer,
            response_spool: config.response_spool,
            budget,
        })?;
        let script_name = if config.mount == "/" {
            String::new()
        } else {
            config.mount.clone()
        };
        Ok(WsgiTarget {
            pool,
            script_name,
            workers: config.workers,
        })
    }

    /// Whether at least one worker is up, and how many of how many are.
    pub fn readiness(&self) -> Result<String, String> {
        let (up, of) = (self.pool.live_workers(), self.workers);
        let text = format!("{up} of {of} workers up");
        if up > 0 { Ok(text) } else { Err(text) }
    }

    /// Answers a request through the app.
    pub async fn serve(
        &self,
        req: &Parts,
        body: &RequestBody,
        peer: &Peer,
        mount: Option<&str>,
    ) -> Result<Response<Body>, HttpError> {
        let script_name = mount.unwrap_or(&self.script_name);
        crate::path::below_mount(req.uri.path(), script_name).ok_or(HttpError::NotFound)?;
        let origin = environ::Origin {
            remote_ip: peer.remote.ip,
            remote_port: peer.remote.port,
            local: peer.local,
            scheme: if peer.remote.https { "https" } else { "http" },
            script_name,
            client_subject: peer.client_subject.as_deref(),
        };

        // The request frame is written in one buffer: header space, environ pairs, body.
        let inline = match body {
            RequestBody::Memory(bytes) => bytes.len(),
            RequestBody::Spooled { .. } => 256,
        };
        let mut request = Vec::with_capacity(frame::HEADER_LEN + 1024 + inline);
        request.resize(frame::HEADER_LEN, 0);
        let mut pairs = frame::PairEncoder::new(&mut request);
        environ::write(
            req,
            &origin,
            usize::try_from(body.len()).unwrap_or(usize::MAX),
            &mut pairs,
        );
        pairs.finish();
        match body {
            RequestBody::Memory(bytes) => frame::encode_body(&mut request, Ok(bytes)),
            // The file outlives the request: the pipeline drops it only after the response head, and
            // the worker opens it before calling the app.
            RequestBody::Spooled { file, .. } => frame::encode_body(&mut request, Err(file.path())),
        }
        self.pool.dispatch(request).await
    }
}

/// The server begins to shut down: workers exiting from now on are expected.
pub fn begin_shutdown() {
    pool::begin_shutdown();
}

/// Stops every pool (reloaded-away ones too) and reaps their workers.
pub fn stop_all_pools() {
    pool::stop_all();
}

/// Entry point of the hidden `__worker` subcommand.
pub fn worker_main() -> ExitCode {
    let spec = match std::env::var(WORKER_ENV)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str::<WorkerSpec>(&s).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("gatehouse __worker is started by gatehouse itself ({WORKER_ENV}: {e})");
            return ExitCode::FAILURE;
        }
    };
    worker::main(spec)
}
