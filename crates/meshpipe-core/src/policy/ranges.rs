//! Port range maps: an ordered list of possibly overlapping port ranges,
//! resolved once into sorted, disjoint ranges where every port maps to the
//! first range that covered it. A lookup is then a binary search, whatever
//! the number of ranges (a 40 KB `opaque-ports` annotation is thousands of
//! them).
//!
//! Resolution "paints" the ranges in order: a later range only fills what is
//! still free. The covered set is kept merged (adjacent intervals joined), so
//! a wide range crossing many earlier ones visits each of them once and they
//! collapse into one interval: resolving n ranges costs O(n log n).

use std::collections::BTreeMap;

/// Sorted, disjoint port ranges with a value each.
#[derive(Clone, Debug)]
pub struct RangeMap<T> {
    entries: Box<[(u16, u16, T)]>,
}

impl<T> Default for RangeMap<T> {
    fn default() -> Self {
        RangeMap { entries: Box::new([]) }
    }
}

impl<T: Clone> RangeMap<T> {
    /// Resolves ranges given in precedence order (each `from <= to`; callers
    /// validate) into disjoint ranges: each port keeps the first value that
    /// covered it.
    pub fn paint(ranges: impl IntoIterator<Item = (u16, u16, T)>) -> Self {
        // Covered ports as merged intervals: start -> end (inclusive, u32 so end + 1 never overflows).
        let mut covered: BTreeMap<u32, u32> = BTreeMap::new();
        let mut out: Vec<(u16, u16, T)> = Vec::new();
        for (from, to, value) in ranges {
            let (from, to) = (u32::from(from), u32::from(to));
            // Every covered interval that overlaps or touches [from, to].
            let first = covered.range(..from).next_back().filter(|(_, &end)| end + 1 >= from).map(|(&start, _)| start).unwrap_or(from);
            let touching: Vec<(u32, u32)> = covered.range(first..=to + 1).map(|(&s, &e)| (s, e)).collect();
            let mut cursor = from;
            let (mut lo, mut hi) = (from, to);
            for &(start, end) in &touching {
                if start > cursor && cursor <= to {
                    out.push((cursor as u16, (start - 1).min(to) as u16, value.clone()));
                }
                cursor = cursor.max(end + 1);
                lo = lo.min(start);
                hi = hi.max(end);
                covered.remove(&start);
            }
            if cursor <= to {
                out.push((cursor as u16, to as u16, value.clone()));
            }
            covered.insert(lo, hi);
        }
        out.sort_unstable_by_key(|e| e.0);
        RangeMap { entries: out.into_boxed_slice() }
    }
}

impl<T: Clone + PartialEq> RangeMap<T> {
    /// Joins adjacent ranges with equal values (fewer entries, same answers).
    pub fn coalesce(self) -> Self {
        let mut out: Vec<(u16, u16, T)> = Vec::with_capacity(self.entries.len());
        for (from, to, value) in self.entries.into_vec() {
            match out.last_mut() {
                Some(last) if u32::from(last.1) + 1 == u32::from(from) && last.2 == value => last.1 = to,
                _ => out.push((from, to, value)),
            }
        }
        RangeMap { entries: out.into_boxed_slice() }
    }
}

impl<T> RangeMap<T> {
    /// The value of the range covering `port`, if any.
    #[inline]
    pub fn get(&self, port: u16) -> Option<&T> {
        let i = self.entries.partition_point(|e| e.1 < port);
        match self.entries.get(i) {
            Some((from, _, value)) if *from <= port => Some(value),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(ranges: &[(u16, u16, u32)], port: u16) -> Option<u32> {
        ranges.iter().find(|(f, t, _)| *f <= port && port <= *t).map(|r| r.2)
    }

    #[test]
    fn first_range_wins_and_gaps_stay_free() {
        let m = RangeMap::paint([(10, 20, 'a'), (15, 30, 'b'), (1, 5, 'c'), (1, 65535, 'd')]);
        assert_eq!(m.get(10), Some(&'a'));
        assert_eq!(m.get(20), Some(&'a'));
        assert_eq!(m.get(21), Some(&'b'));
        assert_eq!(m.get(30), Some(&'b'));
        assert_eq!(m.get(3), Some(&'c'));
        assert_eq!(m.get(7), Some(&'d'));
        assert_eq!(m.get(65535), Some(&'d'));
        let empty: RangeMap<u8> = RangeMap::paint([]);
        assert_eq!(empty.get(1), None);
        let edges = RangeMap::paint([(65535, 65535, 1), (1, 1, 2)]);
        assert_eq!((edges.get(65535), edges.get(1), edges.get(2)), (Some(&1), Some(&2), None));
    }

    #[test]
    fn coalesce_joins_equal_neighbours_only() {
        let m = RangeMap::paint([(1, 5, 'a'), (6, 9, 'a'), (10, 12, 'b')]).coalesce();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(9), Some(&'a'));
        assert_eq!(m.get(10), Some(&'b'));
    }

    #[test]
    fn many_ranges_resolve_quickly() {
        // Every other port, then one range over everything: the shape of a huge annotation.
        let mut ranges: Vec<(u16, u16, u32)> = (1..30_000u16).step_by(2).map(|p| (p, p, 1)).collect();
        ranges.extend((0..1000).map(|i| (1, 65535, 2 + i)));
        let m = RangeMap::paint(ranges);
        assert_eq!(m.get(1), Some(&1));
        assert_eq!(m.get(2), Some(&2));
        assert_eq!(m.get(40_000), Some(&2));
    }

    proptest! {
        #[test]
        fn same_answers_as_a_first_match_scan(raw in proptest::collection::vec((1u16..200, 0u16..50), 0..40), ports in proptest::collection::vec(1u16..260, 1..50)) {
            let ranges: Vec<(u16, u16, u32)> = raw.iter().enumerate().map(|(i, (f, len))| (*f, f.saturating_add(*len), i as u32)).collect();
            let m = RangeMap::paint(ranges.clone());
            for p in ports {
                prop_assert_eq!(m.get(p).copied(), naive(&ranges, p));
            }
            let c = RangeMap::paint(ranges.clone()).coalesce();
            for p in 1..260u16 {
                prop_assert_eq!(c.get(p).copied(), naive(&ranges, p));
            }
        }
    }
}
