//! The 4143 tunnel against hostile peers, through a real engine: a
//! transparent inbound listener on this host's own interface address (the
//! "pod IP"), dialled directly (no NAT entry: the tunnel), with a meshed
//! client (a rustls client holding a workload certificate of the same CA)
//! or an unauthenticated one.
//!
//! - A transport header naming the tunnel's own port must not make the
//!   engine dial itself, even when the config lists no `proxyPorts` (the
//!   engine knows its own listeners: the redirect path refuses such a
//!   target as a loop). Otherwise the client's decrypted bytes reach the
//!   tunnel again from the pod's own address, so a client can nest
//!   tunnels, each costing the engine a connection, and appear to the
//!   inner one as the pod itself (network-based authorization).
//!
//! Skipped (with a message) when the host has no non-loopback address.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use common::within;
use meshpipe_core::identity::Identity;
use meshpipe_core::mesh::TunnelError;
use meshpipe_core::tls::{self, ClientAlpn, TlsState};
use meshpipe_core::transport_header::TransportHeader;
use meshpipe_core::vocab::Direction;
use meshpipe_core::{Engine, Snapshot};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

/// A non-loopback IPv4 address of this host (the "pod IP").
fn pod_ip() -> Option<IpAddr> {
    meshpipe_core::target::interface_addresses().ok()?.into_iter().find(|ip| ip.is_ipv4())
}

struct Tunnel {
    engine: Engine,
    /// The tunnel: the transparent inbound listener, dialled directly.
    addr: SocketAddr,
    client: TlsState,
    server_id: Identity,
}

/// An engine with a transparent inbound listener on `ip` and a mesh
/// identity; `extra` is merged into the config (`inbound` must be given).
async fn tunnel(ip: IpAddr, extra: serde_json::Value) -> Tunnel {
    let mut cfg = serde_json::json!({
        "listeners": [{
            "name": "inbound",
            "bind": SocketAddr::new(ip, 0).to_string(),
            "target": { "kind": "originalDst" },
            "direction": "inbound"
        }],
        "detect": { "inboundTimeoutMs": 10_000 }
    });
    if let (Some(c), serde_json::Value::Object(e)) = (cfg.as_object_mut(), extra) {
        c.extend(e);
    }
    let (engine, addr) = common::start(cfg).await;
    let ca = ca();
    let (server_id, client_id) = (linkerd("web", "shop"), linkerd("api", "shop"));
    engine.set_identity(&material(&ca, &server_id)).unwrap();
    let client = TlsState::new(&material(&ca, &client_id), 1).unwrap();
    Tunnel { engine, addr, client, server_id }
}

impl Tunnel {
    /// Waits until `f(snapshot)` holds; panics naming `what` after `T`.
    async fn until(&self, what: &str, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let wait = async {
            loop {
                let s = self.engine.snapshot();
                if f(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        match tokio::time::timeout(T, wait).await {
            Ok(s) => s,
            Err(_) => {
                let s = self.engine.snapshot();
                panic!(
                    "timed out waiting until {what}: listeners {:?}, detecting {:?}, tunnel errors {:?}",
                    s.listeners, s.limits.detecting, s.mesh.tunnel_errors
                )
            }
        }
    }
}

fn tunnel_errors(s: &Snapshot, reason: TunnelError) -> u64 {
    s.mesh.tunnel_errors.iter().find(|e| e.reason == reason).map_or(0, |e| e.count)
}

fn accepted(s: &Snapshot) -> u64 {
    s.listeners.iter().map(|l| l.accepted).sum()
}

#[tokio::test]
async fn a_header_naming_the_tunnels_own_port_is_refused_without_proxy_ports() {
    let Some(ip) = pod_ip() else {
        eprintln!("skipped: no non-loopback IPv4 address on this host");
        return;
    };
    // An engine config as an embedder may write it: pod IPs, no proxyPorts.
    let t = tunnel(ip, serde_json::json!({ "inbound": { "podIps": [ip.to_string()], "proxyPorts": [] } })).await;
    let tcp = TcpStream::connect(t.addr).await.unwrap();
    let (mut s, _) = within(T, tls::connect(&t.client, tcp, &t.server_id, ClientAlpn::Tunnel, T)).await.unwrap();
    let header = TransportHeader::opaque(NonZeroU16::new(t.addr.port()).unwrap());
    s.write_all(&header.encode()).await.unwrap();
    // What a nesting client sends next: another ClientHello would follow.
    s.write_all(b"inner bytes").await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let end = within(T, s.read(&mut buf)).await;
    assert!(matches!(end, Ok(0) | Err(_)), "the tunnel to itself is closed: {end:?}");
    let snap = t.until("the refusal is counted", |s| tunnel_errors(s, TunnelError::ProxyPort) == 1).await;
    assert_eq!(accepted(&snap), 1, "the engine never dialled its own tunnel: {:?}", snap.listeners);
    let inbound_errors: u64 = snap.mesh.handshake_errors.iter().filter(|e| e.direction == Direction::Inbound).map(|e| e.count).sum();
    assert_eq!(inbound_errors, 0, "{:?}", snap.mesh.handshake_errors);
}
