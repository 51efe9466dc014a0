//! The TLS-generic forwarder (`copy::stream::forward`) between a plain
//! socket and mesh TLS, and between two TLS streams, over real loopback
//! sockets: every byte arrives (SHA-256), half-close maps close_notify to FIN
//! and back (RFC 8446 §6.1), resets and truncation propagate as resets, and
//! the byte counters are exact.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use meshpipe_core::copy::stream::{forward, Transport};
use meshpipe_core::copy::{Counters, Moved};
use meshpipe_core::tls::{self, AlpnRule, ClientAlpn, MeshTls};
use pki::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

struct Counts {
    conn_up: AtomicU64,
    series_up: AtomicU64,
    conn_down: AtomicU64,
    series_down: AtomicU64,
    shared: meshpipe_core::copy::Shared,
    fds: Arc<meshpipe_core::limits::Budget>,
}

async fn run_forward<A: Transport, B: Transport>(mut a: A, mut b: B, counts: Arc<Counts>) -> Result<Moved, String> {
    let up = Counters { conn: &counts.conn_up, series: &counts.series_up, shared: &counts.shared, fds: &counts.fds };
    let down = Counters { conn: &counts.conn_down, series: &counts.series_down, shared: &counts.shared, fds: &counts.fds };
    forward(&mut a, &mut b, up, down, 16 * 1024).await.map_err(|e| e.to_string())
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            conn_up: AtomicU64::new(0),
            series_up: AtomicU64::new(0),
            conn_down: AtomicU64::new(0),
            series_down: AtomicU64::new(0),
            shared: meshpipe_core::copy::Shared::new(Default::default(), 4),
            // No descriptor budget.
            fds: Arc::new(meshpipe_core::limits::Budget::configured(0)),
        }
    }
}

struct Mesh {
    client: Arc<MeshTls>,
    server: Arc<MeshTls>,
    server_id: meshpipe_core::identity::Identity,
}

fn mesh() -> Mesh {
    let ca = ca();
    let server_id = linkerd("db", "shop");
    Mesh {
        client: Arc::new(MeshTls::new(&material(&ca, &linkerd("web", "shop"))).unwrap()),
        server: Arc::new(MeshTls::new(&material(&ca, &server_id)).unwrap()),
        server_id,
    }
}

/// An outbound-style setup: a plain client connects to the forwarder, which
/// originates mesh TLS to a TLS server running `server` on the terminated
/// stream. Returns the client socket and the forwarder's result.
async fn originate<F, Fut>(m: &Mesh, server: F) -> (TcpStream, tokio::task::JoinHandle<Result<Moved, String>>, Arc<Counts>)
where
    F: FnOnce(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let server_state = m.server.current();
    tokio::spawn(async move {
        let (s, _) = tls_listener.accept().await.unwrap();
        let (stream, _) = tls::accept(&server_state, s, AlpnRule::Tunnel, T).await.unwrap();
        server(stream).await;
    });
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = front.accept().await.unwrap();
    let upstream = TcpStream::connect(tls_addr).await.unwrap();
    let (tls_stream, _) = tls::connect(&m.client.current(), upstream, &m.server_id, ClientAlpn::Tunnel, T).await.unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let fwd = tokio::spawn(run_forward(accepted, tls_stream, c));
    (client, fwd, counts)
}

async fn echo(mut s: tokio_rustls::server::TlsStream<TcpStream>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
            Err(e) => panic!("echo server read: {e}"),
        }
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn bulk_both_ways_through_tls_with_exact_counts() {
    let m = mesh();
    let (client, fwd, counts) = originate(&m, echo).await;
    let data = common::random(8 * 1024 * 1024 + 17, 7);
    let (mut r, mut w) = client.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    common::within(T * 3, r.read_to_end(&mut back)).await.unwrap();
    writer.await.unwrap();
    assert_eq!(common::sha(&back), common::sha(&data), "every byte came back, in order");
    let moved = fwd.await.unwrap().unwrap();
    let n = data.len() as u64;
    assert_eq!(moved, Moved { client_to_server: n, server_to_client: n });
    assert_eq!((counts.conn_up.load(Relaxed), counts.series_up.load(Relaxed)), (n, n));
    assert_eq!((counts.conn_down.load(Relaxed), counts.series_down.load(Relaxed)), (n, n));
    assert_eq!(
        counts.shared.spliced_directions.load(Relaxed) + counts.shared.bulk.directions.load(Relaxed),
        0,
        "TLS streams are copied by the stream copy only"
    );
}

#[tokio::test]
async fn half_close_maps_fin_to_close_notify_and_back() {
    let m = mesh();
    let (saw_clean_eof_tx, saw_clean_eof) = tokio::sync::oneshot::channel();
    let (mut client, fwd, _) = originate(&m, |mut s| async move {
        // Read the request to its end: a clean end is close_notify (Ok(0)), not an error.
        let mut req = Vec::new();
        let eof = s.read_to_end(&mut req).await;
        let _ = saw_clean_eof_tx.send((eof.is_ok(), req));
        // The other direction is still open: answer after the client finished sending.
        s.write_all(b"answer after your FIN").await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let (clean, req) = common::within(T, saw_clean_eof).await.unwrap();
    assert!(clean, "the TLS server saw close_notify for the client's FIN");
    assert_eq!(req, b"request");
    let mut answer = Vec::new();
    common::within(T, client.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"answer after your FIN", "then close_notify became a FIN for the client");
    assert_eq!(fwd.await.unwrap().unwrap(), Moved { client_to_server: 7, server_to_client: 21 });
}

#[tokio::test]
async fn a_reset_on_the_tls_side_resets_the_plain_side() {
    let m = mesh();
    let (mut client, fwd, _) = originate(&m, |mut s| async move {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        let tcp = s.get_ref().0;
        meshpipe_core::socket::set_reset_on_close(tcp);
        drop(s);
    })
    .await;
    client.write_all(b"hello").await.unwrap();
    let err = common::within(T, fwd).await.unwrap().unwrap_err();
    assert!(err.starts_with("target side"), "{err}");
    let mut buf = [0u8; 16];
    let got = common::within(T, client.read(&mut buf)).await;
    let kind = got.map(|n| format!("read {n} bytes")).unwrap_or_else(|e| format!("{:?}", e.kind()));
    assert_eq!(kind, "ConnectionReset", "the client learns of the failure");
}

#[tokio::test]
async fn a_reset_on_the_plain_side_reaches_the_tls_side_as_a_reset() {
    let m = mesh();
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let (got_tx, got) = tokio::sync::oneshot::channel();
    let (mut client, fwd, _) = originate(&m, |mut s| async move {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        let _ = got_tx.send(());
        // The client resets next: this read must fail, not end cleanly with close_notify.
        let mut rest = [0u8; 16];
        let end = s.read(&mut rest).await;
        let _ = seen_tx.send(end.map_err(|e| e.kind()));
    })
    .await;
    client.write_all(b"hello").await.unwrap();
    common::within(T, got).await.unwrap();
    meshpipe_core::socket::set_reset_on_close(&client);
    drop(client);
    let err = common::within(T, fwd).await.unwrap().unwrap_err();
    assert!(err.starts_with("client side"), "{err}");
    let end = common::within(T, seen).await.unwrap();
    assert!(
        matches!(end, Err(std::io::ErrorKind::ConnectionReset) | Err(std::io::ErrorKind::UnexpectedEof)),
        "the TLS peer sees a failure, not a clean end: {end:?}"
    );
}

#[tokio::test]
async fn a_tls_stream_cut_without_close_notify_is_an_error_not_an_end() {
    let m = mesh();
    let (mut client, fwd, _) = originate(&m, |mut s| async move {
        s.write_all(b"partial").await.unwrap();
        s.flush().await.unwrap();
        // A FIN with no close_notify before it: a possible truncation attack.
        meshpipe_core::socket::shutdown_write(s.get_ref().0).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let mut got = vec![0u8; 7];
    common::within(T, client.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, b"partial");
    let err = common::within(T, fwd).await.unwrap().unwrap_err();
    assert!(err.starts_with("target side") && err.contains("close_notify"), "{err}");
    let mut buf = [0u8; 1];
    let end = common::within(T, client.read(&mut buf)).await;
    assert!(matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "a reset, not a clean FIN: {end:?}");
}

#[tokio::test]
async fn tls_to_tls_forwarding() {
    // Terminate mesh TLS from a client proxy and originate it again to a server.
    let m = mesh();
    let tls_server_addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = m.server.current();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (stream, _) = tls::accept(&state, s, AlpnRule::Tunnel, T).await.unwrap();
            echo(stream).await;
        });
        addr
    };
    // Client proxy -> forwarder (server TLS with m.server's identity) -> upstream TLS to the echo server.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let client_state = m.client.current();
    let server_id = m.server_id.clone();
    let client_task = tokio::spawn(async move {
        let s = TcpStream::connect(front_addr).await.unwrap();
        let (mut tls_stream, _) = tls::connect(&client_state, s, &server_id, ClientAlpn::Tunnel, T).await.unwrap();
        let data = common::random(3 * 1024 * 1024, 9);
        tls_stream.write_all(&data).await.unwrap();
        tls_stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        tls_stream.read_to_end(&mut back).await.unwrap();
        (common::sha(&data), common::sha(&back))
    });
    let (accepted, _) = front.accept().await.unwrap();
    let (inbound, info) = tls::accept(&m.server.current(), accepted, AlpnRule::Tunnel, T).await.unwrap();
    assert_eq!(info.client.as_str(), "web.shop.serviceaccount.identity.linkerd.cluster.local");
    let up = TcpStream::connect(tls_server_addr).await.unwrap();
    let (outbound, _) = tls::connect(&m.client.current(), up, &m.server_id, ClientAlpn::Tunnel, T).await.unwrap();
    let moved = common::within(T * 3, run_forward(inbound, outbound, Arc::new(Counts::default()))).await.unwrap();
    let (sent, back) = client_task.await.unwrap();
    assert_eq!(sent, back);
    assert_eq!(moved, Moved { client_to_server: 3 * 1024 * 1024, server_to_client: 3 * 1024 * 1024 });
}
