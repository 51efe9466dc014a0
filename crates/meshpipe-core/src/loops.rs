//! Forwarding loops: a target that is one of the proxy's own listeners.
//!
//! A forward to itself (`--forward A=A`, or two listeners forwarding to each
//! other) makes every connection open another one to the proxy, until every
//! descriptor is gone. Such a config is refused before anything listens
//! ([`check_config`], from the listener addresses alone) and again once the
//! listeners are bound ([`OwnAddrs::config_loop`], with ports chosen by the
//! kernel and this machine's interface addresses). At run time every target
//! (fixed or an original destination) is checked before it is dialled
//! ([`OwnAddrs::is_own`]): a loop through another interface address, a
//! wildcard bind or an IPv4-mapped IPv6 address is refused and counted.
//!
//! Matching follows what the kernel would deliver: a listener bound to
//! `0.0.0.0` (or `[::]`) receives connections to any local address of its
//! family, including all of 127.0.0.0/8; a target of `0.0.0.0` (or `[::]`)
//! is dialled as the loopback address; `[::ffff:a.b.c.d]` is IPv4. Targets are
//! IP addresses (the config accepts no host names), so a loop "through a
//! name" is a loop through one of these addresses.
//!
//! The normal path costs no system call: the check compares the target's
//! port with the listeners' ports (a handful), and only a target on a
//! listener's port is compared with the local address list, loaded at start
//! and reloaded (at most once a second) when such a target's address is not
//! in it, so an address added to an interface later is still recognised.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::addr::TargetAddr;
use crate::config::{ListenerConfig, Target};

/// How often the interface addresses may be reloaded at most.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A listener whose fixed target is a listener of the same proxy.
#[derive(Debug, thiserror::Error)]
#[error(
    "listener {name:?} forwards to {target}, which is the proxy's own listener {own:?} (bind {bind}): \
     every connection would loop back into the proxy; expected a target that is not one of its listeners"
)]
pub struct LoopError {
    pub name: String,
    pub target: SocketAddr,
    pub own: String,
    pub bind: SocketAddr,
}

/// `[::ffff:a.b.c.d]:p` is `a.b.c.d:p` on the wire; `0.0.0.0` and `[::]` are dialled as loopback.
fn dialled(target: SocketAddr) -> SocketAddr {
    let ip = match target.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, target.port())
}

/// Whether a connection to `target` would reach a socket listening on
/// `bind`, given which addresses are this machine's own.
fn reaches(bind: SocketAddr, target: SocketAddr, is_local: impl Fn(IpAddr) -> bool) -> bool {
    if bind.port() != target.port() || bind.port() == 0 {
        return false;
    }
    let target = dialled(target);
    match (bind.ip(), target.ip()) {
        (IpAddr::V4(b), IpAddr::V4(t)) if b.is_unspecified() => t.is_loopback() || is_local(IpAddr::V4(t)),
        // A `[::]` listener is IPv6-only (listener::bind sets IPV6_V6ONLY).
        (IpAddr::V6(b), IpAddr::V6(t)) if b.is_unspecified() => t.is_loopback() || is_local(IpAddr::V6(t)),
        (b, t) => b == t,
    }
}

/// Refuses, before anything is bound, a fixed target that is one of the
/// listeners' own addresses (exactly, through a wildcard bind and a loopback
/// or wildcard target, or as IPv4-mapped IPv6).
pub fn check_config(listeners: &[ListenerConfig]) -> Result<(), LoopError> {
    let binds: Vec<(&str, SocketAddr)> = listeners.iter().map(|l| (l.name.as_str(), l.bind.0)).collect();
    find_loop(listeners.iter().map(|l| (l.name.as_str(), &l.target)), &binds, |_| false)
}

fn find_loop<'a>(
    targets: impl Iterator<Item = (&'a str, &'a Target)>,
    binds: &[(&str, SocketAddr)],
    is_local: impl Fn(IpAddr) -> bool,
) -> Result<(), LoopError> {
    for (name, target) in targets {
        // A named target's addresses as resolved at start; later ones are checked per connection.
        for target in target.fixed_addrs() {
            if let Some((own, bind)) = binds.iter().find(|(_, bind)| reaches(*bind, target, &is_local)) {
                return Err(LoopError { name: name.to_string(), target, own: own.to_string(), bind: *bind });
            }
        }
    }
    Ok(())
}

/// The proxy's own listening addresses and this machine's interface addresses.
pub struct OwnAddrs {
    /// Bound addresses (real ports), with the listener names.
    listeners: Vec<(Arc<str>, SocketAddr)>,
    local: ArcSwap<Vec<IpAddr>>,
    started: Instant,
    /// When the local addresses were last loaded, in ms since `started`.
    loaded_ms: AtomicU64,
}

/// Every address of this machine's interfaces, loopback included.
fn local_ips() -> std::io::Result<Vec<IpAddr>> {
    Ok(crate::sys::interface_addresses()?.into_iter().map(|a| a.ip).collect())
}

impl OwnAddrs {
    /// For the bound listeners; loads the interface addresses now.
    pub fn new(listeners: Vec<(Arc<str>, SocketAddr)>) -> OwnAddrs {
        OwnAddrs {
            listeners,
            local: ArcSwap::from_pointee(local_ips().unwrap_or_default()),
            started: Instant::now(),
            loaded_ms: AtomicU64::new(0),
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        self.local.load().contains(&ip)
    }

    /// Refuses a fixed target of `listeners` that reaches one of the bound listeners.
    pub fn config_loop(&self, listeners: &[(Arc<str>, Target)]) -> Result<(), LoopError> {
        let binds: Vec<(&str, SocketAddr)> = self.listeners.iter().map(|(n, a)| (&**n, *a)).collect();
        find_loop(listeners.iter().map(|(n, t)| (&**n, t)), &binds, |ip| self.is_local(ip))
    }

    /// Whether dialling `target` would reach one of the proxy's listeners.
    pub fn is_own(&self, target: TargetAddr) -> bool {
        let target = target.0;
        let mut on_wildcard = false;
        for (_, bind) in &self.listeners {
            if bind.port() != target.port() {
                continue;
            }
            if reaches(*bind, target, |ip| self.is_local(ip)) {
                return true;
            }
            on_wildcard |= bind.ip().is_unspecified();
        }
        // A target on a wildcard listener's port whose address is not known
        // to be local: the interfaces may have changed since they were loaded.
        on_wildcard && self.reload() && self.listeners.iter().any(|(_, bind)| reaches(*bind, target, |ip| self.is_local(ip)))
    }

    /// Reloads the interface addresses unless that was done within the last
    /// second. Returns whether it did.
    fn reload(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.loaded_ms.load(Relaxed);
        if now.saturating_sub(last) < RELOAD_EVERY.as_millis() as u64 && last != 0 {
            return false;
        }
        if self.loaded_ms.compare_exchange(last, now.max(1), Relaxed, Relaxed).is_err() {
            return false;
        }
        match local_ips() {
            Ok(ips) => {
                self.local.store(Arc::new(ips));
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::BindAddr;
    use crate::vocab::Direction;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn listener(name: &str, bind: &str, target: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            bind: BindAddr(a(bind)),
            target: Target::Fixed(TargetAddr(a(target))),
            mode: None,
            direction: Direction::Outbound,
        }
    }

    #[test]
    fn what_reaches_a_listener() {
        let none = |_: IpAddr| false;
        assert!(reaches(a("127.0.0.1:5000"), a("127.0.0.1:5000"), none));
        assert!(!reaches(a("127.0.0.1:5000"), a("127.0.0.1:5001"), none));
        assert!(!reaches(a("127.0.0.1:5000"), a("127.0.0.2:5000"), none), "another loopback address, another socket");
        assert!(reaches(a("0.0.0.0:5000"), a("127.0.0.2:5000"), none), "a wildcard bind takes all of 127/8");
        assert!(reaches(a("127.0.0.1:5000"), a("0.0.0.0:5000"), none), "0.0.0.0 is dialled as loopback");
        assert!(reaches(a("127.0.0.1:5000"), a("[::ffff:127.0.0.1]:5000"), none), "IPv4-mapped IPv6");
        assert!(reaches(a("[::1]:5000"), a("[::]:5000"), none));
        assert!(!reaches(a("[::]:5000"), a("127.0.0.1:5000"), none), "a [::] listener is IPv6-only");
        assert!(!reaches(a("0.0.0.0:5000"), a("10.1.2.3:5000"), none));
        assert!(reaches(a("0.0.0.0:5000"), a("10.1.2.3:5000"), |ip| ip == a("10.1.2.3:0").ip()), "an interface address");
        assert!(!reaches(a("0.0.0.0:0"), a("127.0.0.1:0"), none), "port 0 is not a port yet");
    }

    #[test]
    fn config_loops_name_both_listeners() {
        let err = check_config(&[listener("a", "127.0.0.1:5000", "127.0.0.1:5000")]).unwrap_err().to_string();
        assert!(err.contains("\"a\" forwards to 127.0.0.1:5000") && err.contains("own listener \"a\" (bind 127.0.0.1:5000)"), "{err}");
        let err = check_config(&[listener("a", "127.0.0.1:5000", "127.0.0.1:6000"), listener("b", "0.0.0.0:6000", "10.9.9.9:80")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\" forwards to 127.0.0.1:6000") && err.contains("\"b\" (bind 0.0.0.0:6000)"), "{err}");
        check_config(&[listener("a", "127.0.0.1:5000", "127.0.0.1:5001"), listener("b", "127.0.0.1:0", "127.0.0.1:0")]).unwrap();
    }

    #[test]
    fn run_time_check_sees_interface_addresses() {
        let own = OwnAddrs::new(vec![(Arc::from("in"), a("0.0.0.0:4143")), (Arc::from("out"), a("127.0.0.1:4140"))]);
        let local = local_ips().unwrap();
        for ip in local.iter().filter(|ip| ip.is_ipv4()) {
            assert!(own.is_own(TargetAddr(SocketAddr::new(*ip, 4143))), "{ip} is this machine's");
        }
        assert!(own.is_own(TargetAddr(a("[::ffff:127.0.0.1]:4140"))));
        assert!(!own.is_own(TargetAddr(a("127.0.0.1:8080"))));
        assert!(!own.is_own(TargetAddr(a("192.0.2.1:4143"))), "TEST-NET-1 is nobody's interface");
    }
}
