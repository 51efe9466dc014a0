//! meshpipe-node: the Node.js binding of meshpipe-core, built with napi-rs.
//!
//! Only conversions and lifecycle live here: JSON config in, typed engine
//! config out; engine results and errors back to JavaScript; and ownership of
//! the threads the engine runs on. Each `NativeProxy` owns its workers: one
//! single-threaded tokio runtime per thread (worker count from the config,
//! default one per core), each accepting from the same listening sockets, so
//! a connection stays on one thread for its whole life and the data path never
//! shares threads with the JavaScript event loop or calls into it.
//!
//! Promises are settled with napi deferreds from the runtime's threads. Nothing
//! here holds a reference on the event loop while the proxy merely runs: the
//! TypeScript layer decides what keeps the process alive. The runtime is shut
//! down on the JavaScript thread once `close()` has drained, or when the Node
//! environment is torn down (an env cleanup hook), so a process never hangs on
//! engine threads at exit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpipe_core::{Engine, EngineConfig, EngineHooks, EngineSpec, PolicySpec, PolicyTable};
use napi::bindgen_prelude::*;
use napi_derive::napi;

/// Learned-target events waiting for JavaScript to collect them (bounded).
const MAX_EVENTS: usize = 1024;

fn js_error(code: &str, msg: impl std::fmt::Display) -> Error {
    Error::from_reason(format!("{code}: {msg}"))
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
    runtime: Mutex<Option<Workers>>,
    config: Mutex<Option<EngineConfig>>,
    engine: Mutex<Option<Arc<Engine>>>,
    /// Set by the first `close()` that takes the engine: a second call
    /// while that drain runs must not shut the runtime down under it.
    closing: std::sync::atomic::AtomicBool,
    events: Arc<Mutex<VecDeque<serde_json::Value>>>,
}

impl Inner {
    fn shutdown_runtime(&self) {
        let workers = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(workers) = workers {
            workers.shutdown();
        }
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| js_error("ERR_NOT_STARTED", "the proxy is not running: call start() first"))
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) -> Result<()> {
        match self.runtime.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(workers) => {
                workers.handles[0].spawn(f);
                Ok(())
            }
            None => Err(js_error("ERR_CLOSED", "the proxy is closed")),
        }
    }
}

/// A proxy engine with its own runtime. See ARCHITECTURE.md for the shapes
/// of the config, the snapshot and the errors.
#[napi]
pub struct NativeProxy {
    inner: Arc<Inner>,
}

#[napi]
impl NativeProxy {
    /// Validates `config` (an EngineConfig object) and builds the runtime.
    #[napi(constructor)]
    pub fn new(env: Env, config: serde_json::Value) -> Result<Self> {
        let spec: EngineSpec = serde_json::from_value(config).map_err(|e| js_error("ERR_INVALID_CONFIG", format!("engine config: {e}")))?;
        let workers = if spec.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) } else { spec.workers };
        let config = spec.validate().map_err(|e| js_error("ERR_INVALID_CONFIG", e))?;
        let runtime = Workers::new(workers.max(1)).map_err(|e| js_error("ERR_NATIVE", format!("cannot start the engine threads: {e}")))?;
        let inner = Arc::new(Inner {
            runtime: Mutex::new(Some(runtime)),
            config: Mutex::new(Some(config)),
            engine: Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
            events: Arc::new(Mutex::new(VecDeque::new())),
        });
        // Environment teardown (process exit, worker thread end): stop the
        // engine threads so nothing outlives the environment.
        let weak = Arc::downgrade(&inner);
        env.add_env_cleanup_hook(weak, |weak| {
            if let Some(inner) = weak.upgrade() {
                inner.shutdown_runtime();
            }
        })?;
        Ok(NativeProxy { inner })
    }

    /// Binds every listener and starts accepting. Resolves with the bound
    /// listeners: `[{ name, bind, direction }]`.
    #[napi(ts_return_type = "Promise<Array<{ name: string; bind: string; direction: string }>>")]
    pub fn start<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<serde_json::Value, _>()?;
        let config = self
            .inner
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| js_error("ERR_ALREADY_STARTED", "start() was already called on this proxy"))?;
        let inner = self.inner.clone();
        let events = self.inner.events.clone();
        let hooks = EngineHooks {
            on_learned: Some(Box::new(move |target: &str| {
                let mut q = events.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() < MAX_EVENTS {
                    q.push_back(serde_json::json!({ "kind": "serverFirstLearned", "target": target }));
                }
            })),
        };
        // Binding is synchronous and fast; the promise settles on the next
        // turn of the event loop either way.
        let handles = match self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(w) => w.handles.clone(),
            None => return Err(js_error("ERR_CLOSED", "the proxy is closed")),
        };
        match Engine::start_on(config, hooks, &handles) {
            Ok(engine) => {
                let bound = serde_json::to_value(engine.bound()).unwrap_or_default();
                *inner.engine.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(engine));
                deferred.resolve(move |_| Ok(bound));
            }
            Err(e) => deferred.reject(js_error(e.code(), e)),
        }
        Ok(promise)
    }

    /// Stops the named listeners from accepting; open connections go on.
    /// Returns the names that matched no listener.
    #[napi]
    pub fn stop_accepting(&self, names: Vec<String>) -> Result<Vec<String>> {
        Ok(self.inner.engine()?.stop_accepting(&names))
    }

    /// Stops accepting, drains open connections for up to `drainMs`, cuts the
    /// rest, then stops the runtime. Resolves with `{ drained, cut }`.
    #[napi(ts_return_type = "Promise<{ drained: number; cut: number }>")]
    pub fn close<'env>(&self, env: &'env Env, drain_ms: u32) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<serde_json::Value, _>()?;
        let engine = self.inner.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        let inner = self.inner.clone();
        // The resolver runs on the JavaScript thread, outside the runtime:
        // the one place the runtime may be shut down and joined.
        let finish = |inner: Arc<Inner>, value: serde_json::Value| {
            move |_env: Env| {
                inner.shutdown_runtime();
                Ok(value)
            }
        };
        let Some(engine) = engine else {
            if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
                deferred.reject(js_error("ERR_CLOSED", "close() is already in progress or done: await the first call's promise"));
                return Ok(promise);
            }
            // Never started: just release the runtime.
            deferred.resolve(finish(inner, serde_json::json!({ "drained": 0, "cut": 0 })));
            return Ok(promise);
        };
        inner.closing.store(true, std::sync::atomic::Ordering::Release);
        // Refuse new connections before returning: the drain below is async,
        // but a caller that has called close() must not see its port accept.
        engine.stop_all();
        self.inner.spawn(async move {
            let summary = engine.close(Duration::from_millis(drain_ms as u64)).await;
            drop(engine);
            let value = serde_json::to_value(summary).unwrap_or_default();
            deferred.resolve(finish(inner, value));
        })?;
        Ok(promise)
    }

    /// Swaps in a new policy table (new connections only). Before `start()`
    /// it replaces the policy the listeners will start with, so a policy
    /// loaded from its sources is in force from the very first connection.
    /// Returns its generation.
    #[napi]
    pub fn set_policy(&self, policy: serde_json::Value) -> Result<i64> {
        let spec: PolicySpec = serde_json::from_value(policy).map_err(|e| js_error("ERR_POLICY", format!("policy table: {e}")))?;
        if let Some(config) = self.inner.config.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let table = PolicyTable::compile(&spec).map_err(|e| js_error("ERR_POLICY", format!("invalid policy: {e}")))?;
            let generation = table.generation() as i64;
            config.policy = table;
            return Ok(generation);
        }
        let engine = self.inner.engine()?;
        engine.set_policy(&spec).map(|g| g as i64).map_err(|e| js_error(e.code(), e))
    }

    /// Every counter of the engine, read once (see ARCHITECTURE.md).
    #[napi]
    pub fn snapshot(&self) -> Result<serde_json::Value> {
        let engine = self.inner.engine()?;
        serde_json::to_value(engine.snapshot()).map_err(|e| js_error("ERR_NATIVE", e))
    }

    /// Up to `limit` live connections, oldest first.
    #[napi]
    pub fn connections(&self, limit: u32) -> Result<serde_json::Value> {
        let engine = self.inner.engine()?;
        serde_json::to_value(engine.connections(limit as usize)).map_err(|e| js_error("ERR_NATIVE", e))
    }

    /// Takes the queued engine events (e.g. newly learned server-first targets).
    #[napi]
    pub fn take_events(&self) -> Vec<serde_json::Value> {
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }
}

impl Drop for NativeProxy {
    fn drop(&mut self) {
        // Garbage collection of an unclosed proxy: refuse new connections on
        // every listening socket first (the accept tasks are about to vanish
        // with the runtime), then stop its threads.
        if let Some(engine) = self.inner.engine.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            engine.stop_all();
        }
        self.inner.shutdown_runtime();
    }
}
