//! Target resolution: where an accepted connection should go, and which
//! connections a transparent listener must refuse.
//!
//! An explicit forward always goes to its configured address. A transparent
//! listener asks the kernel for the connection's original destination (the
//! address the client dialled before iptables redirected it) and refuses
//! connections that were addressed to the proxy itself: without that check a
//! direct connection to 4140/4143 would be forwarded to itself forever.
//!
//! Inbound, the original destination is also checked against the pod
//! (linkerd2 issue 6495, linkerd2-proxy PR 1161): the connection is forwarded
//! to that address, so an app port bound to 127.0.0.1 stays unreachable from
//! the network, and the connection is refused when the address is not one of
//! the pod's own IPs (a redirected packet for some other address has no
//! business reaching the app) or when the port is one of the proxy's own
//! (admin, inbound, outbound): a request that came in through the inbound
//! listener must never reach the admin server as if from a loopback peer.
//! Each refusal is counted with its [`AcceptError`] reason. A forward to a
//! host name picks one of the name's addresses (`names.rs`), and is refused
//! when the name has none.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::addr::TargetAddr;
use crate::config::Target;
use crate::socket;
use crate::vocab::Direction;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read the original destination (SO_ORIGINAL_DST): {0}; is the connection redirected by iptables?")]
    OriginalDst(io::Error),
    #[error("connection addressed to the proxy's own listener {0} refused (loop protection)")]
    Loop(SocketAddr),
    #[error("inbound connection to {0} refused: {ip} is not one of the pod's IPs (inbound.podIps)", ip = .0.ip())]
    NotPodIp(SocketAddr),
    #[error("inbound connection to {0} refused: port {port} is one of the proxy's own ports (inbound.proxyPorts)", port = .0.port())]
    ProxyPort(SocketAddr),
    #[error("connection refused: the target name {0} has no address (it no longer resolves)")]
    Unresolved(String),
}

impl TargetError {
    /// The reason label this refusal is counted under.
    pub fn accept_error(&self) -> AcceptError {
        match self {
            TargetError::OriginalDst(_) => AcceptError::NoOriginalDst,
            TargetError::Loop(_) => AcceptError::Loop,
            TargetError::NotPodIp(_) => AcceptError::NotPodIp,
            TargetError::ProxyPort(_) => AcceptError::ProxyPort,
            TargetError::Unresolved(_) => AcceptError::Unresolved,
        }
    }
}

/// Why a transparent listener refused a connection before forwarding it:
/// the `error` label of `inbound_tcp_accept_errors_total` (Linkerd's metric)
/// and `outbound_tcp_accept_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum AcceptError {
    /// The original destination could not be read (not redirected, or no conntrack entry).
    NoOriginalDst = 0,
    /// Addressed to the listener itself (a direct connection to 4143/4140).
    Loop = 1,
    /// Inbound, to an address that is not one of the pod's IPs.
    NotPodIp = 2,
    /// Inbound, to one of the proxy's own ports (admin, inbound, outbound).
    ProxyPort = 3,
    /// A forward to a host name that has no address (it stopped resolving).
    Unresolved = 4,
}

impl AcceptError {
    pub const COUNT: usize = 5;
    pub const ALL: [AcceptError; AcceptError::COUNT] =
        [AcceptError::NoOriginalDst, AcceptError::Loop, AcceptError::NotPodIp, AcceptError::ProxyPort, AcceptError::Unresolved];

    pub const fn as_str(self) -> &'static str {
        match self {
            AcceptError::NoOriginalDst => "no_original_dst",
            AcceptError::Loop => "loop",
            AcceptError::NotPodIp => "not_pod_ip",
            AcceptError::ProxyPort => "proxy_port",
            AcceptError::Unresolved => "unresolved",
        }
    }
}

/// What transparent inbound listeners accept: connections whose original
/// destination is one of the pod's IPs, on a port that is not the proxy's.
#[derive(Clone, Debug, Default)]
pub struct InboundGuard {
    /// Canonical (IPv4-mapped IPv6 turned into IPv4); a handful at most.
    pod_ips: Box<[IpAddr]>,
    proxy_ports: Box<[u16]>,
}

impl InboundGuard {
    pub fn new(pod_ips: impl IntoIterator<Item = IpAddr>, proxy_ports: impl IntoIterator<Item = u16>) -> InboundGuard {
        InboundGuard { pod_ips: pod_ips.into_iter().map(|ip| ip.to_canonical()).collect(), proxy_ports: proxy_ports.into_iter().collect() }
    }

    /// Whether any pod IP is known (a transparent inbound listener needs one).
    pub fn has_pod_ips(&self) -> bool {
        !self.pod_ips.is_empty()
    }

    /// Checks an inbound original destination.
    pub fn check(&self, orig: SocketAddr) -> Result<(), TargetError> {
        self.check_ip(orig)?;
        if self.proxy_ports.contains(&orig.port()) {
            return Err(TargetError::ProxyPort(orig));
        }
        Ok(())
    }

    /// Checks only that the address is one of the pod's IPs.
    pub fn check_ip(&self, orig: SocketAddr) -> Result<(), TargetError> {
        // The pod IPs are one per family in practice: a scan beats a hash.
        if !self.pod_ips.contains(&orig.ip().to_canonical()) {
            return Err(TargetError::NotPodIp(orig));
        }
        Ok(())
    }
}

/// Where an accepted connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To a target (a fixed forward, or the original destination).
    Forward(TargetAddr),
    /// Inbound, dialled to the inbound port itself ("direct"): Linkerd's
    /// tunnel, whose real target is named by the transport header inside
    /// mesh TLS. Carries the address the client dialled (a pod IP).
    Tunnel(SocketAddr),
}

/// The addresses of this network namespace's interfaces, loopback left out,
/// including interfaces whose link is not running yet: the pod IPs when no
/// one said what they are.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    Ok(crate::sys::interface_addresses()?.into_iter().filter(|a| !a.loopback).map(|a| a.ip).collect())
}

/// Resolves the target of `stream` according to the listener's rule; a
/// transparent inbound listener also applies `guard`. With `tunnel` (this
/// proxy has a mesh identity), an inbound connection whose original
/// destination port is the inbound listener's own port is the tunnel
/// (`Route::Tunnel`, after the pod-IP check) instead of a loop; one that was
/// not redirected at all (no NAT entry) was dialled to the listener
/// directly, so its local address is its original destination.
pub fn resolve(rule: &Target, direction: Direction, guard: &InboundGuard, stream: &TcpStream, tunnel: bool) -> Result<Route, TargetError> {
    match *rule {
        Target::Fixed(addr) => Ok(Route::Forward(addr)),
        // Round robin over the name's addresses (`names.rs`).
        Target::Named(ref named) => {
            named.pick().map(Route::Forward).ok_or_else(|| TargetError::Unresolved(format!("{}:{}", named.host, named.port)))
        }
        Target::OriginalDst { inbound_host } => {
            let tunnel = tunnel && direction == Direction::Inbound;
            let local = stream.local_addr().map_err(TargetError::OriginalDst)?;
            let orig = match socket::original_dst(stream) {
                Ok(orig) => orig,
                Err(_) if tunnel => local,
                Err(e) => return Err(TargetError::OriginalDst(e)),
            };
            if tunnel && orig.port() == local.port() {
                guard.check_ip(orig)?;
                return Ok(Route::Tunnel(orig));
            }
            original_target(orig, local, direction, inbound_host, guard).map(Route::Forward)
        }
    }
}

/// The decision of [`resolve`] for a transparent listener, apart from the
/// socket calls (so it is tested without iptables).
pub fn original_target(
    orig: SocketAddr,
    local: SocketAddr,
    direction: Direction,
    inbound_host: Option<IpAddr>,
    guard: &InboundGuard,
) -> Result<TargetAddr, TargetError> {
    if orig == local {
        return Err(TargetError::Loop(orig));
    }
    if direction == Direction::Inbound {
        guard.check(orig)?;
    }
    // `inbound_host` (an explicit opt-in, e.g. 127.0.0.1) replaces the address.
    let ip = inbound_host.unwrap_or(orig.ip()).to_canonical();
    Ok(TargetAddr(SocketAddr::new(ip, orig.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn guard() -> InboundGuard {
        InboundGuard::new(["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()], [4143, 4140, 4191])
    }

    #[test]
    fn inbound_goes_to_the_original_destination_of_a_pod_ip() {
        let local = sa("10.0.0.5:4143");
        let t = original_target(sa("10.0.0.5:8080"), local, Direction::Inbound, None, &guard()).unwrap();
        assert_eq!(t.0, sa("10.0.0.5:8080"));
        let t = original_target(sa("[fd00::5]:8080"), sa("[fd00::5]:4143"), Direction::Inbound, None, &guard()).unwrap();
        assert_eq!(t.0, sa("[fd00::5]:8080"));
    }

    #[test]
    fn inbound_to_another_address_is_refused() {
        let local = sa("10.0.0.5:4143");
        for orig in ["10.0.0.6:8080", "127.0.0.1:8080", "0.0.0.0:8080", "[::1]:8080"] {
            let e = original_target(sa(orig), local, Direction::Inbound, None, &guard()).unwrap_err();
            assert_eq!(e.accept_error(), AcceptError::NotPodIp, "{orig}: {e}");
            assert!(e.to_string().contains("not one of the pod's IPs"), "{e}");
        }
        // The opt-in host rewrite does not widen what is accepted.
        let e = original_target(sa("10.0.0.6:8080"), local, Direction::Inbound, Some("127.0.0.1".parse().unwrap()), &guard());
        assert_eq!(e.unwrap_err().accept_error(), AcceptError::NotPodIp);
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        let t = original_target(sa("[::ffff:10.0.0.5]:8080"), sa("[::]:4143"), Direction::Inbound, None, &guard()).unwrap();
        assert_eq!(t.0, sa("10.0.0.5:8080"), "forwarded to the IPv4 address");
        let mapped_guard = InboundGuard::new(["::ffff:10.0.0.9".parse().unwrap()], []);
        assert!(mapped_guard.check(sa("10.0.0.9:80")).is_ok());
        let e = original_target(sa("[::ffff:10.0.0.6]:8080"), sa("[::]:4143"), Direction::Inbound, None, &guard()).unwrap_err();
        assert_eq!(e.accept_error(), AcceptError::NotPodIp);
    }

    #[test]
    fn inbound_to_a_proxy_port_is_refused_even_with_the_loopback_opt_in() {
        let local = sa("10.0.0.5:4143");
        for host in [None, Some("127.0.0.1".parse().unwrap())] {
            let e = original_target(sa("10.0.0.5:4191"), local, Direction::Inbound, host, &guard()).unwrap_err();
            assert_eq!(e.accept_error(), AcceptError::ProxyPort);
        }
    }

    #[test]
    fn the_loopback_opt_in_rewrites_the_host() {
        let t = original_target(sa("10.0.0.5:8080"), sa("10.0.0.5:4143"), Direction::Inbound, Some("127.0.0.1".parse().unwrap()), &guard());
        assert_eq!(t.unwrap().0, sa("127.0.0.1:8080"));
    }

    #[test]
    fn loops_and_outbound() {
        let e = original_target(sa("10.0.0.5:4143"), sa("10.0.0.5:4143"), Direction::Inbound, None, &guard()).unwrap_err();
        assert_eq!(e.accept_error(), AcceptError::Loop);
        // Outbound destinations are anywhere; the pod IP check is inbound only.
        let t = original_target(sa("10.9.9.9:4191"), sa("127.0.0.1:4140"), Direction::Outbound, None, &guard()).unwrap();
        assert_eq!(t.0, sa("10.9.9.9:4191"));
        let labels: Vec<_> = AcceptError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(labels, ["no_original_dst", "loop", "not_pod_ip", "proxy_port", "unresolved"]);
        assert!(AcceptError::ALL.iter().enumerate().all(|(i, e)| *e as usize == i));
    }
}
