//! A small HTTP/2 origin for the benchmark (`npm run bench -- --only http2`):
//! cleartext HTTP/2 with prior knowledge on `127.0.0.1:PORT`, one
//! single-threaded runtime per worker thread (`SO_REUSEPORT`), so it is never
//! the bottleneck h2load measures. Every request gets an answer at once:
//! a gRPC request (`content-type: application/grpc`) its own message echoed
//! back as a gRPC response (the message, then trailers `grpc-status: 0`),
//! anything else 512 bytes of text.
//!
//! `cargo run --release -p meshpipe-core --example h2_peer -- PORT [THREADS]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 512])).boxed()));
    }
    let message = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap_or_else(|_| unreachable!()));
    let frames = [Ok::<_, Infallible>(Frame::data(message)), Ok(Frame::trailers(trailers))];
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    resp.headers_mut().insert("content-type", "application/grpc".parse().unwrap_or_else(|_| unreachable!()));
    Ok(resp)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).expect("usage: h2_peer PORT [THREADS]");
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            socket.set_reuse_port(true).expect("SO_REUSEPORT");
            socket.bind(&addr.into()).expect("bind");
            socket.listen(1024).expect("listen");
            socket.set_nonblocking(true).expect("nonblocking");
            let listener: std::net::TcpListener = socket.into();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        let Ok((s, _)) = l.accept().await else { continue };
                        let _ = s.set_nodelay(true);
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(answer);
                            let _ =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(s), svc).await;
                        });
                    }
                })
            })
        })
        .collect();
    eprintln!("h2_peer listening on {addr}");
    for w in workers {
        let _ = w.join();
    }
}
