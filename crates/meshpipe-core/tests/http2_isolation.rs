//! An HTTP/2 client that stops reading its responses (a zero flow-control
//! window, on purpose or because it is slow) stalls only itself. Its
//! streams' unread data holds flow-control window of the upstream
//! connection its requests went on; were that connection shared with other
//! clients, a few such streams would exhaust its connection window (or the
//! server's memory for the session) and every other client's responses to
//! that endpoint would stop.

mod common;

use std::time::Duration;

use common::http::*;
use common::within;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

const T: Duration = Duration::from_secs(20);

/// An HTTP/2 client connection that grants no flow-control window: the
/// server may send headers but not a byte of any body.
async fn h2_client_never_reading(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (tx, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).initial_stream_window_size(0).handshake(io).await.unwrap();
    tokio::spawn(conn);
    tx
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_other_clients() {
    let (backend, _) = h2_backend("b").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let stuck = h2_client_never_reading(proxy).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut c = stuck.clone();
        let resp = within(T, c.send_request(Request::get("http://big.test/size/4000000").body(full("")).unwrap())).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    // The stuck client's streams are open with their bodies unread; a
    // second client to the same endpoint still gets its whole body.
    let mut healthy = h2_client(proxy).await;
    for i in 0..3 {
        let resp = within(T, healthy.send_request(Request::get("http://ok.test/size/2000000").body(full("")).unwrap())).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (sha, n, _) = tokio::time::timeout(T, body_sha(resp.into_body()))
            .await
            .unwrap_or_else(|_| panic!("request {i}: the healthy client's body stalled behind the stuck client"));
        assert_eq!((sha, n), (pattern_sha(2_000_000), 2_000_000), "request {i}");
    }
    // Each client connection's upstream connection closes with it.
    drop((held, stuck, healthy));
    let upstream_open = |e: &meshpipe_core::Engine| e.snapshot().tcp.iter().map(|s| s.dst_open).sum::<i64>();
    let closed = tokio::time::timeout(T, async {
        while upstream_open(&engine) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "upstream connections still open after their clients left: {}", upstream_open(&engine));
}
