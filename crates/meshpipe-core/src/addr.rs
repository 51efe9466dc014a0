//! Typed addresses: what a listener binds, where a connection goes, which
//! ports and networks a policy rule covers.
//!
//! Plain `SocketAddr`s and `u16`s are easy to mix up (a bind address is not a
//! target, a port range is not a port), so each role gets its own newtype and
//! its own parser. Parsing is strict and errors name the bad text and what was
//! expected, because these values come straight from user configuration.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Errors from parsing addresses, ports and networks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("invalid socket address {0:?}: expected host:port with an IP address, e.g. 127.0.0.1:8080 or [::1]:8080")]
    Socket(String),
    #[error("invalid port range [{0}, {1}]: expected 1 <= low <= high <= 65535")]
    PortRange(u32, u32),
    #[error("invalid network {0:?}: expected an IP address with a prefix length, e.g. 10.0.0.0/8 or fd00::/8")]
    Cidr(String),
    #[error(
        "invalid network {0:?}: an IPv4-mapped address with a prefix shorter than /96 holds no IPv4 address (meshpipe matches \
         mapped addresses as IPv4); expected the IPv4 network, e.g. 10.0.0.0/8, or a mapped one of /96 to /128, e.g. ::ffff:10.0.0.0/104"
    )]
    MappedPrefix(String),
}

/// Where a listener accepts connections. Port 0 asks the kernel for a free port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindAddr(pub SocketAddr);

/// Where a proxied connection is sent: a fixed forward target or the
/// original destination recovered from a redirected socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetAddr(pub SocketAddr);

impl TargetAddr {
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn parse_socket(s: &str) -> Result<SocketAddr, AddrError> {
    SocketAddr::from_str(s.trim()).map_err(|_| AddrError::Socket(s.to_string()))
}

impl FromStr for BindAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_socket(s).map(BindAddr)
    }
}

impl FromStr for TargetAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr = parse_socket(s)?;
        if addr.port() == 0 {
            return Err(AddrError::Socket(s.to_string()));
        }
        Ok(TargetAddr(addr))
    }
}

/// An inclusive range of TCP ports, `1 <= from <= to <= 65535`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    from: u16,
    to: u16,
}

impl PortRange {
    pub fn new(from: u32, to: u32) -> Result<Self, AddrError> {
        if from == 0 || from > to || to > 65535 {
            return Err(AddrError::PortRange(from, to));
        }
        Ok(PortRange { from: from as u16, to: to as u16 })
    }
    pub fn contains(&self, port: u16) -> bool {
        port >= self.from && port <= self.to
    }
    pub fn from(&self) -> u16 {
        self.from
    }
    pub fn to(&self) -> u16 {
        self.to
    }
}

/// An IP network in CIDR form. Matching never mixes families: an IPv4
/// network never matches an IPv6 address (IPv4-mapped addresses are
/// normalised to IPv4 first, since that is how dual-stack sockets report them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network address (host bits as written) and the prefix length.
    pub fn parts(&self) -> (IpAddr, u8) {
        (self.net, self.prefix)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalise(ip);
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) become plain IPv4.
pub fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = AddrError;
    /// `addr/prefix`, or a bare address (one host). An IPv4-mapped IPv6
    /// network (`::ffff:a.b.c.d/N`, RFC 4291 section 2.5.5.2) with N >= 96 is
    /// the IPv4 network `a.b.c.d/(N-96)`, because addresses are matched in
    /// their IPv4 form. With N < 96 it would be an IPv6 network that holds
    /// no IPv4 address, not even the one it is written with: almost surely
    /// an IPv4 prefix length after a mapped address (`::ffff:10.0.0.0/8`),
    /// so it is refused rather than read as something else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddrError::Cidr(s.to_string());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s.trim(), None),
        };
        let parsed = IpAddr::from_str(ip).map_err(|_| err())?;
        let width: u8 = if parsed.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            // Digits only: `u8::from_str` would accept a leading `+`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().map_err(|_| err())?,
            Some(_) => return Err(err()),
            None => width,
        };
        if prefix > width {
            return Err(err());
        }
        let (net, prefix) = match parsed {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                Some(_) => return Err(AddrError::MappedPrefix(s.to_string())),
                None => (parsed, prefix),
            },
            _ => (parsed, prefix),
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_addresses() {
        assert_eq!("127.0.0.1:80".parse::<TargetAddr>().unwrap().port(), 80);
        assert!("[::1]:443".parse::<TargetAddr>().is_ok());
        assert!("127.0.0.1:0".parse::<TargetAddr>().is_err(), "a target needs a port");
        assert!("127.0.0.1:0".parse::<BindAddr>().is_ok(), "a bind may use an ephemeral port");
        let err = "localhost:80".parse::<TargetAddr>().unwrap_err().to_string();
        assert!(err.contains("localhost:80") && err.contains("expected"), "{err}");
    }

    #[test]
    fn port_ranges_are_checked() {
        assert!(PortRange::new(1, 65535).is_ok());
        assert!(PortRange::new(0, 10).is_err());
        assert!(PortRange::new(7000, 6000).is_err());
        assert!(PortRange::new(1, 70000).is_err());
        let r = PortRange::new(4000, 4100).unwrap();
        assert!(r.contains(4000) && r.contains(4100) && !r.contains(4101));
    }

    #[test]
    fn cidr_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.9.9.9".parse().unwrap()), "mapped v4 matches v4 nets");
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()) && !host.contains("192.0.2.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        // IPv4-mapped networks are IPv4 networks from /96 on (RFC 4291 2.5.5.2); shorter ones are refused.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert!(mapped.contains("10.7.0.1".parse().unwrap()) && mapped.contains("::ffff:10.7.0.1".parse().unwrap()));
        let host: Cidr = "::ffff:10.0.0.5/128".parse().unwrap();
        assert!(host.contains("10.0.0.5".parse().unwrap()) && !host.contains("10.0.0.6".parse().unwrap()));
        let bare: Cidr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(bare, host);
        // Shorter would be an IPv6 network holding no IPv4 address, not even
        // its own: an IPv4 prefix length after a mapped address, refused.
        for short in ["::ffff:10.0.0.0/8", "::ffff:0.0.0.0/80", "::ffff:0.0.0.0/0", "0:0:0:0:0:ffff:a00:0/95"] {
            let err = short.parse::<Cidr>().unwrap_err();
            assert_eq!(err, AddrError::MappedPrefix(short.to_string()));
            assert!(err.to_string().contains("10.0.0.0/8") && err.to_string().contains("/96"), "{err}");
        }
        assert!("::/0".parse::<Cidr>().is_ok() && "::ffff:0.0.0.0/96".parse::<Cidr>().is_ok());
        assert!("nope/8".parse::<Cidr>().is_err());
    }
}
