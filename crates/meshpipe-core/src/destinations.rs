//! Meshed destinations: which outbound addresses belong to a mesh peer, the
//! identity that peer must prove, and its tunnel port.
//!
//! They live in the policy table (policy.rs), next to the port policy, so a
//! new outbound connection makes one lookup for both. A meshed Pod is an
//! exact destination whose port table carries its peer (the TypeScript
//! compiler derives the identity from the pod's service account, namespace
//! and the trust domain, or its `meshpipe.io/identity` annotation): one
//! hash probe, updated by the policy deltas as pods come and go. The static
//! entries of `--destinations FILE` (hosts outside Kubernetes, single
//! addresses or networks, a handful) are part of the table's frame and
//! compiled here into a [`DestinationTable`]: one hash probe per distinct
//! prefix length present, longest first, never a scan of the entries.
//!
//! Precedence for an address: a static single-address entry (the operator
//! said so explicitly), then the pod's own peer, then the most specific
//! static network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::{normalise, Cidr};
use crate::identity::Identity;

/// Why a destinations table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationsError {
    #[error("meshed destination {net:?} ({source_name}): {reason}")]
    Entry { net: String, source_name: String, reason: String },
}

/// One static meshed address or network (`--destinations FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationSpec {
    /// An IP address or a CIDR.
    pub net: String,
    /// The identity the peer must prove.
    pub identity: String,
    /// The peer's inbound (tunnel) port, usually 4143.
    pub tunnel_port: u16,
    /// Where the entry came from (`Pod ns/name`, `FILE:line`), for explain and logs.
    pub source: String,
}

/// The meshed peer behind an exact destination (a meshed pod's addresses),
/// carried by its port table; also how explain shows a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshPeerSpec {
    /// The identity the peer must prove.
    pub identity: String,
    /// The peer's inbound (tunnel) port, usually 4143.
    pub tunnel_port: u16,
    /// Why it is meshed (e.g. `linkerd.io/inject=enabled on {destination}`;
    /// `{destination}` is replaced by the address's name when explained).
    #[serde(default)]
    pub source: String,
}

/// A meshed peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub identity: Identity,
    pub tunnel_port: NonZeroU16,
    pub source: Arc<str>,
}

impl Destination {
    /// Validates a port table's peer; the error says what is wrong.
    pub fn from_peer(spec: &MeshPeerSpec) -> Result<Destination, String> {
        let identity = Identity::parse_dialable(&spec.identity).map_err(|e| e.to_string())?;
        let tunnel_port = NonZeroU16::new(spec.tunnel_port).ok_or_else(|| "the tunnel port must be 1-65535".to_string())?;
        Ok(Destination { identity, tunnel_port, source: Arc::from(spec.source.as_str()) })
    }

    /// As explain shows it, `{destination}` replaced by `name`.
    pub fn info(&self, name: &str) -> MeshPeerSpec {
        MeshPeerSpec {
            identity: self.identity.to_string(),
            tunnel_port: self.tunnel_port.get(),
            source: self.source.replace("{destination}", name),
        }
    }
}

/// One prefix length's entries, keyed by the masked address.
#[derive(Debug)]
struct Level {
    prefix: u8,
    entries: HashMap<u128, Arc<Destination>>,
}

/// The compiled, immutable table of static entries.
#[derive(Debug, Default)]
pub struct DestinationTable {
    /// Longest prefix first.
    v4: Vec<Level>,
    v6: Vec<Level>,
    len: usize,
}

impl DestinationTable {
    /// Validates and compiles entries. The same network listed twice keeps
    /// its first entry (the policy layer reports the conflict).
    pub fn from_entries(entries: &[DestinationSpec]) -> Result<DestinationTable, DestinationsError> {
        let mut table = DestinationTable::default();
        for e in entries {
            let (cidr, dest) = compile_entry(e)?;
            let (key, prefix, v4) = key_of(cidr);
            let levels = if v4 { &mut table.v4 } else { &mut table.v6 };
            let at = match levels.iter().position(|l| l.prefix == prefix) {
                Some(i) => i,
                None => {
                    levels.push(Level { prefix, entries: HashMap::new() });
                    levels.sort_by_key(|l| std::cmp::Reverse(l.prefix));
                    levels.iter().position(|l| l.prefix == prefix).unwrap_or_default()
                }
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = levels[at].entries.entry(key) {
                slot.insert(dest);
                table.len += 1;
            }
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most specific entry containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<Destination>> {
        self.lookup_entry(ip).map(|(d, _)| d)
    }

    /// The most specific entry containing `ip`, and whether it is a single
    /// address (a /32 or /128) rather than a network.
    pub fn lookup_entry(&self, ip: IpAddr) -> Option<(&Arc<Destination>, bool)> {
        let (bits, levels, width) = match normalise(ip) {
            IpAddr::V4(v4) => (u32::from(v4) as u128, &self.v4, 32),
            IpAddr::V6(v6) => (u128::from(v6), &self.v6, 128),
        };
        levels.iter().find_map(|l| l.entries.get(&mask(bits, l.prefix, width)).map(|d| (d, l.prefix == width)))
    }

    /// Every entry, most specific first (for explanations).
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.v4.iter().chain(self.v6.iter()).flat_map(|l| l.entries.values())
    }
}

/// Validates one entry.
pub(crate) fn compile_entry(e: &DestinationSpec) -> Result<(Cidr, Arc<Destination>), DestinationsError> {
    let bad = |reason: String| DestinationsError::Entry { net: e.net.clone(), source_name: e.source.clone(), reason };
    let cidr = Cidr::from_str(&e.net).map_err(|err| bad(err.to_string()))?;
    let identity = Identity::parse_dialable(&e.identity).map_err(|err| bad(err.to_string()))?;
    let tunnel_port = NonZeroU16::new(e.tunnel_port).ok_or_else(|| bad("the tunnel port must be 1-65535".into()))?;
    Ok((cidr, Arc::new(Destination { identity, tunnel_port, source: Arc::from(e.source.as_str()) })))
}

fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let m = if width == 32 { (u32::MAX << (32 - prefix)) as u128 } else { u128::MAX << (128 - prefix) };
    bits & m
}

fn key_of(cidr: Cidr) -> (u128, u8, bool) {
    let (net, prefix) = cidr.parts();
    match net {
        IpAddr::V4(v4) => (mask(u32::from(v4) as u128, prefix, 32), prefix, true),
        IpAddr::V6(v6) => (mask(u128::from(v6), prefix, 128), prefix, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, identity: &str, port: u16) -> DestinationSpec {
        DestinationSpec { net: net.into(), identity: identity.into(), tunnel_port: port, source: format!("test {net}") }
    }

    const DB: &str = "db.shop.serviceaccount.identity.linkerd.cluster.local";
    const LEGACY: &str = "legacy.ext.serviceaccount.identity.linkerd.cluster.local";

    #[test]
    fn longest_prefix_wins_and_families_stay_apart() {
        let t = DestinationTable::from_entries(&[
            entry("10.1.0.0/16", LEGACY, 4143),
            entry("10.1.2.3", DB, 4143),
            entry("fd00::/64", LEGACY, 14143),
        ])
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.lookup_entry("10.1.2.3".parse().unwrap()).unwrap().1, "a single address");
        assert!(!t.lookup_entry("10.1.2.4".parse().unwrap()).unwrap().1, "a network");
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()).unwrap().identity.as_str(), DB);
        assert_eq!(t.lookup("::ffff:10.1.2.3".parse().unwrap()).unwrap().identity.as_str(), DB, "mapped IPv4");
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()).unwrap().identity.as_str(), LEGACY);
        assert!(t.lookup("10.2.0.1".parse().unwrap()).is_none());
        let v6 = t.lookup("fd00::1234".parse().unwrap()).unwrap();
        assert_eq!((v6.identity.as_str(), v6.tunnel_port.get()), (LEGACY, 14143));
        assert!(t.lookup("fd00:0:0:1::1".parse().unwrap()).is_none());
    }

    #[test]
    fn first_entry_of_a_network_wins_and_bad_entries_are_refused() {
        let t = DestinationTable::from_entries(&[entry("10.0.0.1/32", DB, 4143), entry("10.0.0.1", LEGACY, 4143)]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup("10.0.0.1".parse().unwrap()).unwrap().identity.as_str(), DB);
        for (e, word) in [
            (entry("10.0.0.0/33", DB, 4143), "10.0.0.0/33"),
            (entry("10.0.0.1", "Not An Identity", 4143), "invalid identity"),
            (entry("10.0.0.1", DB, 0), "tunnel port"),
        ] {
            let err = DestinationTable::from_entries(&[e]).unwrap_err().to_string();
            assert!(err.contains(word) && err.contains("test "), "{err}");
        }
    }

    #[test]
    fn many_pods_one_probe() {
        let entries: Vec<_> = (0..50_000u32).map(|i| entry(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(), DB, 4143)).collect();
        let t = DestinationTable::from_entries(&entries).unwrap();
        assert_eq!(t.len(), 50_000);
        assert_eq!(t.v4.len(), 1, "all /32: one level, one hash probe per lookup");
        assert!(t.lookup("10.0.195.79".parse().unwrap()).is_some());
        assert!(t.lookup("10.1.0.0".parse().unwrap()).is_none());
    }
}
