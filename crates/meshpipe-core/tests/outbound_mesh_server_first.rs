//! Server-speaks-first through the mesh: an outbound client that says
//! nothing for the grace period, to a meshed destination, goes through the
//! tunnel as bytes (the race may not dial the destination in plaintext), and
//! its target is learned as server-first only on the server's evidence
//! through the tunnel: a banner that comes before any client byte. A client
//! that speaks after the grace period, an HTTP/2 server's SETTINGS to a
//! silent client, or a server that closes teach nothing, so one slow client
//! (a pool connecting ahead of its first request) cannot turn detection off
//! for every client of the target. Every byte either way arrives intact.
//!
//! The peer is a stand-in for the destination's inbound sidecar: a rustls
//! server with the peer's certificate that requires the tunnel ALPN, reads
//! the transport header, and plays the app the header's port names.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use common::within;
use meshpipe_core::tls::{self, AlpnRule, TlsState};
use meshpipe_core::transport_header;
use meshpipe_core::vocab::DetectResult;
use meshpipe_core::{Engine, PolicySpec};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

/// The app behind each port of the meshed pod.
const BANNER: u16 = 8081;
const ECHO: u16 = 8082;
const H2: u16 = 8083;
const CLOSE: u16 = 8084;

const GREETING: &[u8] = b"220 mail.test ESMTP ready\r\n";
/// An HTTP/2 server's preface: SETTINGS with one setting (RFC 9113 §3.4).
const SETTINGS: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];

/// The stand-in peer sidecar. Each tunnel's header port is sent on
/// `opened` once the header is read (the tunnel exists: detection is over).
async fn peer(state: TlsState, opened: mpsc::UnboundedSender<u16>) -> SocketAddr {
    let state = std::sync::Arc::new(state);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let (state, opened) = (state.clone(), opened.clone());
            tokio::spawn(async move {
                let (mut s, _) = tls::accept(&state, tcp, AlpnRule::Tunnel, T).await.expect("mesh TLS from the engine");
                let header = transport_header::read_header(&mut s, T).await.expect("a transport header");
                assert_eq!(header.protocol, None, "carried as bytes: no session protocol");
                let port = header.port.get();
                let _ = opened.send(port);
                match port {
                    BANNER => s.write_all(GREETING).await.unwrap(),
                    H2 => s.write_all(SETTINGS).await.unwrap(),
                    CLOSE => {
                        s.shutdown().await.unwrap();
                        return;
                    }
                    _ => {}
                }
                // Then an echo until the client's end, which is passed on.
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Pair {
    engine: Engine,
    /// The outbound listener for each app port, by port.
    listeners: Vec<(u16, SocketAddr)>,
    opened: mpsc::UnboundedReceiver<u16>,
}

impl Pair {
    fn listener(&self, port: u16) -> SocketAddr {
        self.listeners.iter().find(|(p, _)| *p == port).unwrap().1
    }

    fn learned(&self) -> Vec<(String, u64)> {
        self.engine.snapshot().server_first.targets.iter().map(|t| (t.addr.clone(), t.hits)).collect()
    }

    fn detected(&self, result: DetectResult) -> u64 {
        self.engine.snapshot().detect.iter().filter(|d| d.result == result).map(|d| d.count).sum()
    }

    /// Connects to `port`'s listener and waits until its tunnel is open.
    async fn silent(&mut self, port: u16) -> TcpStream {
        let c = TcpStream::connect(self.listener(port)).await.unwrap();
        assert_eq!(within(T, self.opened.recv()).await, Some(port));
        c
    }
}

/// An outbound engine with a workload identity, one listener per app port
/// of the meshed pod 127.0.0.1, whose tunnel is the stand-in peer, and the
/// detect timeout `detect_ms`. (Most tests take a timeout longer than their
/// own bound `T`: a connection that waited it out would fail them.)
async fn pair(detect_ms: u64) -> Pair {
    let ca = ca();
    let (api, web) = (linkerd("api", "shop"), linkerd("web", "shop"));
    let (tx, opened) = mpsc::unbounded_channel();
    let tunnel = peer(TlsState::new(&material(&ca, &web), 1).unwrap(), tx).await;
    let ports = [BANNER, ECHO, H2, CLOSE];
    let listeners: Vec<_> = ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": format!("to-{p}"), "bind": "127.0.0.1:0", "direction": "outbound",
                "target": { "kind": "fixed", "addr": format!("127.0.0.1:{p}") }
            })
        })
        .collect();
    let (engine, _) = common::start(serde_json::json!({
        "listeners": listeners,
        "detect": { "outboundTimeoutMs": detect_ms, "inboundTimeoutMs": detect_ms, "serverFirstGraceMs": 100 }
    }))
    .await;
    let bound = engine.bound();
    let listeners = ports.iter().zip(bound.iter()).map(|(p, b)| (*p, b.bind.parse().unwrap())).collect();
    engine.set_identity(&material(&ca, &api)).unwrap();
    let policy: PolicySpec = serde_json::from_value(serde_json::json!({
        "generation": 2,
        "meshDestinations": [{ "net": "127.0.0.1/32", "identity": web.as_str(), "tunnelPort": tunnel.port(), "source": "test" }]
    }))
    .unwrap();
    engine.set_policy(&policy).unwrap();
    Pair { engine, listeners, opened }
}

async fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    within(T, c.read_exact(&mut b)).await.unwrap();
    b
}

/// Sends `data`, half-closes, and returns the SHA-256 of everything that
/// comes back until the proxy's FIN.
async fn echo_sha(mut c: TcpStream, data: &[u8]) -> [u8; 32] {
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    within(T, async { tokio::join!(send, r.read_to_end(&mut back)).1.unwrap() }).await;
    common::sha(&back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banner_through_the_tunnel_is_learned_and_skips_the_wait_next_time() {
    let mut p = pair(60_000).await;
    let mut c = p.silent(BANNER).await;
    assert_eq!(read_n(&mut c, GREETING.len()).await, GREETING, "the server's first bytes, passed on first");
    let target = format!("127.0.0.1:{BANNER}");
    assert_eq!(p.learned(), vec![(target.clone(), 0)], "learned on the server's evidence");
    let data = common::random(256 * 1024, 1);
    assert_eq!(echo_sha(c, &data).await, common::sha(&data), "the rest of the session, intact both ways");

    // The next connection finds the target learned: no detection, no wait.
    let mut c = p.silent(BANNER).await;
    assert_eq!(read_n(&mut c, GREETING.len()).await, GREETING);
    assert_eq!(p.learned(), vec![(target, 1)], "the cache answered the second connection");
    assert_eq!(p.detected(DetectResult::ServerFirst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_speaks_after_the_grace_period_teaches_nothing() {
    let mut p = pair(60_000).await;
    // A client that connects ahead of its request (a pool): silent until
    // its tunnel is open, then it speaks first. Its bytes go on at once (the
    // echo comes back long before the detect timeout).
    let c = p.silent(ECHO).await;
    let data = common::random(300 * 1024, 2);
    assert_eq!(echo_sha(c, &data).await, common::sha(&data));
    assert!(p.learned().is_empty(), "the client's silence alone is no evidence: {:?}", p.learned());

    // So the next client is detected again (it raced, and was silent too).
    let c = p.silent(ECHO).await;
    assert_eq!(echo_sha(c, b"PING\r\n").await, common::sha(b"PING\r\n"));
    assert!(p.learned().is_empty());
    assert_eq!(p.detected(DetectResult::ServerFirst), 2, "both connections raced: neither was a cache hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_or_a_close_through_the_tunnel_teaches_nothing() {
    let mut p = pair(60_000).await;
    // An HTTP/2 server sends its SETTINGS before reading anything (RFC 9113
    // §3.4): not a server-first protocol. The bytes still reach the client.
    let mut c = p.silent(H2).await;
    assert_eq!(read_n(&mut c, SETTINGS.len()).await, SETTINGS);
    assert!(p.learned().is_empty(), "{:?}", p.learned());
    let data = common::random(64 * 1024, 3);
    assert_eq!(echo_sha(c, &data).await, common::sha(&data));

    // A server that ends its side at once (close_notify) sent nothing first.
    let mut c = p.silent(CLOSE).await;
    let mut rest = Vec::new();
    within(T, c.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(p.learned().is_empty(), "{:?}", p.learned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_silent_until_the_detect_deadline_teach_nothing() {
    let mut p = pair(300).await;
    let c = p.silent(ECHO).await;
    // The wait for who speaks first ends at the detect deadline: the
    // connection is then forwarded, with nothing learned.
    within(T, async {
        while !p.engine.connections(16).iter().any(|s| s.state == meshpipe_core::ConnState::Forwarding) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(p.learned().is_empty(), "{:?}", p.learned());
    let data = common::random(100 * 1024, 4);
    assert_eq!(echo_sha(c, &data).await, common::sha(&data));
    assert!(p.learned().is_empty());
}
