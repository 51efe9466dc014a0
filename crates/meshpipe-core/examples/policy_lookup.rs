//! Measures the policy table at cluster scale, for `npm run bench -- --only
//! policy-scale`: the per-connection lookup cost with N pods (3 ports each,
//! one Service per 5 pods, every pod meshed) against the same table with no
//! destinations, the time to compile the whole table, and the time to apply
//! a one-pod delta. The lookup is the connection path's `route`: the port
//! policy and the meshed peer from one probe.
//!
//! `cargo run --release -p meshpipe-core --example policy_lookup -- 1000 10000 50000`
//! prints one JSON line per size. The lookups run over a pre-built list of
//! targets (pod IPs, Service IPs and unknown addresses inside and outside the
//! cluster networks, on ports the tables do and do not list), so the
//! measurement includes hash-map misses and fallback rules, not just hits.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshpipe_core::addr::TargetAddr;
use meshpipe_core::destinations::MeshPeerSpec;
use meshpipe_core::policy::{
    AddressSpec, Direction, Policy, PolicyDelta, PolicySpec, PolicyStore, PolicyTable, PortMode, PortSpec, PortTableSpec, RuleSpec,
};

const DEFAULTS: [u32; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];
const NETWORKS: [&str; 5] = ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"];

fn rule(direction: Direction, net: Option<&str>, port: u32, source: &str) -> RuleSpec {
    RuleSpec {
        direction,
        net: net.map(str::to_string),
        ports: (port, port),
        mode: PortMode::Opaque,
        detect_timeout_ms: None,
        source: source.into(),
    }
}

/// The rules a sidecar has around its destinations: inbound defaults, cluster defaults, loopback.
fn frame() -> PolicySpec {
    let rules = DEFAULTS.iter().map(|&p| rule(Direction::Inbound, None, p, "opaque: default opaque ports")).collect();
    let mut fallback_rules = Vec::new();
    for net in NETWORKS.iter().chain(["127.0.0.0/8", "::1/128"].iter()) {
        for &p in &DEFAULTS {
            fallback_rules.push(rule(Direction::Outbound, Some(net), p, "opaque: default opaque ports inside clusterNetworks"));
        }
    }
    PolicySpec { generation: 1, rules, fallback_rules, ..Default::default() }
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0af4_0000 + i)
}

fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + i)
}

/// N pods in workloads of 10 replicas (one shared table each), a Service per 5 pods (a table each).
fn cluster(pods: u32) -> PolicySpec {
    let mut spec = frame();
    let workloads = pods.div_ceil(10);
    for w in 0..workloads {
        let source = (0..3).map(|k| format!("source {k} of workload {w} on {{destination}}")).collect();
        let ports = vec![
            PortSpec(8080, 8080, PortMode::Http1, 0),
            PortSpec(9090, 9090, PortMode::Grpc, 1),
            PortSpec(5432, 5432, PortMode::Opaque, 2),
        ];
        let mesh = Some(MeshPeerSpec {
            identity: format!("sa-{w}.ns-{}.serviceaccount.identity.linkerd.cluster.local", w % 50),
            tunnel_port: 4143,
            source: "linkerd.io/inject=enabled on {destination}".into(),
        });
        spec.tables.push(PortTableSpec { id: w, ports, sources: source, mesh });
    }
    for i in 0..pods {
        spec.addresses.push(AddressSpec(pod_ip(i).to_string(), i / 10, format!("Pod ns-{}/pod-{i}", i % 50)));
    }
    for s in 0..pods / 5 {
        let id = workloads + s;
        spec.tables.push(PortTableSpec {
            id,
            ports: vec![PortSpec(80, 80, PortMode::Http2, 0), PortSpec(5432, 5432, PortMode::Opaque, 1)],
            sources: vec![format!("appProtocol on Service ns/svc-{s}"), "opaque: default opaque ports (5432)".into()],
            mesh: None,
        });
        spec.addresses.push(AddressSpec(service_ip(s).to_string(), id, format!("Service ns/svc-{s}")));
    }
    spec
}

/// xorshift64: deterministic targets without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u32 {
        (self.next() % n.max(1)) as u32
    }
}

fn targets(pods: u32, count: usize) -> Vec<TargetAddr> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ports = [8080u16, 9090, 5432, 3306, 80, 443];
    (0..count)
        .map(|_| {
            let ip = match rng.below(10) {
                0..=4 => pod_ip(rng.below(u64::from(pods))),
                5..=6 => service_ip(rng.below(u64::from(pods / 5))),
                7..=8 => Ipv4Addr::from(0x0a80_0000 + rng.below(1 << 20)), // unknown, inside clusterNetworks
                _ => Ipv4Addr::new(203, 0, 113, rng.below(250) as u8),     // outside
            };
            TargetAddr(SocketAddr::new(ip.into(), ports[rng.below(ports.len() as u64) as usize]))
        })
        .collect()
}

/// Nanoseconds per lookup over `targets`, best of `rounds` (the least disturbed by other work).
fn lookup_ns(table: &PolicyTable, targets: &[TargetAddr], rounds: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..8 {
            for t in targets {
                black_box(table.route(Direction::Outbound, black_box(*t)));
            }
        }
        best = best.min(started.elapsed().as_nanos() as f64 / (8 * targets.len()) as f64);
    }
    best
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 10_000, 50_000] } else { sizes };
    for pods in sizes {
        let spec = cluster(pods);
        let started = Instant::now();
        let store = PolicyStore::compile(&spec).expect("the benchmark table is valid");
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let table = store.table();
        let empty = PolicyTable::compile(&frame()).expect("the frame is valid");
        let list = targets(pods, 1 << 16);
        // Interleaved, so both see the same machine conditions.
        let (mut full, mut none) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            full = full.min(lookup_ns(&table, &list, 3));
            none = none.min(lookup_ns(&empty, &list, 3));
        }
        // One pod moves to a new address (same table), 300 times.
        let policy = Policy::new(store);
        let mut times = Vec::new();
        for i in 0..300u32 {
            let delta = PolicyDelta {
                generation: u64::from(i) + 2,
                base: u64::from(i) + 1,
                frame: None,
                tables: vec![],
                drop_tables: vec![],
                addresses: vec![AddressSpec(
                    Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250) as u8).to_string(),
                    i / 10,
                    format!("Pod ns/pod-{i}"),
                )],
                remove_addresses: vec![pod_ip(i).to_string()],
            };
            let started = Instant::now();
            policy.update(&delta).expect("a valid delta");
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{{\"pods\":{pods},\"services\":{},\"addresses\":{},\"tables\":{},\"lookupNs\":{full:.1},\"lookupNsEmpty\":{none:.1},\"compileMs\":{compile_ms:.1},\"updateUsMedian\":{:.1},\"updateUsP99\":{:.1}}}",
            pods / 5,
            spec.addresses.len(),
            spec.tables.len(),
            quantile(&times, 0.5),
            quantile(&times, 0.99),
        );
    }
}
