//! Fuzzes the address parsers every configuration passes through
//! (`meshpipe_core::addr`): CIDRs (skip subnets, cluster networks,
//! destinations, authorization networks), target and bind addresses
//! (`--forward`). Any text must parse or be refused, never panic; and for
//! what parses:
//! - a CIDR prints as text that parses back to the same network (the
//!   engine and explain show networks in that form), whose prefix fits its
//!   family, and which contains its own network address;
//! - a target has a port (1-65535) and prints as an address that parses
//!   back to it; a bind address parses back the same way.
use std::net::IpAddr;
use std::str::FromStr;

use meshpipe_core::addr::{BindAddr, Cidr, TargetAddr};

/// Checks one input; panics (an assertion) when an invariant above is broken.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cidr) = Cidr::from_str(text) {
        let (net, prefix) = cidr.parts();
        let width = if net.is_ipv4() { 32 } else { 128 };
        assert!(prefix <= width, "{text:?}: prefix {prefix} in a {width}-bit family");
        let printed = cidr.to_string();
        assert_eq!(Cidr::from_str(&printed).expect("a printed CIDR parses"), cidr, "{text:?} printed as {printed:?}");
        assert!(cidr.contains(net), "{text:?} does not contain its own address");
        if let IpAddr::V6(v6) = net {
            // Mapped networks of /96 or longer are kept as IPv4 (addresses are matched so).
            assert!(v6.to_ipv4_mapped().is_none() || prefix < 96, "{text:?} kept as a mapped IPv6 network");
        }
    }
    if let Ok(target) = TargetAddr::from_str(text) {
        assert_ne!(target.port(), 0, "{text:?}: a target without a port");
        assert_eq!(TargetAddr::from_str(&target.to_string()).expect("a printed target parses"), target);
    }
    if let Ok(bind) = BindAddr::from_str(text) {
        assert_eq!(BindAddr::from_str(&bind.to_string()).expect("a printed bind address parses"), bind);
    }
}
