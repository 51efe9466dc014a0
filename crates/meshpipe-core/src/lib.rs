//! meshpipe-core: the data plane engine of meshpipe, as a plain Rust library.
//!
//! It accepts TCP connections, works out where each one goes (a fixed forward
//! or the original destination of a redirected socket), detects what it
//! carries (HTTP/1, HTTP/2, TLS, or opaque bytes, with a bounded buffer and a
//! timeout that never loses a byte), and forwards it with `splice(2)`. It
//! knows nothing about Node.js: `meshpipe-node` wraps it for JavaScript, and
//! the tests drive it directly.
//!
//! Start here: [`Engine::start`] binds every listener of an [`EngineConfig`]
//! and spawns the accept loops on the current tokio runtime. ARCHITECTURE.md at
//! the repository root walks a connection through the modules.

#![deny(unsafe_code)]

pub mod addr;
pub mod config;
pub mod conn;
pub mod copy;
pub mod detect;
pub mod drain;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server_first;
pub mod socket;
mod sys;
pub mod target;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use config::{EngineConfig, EngineSpec};
pub use drain::CloseSummary;
pub use policy::{PolicySpec, PolicyTable};

use listener::ListenerCtx;
use proxy::Context;

/// Errors from starting or reconfiguring an engine. Each has a stable code
/// (see [`EngineError::code`]) that the Node binding passes to JavaScript.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("invalid policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("{0}")]
    Listen(#[from] listener::ListenError),
}

impl EngineError {
    /// A stable identifier for scripts and the TypeScript layer.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Config(_) => "ERR_INVALID_CONFIG",
            EngineError::Policy(_) => "ERR_POLICY",
            EngineError::Listen(listener::ListenError::AddrInUse { .. }) => "ERR_ADDR_IN_USE",
            EngineError::Listen(listener::ListenError::AddrNotAvailable { .. }) => "ERR_ADDR_NOT_AVAILABLE",
            EngineError::Listen(listener::ListenError::Permission { .. }) => "ERR_PERMISSION",
            EngineError::Listen(listener::ListenError::Other { .. }) => "ERR_BIND",
        }
    }
}

/// One bound listener, as reported by `start`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoundListener {
    pub name: String,
    pub bind: String,
    pub direction: &'static str,
}

/// A running engine. Dropping it without `close` stops the accept loops; the
/// runtime that owns the tasks decides what happens to open connections.
pub struct Engine {
    ctx: Arc<Context>,
    listeners: Vec<Arc<ListenerCtx>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The accept loops run on runtimes the engine does not own: without
        // this they would keep accepting after the handle is gone.
        self.stop_all();
    }
}

/// Options that are not part of the user-facing config.
#[derive(Default)]
pub struct EngineHooks {
    /// Called once per newly learned server-first target, with its address.
    pub on_learned: Option<proxy::LearnedHook>,
}

impl Engine {
    /// Binds every listener (all or nothing) and starts accepting on the
    /// current tokio runtime.
    pub async fn start(config: EngineConfig, hooks: EngineHooks) -> Result<Engine, EngineError> {
        Self::start_on(config, hooks, &[tokio::runtime::Handle::current()])
    }

    /// Binds every listener (all or nothing) and starts one accept loop per
    /// listener on each of `workers`. With one single-threaded runtime per
    /// core (what the Node binding does), a connection lives its whole life on
    /// the thread that accepted it: no cross-thread wake-ups on the data path,
    /// which on a busy 2-core machine is worth more than work stealing.
    pub fn start_on(config: EngineConfig, hooks: EngineHooks, workers: &[tokio::runtime::Handle]) -> Result<Engine, EngineError> {
        let _ = socket::raise_fd_limit();
        let drain = drain::Drain::default();
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            // An early return drops the listeners bound so far: all or nothing.
            bound.push(listener::bind(l, &drain.stop_accepting, workers.len())?);
        }
        let ctx = Arc::new(Context {
            policy: ArcSwap::from_pointee(config.policy),
            metrics: metrics::Metrics::new(config.max_metric_targets),
            conns: conn::ConnRegistry::default(),
            server_first: server_first::ServerFirstCache::new(config.detect.server_first_capacity, config.detect.server_first_ttl),
            detect: config.detect,
            connect_timeout: config.connect_timeout,
            copy: config.copy,
            drain,
            on_learned: hooks.on_learned,
        });
        let limit = (config.max_connections > 0).then(|| Arc::new(Semaphore::new(config.max_connections)));
        let mut listeners = Vec::with_capacity(bound.len());
        for (sockets, l) in bound {
            listeners.push(l.clone());
            // One socket per worker, in order: see `listener::bind`.
            for (shard, (socket, worker)) in sockets.into_iter().zip(workers).enumerate() {
                worker.spawn(listener::accept_loop(ctx.clone(), l.clone(), socket, shard, limit.clone()));
            }
        }
        Ok(Engine { ctx, listeners })
    }

    /// The bound address of every listener, in config order.
    pub fn bound(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .map(|l| BoundListener { name: l.name.to_string(), bind: l.local.to_string(), direction: l.direction.as_str() })
            .collect()
    }

    /// Stops the named listeners from accepting (open connections go on).
    /// Returns the names that matched no listener.
    pub fn stop_accepting(&self, names: &[String]) -> Vec<String> {
        let mut unknown = Vec::new();
        for name in names {
            match self.listeners.iter().find(|l| &*l.name == name.as_str()) {
                Some(l) => l.stop_now(),
                None => unknown.push(name.clone()),
            }
        }
        unknown
    }

    /// Stops every listener at once (new connections are refused from here on).
    pub fn stop_all(&self) {
        for l in &self.listeners {
            l.stop_now();
        }
    }

    /// Stops accepting everywhere, lets open connections finish for up to
    /// `deadline`, then cuts the rest.
    pub async fn close(&self, deadline: Duration) -> CloseSummary {
        self.stop_all();
        let ctx = self.ctx.clone();
        self.ctx.drain.close(deadline, move || ctx.conns.len()).await
    }

    /// Swaps in a new policy table; connections already open are untouched.
    pub fn set_policy(&self, spec: &PolicySpec) -> Result<u64, EngineError> {
        let table = PolicyTable::compile(spec)?;
        let generation = table.generation();
        self.ctx.policy.store(Arc::new(table));
        Ok(generation)
    }

    /// Every counter, read once.
    pub fn snapshot(&self) -> Snapshot {
        let m = &self.ctx.metrics;
        let (detect, detect_duration_ms) = m.snapshot_detect();
        Snapshot {
            uptime_ms: m.uptime().as_millis() as u64,
            policy_generation: self.ctx.policy.load().generation(),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerSnapshot {
                    name: l.name.to_string(),
                    bind: l.local.to_string(),
                    direction: l.direction.as_str(),
                    accepted: l.accepted.load(Relaxed),
                    open: l.open.load(Relaxed),
                    accept_errors: l.accept_errors.load(Relaxed),
                    limit_waits: l.limit_waits.load(Relaxed),
                    accepting: l.accepting(),
                })
                .collect(),
            tcp: m.snapshot_tcp(),
            detect,
            detect_duration_ms,
            server_first: ServerFirstSnapshot { targets: self.ctx.server_first.snapshot() },
            errors: ErrorsSnapshot {
                connect_failed: m.errors.connect_failed.load(Relaxed),
                loop_refused: m.errors.loop_refused.load(Relaxed),
                original_dst_failed: m.errors.original_dst_failed.load(Relaxed),
            },
        }
    }

    /// Up to `limit` live connections, oldest first.
    pub fn connections(&self, limit: usize) -> Vec<conn::ConnSnapshot> {
        self.ctx.conns.snapshot(limit)
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSnapshot {
    pub name: String,
    pub bind: String,
    pub direction: &'static str,
    pub accepted: u64,
    pub open: u64,
    pub accept_errors: u64,
    pub limit_waits: u64,
    pub accepting: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFirstSnapshot {
    pub targets: Vec<server_first::LearnedTarget>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorsSnapshot {
    pub connect_failed: u64,
    pub loop_refused: u64,
    pub original_dst_failed: u64,
}

/// Everything the engine counts, for one scrape.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub policy_generation: u64,
    pub listeners: Vec<ListenerSnapshot>,
    pub tcp: Vec<metrics::TcpSnapshot>,
    pub detect: Vec<metrics::DetectSnapshot>,
    pub detect_duration_ms: Vec<metrics::DetectDurationSnapshot>,
    pub server_first: ServerFirstSnapshot,
    pub errors: ErrorsSnapshot,
}
