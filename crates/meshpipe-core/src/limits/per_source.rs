//! Each inbound source's share of the detection slots, so that one host
//! cannot take them all.
//!
//! A client that trickles undecided bytes (14 or more, so the server-first
//! race does not decide it) holds a detection slot until the detect timeout.
//! One host opening a thousand such connections would otherwise hold every
//! inbound slot, and every other client would be classified on its first
//! read only (`over_limit`). With a share, that host is limited to
//! [`PerSource::cap`] slots at once, and other sources still get detected.
//!
//! Sources are counted in fixed tables of buckets keyed by a hash of the
//! address, with a key drawn at random per process, so the memory is fixed
//! and a sender cannot choose addresses that share a bucket with a victim.
//! Unrelated sources that share a bucket by chance share its cap, which only
//! matters while one of them is over it. IPv4-mapped IPv6 addresses count as
//! their IPv4 address.
//!
//! IPv6: a host usually has a whole /64 to pick addresses from, but a /64 is
//! not one host in a cluster: Kubernetes gives each node's pods a /64 by
//! default (`--node-cidr-mask-size-ipv6`), and Cilium's and Calico's default
//! pools put a whole cluster's pods in one. So an IPv6 address holds the
//! host share like an IPv4 one, and its /64 as a whole holds at most a
//! quarter of the slots: pods of one node are not throttled as one host,
//! and a sender rotating through its /64 still leaves the rest to others.
//!
//! Outbound connections all come from the local application, whose bursts
//! this must not throttle, so only inbound detection is shared out.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::AtomicU16;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// Buckets in each table (2 bytes each).
const BUCKETS: usize = 16_384;

/// One table of per-source counters, each bounded by `cap`.
struct Table {
    buckets: Box<[AtomicU16]>,
    cap: u16,
}

impl Table {
    fn new(cap: usize) -> Table {
        Table { buckets: (0..BUCKETS).map(|_| AtomicU16::new(0)).collect(), cap: u16::try_from(cap).unwrap_or(u16::MAX) }
    }

    fn try_take(&self, index: usize) -> Option<&AtomicU16> {
        let bucket = &self.buckets[index];
        bucket.fetch_update(AcqRel, Acquire, |n| (n < self.cap).then_some(n + 1)).ok().map(|_| bucket)
    }
}

/// The per-source share of inbound detection slots.
pub struct PerSource {
    /// By address (IPv4, or a whole IPv6 address).
    hosts: Table,
    /// By IPv6 /64.
    prefixes: Table,
    keys: std::collections::hash_map::RandomState,
}

/// One slot of a source's share (and of its /64's), given back when
/// dropped.
pub struct Share<'a> {
    host: &'a AtomicU16,
    prefix: Option<&'a AtomicU16>,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.host.fetch_sub(1, AcqRel);
        if let Some(prefix) = self.prefix {
            prefix.fetch_sub(1, AcqRel);
        }
    }
}

impl PerSource {
    /// The shares of `slots` inbound detection slots; `None` when there is
    /// no limit to share (unlimited detection).
    pub fn new(slots: usize) -> Option<PerSource> {
        (slots > 0).then(|| PerSource::with_caps(Self::share_of(slots), Self::prefix_share_of(slots)))
    }

    fn with_caps(host: usize, prefix: usize) -> PerSource {
        PerSource { hosts: Table::new(host), prefixes: Table::new(prefix), keys: std::collections::hash_map::RandomState::new() }
    }

    /// A host's share of `slots`: a sixteenth, at least 8, so that a single
    /// host keeps room for a burst.
    pub fn share_of(slots: usize) -> usize {
        (slots / 16).max(8).min(slots)
    }

    /// An IPv6 /64's share of `slots`: a quarter, at least a host's.
    pub fn prefix_share_of(slots: usize) -> usize {
        (slots / 4).max(Self::share_of(slots))
    }

    /// Takes one slot of `source`'s share; `None` when it (or its /64)
    /// holds its whole share already.
    pub fn try_take(&self, source: IpAddr) -> Option<Share<'_>> {
        match source.to_canonical() {
            IpAddr::V4(v4) => Some(Share { host: self.hosts.try_take(self.index(&v4))?, prefix: None }),
            IpAddr::V6(v6) => {
                // The /64: the network half of the address.
                let prefix = self.prefixes.try_take(self.index(&v6.segments()[..4]))?;
                match self.hosts.try_take(self.index(&v6)) {
                    Some(host) => Some(Share { host, prefix: Some(prefix) }),
                    None => {
                        prefix.fetch_sub(1, AcqRel);
                        None
                    }
                }
            }
        }
    }

    fn index(&self, key: &(impl Hash + ?Sized)) -> usize {
        (self.keys.hash_one(key) as usize) % BUCKETS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(p: &PerSource, source: IpAddr) -> usize {
        match source.to_canonical() {
            IpAddr::V4(v4) => p.index(&v4),
            IpAddr::V6(v6) => p.index(&v6),
        }
    }

    #[test]
    fn one_source_is_held_to_its_share_and_others_are_not() {
        let p = PerSource::with_caps(3, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<_> = (0..3).map(|_| p.try_take(a).expect("within the share")).collect();
        assert!(p.try_take(a).is_none(), "past the share");
        // Another source (unless it shares the bucket by chance: find one that does not).
        let other = (2..=255u8).map(|i| IpAddr::from([10, 0, 0, i])).find(|b| index_of(&p, *b) != index_of(&p, a)).unwrap();
        assert!(p.try_take(other).is_some());
        held.pop();
        assert!(p.try_take(a).is_some(), "a slot given back is free again");
    }

    #[test]
    fn an_ipv6_64_is_bounded_as_a_whole_and_mapped_ipv4_is_ipv4() {
        let p = PerSource::with_caps(1, 2);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        // Hosts of x's /64 whose buckets are not x's (by chance they may be).
        let mut hosts =
            (2..=255u16).map(|i| IpAddr::from([0x2001, 0xdb8, 1, 2, 0xffff, 0, 0, i])).filter(|h| index_of(&p, *h) != index_of(&p, x));
        let (y, z) = (hosts.next().unwrap(), hosts.next().unwrap());
        let _x = p.try_take(x).expect("a host of the /64");
        assert!(p.try_take(x).is_none(), "the host's share");
        let _y = p.try_take(y).expect("another host of the same /64");
        assert!(p.try_take(z).is_none(), "the /64's share");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(index_of(&p, v4), index_of(&p, mapped));
    }

    #[test]
    fn a_host_refused_gives_its_64_slot_back() {
        let p = PerSource::with_caps(1, 2);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y =
            (2..=255u16).map(|i| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, i])).find(|h| index_of(&p, *h) != index_of(&p, x)).unwrap();
        let _x = p.try_take(x).unwrap();
        for _ in 0..5 {
            assert!(p.try_take(x).is_none());
        }
        assert!(p.try_take(y).is_some(), "the /64 still has the room the refused host did not keep");
    }

    #[test]
    fn the_share_of_the_slots() {
        assert_eq!(PerSource::share_of(1024), 64);
        assert_eq!(PerSource::prefix_share_of(1024), 256);
        assert_eq!(PerSource::share_of(64), 8);
        assert_eq!(PerSource::prefix_share_of(16), 8);
        assert_eq!(PerSource::share_of(4), 4);
        assert!(PerSource::new(0).is_none());
    }
}
