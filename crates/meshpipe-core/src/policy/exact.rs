//! The exact destinations: address -> port table, for any number of pods.
//!
//! A lookup must cost the same with 10 or 50,000 destinations, and changing
//! one pod must not copy the other 49,999: readers hold an immutable
//! snapshot (no lock on the connection path), so every change builds a new
//! one. The map is therefore split into a fixed number of shards, each an
//! immutable hash map behind an `Arc`. A snapshot is the array of shard
//! pointers; a change copies the array (a few KiB) and only the shards it
//! touches (copy-on-write through `Arc::make_mut`: a shard no reader shares
//! any more is changed in place). A lookup hashes the address twice (shard,
//! then slot) with the same randomly keyed SipHash, so addresses chosen by a
//! tenant (a Service may ask for its clusterIP) cannot pile up in one slot.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use super::ports::PortTable;

/// Shards per map: a one-address change copies 1/SHARDS of the map.
const SHARDS: usize = 256;

/// What an exact address points at.
#[derive(Clone, Debug)]
pub struct Destination {
    pub table: Arc<PortTable>,
    /// e.g. `Pod shop/web-1`, for explanations.
    pub name: Arc<str>,
}

type Shard = HashMap<IpAddr, Destination, RandomState>;

/// An immutable snapshot of the map.
#[derive(Clone, Debug)]
pub struct ExactMap {
    shards: Arc<[Arc<Shard>]>,
    hasher: RandomState,
    len: usize,
    meshed: usize,
}

impl ExactMap {
    #[inline]
    fn shard_of(hasher: &RandomState, ip: &IpAddr) -> usize {
        (hasher.hash_one(ip) >> 56) as usize % SHARDS
    }

    /// The destination at `ip` (already normalised), if any.
    #[inline]
    pub fn get(&self, ip: &IpAddr) -> Option<&Destination> {
        if self.len == 0 {
            return None;
        }
        self.shards[Self::shard_of(&self.hasher, ip)].get(ip)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Addresses whose table carries a meshed peer.
    pub fn meshed(&self) -> usize {
        self.meshed
    }
}

/// The writable side: owned by the policy store, never seen by connections.
#[derive(Debug)]
pub struct ExactBuilder {
    shards: Vec<Arc<Shard>>,
    hasher: RandomState,
    len: usize,
    meshed: usize,
}

impl Default for ExactBuilder {
    fn default() -> Self {
        let hasher = RandomState::new();
        let empty = Arc::new(Shard::with_hasher(hasher.clone()));
        ExactBuilder { shards: vec![empty; SHARDS], hasher, len: 0, meshed: 0 }
    }
}

impl ExactBuilder {
    /// Sets or replaces the destination at `ip`.
    pub fn insert(&mut self, ip: IpAddr, destination: Destination) {
        let shard = Arc::make_mut(&mut self.shards[ExactMap::shard_of(&self.hasher, &ip)]);
        self.meshed += usize::from(destination.table.mesh.is_some());
        match shard.insert(ip, destination) {
            None => self.len += 1,
            Some(old) => self.meshed -= usize::from(old.table.mesh.is_some()),
        }
    }

    /// Removes `ip`; false when it was not there.
    pub fn remove(&mut self, ip: &IpAddr) -> bool {
        let i = ExactMap::shard_of(&self.hasher, ip);
        if !self.shards[i].contains_key(ip) {
            return false;
        }
        if let Some(old) = Arc::make_mut(&mut self.shards[i]).remove(ip) {
            self.len -= 1;
            self.meshed -= usize::from(old.table.mesh.is_some());
        }
        true
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.shards[ExactMap::shard_of(&self.hasher, ip)].contains_key(ip)
    }

    /// A snapshot for readers: copies the shard pointers, not the shards.
    pub fn snapshot(&self) -> ExactMap {
        ExactMap { shards: self.shards.clone().into(), hasher: self.hasher.clone(), len: self.len, meshed: self.meshed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(name: &str) -> Destination {
        Destination { table: Arc::new(PortTable::default()), name: Arc::from(name) }
    }

    #[test]
    fn snapshots_are_immutable_and_changes_copy_one_shard() {
        let mut b = ExactBuilder::default();
        for i in 0..10_000u32 {
            b.insert(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), dest("pod"));
        }
        let before = b.snapshot();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        b.insert(ip, dest("changed"));
        assert!(b.remove(&"10.0.1.0".parse().unwrap()));
        assert!(!b.remove(&"192.0.2.1".parse().unwrap()));
        let after = b.snapshot();
        assert_eq!(&*before.get(&ip).unwrap().name, "pod", "a reader's snapshot never changes");
        assert_eq!(&*after.get(&ip).unwrap().name, "changed");
        assert_eq!((before.len(), after.len()), (10_000, 9_999));
        let shared = before.shards.iter().zip(after.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert!(shared >= SHARDS - 2, "only the touched shards were copied ({shared} of {SHARDS} shared)");
    }
}
