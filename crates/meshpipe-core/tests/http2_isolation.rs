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

/// A client stream that stops being read once `paused` is set: the
/// connection stays open, its socket's receive buffer fills.
struct Pausable {
    inner: tokio::net::TcpStream,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Pausable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Pausable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 backend whose every response is 4 MiB produced 16 KiB at a
/// time, counting the bytes its bodies gave out; it queues little itself.
async fn counting_backend(
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (p, r) = (produced.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else { return };
            let (p, r) = (p.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    r.fetch_add(1, SeqCst);
                    let p = p.clone();
                    let chunks = futures_util::stream::unfold(0u32, move |i| {
                        let p = p.clone();
                        async move {
                            (i < 256).then(|| {
                                p.fetch_add(16 * 1024, SeqCst);
                                (
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![7u8; 16 * 1024]))),
                                    i + 1,
                                )
                            })
                        }
                    });
                    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(chunks));
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_send_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, produced, requests)
}

#[tokio::test]
async fn a_client_that_grants_a_huge_window_and_stops_reading_holds_a_bounded_amount() {
    use std::sync::atomic::Ordering::SeqCst;
    let (backend, produced, requests) = counting_backend().await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = Pausable { inner: tokio::net::TcpStream::connect(proxy).await.unwrap(), paused: paused.clone() };
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32)
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    // As many streams as the proxy allows, each a 4 MiB download.
    const STREAMS: u64 = 100;
    let mut pending = Vec::new();
    for _ in 0..STREAMS {
        let mut c = tx.clone();
        pending.push(tokio::spawn(async move { c.send_request(Request::get("http://big.test/").body(full("")).unwrap()).await }));
    }
    within(T, async {
        while requests.load(SeqCst) < STREAMS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    paused.store(true, SeqCst);
    // The backend goes on only as far as the proxy takes its bodies: wait
    // until it stopped (no progress for half a second).
    let mut last = u64::MAX;
    within(T, async {
        loop {
            let now = produced.load(SeqCst);
            if now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    // What the proxy can hold: 100 streams x 64 KiB queued for the client
    // plus the upstream connection's 1 MiB window; besides that, the
    // backend's own 16 KiB per stream and the kernel's socket buffers
    // (loopback autotuning: a few MB each way). With hyper's default
    // (400 KiB per stream) the proxy alone held 40 MB here.
    let held = produced.load(SeqCst);
    assert!(held < 28 * 1024 * 1024, "the backend could produce {held} bytes for a client that reads nothing");
    assert!(held > 2 * 1024 * 1024, "the streams did run ({held} bytes)");
    drop(pending);
}
