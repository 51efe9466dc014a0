//! Per-request load balancing over a Service's endpoints.
//!
//! A request whose original destination is a Service in the endpoints table
//! (endpoints.rs) goes to one of its endpoints, picked per request (not per
//! connection) by the power of two choices over peak-EWMA latency, as Linkerd does with tower's
//! `PeakEwma`: two endpoints are drawn at random and the one with the lower
//! cost (`ewma × (in-flight + 1)`) wins. The EWMA follows peaks at once and
//! decays toward lower latencies with a 10 s time constant. Each worker keeps
//! its own statistics (thread-local, no lock; a worker's own requests are a
//! fair sample of the endpoints' latency).
//!
//! An endpoint whose connection fails is taken out for a back-off (1 s,
//! doubling to 30 s while it keeps failing) and probed back when it expires:
//! the next request that picks it tries it, and on success it is fully back.
//! A request that could not be written to a failing endpoint goes to another
//! one, so a killed backend costs only the requests that were in flight on it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoints::{EndpointsTable, ServiceEndpoints};

/// Tower's default decay for peak-EWMA.
const DECAY: Duration = Duration::from_secs(10);
/// What a new endpoint is assumed to cost (Linkerd's default RTT).
const DEFAULT_RTT_NS: f64 = 30_000_000.0;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct EpState {
    addr: SocketAddr,
    ewma_ns: f64,
    stamp: Instant,
    pending: u32,
    down_until: Option<Instant>,
    backoff: Duration,
    /// Whether a latency was observed yet.
    observed: bool,
}

impl EpState {
    fn new(addr: SocketAddr, now: Instant) -> EpState {
        EpState { addr, ewma_ns: DEFAULT_RTT_NS, stamp: now, pending: 0, down_until: None, backoff: BACKOFF_MIN, observed: false }
    }

    /// The estimate decayed to `now`: like tower's `PeakEwma`, an endpoint
    /// that is not picked drifts back toward zero cost, so one bad sample
    /// (a slow first request) cannot starve it for good.
    fn estimate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.ewma_ns * (-elapsed / DECAY.as_secs_f64()).exp()
    }

    /// `ewma × (in-flight + 1)`; an endpoint never observed is assumed to be
    /// as fast as the observed ones on average (`typical`), so a new endpoint
    /// gets its share at once instead of waiting for the others to slow down.
    fn cost(&self, now: Instant, typical: Option<f64>) -> f64 {
        let estimate = if self.observed { self.estimate(now) } else { typical.unwrap_or(DEFAULT_RTT_NS) };
        estimate * f64::from(self.pending + 1)
    }

    fn observe(&mut self, rtt: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let decayed = self.estimate(now);
        self.ewma_ns = if rtt > decayed {
            // Peaks are taken at once.
            rtt
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            decayed * w + rtt * (1.0 - w)
        };
        self.stamp = now;
        self.observed = true;
    }
}

/// One worker's view of one Service.
struct Balancer {
    /// The table entry it was built from (compared by pointer).
    from: Arc<ServiceEndpoints>,
    eps: Vec<EpState>,
}

thread_local! {
    static BALANCERS: RefCell<HashMap<(u64, SocketAddr), Balancer>> = RefCell::default();
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ (std::process::id() as u64) << 32 | 1
}

/// xorshift64*: cheap, thread-local, plenty for picking two endpoints.
fn random(n: usize) -> usize {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    })
}

/// An endpoint picked for one request. Report how it went with
/// [`Pick::success`] or [`Pick::failed`]; dropped otherwise, it only ends
/// the request's in-flight count.
pub struct Pick {
    key: (u64, SocketAddr),
    pub addr: SocketAddr,
    started: Instant,
    reported: bool,
}

impl Pick {
    fn with_state(&self, f: impl FnOnce(&mut EpState)) {
        let _ = BALANCERS.try_with(|b| {
            if let Some(ep) = b.borrow_mut().get_mut(&self.key).and_then(|bal| bal.eps.iter_mut().find(|e| e.addr == self.addr)) {
                f(ep);
            }
        });
    }

    /// The endpoint answered (response headers): its latency feeds the EWMA
    /// and it is healthy again.
    pub fn success(mut self) {
        self.reported = true;
        let rtt = self.started.elapsed();
        self.with_state(|ep| {
            ep.pending = ep.pending.saturating_sub(1);
            ep.observe(rtt);
            ep.down_until = None;
            ep.backoff = BACKOFF_MIN;
        });
    }

    /// The endpoint could not be reached: out for its back-off.
    pub fn failed(mut self) {
        self.reported = true;
        self.with_state(|ep| {
            ep.pending = ep.pending.saturating_sub(1);
            ep.down_until = Some(Instant::now() + ep.backoff);
            ep.backoff = (ep.backoff * 2).min(BACKOFF_MAX);
        });
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if !self.reported {
            self.with_state(|ep| ep.pending = ep.pending.saturating_sub(1));
        }
    }
}

/// Picks an endpoint of `service` for one request, avoiding `exclude`
/// (endpoints this request already failed on). `None`: every endpoint is
/// excluded or backing off (or there are none).
pub fn pick(engine: u64, service: SocketAddr, entry: &Arc<ServiceEndpoints>, exclude: &[SocketAddr]) -> Option<Pick> {
    let key = (engine, service);
    BALANCERS.with(|b| {
        let mut b = b.borrow_mut();
        let now = Instant::now();
        let bal = b
            .entry(key)
            .or_insert_with(|| Balancer { from: entry.clone(), eps: entry.endpoints.iter().map(|a| EpState::new(*a, now)).collect() });
        if !Arc::ptr_eq(&bal.from, entry) {
            // The endpoint set changed: keep what is known of the survivors.
            let mut old: HashMap<SocketAddr, EpState> = bal.eps.drain(..).map(|e| (e.addr, e)).collect();
            bal.eps = entry.endpoints.iter().map(|a| old.remove(a).unwrap_or_else(|| EpState::new(*a, now))).collect();
            bal.from = entry.clone();
        }
        let ready: Vec<usize> =
            (0..bal.eps.len()).filter(|&i| !exclude.contains(&bal.eps[i].addr) && bal.eps[i].down_until.is_none_or(|t| t <= now)).collect();
        let chosen = match ready.len() {
            0 => return None,
            1 => ready[0],
            n => {
                let observed: Vec<f64> = ready.iter().filter(|&&i| bal.eps[i].observed).map(|&i| bal.eps[i].estimate(now)).collect();
                let typical = (!observed.is_empty()).then(|| observed.iter().sum::<f64>() / observed.len() as f64);
                let a = ready[random(n)];
                let mut bi = ready[random(n - 1)];
                if bi == a {
                    bi = ready[n - 1];
                }
                if bal.eps[bi].cost(now, typical) < bal.eps[a].cost(now, typical) {
                    bi
                } else {
                    a
                }
            }
        };
        let ep = &mut bal.eps[chosen];
        ep.pending += 1;
        Some(Pick { key, addr: ep.addr, started: now, reported: false })
    })
}

/// Forgets this worker's state of `engine`'s Services that left the table.
pub fn retain(engine: u64, table: &EndpointsTable) {
    let _ = BALANCERS.try_with(|b| b.borrow_mut().retain(|(e, s), _| *e != engine || table.get(*s).is_some()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::endpoints::{EndpointsUpdate, ServiceEndpointsSpec};

    fn spec(service: &str, eps: &[&str]) -> ServiceEndpointsSpec {
        ServiceEndpointsSpec { service: service.into(), endpoints: eps.iter().map(|s| s.to_string()).collect(), source: "test".into() }
    }

    #[test]
    fn p2c_spreads_and_prefers_the_faster_endpoint() {
        let entry = Arc::new(ServiceEndpoints {
            endpoints: vec!["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), "10.0.0.3:80".parse().unwrap()],
            source: Arc::from("t"),
        });
        let svc: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for _ in 0..300 {
            let p = pick(900, svc, &entry, &[]).unwrap();
            *counts.entry(p.addr).or_default() += 1;
            drop(p);
        }
        assert_eq!(counts.len(), 3, "every endpoint gets requests: {counts:?}");
        // Every endpoint answers fast once, then .3 turns slow: it should
        // lose nearly every comparison it is in.
        let mut fast = std::collections::HashSet::new();
        while fast.len() < 3 {
            let p = pick(900, svc, &entry, &[]).unwrap();
            fast.insert(p.addr);
            p.success();
        }
        // .3's requests now take 2 s (its state as five slow answers leave it).
        BALANCERS.with(|b| {
            let mut b = b.borrow_mut();
            let ep = b.get_mut(&(900, svc)).unwrap().eps.iter_mut().find(|e| e.addr == entry.endpoints[2]).unwrap();
            for _ in 0..5 {
                ep.observe(Duration::from_secs(2));
            }
        });
        let slow = (0..300).filter(|_| pick(900, svc, &entry, &[]).unwrap().addr == entry.endpoints[2]).count();
        assert!(slow < 30, "the slow endpoint still got {slow} of 300");
    }

    #[test]
    fn failed_endpoints_back_off_and_come_back() {
        let entry = Arc::new(ServiceEndpoints {
            endpoints: vec!["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap()],
            source: Arc::from("t"),
        });
        let svc: SocketAddr = "10.96.0.9:80".parse().unwrap();
        let bad = entry.endpoints[0];
        let p = loop {
            let p = pick(901, svc, &entry, &[]).unwrap();
            if p.addr == bad {
                break p;
            }
        };
        p.failed();
        for _ in 0..50 {
            assert_ne!(pick(901, svc, &entry, &[]).unwrap().addr, bad, "a failed endpoint is out for its back-off");
        }
        assert!(pick(901, svc, &entry, &[entry.endpoints[1]]).is_none(), "nothing left once the other is excluded");
        // The back-off expiring puts it back (probe).
        BALANCERS.with(|b| b.borrow_mut().get_mut(&(901, svc)).unwrap().eps[0].down_until = Some(Instant::now()));
        assert!((0..100).any(|_| pick(901, svc, &entry, &[]).unwrap().addr == bad));
    }

    #[test]
    fn state_of_services_that_left_the_table_is_forgotten() {
        let t = EndpointsTable::default()
            .apply(&EndpointsUpdate {
                generation: 1,
                replace: true,
                upsert: vec![spec("10.96.0.7:80", &["10.0.0.1:80"])],
                ..Default::default()
            })
            .unwrap();
        let svc: SocketAddr = "10.96.0.7:80".parse().unwrap();
        let entry = t.get(svc).unwrap().clone();
        drop(pick(902, svc, &entry, &[]));
        let known = || BALANCERS.with(|b| b.borrow().contains_key(&(902, svc)));
        retain(902, &t);
        assert!(known(), "still in the table");
        retain(
            902,
            &t.apply(&EndpointsUpdate { generation: 2, base: 1, remove: vec!["10.96.0.7:80".into()], ..Default::default() }).unwrap(),
        );
        assert!(!known(), "left the table");
    }
}
