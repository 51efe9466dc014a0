//! Micro-benchmark of mesh TLS with meshpipe's own configs:
//!
//! 1. full TLS 1.3 mutual handshakes (ECDSA P-256, client certificate
//!    verified, identity checked) per second on one core, client and
//!    server in one single-threaded runtime over loopback TCP, so one
//!    handshake costs both ends' work;
//! 2. the user-space memory an idle established connection holds (heap
//!    bytes, counted by a global allocator), per side, fresh and after a
//!    bulk transfer, with the stream forwarder's buffers included;
//! 3. the cost of deriving a per-peer client config.
//!
//! Run: `cargo run --release -p meshpipe-core --example mtls_bench [handshakes] [idle]`

use std::time::{Duration, Instant, SystemTime};

use meshpipe_core::copy::stream::{forward, Transport};
use meshpipe_core::copy::Counters;
use meshpipe_core::identity::issue;
use meshpipe_core::identity::material::{IdentityMaterial, MaterialSources, PemSource};
use meshpipe_core::identity::Identity;
use meshpipe_core::tls::{self, AlpnRule, ClientAlpn, MeshTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// dhat's allocator forwards to the system allocator and, while a profiler
// runs (only around the memory measurements), counts live heap bytes.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn live() -> isize {
    dhat::HeapStats::get().curr_bytes as isize
}

const T: Duration = Duration::from_secs(10);

fn material(ca: &issue::TrustBundle, name: &Identity) -> IdentityMaterial {
    let w =
        issue::issue(&ca.issuer.cert_pem, &ca.issuer.key_pem, "issuer.crt", name, Duration::from_secs(86_400), SystemTime::now()).unwrap();
    let src = MaterialSources {
        cert: PemSource { file: "tls.crt", pem: w.cert_pem.as_bytes() },
        key: PemSource { file: "tls.key", pem: w.key_pem.as_bytes() },
        anchors: PemSource { file: "ca.crt", pem: ca.anchor.cert_pem.as_bytes() },
        name: None,
    };
    IdentityMaterial::load(&src, &tls::provider(), SystemTime::now()).unwrap()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let handshakes = args.first().copied().unwrap_or(3000);
    let idle = args.get(1).copied().unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run(handshakes, idle));
}

async fn run(handshakes: usize, idle: usize) {
    let ca = issue::init("cluster.local", Duration::from_secs(365 * 86_400), Duration::from_secs(30 * 86_400), SystemTime::now()).unwrap();
    let web = Identity::parse("web.shop.serviceaccount.identity.linkerd.cluster.local").unwrap();
    let db = Identity::parse("db.shop.serviceaccount.identity.linkerd.cluster.local").unwrap();
    let client = MeshTls::new(&material(&ca, &web)).unwrap().current();
    let server = MeshTls::new(&material(&ca, &db)).unwrap().current();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // 3. Per-peer client config derivation.
    let n = 100_000;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(client.client_config(&db, ClientAlpn::Tunnel));
    }
    println!("client_config(peer): {:.2} us each", t0.elapsed().as_secs_f64() * 1e6 / n as f64);

    // 1. Handshakes per second on this one thread (both ends).
    let one = |c: TcpStream, s: TcpStream| {
        let (client, server, db) = (client.clone(), server.clone(), db.clone());
        async move {
            let (c, s) = tokio::join!(tls::connect(&client, c, &db, ClientAlpn::Tunnel, T), tls::accept(&server, s, AlpnRule::Tunnel, T));
            (c.unwrap().0, s.unwrap().0)
        }
    };
    for _ in 0..50 {
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        one(c, s).await;
    }
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    for _ in 0..handshakes {
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let (mut c, s) = one(c, s).await;
        let _ = c.shutdown().await;
        drop(s);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "mutual handshakes (client+server in one thread, incl. TCP connect/accept): {:.0}/s wall, {:.0} per CPU-second ({:.1} us CPU each, {} runs)",
        handshakes as f64 / secs,
        handshakes as f64 / cpu,
        cpu * 1e6 / handshakes as f64,
        handshakes
    );

    // 2. Idle memory.
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = live();
    let mut pairs = Vec::with_capacity(idle);
    for _ in 0..idle {
        let c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let (mut c, mut s) = one(c, s).await;
        // A first exchange, so both ends are past any lazy setup.
        c.write_all(b"hello").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        pairs.push((c, s));
    }
    let pairs_bytes = live() - before;
    let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let with_servers = live();
    drop(clients);
    let server_only = live() - before;
    let client_only = with_servers - live();
    println!(
        "idle established (small exchange): {} B per pair; client side {} B, server side {} B ({} pairs, heap only, Vec of handles included)",
        pairs_bytes / idle as isize,
        client_only / idle as isize,
        server_only / idle as isize,
        idle
    );
    drop(servers);

    // Two-hop chains as phase 2 will run them: app client -> outbound
    // forwarder (plain <-> client TLS) -> inbound forwarder (server TLS <->
    // plain) -> app server; idle after a first exchange, then after 256 KiB
    // each way. Per chain: both proxies' TLS state, forwarder tasks and
    // sockets, plus the four app-side socket handles of the harness.
    let chains = idle / 2;
    let before = live();
    let mut apps = Vec::with_capacity(chains);
    let mut tasks = Vec::with_capacity(chains * 2);
    for _ in 0..chains {
        let (app_client, out_plain) = tcp_pair(&listener, addr).await;
        let (tls_c, tls_s) = tcp_pair(&listener, addr).await;
        let (in_plain, app_server) = tcp_pair(&listener, addr).await;
        let (c, s) = one(tls_c, tls_s).await;
        tasks.push(tokio::spawn(forward_task(out_plain, c)));
        tasks.push(tokio::spawn(forward_task(s, in_plain)));
        apps.push((app_client, app_server));
    }
    for (a, b) in apps.iter_mut() {
        exchange(a, b, 5).await;
    }
    let fresh = live() - before;
    for (a, b) in apps.iter_mut() {
        exchange(a, b, 256 * 1024).await;
        exchange(b, a, 256 * 1024).await;
    }
    // Let every forwarder run until its reads would block again.
    tokio::task::yield_now().await;
    let after_bulk = live() - before;
    println!(
        "idle two-hop chain through copy::stream::forward: {} B fresh, {} B after 256 KiB each way ({} chains; a proxy holds about half)",
        fresh / chains as isize,
        after_bulk / chains as isize,
        chains
    );
    drop(apps);
    for t in tasks {
        let _ = t.await;
    }
}

/// This process's user + system CPU time (/proc/self/stat), so the rate is
/// per core even when other work shares the machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

async fn tcp_pair(listener: &TcpListener, addr: std::net::SocketAddr) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(addr).await.unwrap();
    let (s, _) = listener.accept().await.unwrap();
    (c, s)
}

async fn forward_task<A: Transport, B: Transport>(mut a: A, mut b: B) {
    static Z: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let fds = std::sync::Arc::new(meshpipe_core::limits::Budget::configured(0));
    let shared = meshpipe_core::copy::Shared::new(Default::default(), 0);
    let c = || Counters { conn: &Z, series: &Z, shared: &shared, fds: &fds };
    let _ = forward(&mut a, &mut b, c(), c(), 16 * 1024).await;
}

/// Sends `n` bytes from `a` and reads them at `b`.
async fn exchange(a: &mut TcpStream, b: &mut TcpStream, n: usize) {
    let data = vec![1u8; n];
    let mut got = vec![0u8; n];
    let (w, r) = tokio::join!(a.write_all(&data), b.read_exact(&mut got));
    w.unwrap();
    r.unwrap();
}
