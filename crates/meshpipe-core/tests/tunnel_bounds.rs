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
//! - A TLS handshake to the tunnel is detection by another name (an
//!   unauthenticated client, a bounded buffer, a timer): stalled ones hold
//!   inbound detection slots, so one host holds at most its share of them,
//!   as it does on a plaintext port; a meshed client of that host still
//!   gets through, whether its ClientHello arrives whole or split over a
//!   late segment (past the share it waits, without TLS state, for the
//!   rest), and the stalled ones are closed at the detect timeout.
//!
//! Skipped (with a message) when the host has no non-loopback address.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{within, Gated};
use meshpipe_core::identity::Identity;
use meshpipe_core::limits::PerSource;
use meshpipe_core::mesh::TunnelError;
use meshpipe_core::tls::{self, ClientAlpn, TlsState};
use meshpipe_core::transport_header::TransportHeader;
use meshpipe_core::vocab::Direction;
use meshpipe_core::{Engine, Snapshot};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

/// A non-loopback IPv4 address of this host (the "pod IP"). A host without
/// one fails these tests rather than skipping them: CI machines have one.
fn pod_ip() -> IpAddr {
    let addrs = meshpipe_core::target::interface_addresses().expect("list this host's interface addresses");
    addrs.into_iter().find(|ip| ip.is_ipv4()).expect("these tests need a non-loopback IPv4 address on this host (the pod IP)")
}

struct Tunnel {
    engine: Engine,
    /// The tunnel: the transparent inbound listener, dialled directly.
    addr: SocketAddr,
    client: std::sync::Arc<TlsState>,
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
    let client = std::sync::Arc::new(TlsState::new(&material(&ca, &client_id), 1).unwrap());
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
    let ip = pod_ip();
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

/// An echo server on `ip` (the app).
async fn echo_on(ip: IpAddr) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Opens a connection to the tunnel that sends the first 8 KiB of a 16 KiB
/// TLS handshake record holding one ClientHello, then stalls.
async fn stalled_handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Record header (16384 bytes), then a ClientHello's header (16380 bytes).
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    record.extend(std::iter::repeat_n(0x01u8, 8 * 1024));
    // One refused at once may be reset before all of it is written.
    let _ = s.write_all(&record).await;
    s
}

/// Three times a host's share of stalled handshakes, from this host: its
/// share holds detection slots, the rest wait without one.
async fn hold_stalled(t: &Tunnel, share: u64) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..3 * share {
        held.push(stalled_handshake(t.addr).await);
    }
    t.until("every stalled connection is accepted", |s| accepted(s) == 3 * share).await;
    // The handshakes in progress are detection: they hold slots, at most the host's share.
    let snap = t.until("the stalled handshakes hold their host's share of detection slots", |s| used(s) == share).await;
    assert_eq!(used(&snap), share, "{:?}", snap.limits);
    held
}

fn used(s: &Snapshot) -> u64 {
    s.limits.detecting.iter().find(|d| d.direction == Direction::Inbound).map_or(0, |d| d.used)
}

/// Sends `payload` through a tunnel connection made with `tcp` and returns what came back.
async fn echo_through<IO>(t: &Tunnel, tcp: IO, app: SocketAddr, payload: &'static [u8]) -> Vec<u8>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut s, _) = tls::connect(&t.client, tcp, &t.server_id, ClientAlpn::Tunnel, T).await.unwrap();
    s.write_all(&TransportHeader::opaque(NonZeroU16::new(app.port()).unwrap()).encode()).await.unwrap();
    s.write_all(payload).await.unwrap();
    s.flush().await.unwrap();
    let mut echoed = vec![0u8; payload.len()];
    s.read_exact(&mut echoed).await.unwrap();
    echoed
}

#[tokio::test]
async fn past_its_share_a_hosts_meshed_clients_still_get_through_and_bad_first_records_are_refused_at_once() {
    let ip = pod_ip();
    let slots = 64;
    let share = PerSource::share_of(slots) as u64;
    // The detect timeout outlasts the test: the slots stay held throughout.
    let t = tunnel(
        ip,
        serde_json::json!({
            "inbound": { "podIps": [ip.to_string()], "proxyPorts": [] },
            "limits": { "detectingConnections": slots },
            "detect": { "inboundTimeoutMs": 60_000 }
        }),
    )
    .await;
    let _held = hold_stalled(&t, share).await;
    let app = echo_on(ip).await;
    // A meshed client of the same host gets through: its ClientHello is
    // whole as soon as it arrives.
    let tcp = TcpStream::connect(t.addr).await.unwrap();
    assert_eq!(within(T, echo_through(&t, tcp, app, b"ping")).await, b"ping");
    // So does one whose ClientHello arrives in two pieces, the second only
    // once the proxy found no slot for it: it waits (without TLS state)
    // for the rest.
    let refused_before = share_refused(&t.engine.snapshot());
    let (open, gate) = tokio::sync::oneshot::channel();
    let tcp = Gated::new(TcpStream::connect(t.addr).await.unwrap(), 40, gate);
    let split = async {
        let echoed = echo_through(&t, tcp, app, b"pong").await;
        assert_eq!(echoed, b"pong");
    };
    let sequence = async {
        t.until("the proxy found no slot for the split ClientHello", |s| share_refused(s) > refused_before).await;
        open.send(()).unwrap();
    };
    within(T, async { tokio::join!(split, sequence) }).await;
    assert_eq!(used(&t.engine.snapshot()), share, "the split client needed no slot");
    // A slot-less client that sends its whole ClientHello and then stalls
    // (its second flight never leaves) holds TLS state only briefly: it is
    // closed and counted as a timeout long before the 60 s detect timeout,
    // as are the stalled handshakes without a slot from the start.
    let timeouts_before = handshake_errors(&t.engine.snapshot(), "timeout");
    let tcp = FirstFlightOnly(TcpStream::connect(t.addr).await.unwrap(), false);
    let (client, server_id) = (t.client.clone(), t.server_id.clone());
    let stalled = tokio::spawn(async move { tls::connect(&client, tcp, &server_id, ClientAlpn::Tunnel, T).await.map(|_| ()) });
    t.until("the slot-less handshakes were closed as timeouts", |s| handshake_errors(s, "timeout") == 2 * share + 1).await;
    assert!(timeouts_before <= 2 * share);
    stalled.abort();
    // Without a slot, a first record that is no whole ClientHello in one
    // record of a valid length (2^14 at most, RFC 8446 §5.1) is refused at
    // once, counted as rustls counts a malformed handshake: an oversized
    // record, and a ClientHello fragmented over records (rustls would
    // buffer up to 64 KiB of fragments).
    let bad_records: [&[u8]; 2] =
        [&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0x00, 0x10, 0x00], &[0x16, 0x03, 0x01, 0x00, 0x01, 0x01, 0x16, 0x03, 0x01]];
    for (i, record) in bad_records.into_iter().enumerate() {
        let mut bad = TcpStream::connect(t.addr).await.unwrap();
        bad.write_all(record).await.unwrap();
        let mut b = [0u8; 1];
        let r = within(T, bad.read(&mut b)).await.map_err(|e| e.kind());
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        t.until("the bad first record was counted", |s| handshake_errors(s, "handshake") == i as u64 + 1).await;
    }
}

#[tokio::test]
async fn stalled_tunnel_handshakes_are_closed_and_counted_with_or_without_a_slot() {
    let ip = pod_ip();
    let slots = 64;
    let share = PerSource::share_of(slots) as u64;
    let t = tunnel(
        ip,
        serde_json::json!({
            "inbound": { "podIps": [ip.to_string()], "proxyPorts": [] },
            "limits": { "detectingConnections": slots },
            "detect": { "inboundTimeoutMs": 3_000 }
        }),
    )
    .await;
    let held = hold_stalled(&t, share).await;
    // Those without a slot hold no TLS state and are closed after the
    // short no-slot wait; those with one at the detect timeout. Each is
    // counted as a handshake timeout.
    for mut s in held {
        let mut b = [0u8; 1];
        let r = within(T, s.read(&mut b)).await.map_err(|e| e.kind());
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    let snap = t.until("every stalled handshake was counted as a timeout", |s| handshake_errors(s, "timeout") == 3 * share).await;
    assert_eq!(used(&snap), 0, "no slot is left held");
}

fn share_refused(s: &Snapshot) -> u64 {
    s.limits.detecting_share.as_ref().map_or(0, |d| d.refused)
}

fn handshake_errors(s: &Snapshot, reason: &str) -> u64 {
    s.mesh.handshake_errors.iter().filter(|e| e.direction == Direction::Inbound && e.reason == reason).map(|e| e.count).sum()
}

/// A client socket that sends its first write (the ClientHello) and then
/// never another: its handshake stalls after the server's flight.
struct FirstFlightOnly(TcpStream, bool);

impl tokio::io::AsyncRead for FirstFlightOnly {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FirstFlightOnly {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.1 {
            return Poll::Pending;
        }
        let n = std::task::ready!(Pin::new(&mut self.0).poll_write(cx, buf))?;
        self.1 = true;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
