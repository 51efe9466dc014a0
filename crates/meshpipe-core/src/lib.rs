//! meshpipe-core: the data plane engine of meshpipe, as a plain Rust library.
//!
//! It accepts TCP connections, works out where each one goes (a fixed forward
//! or the original destination of a redirected socket), detects what it
//! carries (HTTP/1, HTTP/2, TLS, or opaque bytes, with a bounded buffer and a
//! timeout that never loses a byte), and forwards it with `splice(2)`. It
//! knows nothing about Node.js: `meshpipe-node` wraps it for JavaScript, and
//! the tests drive it directly.
//!
//! Start here: [`Engine::new`] takes a validated [`EngineConfig`] (parse an
//! [`EngineSpec`] and `validate` it), [`Engine::start_on`] binds every
//! listener and spawns one accept loop per listener on each worker runtime
//! ([`Engine::start`] does both on the current runtime). ARCHITECTURE.md at
//! the repository root walks a connection through the modules.
//!
//! The types that cross into the Node addon (`EngineSpec`, `PolicySpec`,
//! `Snapshot`, `ConnSnapshot`, `EngineEvent`, `ErrorCode`, ...) derive
//! `ts_rs::TS` with the `ts` feature; `examples/boundary_types.rs` writes
//! them as TypeScript, so they are defined once, here.
//!
//! The pipeline's inner stages (`listener`, `proxy`, `conn`, `drain`,
//! `events`, `loops`, `server_first`, `sweep`, `sys`) are private; what a
//! caller needs from them is re-exported below, as are the counter shapes of
//! `snapshot` (private too, so they keep their crate-root paths). The public
//! modules are the building blocks the binding, the tests, the examples and
//! the fuzz targets use on their own (specs, classifiers, identity and TLS,
//! the transport header, the policy table, the HTTP layer's endpoints table).

#![deny(unsafe_code)]

pub mod addr;
pub mod authz;
pub mod config;
mod conn;
pub mod copy;
pub mod destinations;
pub mod detect;
mod drain;
mod events;
pub mod http;
pub mod identity;
pub mod limits;
mod listener;
pub mod log;
mod loops;
pub mod mesh;
pub mod metrics;
pub mod names;
pub mod policy;
mod proxy;
mod server_first;
mod snapshot;
pub mod socket;
pub mod supervise;
mod sweep;
mod sys;
pub mod target;
pub mod tls;
pub mod transport_header;
pub mod vocab;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

pub use config::{EngineConfig, EngineSpec};
pub use conn::{ConnSnapshot, ConnState};
pub use drain::CloseSummary;
pub use events::EngineEvent;
pub use policy::{PolicyDecision, PolicyDelta, PolicySnapshot, PolicySpec, PolicyTable};
pub use server_first::LearnedTarget;
pub use snapshot::{CopySnapshot, ErrorsSnapshot, FailureCounts, ListenerSnapshot, ServerFirstSnapshot, Snapshot};
pub use vocab::Direction;

use listener::ListenerCtx;
use proxy::Context;

/// The stable error codes the engine (and its Node binding) report. They
/// cross into JavaScript as the `code` of the thrown error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    #[serde(rename = "ERR_INVALID_CONFIG")]
    InvalidConfig,
    #[serde(rename = "ERR_POLICY")]
    Policy,
    #[serde(rename = "ERR_ADDR_IN_USE")]
    AddrInUse,
    #[serde(rename = "ERR_ADDR_NOT_AVAILABLE")]
    AddrNotAvailable,
    #[serde(rename = "ERR_PERMISSION")]
    Permission,
    #[serde(rename = "ERR_BIND")]
    Bind,
    #[serde(rename = "ERR_ALREADY_STARTED")]
    AlreadyStarted,
    #[serde(rename = "ERR_NOT_STARTED")]
    NotStarted,
    #[serde(rename = "ERR_CLOSED")]
    Closed,
    /// Identity material (certificate, key, trust anchors) that cannot be used.
    #[serde(rename = "ERR_IDENTITY")]
    Identity,
    /// Anything the engine did not expect (a thread that cannot start, ...).
    #[serde(rename = "ERR_NATIVE")]
    Native,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidConfig => "ERR_INVALID_CONFIG",
            ErrorCode::Policy => "ERR_POLICY",
            ErrorCode::AddrInUse => "ERR_ADDR_IN_USE",
            ErrorCode::AddrNotAvailable => "ERR_ADDR_NOT_AVAILABLE",
            ErrorCode::Permission => "ERR_PERMISSION",
            ErrorCode::Bind => "ERR_BIND",
            ErrorCode::AlreadyStarted => "ERR_ALREADY_STARTED",
            ErrorCode::NotStarted => "ERR_NOT_STARTED",
            ErrorCode::Closed => "ERR_CLOSED",
            ErrorCode::Identity => "ERR_IDENTITY",
            ErrorCode::Native => "ERR_NATIVE",
        }
    }
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Errors from starting or reconfiguring an engine. Each has a stable
/// [`ErrorCode`] that the Node binding passes to JavaScript.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("invalid policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("{0}")]
    Listen(#[from] listener::ListenError),
    #[error("the engine was already started")]
    AlreadyStarted,
    #[error("invalid engine config: {0}")]
    Loop(#[from] loops::LoopError),
    #[error("invalid engine config: {0}")]
    Limits(#[from] limits::LimitsError),
    #[error("invalid endpoints: {0}")]
    Endpoints(#[from] http::endpoints::EndpointsError),
    #[error("mesh identity: {0}")]
    Identity(String),
}

impl EngineError {
    /// A stable identifier for scripts and the TypeScript layer.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Config(_) => ErrorCode::InvalidConfig,
            EngineError::Policy(_) => ErrorCode::Policy,
            EngineError::Listen(listener::ListenError::AddrInUse { .. }) => ErrorCode::AddrInUse,
            EngineError::Listen(listener::ListenError::AddrNotAvailable { .. }) => ErrorCode::AddrNotAvailable,
            EngineError::Listen(listener::ListenError::Permission { .. }) => ErrorCode::Permission,
            EngineError::Listen(listener::ListenError::Other { .. }) => ErrorCode::Bind,
            EngineError::AlreadyStarted => ErrorCode::AlreadyStarted,
            EngineError::Loop(_) | EngineError::Limits(_) => ErrorCode::InvalidConfig,
            EngineError::Endpoints(_) => ErrorCode::Policy,
            EngineError::Identity(_) => ErrorCode::Identity,
        }
    }
}

/// One bound listener, as reported by `start`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct BoundListener {
    pub name: String,
    /// The bound address, with the real port when 0 was asked for.
    pub bind: String,
    pub direction: Direction,
}

/// An engine: created with its config (nothing bound yet), started once,
/// closed once. Dropping it stops the accept loops; the runtimes that own
/// the connection tasks decide what happens to open connections.
pub struct Engine {
    ctx: Arc<Context>,
    workers: usize,
    /// Listeners whose target is a host name, with its address set (`names.rs`).
    names: Vec<(String, Arc<names::NamedTarget>)>,
    /// The listeners to bind; taken by `start_on`.
    pending: Mutex<Option<Vec<config::ListenerConfig>>>,
    listeners: OnceLock<Vec<Arc<ListenerCtx>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The accept loops run on runtimes the engine does not own: without
        // this they would keep accepting after the handle is gone.
        self.stop_all();
    }
}

impl Engine {
    /// An engine for `config`, not yet listening. Its policy can already be
    /// replaced (`set_policy`), so the first connection sees the real one.
    pub fn new(config: EngineConfig) -> Engine {
        let connector = Arc::new(http::TcpConnector { timeout: config.connect_timeout });
        Engine::with_connector(config, connector)
    }

    /// An engine whose HTTP proxy opens its plaintext upstream connections
    /// through `connector` instead of plain TCP (connections to meshed
    /// endpoints always use mesh TLS, `proxy::connect_mesh`).
    pub fn with_connector(config: EngineConfig, connector: Arc<dyn http::Connector>) -> Engine {
        let drain = drain::Drain::default();
        let ctx = Arc::new(Context {
            http: http::HttpState::new(config.http, connector, drain.clone()),
            policy: policy::Policy::new(config.policy),
            metrics: metrics::Metrics::new(config.max_metric_targets),
            conns: conn::ConnRegistry::default(),
            server_first: server_first::ServerFirstCache::new(config.detect.server_first_capacity, config.detect.server_first_ttl),
            detect: config.detect,
            connect_timeout: config.connect_timeout,
            copy: copy::Shared::new(config.copy, config.limits.bulk_buffers),
            drain,
            events: events::EventQueue::default(),
            inbound: config.inbound,
            limits: limits::Limits::new(
                [config.limits.inbound_connections, config.limits.outbound_connections],
                config.limits.detecting_connections,
                config.limits.fd_reserve,
            ),
            idle_timeout: config.idle_timeout,
            metrics_retain_idle: config.metrics_retain_idle,
            own: OnceLock::new(),
            mesh: mesh::Mesh::new(config.max_metric_targets),
        });
        let names = config
            .listeners
            .iter()
            .filter_map(|l| match &l.target {
                config::Target::Named(n) => Some((l.name.clone(), n.clone())),
                _ => None,
            })
            .collect();
        Engine { ctx, workers: config.workers, names, pending: Mutex::new(Some(config.listeners)), listeners: OnceLock::new() }
    }

    /// How many worker runtimes the engine should run on (the config's
    /// `workers`, or one per core when it said 0).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Creates and starts an engine on the current tokio runtime.
    pub async fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let engine = Engine::new(config);
        engine.start_on(&[tokio::runtime::Handle::current()])?;
        Ok(engine)
    }

    /// Binds every listener (all or nothing) and starts one accept loop per
    /// listener on each of `workers`. With one single-threaded runtime per
    /// core (what the Node binding does), a connection lives its whole life on
    /// the thread that accepted it: no cross-thread wake-ups on the data path,
    /// which on a busy 2-core machine is worth more than work stealing.
    ///
    /// Once bound (and before anything is accepted) a fixed target that
    /// reaches one of the listeners is refused (a forwarding loop), and the
    /// descriptor budget is sized from what is open now (`limits.rs`).
    pub fn start_on(&self, workers: &[tokio::runtime::Handle]) -> Result<Vec<BoundListener>, EngineError> {
        let configs = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or(EngineError::AlreadyStarted)?;
        let _ = socket::raise_fd_limit();
        let mut bound = Vec::with_capacity(configs.len());
        for l in &configs {
            // An early return drops the listeners bound so far: all or nothing.
            bound.push(listener::bind(l, &self.ctx.drain.stop_accepting, workers.len())?);
        }
        let own = loops::OwnAddrs::new(bound.iter().map(|(_, l)| (l.name.clone(), l.local)).collect());
        own.config_loop(&bound.iter().map(|(_, l)| (l.name.clone(), l.target.clone())).collect::<Vec<_>>())?;
        let _ = self.ctx.own.set(own);
        if let Ok((fd_limit, open)) = socket::fd_usage() {
            self.ctx.limits.size_fds(fd_limit, open)?;
        }
        let mut listeners = Vec::with_capacity(bound.len());
        for (sockets, l) in bound {
            listeners.push(l.clone());
            // One socket per worker, in order: see `listener::bind`.
            for (shard, (socket, worker)) in sockets.into_iter().zip(workers).enumerate() {
                worker.spawn(listener::accept_loop(self.ctx.clone(), l.clone(), socket, shard));
            }
        }
        if let Some(worker) = workers.first() {
            sweep::spawn(&self.ctx, worker);
        }
        for worker in workers {
            sweep::spawn_per_worker(&self.ctx, worker);
        }
        let _ = self.listeners.set(listeners);
        Ok(self.bound())
    }

    fn listeners(&self) -> &[Arc<ListenerCtx>] {
        self.listeners.get().map_or(&[], Vec::as_slice)
    }

    /// Whether `start_on` has bound the listeners.
    pub fn started(&self) -> bool {
        self.listeners.get().is_some()
    }

    /// The bound address of every listener, in config order.
    pub fn bound(&self) -> Vec<BoundListener> {
        self.listeners()
            .iter()
            .map(|l| BoundListener { name: l.name.to_string(), bind: l.local.to_string(), direction: l.direction })
            .collect()
    }

    /// Stops the named listeners from accepting (open connections go on).
    /// Returns the names that matched no listener.
    pub fn stop_accepting(&self, names: &[String]) -> Vec<String> {
        let mut unknown = Vec::new();
        for name in names {
            match self.listeners().iter().find(|l| &*l.name == name.as_str()) {
                Some(l) => l.stop_now(),
                None => unknown.push(name.clone()),
            }
        }
        unknown
    }

    /// Stops every listener at once (new connections are refused from here on).
    pub fn stop_all(&self) {
        for l in self.listeners() {
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

    /// Swaps in a new policy table, before or after `start_on`; connections
    /// already open are untouched. Returns the table's generation.
    pub fn set_policy(&self, spec: &PolicySpec) -> Result<u64, EngineError> {
        Ok(self.ctx.policy.replace(spec)?)
    }

    /// Applies a change to the current policy table (all or nothing; refused
    /// unless it applies to the current generation). Returns the new generation.
    pub fn update_policy(&self, delta: &PolicyDelta) -> Result<u64, EngineError> {
        Ok(self.ctx.policy.update(delta)?)
    }

    /// Counts an update that could not even be read (e.g. malformed JSON) as
    /// rejected, so it shows in the snapshot like any other rejection.
    pub fn reject_policy(&self, generation: u64, message: String) {
        self.ctx.policy.reject(generation, message);
    }

    /// What the current table decides for a connection, with the source.
    pub fn explain_policy(&self, direction: Direction, ip: std::net::IpAddr, port: u16) -> PolicyDecision {
        self.ctx.policy.load().explain(direction, ip, port)
    }

    /// Applies an endpoints update (Service address → endpoints, for
    /// per-request balancing) atomically; requests in flight keep their
    /// endpoint. Returns the table's generation. A bad entry refuses the
    /// whole update and keeps the table in force.
    pub fn update_endpoints(&self, update: &http::endpoints::EndpointsUpdate) -> Result<u64, EngineError> {
        Ok(self.ctx.http.endpoints.update(update)?)
    }

    /// Counts an endpoints update that could not even be read as rejected.
    pub fn reject_endpoints(&self, generation: u64, message: String) {
        self.ctx.http.endpoints.reject(generation, message);
    }

    /// The endpoints of `service` in the table in force (explain, tests).
    pub fn endpoints_of(&self, service: std::net::SocketAddr) -> Option<Vec<std::net::SocketAddr>> {
        self.ctx.http.endpoints.load().get(service).map(|e| e.endpoints.clone())
    }

    /// Installs or replaces this proxy's mesh identity from checked
    /// material: connections that start afterwards use it (open ones keep
    /// theirs). Returns the identity's generation and what was installed.
    pub fn set_identity(
        &self,
        material: &identity::material::IdentityMaterial,
    ) -> Result<(u64, identity::material::IdentityInfo), EngineError> {
        self.ctx.mesh.set_identity(material).map_err(|e| EngineError::Identity(e.to_string()))
    }

    /// The mesh identity new connections use, if one is installed.
    pub fn mesh_tls(&self) -> Option<Arc<tls::TlsState>> {
        self.ctx.mesh.tls()
    }

    /// The shared engine state (for stages built outside the pipeline, such
    /// as an HTTP client using `proxy::connect_mesh`).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Replaces the addresses of a listener's named target (the control
    /// layer re-resolved the name); new connections use them, open ones are
    /// untouched. An empty list: the name no longer resolves, and new
    /// connections are refused and counted.
    pub fn set_target_addrs(&self, spec: &names::TargetAddrsSpec) -> Result<(), names::NamesError> {
        let named =
            self.names.iter().find(|(l, _)| *l == spec.listener).ok_or_else(|| names::NamesError::NoSuchListener(spec.listener.clone()))?;
        named.1.set_addrs(&names::parse_addrs(&spec.addrs)?);
        Ok(())
    }

    /// Takes the events queued since the last call, oldest first.
    pub fn take_events(&self) -> Vec<EngineEvent> {
        self.ctx.events.take()
    }

    /// Up to `limit` live connections, oldest first.
    pub fn connections(&self, limit: usize) -> Vec<conn::ConnSnapshot> {
        self.ctx.conns.snapshot(limit)
    }
}
