//! The engine's meshed-destinations index: looked up on every outbound
//! connection, updated incrementally as pods come and go.
//!
//! Pods are single addresses (/32, /128), and a cluster has many of them, so
//! host entries live in [`SHARDS`] copy-on-write hash maps, each behind an
//! `ArcSwap`: a lookup is one shard load (no lock) and one hash probe; an
//! update clones only the shards it touches (about 1/64 of the cluster per
//! shard), builds them aside and swaps each in one store, so no change
//! copies the whole cluster and readers never wait. Networks (from
//! `--destinations FILE`, a handful) are kept as one small immutable
//! [`DestinationTable`] rebuilt on change. A host entry is always the most
//! specific match, so hosts are probed first, then networks.
//!
//! Writers (the control layer) are serialised by a mutex; a batch is
//! validated whole before anything changes, so a bad entry leaves the index
//! as it was. Readers may see a batch half applied across shards (each
//! address's own answer is always an old or a new entry, never a torn one).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::{compile_entry, Destination, DestinationSpec, DestinationTable, DestinationsError, DestinationsSpec};
use crate::addr::{normalise, Cidr};

const SHARDS: usize = 64;

type Shard = HashMap<u128, Arc<Destination>>;

/// A change to the table, as the TypeScript layer sends it: entries to add
/// or replace, and networks to drop (by their `net` text as sent before).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationsUpdate {
    pub generation: u64,
    pub upsert: Vec<DestinationSpec>,
    pub remove: Vec<String>,
}

/// The incrementally updated index (see the module doc).
pub struct DestinationIndex {
    hosts: [ArcSwap<Shard>; SHARDS],
    nets: ArcSwap<DestinationTable>,
    /// Writers only: the network entries, to rebuild `nets`.
    net_specs: Mutex<BTreeMap<String, DestinationSpec>>,
    generation: AtomicU64,
    hosts_len: AtomicUsize,
}

impl Default for DestinationIndex {
    fn default() -> Self {
        DestinationIndex {
            hosts: std::array::from_fn(|_| ArcSwap::from_pointee(Shard::new())),
            nets: ArcSwap::from_pointee(DestinationTable::default()),
            net_specs: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            hosts_len: AtomicUsize::new(0),
        }
    }
}

/// A host address as one key: IPv4 as its IPv4-mapped IPv6 value (an IPv6
/// table entry of that form was normalised to IPv4 on the way in).
fn host_key(ip: IpAddr) -> u128 {
    match normalise(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn shard_of(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

/// A host entry's key, or None for a network.
fn host_of(cidr: Cidr) -> Option<u128> {
    let (ip, prefix) = cidr.parts();
    let full = if normalise(ip).is_ipv4() { 32 } else { 128 };
    (prefix == full).then(|| host_key(ip))
}

enum Change {
    Put(u128, Arc<Destination>),
    Del(u128),
}

impl DestinationIndex {
    /// The most specific entry containing `ip`: one shard load and one hash
    /// probe for a pod, then the networks.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<Destination>> {
        let key = host_key(ip);
        if let Some(d) = self.hosts[shard_of(key)].load().get(&key) {
            return Some(d.clone());
        }
        let nets = self.nets.load();
        if nets.is_empty() {
            return None;
        }
        nets.lookup(ip).map(|d| Arc::new(d.clone()))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Entries held (hosts and networks).
    pub fn len(&self) -> usize {
        self.hosts_len.load(Relaxed) + self.nets.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces everything with `spec` (the first table, or a full resync).
    pub fn replace(&self, spec: &DestinationsSpec) -> Result<(), DestinationsError> {
        let mut specs = self.net_specs.lock().unwrap_or_else(|e| e.into_inner());
        let (hosts, nets) = split(&spec.entries)?;
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
        let mut len = 0;
        for (key, dest) in hosts {
            len += usize::from(shards[shard_of(key)].insert(key, dest).is_none());
        }
        let new_specs: BTreeMap<String, DestinationSpec> = nets.into_iter().map(|e| (e.net.clone(), e)).collect();
        let table = net_table(&new_specs, spec.generation)?;
        for (slot, shard) in self.hosts.iter().zip(shards) {
            slot.store(Arc::new(shard));
        }
        self.nets.store(Arc::new(table));
        *specs = new_specs;
        self.hosts_len.store(len, Relaxed);
        self.generation.store(spec.generation, Relaxed);
        Ok(())
    }

    /// Applies a change: removals first, then upserts. Only the shards it
    /// touches are copied. All or nothing: a bad entry changes nothing.
    pub fn update(&self, update: &DestinationsUpdate) -> Result<(), DestinationsError> {
        let mut specs = self.net_specs.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes: Vec<Vec<Change>> = (0..SHARDS).map(|_| Vec::new()).collect();
        let mut new_specs: Option<BTreeMap<String, DestinationSpec>> = None;
        for net in &update.remove {
            let cidr: Cidr = net.parse().map_err(|e: crate::addr::AddrError| DestinationsError::Entry {
                net: net.clone(),
                source_name: "removal".into(),
                reason: e.to_string(),
            })?;
            match host_of(cidr) {
                Some(key) => changes[shard_of(key)].push(Change::Del(key)),
                None => {
                    new_specs.get_or_insert_with(|| specs.clone()).remove(net);
                }
            }
        }
        let (hosts, nets) = split(&update.upsert)?;
        for (key, dest) in hosts {
            changes[shard_of(key)].push(Change::Put(key, dest));
        }
        if !nets.is_empty() {
            let map = new_specs.get_or_insert_with(|| specs.clone());
            for e in nets {
                map.insert(e.net.clone(), e);
            }
        }
        let table = new_specs.as_ref().map(|m| net_table(m, update.generation)).transpose()?;
        // Validated: apply, one copied shard at a time.
        for (i, list) in changes.into_iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            let mut shard = Shard::clone(&self.hosts[i].load());
            for change in list {
                match change {
                    Change::Put(key, dest) => {
                        if shard.insert(key, dest).is_none() {
                            self.hosts_len.fetch_add(1, Relaxed);
                        }
                    }
                    Change::Del(key) => {
                        if shard.remove(&key).is_some() {
                            self.hosts_len.fetch_sub(1, Relaxed);
                        }
                    }
                }
            }
            self.hosts[i].store(Arc::new(shard));
        }
        if let (Some(table), Some(map)) = (table, new_specs) {
            self.nets.store(Arc::new(table));
            *specs = map;
        }
        self.generation.store(update.generation, Relaxed);
        Ok(())
    }
}

/// Validates entries and sorts them into hosts and networks.
#[allow(clippy::type_complexity)]
fn split(entries: &[DestinationSpec]) -> Result<(Vec<(u128, Arc<Destination>)>, Vec<DestinationSpec>), DestinationsError> {
    let mut hosts = Vec::with_capacity(entries.len());
    let mut nets = Vec::new();
    for e in entries {
        let (cidr, dest) = compile_entry(e)?;
        match host_of(cidr) {
            Some(key) => hosts.push((key, dest)),
            None => nets.push(e.clone()),
        }
    }
    Ok((hosts, nets))
}

fn net_table(specs: &BTreeMap<String, DestinationSpec>, generation: u64) -> Result<DestinationTable, DestinationsError> {
    DestinationTable::from_spec(&DestinationsSpec { generation, entries: specs.values().cloned().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "db.shop.serviceaccount.identity.linkerd.cluster.local";
    const WEB: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";

    fn entry(net: &str, identity: &str, port: u16) -> DestinationSpec {
        DestinationSpec { net: net.into(), identity: identity.into(), tunnel_port: port, source: format!("test {net}") }
    }

    fn id(ix: &DestinationIndex, ip: &str) -> Option<String> {
        ix.lookup(ip.parse().unwrap()).map(|d| d.identity.to_string())
    }

    #[test]
    fn hosts_win_over_networks_and_updates_are_incremental() {
        let ix = DestinationIndex::default();
        ix.replace(&DestinationsSpec {
            generation: 1,
            entries: vec![entry("10.0.0.0/8", WEB, 4143), entry("10.1.2.3", DB, 4143), entry("fd00::7", DB, 14143)],
        })
        .unwrap();
        assert_eq!((ix.len(), ix.generation()), (3, 1));
        assert_eq!(id(&ix, "10.1.2.3").as_deref(), Some(DB));
        assert_eq!(id(&ix, "::ffff:10.1.2.3").as_deref(), Some(DB), "IPv4-mapped");
        assert_eq!(id(&ix, "10.9.9.9").as_deref(), Some(WEB), "the network");
        assert_eq!(ix.lookup("fd00::7".parse().unwrap()).unwrap().tunnel_port.get(), 14143);
        assert!(id(&ix, "192.0.2.1").is_none());

        let before: Vec<_> = ix.hosts.iter().map(|s| s.load_full()).collect();
        ix.update(&DestinationsUpdate { generation: 2, upsert: vec![entry("10.1.2.4", DB, 4143)], remove: vec!["10.1.2.3".into()] })
            .unwrap();
        assert_eq!(id(&ix, "10.1.2.3").as_deref(), Some(WEB), "removed host falls back to the network");
        assert_eq!(id(&ix, "10.1.2.4").as_deref(), Some(DB));
        let copied = ix.hosts.iter().zip(&before).filter(|(now, old)| !Arc::ptr_eq(&now.load_full(), old)).count();
        assert!(copied <= 2, "only the touched shards are copied: {copied}");
        assert_eq!((ix.len(), ix.generation()), (3, 2));

        ix.update(&DestinationsUpdate { generation: 3, upsert: vec![], remove: vec!["10.0.0.0/8".into()] }).unwrap();
        assert!(id(&ix, "10.9.9.9").is_none());
    }

    #[test]
    fn a_bad_batch_changes_nothing() {
        let ix = DestinationIndex::default();
        ix.replace(&DestinationsSpec { generation: 1, entries: vec![entry("10.1.2.3", DB, 4143)] }).unwrap();
        let e = ix
            .update(&DestinationsUpdate {
                generation: 2,
                upsert: vec![entry("10.1.2.5", DB, 4143), entry("10.1.2.6", "Not An Identity", 4143)],
                remove: vec!["10.1.2.3".into()],
            })
            .unwrap_err();
        assert!(e.to_string().contains("10.1.2.6"), "{e}");
        assert_eq!(id(&ix, "10.1.2.3").as_deref(), Some(DB));
        assert!(id(&ix, "10.1.2.5").is_none());
        assert_eq!(ix.generation(), 1);
    }

    #[test]
    fn one_pod_change_in_a_large_cluster_copies_one_shard() {
        let ix = DestinationIndex::default();
        let entries: Vec<_> = (0..50_000u32).map(|i| entry(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(), DB, 4143)).collect();
        ix.replace(&DestinationsSpec { generation: 1, entries }).unwrap();
        assert_eq!(ix.len(), 50_000);
        let sizes: Vec<_> = ix.hosts.iter().map(|s| s.load().len()).collect();
        assert!(sizes.iter().all(|n| *n < 50_000 / SHARDS * 2), "spread over the shards: {sizes:?}");
        let before: Vec<_> = ix.hosts.iter().map(|s| s.load_full()).collect();
        ix.update(&DestinationsUpdate { generation: 2, upsert: vec![entry("10.200.0.1", WEB, 4143)], remove: vec![] }).unwrap();
        let copied = ix.hosts.iter().zip(&before).filter(|(now, old)| !Arc::ptr_eq(&now.load_full(), old)).count();
        assert_eq!(copied, 1);
        assert_eq!(id(&ix, "10.200.0.1").as_deref(), Some(WEB));
        assert_eq!(id(&ix, "10.0.195.79").as_deref(), Some(DB));
    }
}
