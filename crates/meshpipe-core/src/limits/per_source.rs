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
//! Sources are counted in a fixed table of buckets keyed by a hash of the
//! address, with a key drawn at random per process, so the memory is fixed
//! and a sender cannot choose addresses that share a bucket with a victim.
//! Unrelated sources that share a bucket by chance share its cap, which only
//! matters while one of them is over it. IPv6 sources are counted by /64
//! (one host usually has a whole /64 to pick addresses from); IPv4-mapped
//! IPv6 addresses count as their IPv4 address. Outbound connections all
//! come from the local application, whose bursts this must not throttle,
//! so only inbound detection is shared out.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::AtomicU16;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// Buckets in the table (2 bytes each).
const BUCKETS: usize = 16_384;

/// The per-source share of inbound detection slots.
pub struct PerSource {
    buckets: Box<[AtomicU16]>,
    cap: u16,
    keys: std::collections::hash_map::RandomState,
}

impl PerSource {
    /// A share of `cap` slots per source; `None` when there is no limit to
    /// share (unlimited detection).
    pub fn new(cap: usize) -> Option<PerSource> {
        (cap > 0).then(|| PerSource {
            buckets: (0..BUCKETS).map(|_| AtomicU16::new(0)).collect(),
            cap: u16::try_from(cap).unwrap_or(u16::MAX),
            keys: std::collections::hash_map::RandomState::new(),
        })
    }

    /// The share for `slots` inbound detection slots: a sixteenth, at least
    /// 8, so that a single host keeps room for a burst.
    pub fn share_of(slots: usize) -> usize {
        if slots == 0 {
            0
        } else {
            (slots / 16).max(8).min(slots)
        }
    }

    pub fn cap(&self) -> u16 {
        self.cap
    }

    /// Takes one slot of `source`'s share; `None` when it holds its whole
    /// share already.
    pub fn try_take(&self, source: IpAddr) -> Option<&AtomicU16> {
        let bucket = &self.buckets[self.index(source)];
        bucket.fetch_update(AcqRel, Acquire, |n| (n < self.cap).then_some(n + 1)).ok().map(|_| bucket)
    }

    /// Gives back a slot [`Self::try_take`] took.
    pub fn give(bucket: &AtomicU16) {
        bucket.fetch_sub(1, AcqRel);
    }

    fn index(&self, source: IpAddr) -> usize {
        let mut h = self.keys.build_hasher();
        match source.to_canonical() {
            IpAddr::V4(v4) => v4.hash(&mut h),
            // The /64: the network half of the address.
            IpAddr::V6(v6) => v6.segments()[..4].hash(&mut h),
        }
        (h.finish() as usize) % BUCKETS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_held_to_its_share_and_others_are_not() {
        let p = PerSource::new(3).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| p.try_take(a).expect("within the share")).collect();
        assert!(p.try_take(a).is_none(), "past the share");
        // Another source (unless it shares the bucket by chance: find one that does not).
        let other = (2..=255u8).map(|i| IpAddr::from([10, 0, 0, i])).find(|b| p.index(*b) != p.index(a)).unwrap();
        assert!(p.try_take(other).is_some());
        PerSource::give(held[0]);
        assert!(p.try_take(a).is_some(), "a slot given back is free again");
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let p = PerSource::new(1).unwrap();
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(p.try_take(x).is_some());
        assert!(p.try_take(y).is_none(), "same /64");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(p.index(v4), p.index(mapped));
    }

    #[test]
    fn the_share_of_the_slots() {
        assert_eq!(PerSource::share_of(1024), 64);
        assert_eq!(PerSource::share_of(64), 8);
        assert_eq!(PerSource::share_of(4), 4);
        assert_eq!(PerSource::share_of(0), 0);
        assert!(PerSource::new(0).is_none());
    }
}
