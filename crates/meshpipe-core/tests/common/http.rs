//! Real HTTP peers for the HTTP proxy tests: hyper servers (HTTP/1 and
//! HTTP/2, with upgrades and CONNECT) and hyper clients over plain sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// `n` bytes of a deterministic pattern, generated frame by frame (never held whole).
pub struct Pattern {
    pub left: u64,
    pub offset: u64,
}

pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        let start = self.offset;
        let chunk: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.left -= n;
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// The SHA-256 of `n` pattern bytes.
pub fn pattern_sha(n: u64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut i = 0;
    while i < n {
        let m = (n - i).min(64 * 1024);
        let chunk: Vec<u8> = (i..i + m).map(pattern_byte).collect();
        h.update(&chunk);
        i += m;
    }
    h.finalize().into()
}

/// Streams a body into a SHA-256 and its length.
pub async fn body_sha(mut body: Incoming) -> ([u8; 32], u64, Option<http::HeaderMap>) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        match frame.into_data() {
            Ok(d) => {
                n += d.len() as u64;
                h.update(&d);
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (h.finalize().into(), n, trailers)
}

/// What a backend saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

/// The backends' behaviour, by request:
/// - `GET /size/N`: N pattern bytes;
/// - `POST /sha`: the SHA-256 (hex) and length of the request body;
/// - `GET /status/N`: status N;
/// - `GET /slow/MS`: answers after MS milliseconds;
/// - `POST /grpc/N` (HTTP/2): echo body, trailers `grpc-status: N`;
/// - `CONNECT deny.*`: 407;
/// - `Upgrade: websocket` / `CONNECT`: 101 / 200, then echo on the tunnel,
///   prefixed with `name` and the authority or path the request named;
/// - anything else: `name method uri host` as text, with the request's
///   `x-echo` header echoed back, `x-keep-alive: N` answered with
///   `Keep-Alive: timeout=N`, and its Content-Length lines in
///   `x-content-length` (`|`-joined).
async fn handle(name: &'static str, seen: Arc<Seen>, mut req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    seen.requests.fetch_add(1, Relaxed);
    let path = req.uri().path().to_string();
    let upgrade = req.headers().get("upgrade").map(|v| v.to_str().unwrap_or("").to_string());
    if req.method() == http::Method::CONNECT && req.uri().host().is_some_and(|h| h.starts_with("deny.")) {
        let mut r = Response::new(full("proxy authentication required"));
        *r.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        return Ok(r);
    }
    if req.method() == http::Method::CONNECT || upgrade.is_some() {
        let label = format!("{name} {}\n", req.uri());
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let _ = io.write_all(label.as_bytes()).await;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            }
        });
        let mut r = Response::new(full(""));
        if let (Some(protocol), false) = (upgrade, req.method() == http::Method::CONNECT) {
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", protocol.parse().unwrap());
            r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        }
        return Ok(r);
    }
    if let Some(n) = path.strip_prefix("/size/") {
        let n: u64 = n.parse().unwrap();
        let mut r = Response::new(Pattern { left: n, offset: 0 }.boxed());
        r.headers_mut().insert("content-length", n.into());
        return Ok(r);
    }
    if path == "/sha" {
        let (sha, n, _) = body_sha(req.into_body()).await;
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        return Ok(Response::new(full(format!("{hex} {n}"))));
    }
    if let Some(n) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {n}")));
        *r.status_mut() = StatusCode::from_u16(n.parse().unwrap()).unwrap();
        return Ok(r);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap())).await;
        return Ok(Response::new(full("slow")));
    }
    if let Some(code) = path.strip_prefix("/grpc/") {
        let code: u16 = code.parse().unwrap();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", code.into());
        let frames = vec![Ok::<_, Infallible>(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let stream_body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut r = Response::new(stream_body.map_err(|e| match e {}).boxed());
        r.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
        return Ok(r);
    }
    let host = req.headers().get("host").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let mut r = Response::new(full(format!("{name} {} {} {host}", req.method(), req.uri())));
    if let Some(v) = req.headers().get("x-echo") {
        r.headers_mut().insert("x-echo", v.clone());
    }
    if let Some(v) = req.headers().get("x-keep-alive") {
        r.headers_mut().insert("keep-alive", format!("timeout={}", v.to_str().unwrap()).parse().unwrap());
    }
    if let Some(v) = req.headers().get("l5d-client-id") {
        r.headers_mut().insert("x-l5d-client-id", v.clone());
    }
    r.headers_mut().insert("x-version", format!("{:?}", req.version()).parse().unwrap());
    // The Content-Length field lines the backend got, `|`-joined.
    let lengths: Vec<&str> = req.headers().get_all("content-length").iter().map(|v| v.to_str().unwrap_or("?")).collect();
    if !lengths.is_empty() {
        r.headers_mut().insert("x-content-length", lengths.join("|").parse().unwrap());
    }
    Ok(r)
}

/// An HTTP/1 backend on 127.0.0.1:0.
pub async fn h1_backend(name: &'static str) -> (SocketAddr, Arc<Seen>) {
    backend(name, false, false).await
}

/// An HTTP/2 (prior knowledge) backend on 127.0.0.1:0, extended CONNECT enabled.
pub async fn h2_backend(name: &'static str) -> (SocketAddr, Arc<Seen>) {
    backend(name, true, true).await
}

/// An HTTP/2 (prior knowledge) backend on 127.0.0.1:0 that does not enable
/// extended CONNECT (RFC 8441), as most HTTP/2 servers.
pub async fn h2_backend_without_extended_connect(name: &'static str) -> (SocketAddr, Arc<Seen>) {
    backend(name, true, false).await
}

async fn backend(name: &'static str, h2: bool, extended_connect: bool) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else { return };
            s.connections.fetch_add(1, Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(name, s.clone(), req));
                let io = TokioIo::new(sock);
                if h2 {
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if extended_connect {
                        b.enable_connect_protocol();
                    }
                    let _ = b.serve_connection(io, svc).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
                }
            });
        }
    });
    (addr, seen)
}

/// An HTTP/1 client connection.
pub async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

/// An HTTP/2 (prior knowledge) client connection.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    tx
}

pub async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

pub fn get(uri: &str) -> Request<BoxBody> {
    Request::get(uri).header("host", "web.test").body(full("")).unwrap()
}

/// An upstream that answers every request with `head` (raw bytes), then
/// echoes whatever else arrives until EOF. Every request head it read is
/// kept, in order, in the returned list.
pub async fn raw_upstream(head: &'static [u8]) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                heads.lock().unwrap().push(seen);
                let _ = s.write_all(head).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, kept)
}

/// Sends raw `request` bytes on a new connection to `proxy` and reads until
/// the proxy closes (within 20 s).
pub async fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    super::within(std::time::Duration::from_secs(20), s.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
