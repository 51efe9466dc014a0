//! Framing and target rules of the HTTP layer, end to end through a real
//! engine: every message goes on with one framing any parser reads the
//! same way (a repeated Content-Length becomes one decimal value, a
//! Transfer-Encoding list with empty elements is still chunked where the
//! proxy's client decodes it as chunked, and a 502 where it would not), a CONNECT
//! that claims content is refused, userinfo never reaches an upstream, an
//! HTTP/2 field value goes on without surrounding whitespace both ways, and
//! an HTTP/1.0 upstream is answered in the proxy's own version.

mod common;

use std::time::Duration;

use common::http::*;
use common::within;
use http::Request;
use meshpipe_core::http::HttpErrorReason;

const T: Duration = Duration::from_secs(20);

fn bad_requests(engine: &meshpipe_core::Engine) -> u64 {
    engine.snapshot().http_errors.iter().filter(|e| e.error == HttpErrorReason::BadRequest).map(|e| e.count).sum()
}

#[tokio::test]
async fn a_transfer_encoding_list_with_empty_elements_is_still_chunked() {
    // RFC 9110 §5.6.1: a recipient accepts and ignores empty list elements.
    let (upstream, _) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("hello"), "{got}");
}

#[tokio::test]
async fn a_chunked_coding_the_client_would_not_decode_is_a_502() {
    // `chunked,` ends in an empty element: hyper's client takes that as the
    // final coding, so it would not decode the chunks and the client would
    // get the chunk framing as content. Refused instead.
    for te in ["chunked,", "chunked ,"] {
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let (upstream, _) = raw_upstream(Box::leak(head.into_bytes().into_boxed_slice())).await;
        let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
        let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 502"), "{te}: {got}");
        assert!(!got.contains("5\r\nhello"), "{te}: no chunk framing as content: {got}");
    }
}

#[tokio::test]
async fn a_content_length_list_goes_on_as_one_number() {
    // hyper compares the values as numbers: `5, 05` frames 5 bytes, and the
    // client gets `5`, not the list.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 05\r\nConnection: close\r\n\r\nhello").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let lower = got.to_ascii_lowercase();
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("hello"), "{got}");
    assert_eq!(lower.matches("content-length").count(), 1, "{got}");
    assert!(lower.contains("content-length: 5\r\n"), "{got}");
}

#[tokio::test]
async fn an_http2_request_with_two_equal_content_lengths_goes_on_with_one() {
    // h2 accepts two numerically equal content-length fields (RFC 9110
    // §8.6); the upstream gets one decimal value.
    let (backend, _) = h2_backend("h2").await;
    let (_engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    let mut req = Request::post("http://api.test/len").body(full("abc")).unwrap();
    req.headers_mut().append("content-length", http::HeaderValue::from_static("3"));
    req.headers_mut().append("content-length", http::HeaderValue::from_static("03"));
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-content-length").and_then(|v| v.to_str().ok()), Some("3"), "{:?}", resp.headers());
}

#[tokio::test]
async fn a_repeated_content_length_goes_on_as_one_value() {
    // RFC 9110 §8.6: `2, 2` frames 2 bytes; the next parser gets `2`.
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nok").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got =
        raw_exchange(proxy, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").await;
    let lower = got.to_ascii_lowercase();
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got}");
    assert_eq!(lower.matches("content-length").count(), 1, "{got}");
    assert!(lower.contains("content-length: 2\r\n"), "{got}");
    let heads = heads.lock().unwrap();
    let head = String::from_utf8_lossy(&heads[0]).to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    assert!(head.contains("content-length: 3\r\n"), "{head}");
}

#[tokio::test]
async fn a_content_length_list_in_an_http1_request_is_a_400() {
    // hyper's parser refuses a list in one request line (RFC 9110 §8.6 lets
    // a recipient reject it): a 400, and nothing reaches the upstream.
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\nabc").await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(heads.lock().unwrap().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn userinfo_in_an_http1_target_or_host_is_a_400_and_never_sent_upstream() {
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    for request in [
        &b"GET http://user:secret@api.test/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: user@api.test\r\nConnection: close\r\n\r\n",
        b"CONNECT user@db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\nConnection: close\r\n\r\n",
    ] {
        let got = raw_exchange(proxy, request).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{}: {got}", String::from_utf8_lossy(request));
        assert!(got.contains("userinfo"), "the answer says what is wrong: {got}");
    }
    assert!(heads.lock().unwrap().is_empty(), "nothing reached the upstream");
    assert_eq!(bad_requests(&engine), 3);
    // An @ elsewhere in the target is no userinfo.
    let got = raw_exchange(proxy, b"GET /x?mail=a@b HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn userinfo_in_an_http2_authority_is_a_400() {
    // RFC 9113 §8.3.1: `:authority` must not include userinfo.
    let (backend, seen) = h2_backend("h2").await;
    let (engine, proxy) = common::forward(backend, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    let req = Request::get("http://user:secret@api.test/x").body(full("")).unwrap();
    let resp = within(T, c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(text(resp).await.contains("userinfo"));
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0, "never reached the backend");
    let ok = Request::get("http://api.test/x").body(full("")).unwrap();
    assert_eq!(within(T, c.send_request(ok)).await.unwrap().status(), 200, "the connection goes on");
    assert_eq!(bad_requests(&engine), 1);
}

#[tokio::test]
async fn a_connect_that_claims_content_is_a_400_that_closes_the_connection() {
    // RFC 9110 §9.3.6: CONNECT has no content. With a body-framing field the
    // bytes after the head could be a body or the tunnel's; refused, and
    // the connection closed so nothing after the head is read as a request.
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    for request in [
        &b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\nContent-Length: 46\r\n\r\nGET /admin HTTP/1.1\r\nHost: db.test:5432\r\n\r\n"[..],
        b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: db.test:5432\r\n\r\n",
    ] {
        let got = raw_exchange(proxy, request).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        assert!(got.to_ascii_lowercase().contains("connection: close"), "{got}");
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "one answer, nothing after it: {got}");
    }
    assert!(heads.lock().unwrap().is_empty(), "nothing reached the upstream");
    assert_eq!(bad_requests(&engine), 2);
    // Content-Length: 0 frames nothing: the tunnel opens and carries bytes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\nContent-Length: 0\r\n\r\nping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    within(T, s.read_to_end(&mut out)).await.unwrap();
    let got = String::from_utf8_lossy(&out);
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\nping"), "{got}");
}

#[tokio::test]
async fn an_http1_0_upstream_is_answered_as_http1_1_and_the_client_connection_stays_open() {
    // RFC 9110 §6.2: the proxy answers in its own version. An HTTP/1.0
    // response whose body ends with the connection (no Content-Length, as
    // `python3 -m http.server` sends) goes to an HTTP/1.1 client chunked, so
    // the client's keep-alive connection outlives the upstream's.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let mut client = h1_client(proxy).await;
    for round in 0..2 {
        let resp = within(T, client.send_request(get("/"))).await.unwrap_or_else(|e| panic!("request {round} on one connection: {e}"));
        assert_eq!(resp.version(), http::Version::HTTP_11, "request {round}");
        assert_eq!(resp.headers().get("transfer-encoding").map(|v| v.as_bytes()), Some(&b"chunked"[..]), "request {round}");
        assert_eq!(text(resp).await, "hello from 1.0", "request {round}");
        within(T, client.ready()).await.unwrap_or_else(|e| panic!("the client's connection is still open after request {round}: {e}"));
    }
    // An HTTP/1.0 client still gets an HTTP/1.0 answer, read until the
    // close, and is not told to keep alive a connection whose body ends
    // with it (hyper's keep-alive rules for HTTP/1.0 clients stay in charge).
    for request in [&b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..], b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"] {
        let got = raw_exchange(proxy, request).await;
        assert!(got.starts_with("HTTP/1.0 200"), "{got}");
        assert!(got.ends_with("hello from 1.0"), "{got}");
        assert!(!got.to_ascii_lowercase().contains("keep-alive"), "{got}");
    }
}

#[tokio::test]
async fn http2_field_values_go_on_without_surrounding_whitespace_both_ways() {
    // RFC 9113 §8.2.1 calls a padded value malformed; RFC 9110 §5.5 leaves
    // the whitespace out of the value, as HTTP/1 parsers do: the proxy
    // passes on the value every hop agrees on, in heads and trailers.
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = kept.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let got: Vec<String> = req.headers().get_all("x-a").iter().map(|v| format!("{:?}", v.as_bytes())).collect();
                        seen.lock().unwrap().extend(got);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-message", http::HeaderValue::from_static("bad field: "));
                        let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from_static(b"body"))),
                            Ok(http_body::Frame::trailers(trailers)),
                        ]));
                        Ok::<_, std::convert::Infallible>(http::Response::builder().header("x-b", "trail ").body(body).unwrap())
                    }
                });
                let io = hyper_util::rt::TokioIo::new(s);
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, svc).await;
            });
        }
    });
    let (engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
    let mut c = h2_client(proxy).await;
    for value in [" lead", "trail ", "\tleadtab", "a b\tc"] {
        let req = Request::get("http://api.test/x").header("x-a", http::HeaderValue::from_str(value).unwrap()).body(full("")).unwrap();
        let resp = within(T, c.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200, "{value:?}");
        assert_eq!(resp.headers().get("x-b").unwrap(), "trail", "the response's value is trimmed");
        let collected = within(T, http_body_util::BodyExt::collect(resp.into_body())).await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-message").unwrap(), "bad field:", "trailer values are trimmed too");
        assert_eq!(collected.to_bytes(), "body");
    }
    let seen = seen.lock().unwrap().clone();
    let want: Vec<String> = [&b"lead"[..], b"trail", b"leadtab", b"a b\tc"].iter().map(|v| format!("{v:?}")).collect();
    assert_eq!(seen, want, "the upstream got each value without its surrounding whitespace, inner whitespace kept");
    assert_eq!(bad_requests(&engine), 0, "nothing was refused");
}

#[tokio::test]
async fn an_upstream_response_head_over_the_limit_is_a_502() {
    // `--http-max-header-bytes` (64 KiB by default) bounds response heads as
    // it bounds request heads.
    for (size, status) in [(60 * 1024, "200"), (70 * 1024, "502")] {
        let head = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "b".repeat(size));
        let (upstream, _) = raw_upstream(Box::leak(head.into_bytes().into_boxed_slice())).await;
        let (_engine, proxy) = common::forward(upstream, None, serde_json::json!({})).await;
        let got = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "a {size}-byte field: {}", &got[..got.len().min(200)]);
    }
}

#[tokio::test]
async fn a_long_request_line_on_a_declared_http1_port_is_served_as_http() {
    // Past detection's 16 KiB buffer the request line is still HTTP on a
    // port declared HTTP/1: served within the HTTP layer's 64 KiB head limit,
    // a 431 beyond it; never forwarded as bytes (inbound, that would also
    // hand a client's own `l5d-client-id` to the application).
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (engine, proxy) = common::start(serde_json::json!({ "listeners": [{
        "name": "test", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": upstream.to_string() },
        "mode": "http1", "direction": "inbound"
    }]}))
    .await;
    let request = |len: usize| {
        format!("GET /{} HTTP/1.1\r\nHost: a\r\nL5D-Client-Id: forged\r\nConnection: close\r\n\r\n", "q".repeat(len)).into_bytes()
    };
    let got = raw_exchange(proxy, &request(20 * 1024)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{}", &got[..got.len().min(200)]);
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let head = String::from_utf8_lossy(&seen[0]).to_ascii_lowercase();
    assert!(head.starts_with(&format!("get /{} http/1.1\r\n", "q".repeat(20 * 1024))), "the target arrives whole");
    assert!(!head.contains("forged"), "the client's own l5d-client-id is removed: {}", &head[head.len() - 200..]);
    let got = raw_exchange(proxy, &request(70 * 1024)).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{}", &got[..got.len().min(200)]);
    assert_eq!(heads.lock().unwrap().len(), 1, "the oversized request never reached the upstream");
    let not_http: u64 = engine.snapshot().detect.iter().filter(|d| d.result.as_str() == "not_http").map(|d| d.count).sum();
    assert_eq!(not_http, 0, "neither was taken for another protocol");
}

#[tokio::test]
async fn a_request_line_stalled_past_the_detect_timeout_on_a_declared_http1_port_is_still_http() {
    // Detection that ends undecided on a request line so far (the detect
    // timeout here; 256 reads likewise) does not turn a declared HTTP/1
    // port's connection into bytes: the HTTP layer serves it, so inbound a
    // client's own `l5d-client-id` never reaches the application.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, heads) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let (engine, proxy) = common::start(serde_json::json!({
        "listeners": [{
            "name": "test", "bind": "127.0.0.1:0", "target": { "kind": "fixed", "addr": upstream.to_string() },
            "mode": "http1", "direction": "inbound"
        }],
        "detect": { "outboundTimeoutMs": 300, "inboundTimeoutMs": 300, "serverFirstGraceMs": 100 }
    }))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /stalled").await.unwrap();
    // Wait for detection to end: its result is counted when it does.
    within(T, async {
        loop {
            if engine.snapshot().detect.iter().any(|d| d.count > 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let results: Vec<String> = engine.snapshot().detect.iter().filter(|d| d.count > 0).map(|d| d.result.as_str().to_string()).collect();
    assert_eq!(results, ["http/1"], "the declared port's pending request line is HTTP/1");
    s.write_all(b" HTTP/1.1\r\nHost: a\r\nL5D-Client-Id: forged\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    within(T, s.read_to_end(&mut got)).await.unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    let head = String::from_utf8_lossy(&heads.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(head.starts_with("get /stalled http/1.1\r\n"), "{head}");
    assert!(!head.contains("forged"), "the client's own l5d-client-id is removed: {head}");
}

#[tokio::test]
async fn an_http1_0_keep_alive_client_is_never_promised_keep_alive_on_a_body_that_ends_with_the_connection() {
    // A chunked HTTP/1.1 upstream: an HTTP/1.0 client cannot read chunks, so
    // hyper sends the body close-delimited, and must not say `keep-alive`.
    let (chunked, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    let (_engine, proxy) = common::forward(chunked, None, serde_json::json!({})).await;
    let got = raw_exchange(proxy, b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "the body, unchunked, ends with the connection: {got}");
    assert!(!got.to_ascii_lowercase().contains("keep-alive"), "{got}");
    // With a length, the HTTP/1.0 client keeps its connection (two requests on one).
    let (sized, _) = h1_backend("sized").await;
    let (_engine2, proxy2) = common::forward(sized, None, serde_json::json!({})).await;
    let mut s = tokio::net::TcpStream::connect(proxy2).await.unwrap();
    for round in 0..2 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /size/5 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let complete = |got: &[u8]| got.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|at| got.len() >= at + 4 + 5);
        while !complete(&got) {
            let n = within(T, s.read(&mut buf)).await.unwrap();
            assert!(n > 0, "round {round}: the connection closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.0 200") && text.contains("connection: keep-alive") && text.contains("content-length: 5"),
            "round {round}: {text}"
        );
    }
}
