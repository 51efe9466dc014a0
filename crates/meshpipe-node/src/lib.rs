//! meshpipe-node: the Node.js binding of meshpipe-core, built with napi-rs.
//!
//! Only conversions and thread ownership live here:
//! - **Conversions.** Values cross as JSON text: the TypeScript layer passes
//!   `JSON.stringify` of a generated type (ts/engine/boundary.ts, from the
//!   Rust types) and parses what comes back. JSON text has no size or node
//!   limit, `JSON.parse` is the fastest way V8 builds large object graphs,
//!   and serde does the typed half here. Errors are thrown with the engine's
//!   [`ErrorCode`] as the JavaScript error's `code` and a message naming what
//!   was wrong.
//! - **Threads.** Each `NativeProxy` owns its workers: one single-threaded
//!   tokio runtime per thread (as many as the engine asks for), each
//!   accepting from its own listening socket, so a connection stays on one
//!   thread for its whole life and the data path never shares threads with
//!   the JavaScript event loop or calls into it.
//!
//! Nothing here holds a reference on the event loop while the proxy merely
//! runs: the TypeScript layer decides what keeps the process alive. The
//! runtime is shut down on the JavaScript thread once `close()` has drained,
//! or when the Node environment is torn down (an env cleanup hook), so a
//! process never hangs on engine threads at exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpipe_core::policy::{Direction, PolicyTable};
use meshpipe_core::{Engine, EngineSpec, ErrorCode, PolicyDelta, PolicySpec};
use napi::bindgen_prelude::*;
use napi_derive::napi;

/// napi's `Result` with the engine's error codes as the thrown `code`.
type Fallible<T> = Result<T, ErrorCode>;

fn fail(code: ErrorCode, msg: impl std::fmt::Display) -> Error<ErrorCode> {
    Error::new(code, msg.to_string())
}

fn engine_error(e: meshpipe_core::EngineError) -> Error<ErrorCode> {
    fail(e.code(), e)
}

fn to_json<T: serde::Serialize>(value: &T) -> Fallible<String> {
    serde_json::to_string(value).map_err(|e| fail(ErrorCode::Native, e))
}

/// The engine's worker threads, each driving one current-thread runtime
/// until its shutdown signal fires.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn new(count: usize) -> std::io::Result<Workers> {
        let mut w = Workers { handles: Vec::new(), stop: Vec::new(), threads: Vec::new() };
        for i in 0..count {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stop.push(tx);
            w.threads.push(std::thread::Builder::new().name(format!("meshpipe-worker-{i}")).spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
                // Connections still running were cut by close(); anything
                // left (an unclosed proxy) is dropped here.
                rt.shutdown_timeout(Duration::from_millis(200));
            })?);
        }
        Ok(w)
    }

    /// Signals every worker and joins its thread. Must not run on a worker.
    fn shutdown(self) {
        drop(self.stop);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Inner {
    engine: Arc<Engine>,
    runtime: Mutex<Option<Workers>>,
    /// Set by the first `close()`: later calls are refused.
    closing: AtomicBool,
}

impl Inner {
    fn shutdown_runtime(&self) {
        let workers = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(workers) = workers {
            workers.shutdown();
        }
    }

    fn started(&self) -> Fallible<&Engine> {
        if !self.engine.started() {
            return Err(fail(ErrorCode::NotStarted, "the proxy is not running: call start() first"));
        }
        Ok(&self.engine)
    }
}

/// A proxy engine with its own threads. Every value crosses as JSON text of
/// a type in ts/engine/boundary.ts; errors carry an `ErrorCode` as `code`.
#[napi]
pub struct NativeProxy {
    inner: Arc<Inner>,
}

#[napi]
impl NativeProxy {
    /// Validates `config` (JSON of an `EngineSpec`) and starts the engine's
    /// threads (nothing is bound yet).
    #[napi(constructor)]
    pub fn new(env: Env, config: String) -> Result<Self, ErrorCode> {
        let spec: EngineSpec = serde_json::from_str(&config).map_err(|e| fail(ErrorCode::InvalidConfig, format!("engine config: {e}")))?;
        let config = spec.validate().map_err(|e| fail(ErrorCode::InvalidConfig, e))?;
        let engine = Engine::new(config);
        let runtime =
            Workers::new(engine.workers()).map_err(|e| fail(ErrorCode::Native, format!("cannot start the engine threads: {e}")))?;
        let inner = Arc::new(Inner { engine: Arc::new(engine), runtime: Mutex::new(Some(runtime)), closing: AtomicBool::new(false) });
        // Environment teardown (process exit, worker thread end): stop the
        // engine threads so nothing outlives the environment.
        let weak = Arc::downgrade(&inner);
        env.add_env_cleanup_hook(weak, |weak| {
            if let Some(inner) = weak.upgrade() {
                inner.shutdown_runtime();
            }
        })
        .map_err(|e| fail(ErrorCode::Native, e))?;
        Ok(NativeProxy { inner })
    }

    /// Binds every listener (all or nothing) and starts accepting. Returns
    /// JSON of `BoundListener[]`.
    #[napi]
    pub fn start(&self) -> Result<String, ErrorCode> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(fail(ErrorCode::Closed, "the proxy is closed"));
        }
        let handles = match self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(w) => w.handles.clone(),
            None => return Err(fail(ErrorCode::Closed, "the proxy is closed")),
        };
        let bound = self.inner.engine.start_on(&handles).map_err(engine_error)?;
        to_json(&bound)
    }

    /// Stops the named listeners from accepting; open connections go on.
    /// Returns the names that matched no listener.
    #[napi]
    pub fn stop_accepting(&self, names: Vec<String>) -> Result<Vec<String>, ErrorCode> {
        Ok(self.inner.started()?.stop_accepting(&names))
    }

    /// Stops accepting, drains open connections for up to `drainMs`, cuts the
    /// rest, then stops the engine's threads. Resolves with JSON of a
    /// `CloseSummary`. A second call is refused (await the first one).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn close<'env>(&self, env: &'env Env, drain_ms: u32) -> Result<Object<'env>, ErrorCode> {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return Err(fail(ErrorCode::Closed, "close() is already in progress or done: await the first call's promise"));
        }
        let (deferred, promise) = env.create_deferred::<String, _>().map_err(|e| fail(ErrorCode::Native, e))?;
        let inner = self.inner.clone();
        // The resolver runs on the JavaScript thread, outside the runtime:
        // the one place the runtime may be shut down and joined.
        let finish = |inner: Arc<Inner>, value: String| {
            move |_env: Env| {
                inner.shutdown_runtime();
                Ok(value)
            }
        };
        if !self.inner.engine.started() {
            // Never started: just release the threads.
            deferred.resolve(finish(inner, to_json(&meshpipe_core::CloseSummary::default())?));
            return Ok(promise);
        }
        // Refuse new connections before returning: the drain below is async,
        // but a caller that has called close() must not see its port accept.
        self.inner.engine.stop_all();
        let runtime = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let Some(workers) = runtime.as_ref() else {
            return Err(fail(ErrorCode::Closed, "the proxy is closed"));
        };
        let engine = self.inner.engine.clone();
        workers.handles[0].spawn(async move {
            let summary = engine.close(Duration::from_millis(drain_ms as u64)).await;
            let json = serde_json::to_string(&summary).unwrap_or_else(|_| "{\"drained\":0,\"cut\":0}".into());
            deferred.resolve(finish(inner, json));
        });
        Ok(promise)
    }

    /// Swaps in a whole new policy table (UTF-8 JSON of a `PolicySpec`),
    /// before or after `start()`; new connections only. Returns its
    /// generation. A table that does not parse or validate changes nothing
    /// and is counted as rejected (snapshot `policy`).
    #[napi]
    pub fn set_policy(&self, policy: Uint8Array) -> Result<i64, ErrorCode> {
        let spec: PolicySpec = serde_json::from_slice(&policy).map_err(|e| self.unreadable("policy table", e))?;
        self.inner.engine.set_policy(&spec).map(|g| g as i64).map_err(engine_error)
    }

    /// Applies an endpoints update (UTF-8 JSON of an `EndpointsUpdate`:
    /// Service address -> endpoints, for per-request HTTP balancing), before
    /// or after `start()`: a whole table (`replace`) or a change onto the
    /// generation it names as its `base`, all or nothing. Returns the
    /// table's generation.
    #[napi]
    pub fn update_endpoints(&self, update: Uint8Array) -> Result<i64, ErrorCode> {
        let spec: meshpipe_core::http::endpoints::EndpointsUpdate = serde_json::from_slice(&update).map_err(|e| {
            let message = format!("endpoints update: {e}");
            self.inner.engine.reject_endpoints(0, message.clone());
            fail(ErrorCode::Policy, message)
        })?;
        self.inner.engine.update_endpoints(&spec).map(|g| g as i64).map_err(engine_error)
    }

    /// Installs or replaces the proxy's mesh identity (JSON of a `LoadSpec`
    /// and the three files' bytes, checked as at start): new connections
    /// use it, open ones keep theirs. Before or after `start()`. Returns
    /// JSON of an `IdentityInstalled`; throws `ERR_IDENTITY` naming the file
    /// and the reason (the identity in use stays).
    #[napi]
    pub fn set_identity(&self, spec: String, cert: Buffer, key: Buffer, anchors: Buffer) -> Result<String, ErrorCode> {
        use meshpipe_core::identity::ops;
        let spec: ops::LoadSpec = parse_json("identity", &spec, ErrorCode::InvalidConfig)?;
        let material = ops::load(&spec, &cert, &key, &anchors).map_err(identity_error)?;
        let (generation, info) = self.inner.engine.set_identity(&material).map_err(engine_error)?;
        to_json(&meshpipe_core::mesh::IdentityInstalled { generation, info })
    }

    /// Applies a change to the current policy table (UTF-8 JSON of a
    /// `PolicyDelta`): all or nothing, and only to the generation it names
    /// as its base. Returns the new generation.
    #[napi]
    pub fn update_policy(&self, delta: Uint8Array) -> Result<i64, ErrorCode> {
        let delta: PolicyDelta = serde_json::from_slice(&delta).map_err(|e| self.unreadable("policy delta", e))?;
        self.inner.engine.update_policy(&delta).map(|g| g as i64).map_err(engine_error)
    }

    /// What the current policy decides for a connection in `direction` to
    /// `ip`:`port`, with its source: JSON of a `PolicyDecision`.
    #[napi]
    pub fn explain_policy(&self, direction: String, ip: String, port: u32) -> Result<String, ErrorCode> {
        let (direction, ip, port) = lookup_args(&direction, &ip, port)?;
        to_json(&self.inner.engine.explain_policy(direction, ip, port))
    }

    /// Replaces the addresses of a listener's named target (JSON of a
    /// `TargetAddrsSpec`): new connections spread over them.
    #[napi]
    pub fn set_target_addrs(&self, spec: String) -> Result<(), ErrorCode> {
        let spec: meshpipe_core::names::TargetAddrsSpec =
            serde_json::from_str(&spec).map_err(|e| fail(ErrorCode::InvalidConfig, format!("target addresses: {e}")))?;
        self.inner.engine.set_target_addrs(&spec).map_err(|e| fail(ErrorCode::InvalidConfig, e))
    }

    /// Every counter of the engine, read once: JSON of a `Snapshot`.
    #[napi]
    pub fn snapshot(&self) -> Result<String, ErrorCode> {
        to_json(&self.inner.started()?.snapshot())
    }

    /// The failure counters and named targets alone: JSON of `FailureCounts`.
    #[napi]
    pub fn failure_counts(&self) -> Result<String, ErrorCode> {
        to_json(&self.inner.started()?.failure_counts())
    }

    /// Up to `limit` live connections, oldest first: JSON of `ConnSnapshot[]`.
    #[napi]
    pub fn connections(&self, limit: u32) -> Result<String, ErrorCode> {
        to_json(&self.inner.started()?.connections(limit as usize))
    }

    /// Takes the queued engine events: JSON of `EngineEvent[]`.
    #[napi]
    pub fn take_events(&self) -> Result<String, ErrorCode> {
        to_json(&self.inner.engine.take_events())
    }
}

impl NativeProxy {
    /// An update that cannot even be read is a rejected update too.
    fn unreadable(&self, what: &str, e: serde_json::Error) -> Error<ErrorCode> {
        let message = format!("{what}: {e}");
        self.inner.engine.reject_policy(0, message.clone());
        fail(ErrorCode::Policy, message)
    }
}

fn lookup_args(direction: &str, ip: &str, port: u32) -> Fallible<(Direction, std::net::IpAddr, u16)> {
    let direction = match direction {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => return Err(fail(ErrorCode::InvalidConfig, format!("direction {other:?}: expected \"inbound\" or \"outbound\""))),
    };
    let ip = ip.trim().parse().map_err(|_| fail(ErrorCode::InvalidConfig, format!("address {ip:?}: expected an IPv4 or IPv6 address")))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| fail(ErrorCode::InvalidConfig, format!("port {port}: expected 1-65535")))?;
    Ok((direction, ip, port))
}

/// A compiled policy table on its own, with the engine's own lookup: what
/// `meshpipe explain` and tests use, so they answer exactly as the engine
/// would, with no proxy running.
#[napi]
pub struct PolicyLookup {
    table: PolicyTable,
}

#[napi]
impl PolicyLookup {
    /// Compiles a table (UTF-8 JSON of a `PolicySpec`); throws `ERR_POLICY`
    /// naming the bad entry, exactly as the engine would refuse it.
    #[napi(constructor)]
    pub fn new(spec: Uint8Array) -> Result<Self, ErrorCode> {
        let spec: PolicySpec = serde_json::from_slice(&spec).map_err(|e| fail(ErrorCode::Policy, format!("policy table: {e}")))?;
        let table = PolicyTable::compile(&spec).map_err(|e| fail(ErrorCode::Policy, format!("invalid policy: {e}")))?;
        Ok(PolicyLookup { table })
    }

    /// The decision for `direction` to `ip`:`port`: JSON of a `PolicyDecision`
    /// (outbound with the meshed peer, inbound with who may connect).
    #[napi]
    pub fn explain(&self, direction: String, ip: String, port: u32) -> Result<String, ErrorCode> {
        let (direction, ip, port) = lookup_args(&direction, &ip, port)?;
        to_json(&self.table.explain(direction, ip, port))
    }

    /// The table's authorization decision for a client of `port` (its mesh
    /// identity, or none for plaintext, and its address): JSON of a
    /// `DecisionInfo`.
    #[napi]
    pub fn authorize(&self, port: u32, client_identity: Option<String>, client_ip: String) -> Result<String, ErrorCode> {
        let (client, ip, port) = authz_args(port, client_identity, &client_ip)?;
        to_json(&self.table.authorize(port, client.as_ref(), ip))
    }
}

fn authz_args(
    port: u32,
    client_identity: Option<String>,
    client_ip: &str,
) -> Fallible<(Option<meshpipe_core::identity::Identity>, std::net::IpAddr, u16)> {
    let port = u16::try_from(port).map_err(|_| fail(ErrorCode::InvalidConfig, format!("port {port}: expected 0-65535")))?;
    let client =
        client_identity.map(|c| meshpipe_core::identity::Identity::parse(&c)).transpose().map_err(|e| fail(ErrorCode::InvalidConfig, e))?;
    let ip = client_ip
        .trim()
        .parse()
        .map_err(|_| fail(ErrorCode::InvalidConfig, format!("client address {client_ip:?}: expected an IP address")))?;
    Ok((client, ip, port))
}

impl Drop for NativeProxy {
    fn drop(&mut self) {
        // Garbage collection of an unclosed proxy: refuse new connections on
        // every listening socket first (the accept tasks are about to vanish
        // with the runtime), then stop its threads.
        self.inner.engine.stop_all();
        self.inner.shutdown_runtime();
    }
}

/// Installs the engine's log output (pino-shaped JSON lines on `stream`,
/// `"stdout"` or `"stderr"`; `format` `"text"` renders them for a human, the
/// default is `"json"`) with `filter` (RUST_LOG-style directives), or
/// replaces the filter (and format) of the output already installed.
/// Process-wide: every engine in the process shares it.
#[napi]
pub fn set_engine_log(filter: String, stream: String, format: Option<String>) -> Result<(), ErrorCode> {
    use meshpipe_core::log::{self, Format, LogError, Stream};
    let stream = match stream.as_str() {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => return Err(fail(ErrorCode::InvalidConfig, format!("engine log stream {other:?}: expected \"stdout\" or \"stderr\""))),
    };
    let format = match format.as_deref() {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some(other) => return Err(fail(ErrorCode::InvalidConfig, format!("engine log format {other:?}: expected \"json\" or \"text\""))),
    };
    log::set_format(format);
    log::install(&filter, stream).map_err(|e| match e {
        LogError::Filter { .. } => fail(ErrorCode::InvalidConfig, e),
        other => fail(ErrorCode::Native, other),
    })
}

/// `meshpipe run`: starts the app (JSON of a `SpawnSpec`) so that it gets
/// SIGKILL if meshpipe dies, even by SIGKILL (`PR_SET_PDEATHSIG`). Call it on
/// the JavaScript main thread: the kernel ties the signal to the forking
/// thread. Returns JSON of a `SpawnOutcome`; the app is reaped with
/// `reapChildren`, never by libuv.
#[napi]
pub fn spawn_app(spec: String) -> Result<String, ErrorCode> {
    let spec: meshpipe_core::supervise::SpawnSpec =
        serde_json::from_str(&spec).map_err(|e| fail(ErrorCode::InvalidConfig, format!("spawn spec: {e}")))?;
    to_json(&meshpipe_core::supervise::spawn(&spec))
}

/// Reaps exited children: only `pid` when given, else every exited child
/// except the pids in `keep` (as PID 1, the orphans too). Returns JSON of
/// `ReapedChild[]`.
#[napi]
pub fn reap_children(pid: Option<u32>, keep: Vec<u32>) -> Result<String, ErrorCode> {
    use meshpipe_core::supervise;
    let reaped = match pid {
        Some(pid) => supervise::reap_pid(pid).map(|r| r.into_iter().collect::<Vec<_>>()),
        None => supervise::reap_all_except(&keep),
    };
    to_json(&reaped.map_err(|e| fail(ErrorCode::Native, e))?)
}

/// The addresses of this network namespace's interfaces, loopback left out,
/// also of links not running yet (unlike `os.networkInterfaces()`).
#[napi]
pub fn interface_addresses() -> Result<Vec<String>, ErrorCode> {
    let ips = meshpipe_core::target::interface_addresses().map_err(|e| fail(ErrorCode::Native, format!("getifaddrs: {e}")))?;
    Ok(ips.into_iter().map(|ip| ip.to_string()).collect())
}

fn identity_error(e: impl std::fmt::Display) -> Error<ErrorCode> {
    fail(ErrorCode::Identity, e)
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &str, code: ErrorCode) -> Fallible<T> {
    serde_json::from_str(json).map_err(|e| fail(code, format!("{what}: {e}")))
}

/// `meshpipe identity init`: a new trust anchor and issuer (JSON of an
/// `InitSpec` in, of a `TrustBundle` out).
#[napi]
pub fn identity_init(spec: String) -> Result<String, ErrorCode> {
    use meshpipe_core::identity::ops;
    let spec: ops::InitSpec = parse_json("identity init", &spec, ErrorCode::InvalidConfig)?;
    to_json(&ops::init(&spec).map_err(identity_error)?)
}

/// `meshpipe identity issue`: a workload certificate and key (JSON of an
/// `IssueSpec` in, of an `IssuedPem` out).
#[napi]
pub fn identity_issue(spec: String) -> Result<String, ErrorCode> {
    use meshpipe_core::identity::ops;
    let spec: ops::IssueSpec = parse_json("identity issue", &spec, ErrorCode::InvalidConfig)?;
    to_json(&ops::issue(&spec).map_err(identity_error)?)
}

/// Loads and checks identity material (JSON of a `LoadSpec` and the three
/// files' bytes); returns JSON of an `IdentityInfo`, or throws
/// `ERR_IDENTITY` naming the file and the reason.
#[napi]
pub fn identity_check(spec: String, cert: Buffer, key: Buffer, anchors: Buffer) -> Result<String, ErrorCode> {
    use meshpipe_core::identity::ops;
    let spec: ops::LoadSpec = parse_json("identity check", &spec, ErrorCode::InvalidConfig)?;
    to_json(&ops::check(&spec, &cert, &key, &anchors).map_err(identity_error)?)
}

/// The engine's authorization decision for one connection under a table
/// (JSON of an `AuthzSpec`): JSON of a `DecisionInfo`. For tests of the
/// authorization compiler; the data path compiles the table once, as part of
/// the policy table.
#[napi]
pub fn authz_decide(table: String, port: u32, client_identity: Option<String>, client_ip: String) -> Result<String, ErrorCode> {
    use meshpipe_core::authz::{AuthzSpec, AuthzTable, DecisionInfo};
    let spec: AuthzSpec = parse_json("authorization table", &table, ErrorCode::Policy)?;
    let table = AuthzTable::from_spec(&spec).map_err(|e| fail(ErrorCode::Policy, e))?;
    let (client, ip, port) = authz_args(port, client_identity, &client_ip)?;
    to_json(&DecisionInfo::from(table.authorize(port, client.as_ref(), ip)))
}
