//! Per-request balancing over a Service's endpoints: requests of one client
//! connection spread over every endpoint, a killed endpoint is taken out
//! with no 5xx beyond the requests in flight on it, endpoint updates apply
//! without cutting requests in flight, and an empty endpoint set is a 503.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::within;
use meshpipe_core::http::endpoints::{EndpointsUpdate, ServiceEndpointsSpec};

const T: Duration = Duration::from_secs(30);

/// An HTTP/1 backend that answers with its name and can be killed (its
/// listener and every connection closed at once).
struct Killable {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Killable {
    async fn start(name: &'static str) -> Killable {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else { return };
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        if let Some(ms) = req.uri().path().strip_prefix("/slow/") {
                            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(full(name)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(sock), svc).await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Killable { addr, tasks }
    }

    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A change onto generation `generation - 1` (the engine starts at 0).
fn service_update(generation: u64, service: SocketAddr, endpoints: &[SocketAddr]) -> EndpointsUpdate {
    EndpointsUpdate {
        generation,
        base: generation - 1,
        replace: false,
        upsert: vec![ServiceEndpointsSpec {
            service: service.to_string(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            source: "test".into(),
        }],
        remove: vec![],
    }
}

/// A loopback address nothing listens on: the Service's "cluster IP".
fn service_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn call(c: &mut hyper::client::conn::http1::SendRequest<BoxBody>, path: &str) -> (u16, String) {
    let resp = within(T, c.send_request(get(path))).await.unwrap();
    let status = resp.status().as_u16();
    (status, text(resp).await)
}

#[tokio::test]
async fn requests_of_one_connection_spread_and_a_killed_backend_is_taken_out() {
    let backends = [Killable::start("a").await, Killable::start("b").await, Killable::start("c").await];
    let service = service_addr();
    let (engine, proxy) = common::forward(service, Some("http1"), serde_json::json!({})).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    assert_eq!(engine.update_endpoints(&service_update(1, service, &addrs)).unwrap(), 1);
    let mut c = h1_client(proxy).await;
    let mut by: HashMap<String, usize> = HashMap::new();
    for _ in 0..90 {
        let (status, who) = call(&mut c, "/").await;
        assert_eq!(status, 200);
        *by.entry(who).or_default() += 1;
    }
    assert_eq!(by.len(), 3, "one client connection reached all three: {by:?}");

    // Kill "b" while four clients keep sending: failures are bounded by the
    // requests in flight on it (one per client at most), none after.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(h1_client(proxy).await);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for mut c in clients {
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut after) = (0u32, 0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, who) = call(&mut c, "/slow/1").await;
                if status == 200 {
                    ok += 1;
                    after.push(who);
                } else {
                    failed += 1;
                }
            }
            (ok, failed, after)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    backends[1].kill();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed = 0;
    for l in loops {
        let (ok, f, _) = within(T, l).await.unwrap();
        assert!(ok > 0);
        failed += f;
    }
    assert!(failed <= 4, "{failed} failures: more than the requests in flight at the kill");
    for _ in 0..60 {
        let (status, who) = call(&mut c, "/").await;
        assert_eq!(status, 200);
        assert_ne!(who, "b", "the killed backend is out");
    }
    let snap = engine.snapshot();
    let fives: u64 = snap.http.iter().flat_map(|s| &s.responses).filter(|r| r.status_code.is_some_and(|s| s >= 500)).map(|r| r.count).sum();
    assert_eq!(fives, failed as u64, "the metrics count exactly the failures the clients saw");
}

#[tokio::test]
async fn endpoint_updates_apply_to_new_requests_without_cutting_in_flight_ones() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let service = service_addr();
    let (engine, proxy) = common::forward(service, Some("http1"), serde_json::json!({})).await;
    engine.update_endpoints(&service_update(1, service, &[a.addr])).unwrap();
    let mut slow = h1_client(proxy).await;
    let in_flight = tokio::spawn(async move { call(&mut slow, "/slow/300").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.update_endpoints(&service_update(2, service, &[b.addr])).unwrap();
    let mut c = h1_client(proxy).await;
    for _ in 0..10 {
        assert_eq!(call(&mut c, "/").await, (200, "b".to_string()));
    }
    assert_eq!(within(T, in_flight).await.unwrap(), (200, "a".to_string()), "the request in flight finished on its endpoint");
    assert_eq!(engine.snapshot().endpoints.generation, 2);
}

#[tokio::test]
async fn a_service_without_endpoints_answers_503_and_bad_updates_are_refused() {
    let service = service_addr();
    let (engine, proxy) = common::forward(service, Some("http1"), serde_json::json!({})).await;
    engine.update_endpoints(&service_update(1, service, &[])).unwrap();
    let mut c = h1_client(proxy).await;
    let (status, body) = call(&mut c, "/").await;
    assert_eq!(status, 503, "{body}");
    let err = engine
        .update_endpoints(&EndpointsUpdate {
            generation: 2,
            base: 1,
            upsert: vec![ServiceEndpointsSpec { service: "nope".into(), endpoints: vec![], source: "file.yaml:3".into() }],
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("file.yaml:3"), "{err}");
    let snap = engine.snapshot().endpoints;
    assert_eq!((snap.generation, snap.updates_rejected), (1, 1), "the table in force is kept, the refusal counted");
    assert!(snap.last_rejection.unwrap().message.contains("file.yaml:3"));
    // All endpoints refusing: 502 after trying them, never a hang.
    let dead = [service_addr(), service_addr()];
    engine.update_endpoints(&service_update(2, service, &dead)).unwrap();
    let (status, _) = call(&mut c, "/").await;
    assert!(status == 502 || status == 503, "{status}");
}

#[tokio::test]
async fn an_endpoint_that_is_the_proxy_itself_is_a_508_that_closes_the_connection() {
    let service = service_addr();
    let (engine, proxy) = common::forward(service, Some("http1"), serde_json::json!({})).await;
    engine.update_endpoints(&service_update(1, service, &[proxy])).unwrap();
    let mut c = h1_client(proxy).await;
    let resp = within(T, c.send_request(get("/"))).await.unwrap();
    assert_eq!(resp.status(), 508);
    assert_eq!(resp.headers()["connection"], "close");
    assert!(resp.headers().get("l5d-proxy-error").is_none(), "the client is not a meshed proxy");
    text(resp).await;
    let snap = engine.snapshot();
    let looped = snap
        .http_errors
        .iter()
        .find(|e| e.error == meshpipe_core::http::HttpErrorReason::Loop && e.direction == meshpipe_core::Direction::Outbound)
        .unwrap();
    assert_eq!(looped.count, 1);
    let own = snap.tcp.iter().find(|t| t.target_addr.as_deref() == Some(proxy.to_string().as_str()));
    assert!(own.is_none_or(|t| t.dst_open_total == 0), "refused before any dial: the proxy never connected to itself: {own:?}");
}
