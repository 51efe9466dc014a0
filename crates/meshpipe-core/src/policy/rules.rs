//! Ordered rule lists, compiled for lookup.
//!
//! The rules before and after the exact destinations (ARCHITECTURE.md) are an
//! ordered list of (direction, network, port range) where the first match
//! wins. Checking them one by one would cost a connection O(rules), and one
//! workload's annotation can make thousands of them. Compiled, each direction
//! has one range map for the rules that match any address, resolved by
//! painting in rule order, and one range map per distinct network for the
//! rest. A lookup takes the best (lowest) rule index among the any-address
//! map and the maps of the networks that contain the address: a binary search
//! each, and the network list is short (skip subnets, clusterNetworks,
//! loopback).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ranges::RangeMap;
use super::spec::RuleSpec;
use super::PolicyError;
use crate::addr::{Cidr, PortRange};
use crate::vocab::{Direction, PortMode};

/// What a matching rule decides.
#[derive(Debug)]
pub struct RuleHit {
    pub mode: PortMode,
    pub detect_timeout: Option<Duration>,
    pub source: Arc<str>,
}

#[derive(Debug, Default)]
struct DirectionRules {
    any: RangeMap<u32>,
    nets: Vec<(Cidr, RangeMap<u32>)>,
}

/// Ranges as `(from, to, rule index)`.
type Ranges = Vec<(u16, u16, u32)>;

/// One direction's rules while compiling.
#[derive(Default)]
struct PendingDirection {
    any: Ranges,
    nets: Vec<(Cidr, Ranges)>,
}

/// A compiled ordered rule list.
#[derive(Debug, Default)]
pub struct RuleSet {
    hits: Box<[RuleHit]>,
    by_direction: [DirectionRules; 2],
}

impl RuleSet {
    /// Validates and compiles `specs`; `list` names the list in errors.
    pub fn compile(list: &'static str, specs: &[RuleSpec]) -> Result<RuleSet, PolicyError> {
        let mut hits = Vec::with_capacity(specs.len());
        // Per direction, the rules' ranges in rule order: for any address, and per network.
        let mut pending: [PendingDirection; 2] = Default::default();
        for (index, r) in specs.iter().enumerate() {
            let wrap = |error| PolicyError::Rule { list, index, source_name: r.source.clone(), error };
            let ports = PortRange::new(r.ports.0, r.ports.1).map_err(wrap)?;
            let net = match &r.net {
                Some(n) => Some(n.parse::<Cidr>().map_err(wrap)?),
                None => None,
            };
            let p = &mut pending[r.direction.index()];
            let entry = (ports.from(), ports.to(), index as u32);
            match net {
                None => p.any.push(entry),
                Some(net) => match p.nets.iter_mut().find(|(n, _)| *n == net) {
                    Some((_, ranges)) => ranges.push(entry),
                    None => p.nets.push((net, vec![entry])),
                },
            }
            hits.push(RuleHit {
                mode: r.mode,
                detect_timeout: r.detect_timeout_ms.map(Duration::from_millis),
                source: Arc::from(r.source.as_str()),
            });
        }
        let by_direction = pending.map(|p| DirectionRules {
            any: RangeMap::paint(p.any).coalesce(),
            nets: p.nets.into_iter().map(|(n, r)| (n, RangeMap::paint(r).coalesce())).collect(),
        });
        Ok(RuleSet { hits: hits.into_boxed_slice(), by_direction })
    }

    /// The first rule (by index) matching, for an already normalised address.
    #[inline]
    pub fn lookup(&self, direction: Direction, ip: IpAddr, port: u16) -> Option<(u32, &RuleHit)> {
        let rules = &self.by_direction[direction.index()];
        let mut best = rules.any.get(port).copied();
        for (net, map) in &rules.nets {
            if let Some(&i) = map.get(port) {
                if best.is_none_or(|b| i < b) && net.contains(ip) {
                    best = Some(i);
                }
            }
        }
        best.map(|i| (i, &self.hits[i as usize]))
    }

    pub fn len(&self) -> usize {
        self.hits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(direction: Direction, net: Option<&str>, ports: (u32, u32), mode: PortMode, source: &str) -> RuleSpec {
        RuleSpec { direction, net: net.map(str::to_string), ports, mode, detect_timeout_ms: None, source: source.to_string() }
    }

    /// The definition: the first rule whose direction, network and ports match.
    fn scan(specs: &[RuleSpec], direction: Direction, ip: IpAddr, port: u16) -> Option<usize> {
        specs.iter().position(|r| {
            r.direction == direction
                && u32::from(port) >= r.ports.0
                && u32::from(port) <= r.ports.1
                && r.net.as_ref().is_none_or(|n| n.parse::<Cidr>().unwrap().contains(ip))
        })
    }

    #[test]
    fn a_network_rule_before_an_any_rule_wins_only_inside_its_network() {
        let specs = vec![
            rule(Direction::Outbound, Some("192.0.2.0/24"), (1, 65535), PortMode::Opaque, "skip"),
            rule(Direction::Outbound, None, (80, 80), PortMode::Http1, "any"),
            rule(Direction::Outbound, Some("10.0.0.0/8"), (80, 80), PortMode::Opaque, "later"),
        ];
        let set = RuleSet::compile("rules", &specs).unwrap();
        let hit = |ip: &str, port| set.lookup(Direction::Outbound, ip.parse().unwrap(), port).map(|(i, _)| i);
        assert_eq!(hit("192.0.2.9", 80), Some(0));
        assert_eq!(hit("10.1.1.1", 80), Some(1), "the earlier any-address rule beats the later network rule");
        assert_eq!(hit("10.1.1.1", 81), None);
        assert_eq!(set.lookup(Direction::Inbound, "192.0.2.9".parse().unwrap(), 80).map(|(i, _)| i), None);
    }

    #[test]
    fn a_bad_rule_names_its_list_index_and_source() {
        let err =
            RuleSet::compile("fallbackRules", &[rule(Direction::Inbound, Some("10.0.0.0/40"), (1, 2), PortMode::Opaque, "skip-subnets")])
                .unwrap_err()
                .to_string();
        assert!(err.contains("fallbackRules[0]") && err.contains("skip-subnets") && err.contains("10.0.0.0/40"), "{err}");
    }

    proptest! {
        #[test]
        fn compiled_lookup_equals_the_ordered_scan(
            raw in proptest::collection::vec((any::<bool>(), 0u8..4, 1u32..100, 0u32..30), 0..30),
            probes in proptest::collection::vec((any::<bool>(), 0u8..5, 1u16..140), 1..60),
        ) {
            let nets = ["10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "192.0.2.7/32"];
            let ips = ["10.1.2.3", "10.9.9.9", "fd00::5", "192.0.2.7", "203.0.113.1"];
            let specs: Vec<RuleSpec> = raw.iter().enumerate().map(|(i, (inbound, net, from, len))| {
                let dir = if *inbound { Direction::Inbound } else { Direction::Outbound };
                let net = if *net == 0 { None } else { Some(nets[(*net as usize) % nets.len()]) };
                rule(dir, net, (*from, (*from + *len).min(65535)), PortMode::Opaque, &i.to_string())
            }).collect();
            let set = RuleSet::compile("rules", &specs).unwrap();
            for (inbound, ip, port) in probes {
                let dir = if inbound { Direction::Inbound } else { Direction::Outbound };
                let ip: IpAddr = ips[ip as usize].parse().unwrap();
                prop_assert_eq!(set.lookup(dir, ip, port).map(|(i, _)| i as usize), scan(&specs, dir, ip, port));
            }
        }
    }
}
