//! Shared helpers for the engine integration tests: start an engine from a
//! JSON config, real TCP peers on 127.0.0.1 port 0, and SHA-256 of streams.
#![allow(dead_code)]

pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use meshpipe_core::{Engine, EngineSpec};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts an engine with one listener on 127.0.0.1:0 forwarding to `target`.
pub async fn forward(target: SocketAddr, mode: Option<&str>, extra: serde_json::Value) -> (Engine, SocketAddr) {
    let mut cfg = serde_json::json!({
        "listeners": [{
            "name": "test",
            "bind": "127.0.0.1:0",
            "target": { "kind": "fixed", "addr": target.to_string() },
            "mode": mode,
            "direction": "outbound"
        }]
    });
    merge(&mut cfg, extra);
    start(cfg).await
}

pub async fn start(cfg: serde_json::Value) -> (Engine, SocketAddr) {
    let spec: EngineSpec = serde_json::from_value(cfg).expect("config parses");
    let engine = Engine::start(spec.validate().expect("config valid")).await.expect("engine starts");
    let addr = engine.bound()[0].bind.parse().unwrap();
    (engine, addr)
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// An echo server: every connection echoes until EOF, then half-closes.
pub async fn echo_server() -> SocketAddr {
    banner_server(b"").await
}

/// A server that sends `banner` first, then echoes.
pub async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

pub fn random(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Sends `data` (then half-closes) while reading everything back; returns
/// the SHA-256 of what came back.
pub async fn roundtrip(addr: SocketAddr, data: Vec<u8>) -> [u8; 32] {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    writer.await.unwrap();
    hasher.finalize().into()
}

pub async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(d, f).await.expect("timed out")
}

/// Engine worker threads as the Node binding runs them: one current-thread
/// runtime per thread. Dropping this stops and joins them.
pub struct WorkerThreads {
    pub handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerThreads {
    pub fn start(n: usize) -> WorkerThreads {
        let mut w = WorkerThreads { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for _ in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stops.push(tx);
            w.threads.push(std::thread::spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
            }));
        }
        w
    }
}

impl WorkerThreads {
    /// An opaque outbound listener on these workers forwarding to `target`,
    /// with `extra` merged into its config (as [`forward`] does).
    pub fn forward(&self, target: SocketAddr, extra: serde_json::Value) -> (Engine, SocketAddr) {
        let mut cfg = serde_json::json!({
            "listeners": [{
                "name": "test", "bind": "127.0.0.1:0", "mode": "opaque", "direction": "outbound",
                "target": { "kind": "fixed", "addr": target.to_string() }
            }]
        });
        merge(&mut cfg, extra);
        let spec: EngineSpec = serde_json::from_value(cfg).expect("config parses");
        let engine = Engine::new(spec.validate().expect("config valid"));
        engine.start_on(&self.handles).expect("engine starts");
        let addr = engine.bound()[0].bind.parse().unwrap();
        (engine, addr)
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A minimal, well-formed TLS 1.2/1.3 ClientHello with an SNI extension.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    let list_len = (name.len() + 3) as u16;
    sni_ext.extend_from_slice(&0u16.to_be_bytes()); // server_name
    sni_ext.extend_from_slice(&(list_len + 2).to_be_bytes());
    sni_ext.extend_from_slice(&list_len.to_be_bytes());
    sni_ext.push(0); // host_name
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&sni_ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A client socket that writes its first `first` bytes, then nothing more
/// until `gate` opens: a ClientHello split over two TCP segments, the
/// second late.
pub struct Gated {
    tcp: TcpStream,
    first: usize,
    sent: usize,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Gated {
    pub fn new(tcp: TcpStream, first: usize, gate: tokio::sync::oneshot::Receiver<()>) -> Gated {
        Gated { tcp, first, sent: 0, gate: Some(gate) }
    }
}

impl tokio::io::AsyncRead for Gated {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Gated {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(gate) = &mut this.gate {
            if this.sent < this.first {
                let n = (this.first - this.sent).min(buf.len());
                let n = std::task::ready!(Pin::new(&mut this.tcp).poll_write(cx, &buf[..n]))?;
                this.sent += n;
                return Poll::Ready(Ok(n));
            }
            let _ = std::task::ready!(Pin::new(gate).poll(cx));
            this.gate = None;
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
