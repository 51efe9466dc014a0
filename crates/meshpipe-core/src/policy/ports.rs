//! Port tables: what an exact destination's ports are, kept as ranges (a
//! port list is never expanded port by port), shared by every address that
//! points at them, with interned source strings.
//!
//! Sources say why a port has its mode (`opaque: Server shop/db
//! proxyProtocol=opaque`); they are read only when a decision is explained,
//! never on the connection path, and the same few strings recur across
//! thousands of tables, so each distinct string is stored once
//! ([`Interner`]).
//!
//! A table may also carry the meshed peer of the addresses that use it (a
//! meshed workload's identity and tunnel port, shared by its replicas).

use std::collections::HashSet;
use std::sync::Arc;

use super::ranges::RangeMap;
use super::spec::PortTableSpec;
use super::PolicyError;
use crate::addr::PortRange;
use crate::destinations::Destination;
use crate::vocab::PortMode;

/// What one port range of a table decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub mode: PortMode,
    /// Index into the table's sources.
    pub source: u32,
}

/// A compiled, immutable port table.
#[derive(Debug, Default)]
pub struct PortTable {
    ranges: RangeMap<PortEntry>,
    sources: Box<[Arc<str>]>,
    /// The meshed peer behind the addresses using this table.
    pub mesh: Option<Arc<Destination>>,
}

impl PortTable {
    /// Validates and compiles a table: ranges in range, source indices
    /// valid; overlapping ranges resolve to the first one listed.
    pub fn compile(spec: &PortTableSpec, interner: &mut Interner) -> Result<PortTable, PolicyError> {
        let mut ranges = Vec::with_capacity(spec.ports.len());
        for (entry, p) in spec.ports.iter().enumerate() {
            let range = PortRange::new(p.0, p.1).map_err(|error| PolicyError::PortTable { id: spec.id, entry, error })?;
            if p.3 as usize >= spec.sources.len() {
                return Err(PolicyError::SourceIndex { id: spec.id, entry, index: p.3, len: spec.sources.len() });
            }
            ranges.push((range.from(), range.to(), PortEntry { mode: p.2, source: p.3 }));
        }
        let sources = spec.sources.iter().map(|s| interner.intern(s)).collect();
        let mesh = match &spec.mesh {
            Some(peer) => Some(Arc::new(Destination::from_peer(peer).map_err(|reason| PolicyError::MeshPeer { id: spec.id, reason })?)),
            None => None,
        };
        Ok(PortTable { ranges: RangeMap::paint(ranges).coalesce(), sources, mesh })
    }

    /// The entry covering `port`, if any.
    #[inline]
    pub fn get(&self, port: u16) -> Option<PortEntry> {
        self.ranges.get(port).copied()
    }

    pub fn source(&self, entry: PortEntry) -> &str {
        self.sources.get(entry.source as usize).map_or("", |s| s)
    }
}

/// One copy of each distinct source string. Strings no table uses any more
/// are dropped when the set has doubled since the last sweep (amortised
/// O(1) per string).
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<str>>,
    swept_at: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.set.get(s) {
            return found.clone();
        }
        if self.set.len() >= 2 * self.swept_at.max(512) {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.swept_at = self.set.len();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::PortSpec;

    #[test]
    fn first_listed_range_wins_and_sources_are_shared() {
        let mut interner = Interner::default();
        let spec = PortTableSpec {
            id: 1,
            ports: vec![PortSpec(5432, 5432, PortMode::Detect, 1), PortSpec(1, 65535, PortMode::Opaque, 0)],
            sources: vec!["opaque: namespace annotation".into(), "detect: Server".into()],
            mesh: None,
        };
        let a = PortTable::compile(&spec, &mut interner).unwrap();
        let b = PortTable::compile(&spec, &mut interner).unwrap();
        let hit = a.get(5432).unwrap();
        assert_eq!((hit.mode, a.source(hit)), (PortMode::Detect, "detect: Server"));
        assert_eq!(a.get(5433).unwrap().mode, PortMode::Opaque);
        assert!(Arc::ptr_eq(&a.sources[0], &b.sources[0]), "one copy of each source");
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn bad_entries_are_named() {
        let mut interner = Interner::default();
        let bad_range = PortTableSpec { id: 7, ports: vec![PortSpec(9, 3, PortMode::Opaque, 0)], sources: vec!["x".into()], mesh: None };
        let err = PortTable::compile(&bad_range, &mut interner).unwrap_err().to_string();
        assert!(err.contains("port table 7") && err.contains("[9, 3]"), "{err}");
        let bad_source = PortTableSpec { id: 8, ports: vec![PortSpec(1, 3, PortMode::Opaque, 4)], sources: vec![], mesh: None };
        let err = PortTable::compile(&bad_source, &mut interner).unwrap_err().to_string();
        assert!(err.contains("port table 8") && err.contains("source 4"), "{err}");
        let peer = |identity: &str, tunnel_port| crate::destinations::MeshPeerSpec {
            identity: identity.into(),
            tunnel_port,
            source: String::new(),
        };
        for (mesh, word) in [
            (peer("Not An Identity", 4143), "identity"),
            (peer("web.shop.serviceaccount.identity.linkerd.cluster.local", 0), "tunnel port"),
        ] {
            let spec = PortTableSpec { id: 9, ports: vec![], sources: vec![], mesh: Some(mesh) };
            let err = PortTable::compile(&spec, &mut interner).unwrap_err().to_string();
            assert!(err.contains("port table 9") && err.contains(word), "{err}");
        }
    }
}
