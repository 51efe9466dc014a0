//! Inbound authorization comes before any dial, the server-first race's
//! included: a client the port refuses without an identity never makes the
//! proxy connect to the application (which would see, and for a
//! server-first protocol answer, connections from clients it never
//! authorized) and never teaches the proxy that the port is server-first.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

/// A server-first application that counts the connections it accepted.
async fn counting_banner_server() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let _ = s.write_all(b"220 db ready\r\n").await;
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, accepted)
}

/// An inbound listener in front of `app`, whose port only mesh identities
/// may reach when `meshed_only` (every other port: everyone).
async fn inbound(app: SocketAddr, meshed_only: bool) -> (meshpipe_core::Engine, SocketAddr) {
    let everyone = serde_json::json!({ "kind": "default", "name": "all-unauthenticated", "networks": [], "identities": [] });
    let meshed = serde_json::json!({ "kind": "authorizationpolicy", "name": "meshed-only", "networks": [], "identities": ["*"] });
    let rule = if meshed_only { meshed } else { everyone.clone() };
    start(serde_json::json!({
        "listeners": [{
            "name": "inbound",
            "bind": "127.0.0.1:0",
            "target": { "kind": "fixed", "addr": app.to_string() },
            "direction": "inbound"
        }],
        "detect": { "inboundTimeoutMs": 1_500, "serverFirstGraceMs": 100 },
        "policy": { "authz": {
            "ports": [{ "port": app.port(), "srvKind": "server", "srvName": "db", "rules": [rule] }],
            "default": { "port": 0, "srvKind": "default", "srvName": "all-unauthenticated", "rules": [everyone] }
        } }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_the_port_refuses_is_never_dialled_through() {
    let (app, accepted) = counting_banner_server().await;
    let (engine, proxy) = inbound(app, true).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    // Silent past the grace period, until the proxy decides.
    let mut buf = [0u8; 64];
    let got = within(T, c.read(&mut buf)).await;
    assert!(matches!(got, Ok(0) | Err(_)), "the refused client got bytes: {got:?}");
    let snap = engine.snapshot();
    assert!(snap.mesh.authz.iter().any(|a| !a.allow && a.srv_name == "db"), "{:?}", snap.mesh.authz);
    assert_eq!(accepted.load(Relaxed), 0, "the application saw a connection from a client it never authorized");
    assert!(snap.server_first.targets.is_empty(), "a refused client taught the proxy: {:?}", snap.server_first.targets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_the_port_lets_in_still_gets_the_server_first_answer() {
    let (app, accepted) = counting_banner_server().await;
    let (engine, proxy) = inbound(app, false).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let mut banner = [0u8; 14];
    within(T, c.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"220 db ready\r\n");
    assert_eq!(accepted.load(Relaxed), 1);
    assert_eq!(engine.snapshot().server_first.targets.len(), 1, "learned");
}
