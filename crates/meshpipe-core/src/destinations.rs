//! Meshed destinations: which outbound addresses belong to a mesh peer, the
//! identity that peer must prove, and its tunnel port. The TypeScript
//! policy layer compiles the table from Kubernetes Pods that carry the
//! sidecar (their identity follows from service account, namespace and the
//! trust domain) and from a static `--destinations FILE` for hosts outside
//! Kubernetes (single addresses or networks).
//!
//! It must scale like the cluster: a lookup is one hash probe per distinct
//! prefix length present, longest first (pods are all /32 or /128, so
//! usually one probe), never a scan of the entries.
//!
//! [`DestinationTable`] is an immutable table (what `meshpipe explain` and
//! the addon's lookup compile); the engine keeps a [`DestinationIndex`]
//! (`destinations/index.rs`) that takes incremental updates without
//! copying the cluster on every pod change.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::{normalise, Cidr};
use crate::identity::Identity;

mod index;
pub use index::{DestinationIndex, DestinationsUpdate};

/// Why a destinations table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationsError {
    #[error("meshed destination {net:?} ({source_name}): {reason}")]
    Entry { net: String, source_name: String, reason: String },
}

/// The table as the TypeScript layer sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationsSpec {
    pub generation: u64,
    pub entries: Vec<DestinationSpec>,
}

/// One meshed address or network.
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

/// A meshed peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub identity: Identity,
    pub tunnel_port: NonZeroU16,
    pub source: Arc<str>,
}

/// One prefix length's entries, keyed by the masked address.
#[derive(Debug)]
struct Level {
    prefix: u8,
    entries: HashMap<u128, Arc<Destination>>,
}

/// The compiled, immutable table.
#[derive(Debug, Default)]
pub struct DestinationTable {
    generation: u64,
    /// Longest prefix first.
    v4: Vec<Level>,
    v6: Vec<Level>,
    len: usize,
}

impl DestinationTable {
    /// Validates and compiles a spec. The same network listed twice keeps
    /// its first entry (the policy layer reports the conflict).
    pub fn from_spec(spec: &DestinationsSpec) -> Result<DestinationTable, DestinationsError> {
        let mut table = DestinationTable { generation: spec.generation, ..DestinationTable::default() };
        for e in &spec.entries {
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

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most specific entry containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Destination> {
        let (bits, levels, width) = match normalise(ip) {
            IpAddr::V4(v4) => (u32::from(v4) as u128, &self.v4, 32),
            IpAddr::V6(v6) => (u128::from(v6), &self.v6, 128),
        };
        levels.iter().find_map(|l| l.entries.get(&mask(bits, l.prefix, width)).map(|d| &**d))
    }
}

/// Validates one entry.
fn compile_entry(e: &DestinationSpec) -> Result<(Cidr, Arc<Destination>), DestinationsError> {
    let bad = |reason: String| DestinationsError::Entry { net: e.net.clone(), source_name: e.source.clone(), reason };
    let cidr = Cidr::from_str(&e.net).map_err(|err| bad(err.to_string()))?;
    let identity = Identity::parse(&e.identity).map_err(|err| bad(err.to_string()))?;
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
        let t = DestinationTable::from_spec(&DestinationsSpec {
            generation: 2,
            entries: vec![entry("10.1.0.0/16", LEGACY, 4143), entry("10.1.2.3", DB, 4143), entry("fd00::/64", LEGACY, 14143)],
        })
        .unwrap();
        assert_eq!((t.generation(), t.len()), (2, 3));
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
        let t = DestinationTable::from_spec(&DestinationsSpec {
            generation: 1,
            entries: vec![entry("10.0.0.1/32", DB, 4143), entry("10.0.0.1", LEGACY, 4143)],
        })
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup("10.0.0.1".parse().unwrap()).unwrap().identity.as_str(), DB);
        for (e, word) in [
            (entry("10.0.0.0/33", DB, 4143), "10.0.0.0/33"),
            (entry("10.0.0.1", "Not An Identity", 4143), "invalid identity"),
            (entry("10.0.0.1", DB, 0), "tunnel port"),
        ] {
            let err = DestinationTable::from_spec(&DestinationsSpec { generation: 1, entries: vec![e] }).unwrap_err().to_string();
            assert!(err.contains(word) && err.contains("test "), "{err}");
        }
    }

    #[test]
    fn many_pods_one_probe() {
        let entries: Vec<_> = (0..50_000u32).map(|i| entry(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(), DB, 4143)).collect();
        let t = DestinationTable::from_spec(&DestinationsSpec { generation: 1, entries }).unwrap();
        assert_eq!(t.len(), 50_000);
        assert_eq!(t.v4.len(), 1, "all /32: one level, one hash probe per lookup");
        assert!(t.lookup("10.0.195.79".parse().unwrap()).is_some());
        assert!(t.lookup("10.1.0.0".parse().unwrap()).is_none());
    }
}
