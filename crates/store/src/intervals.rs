//! Sets of sequence numbers kept as sorted, disjoint, non-adjacent inclusive
//! intervals: a meter's stored readings of one boot epoch are one interval in
//! normal operation and a few while blocks arrive out of order.

/// A set of `u32` as sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    ranges: Vec<(u32, u32)>,
}

impl IntervalSet {
    /// An empty set.
    pub fn new() -> Self {
        IntervalSet::default()
    }

    /// A set from intervals in any order, merging overlapping and adjacent ones.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut s = IntervalSet::new();
        for (a, b) in ranges {
            s.insert_range(a, b);
        }
        s
    }

    /// The intervals, ascending.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u32) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < x);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= x)
    }

    /// Number of members.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds `lo..=hi` (ignored if `lo > hi`) and returns the parts that were not
    /// in the set before, ascending.
    pub fn insert_range(&mut self, lo: u32, hi: u32) -> Vec<(u32, u32)> {
        if lo > hi {
            return Vec::new();
        }
        // Work in u64 so `hi + 1` and `b + 1` cannot overflow at u32::MAX.
        let (lo, hi) = (u64::from(lo), u64::from(hi));
        // First interval that overlaps or touches `lo..=hi` (ends at lo - 1 or later).
        let start = self.ranges.partition_point(|&(_, b)| u64::from(b) + 1 < lo);
        let mut end = start;
        let mut added = Vec::new();
        let mut cursor = lo;
        let (mut merged_lo, mut merged_hi) = (lo, hi);
        while let Some(&(a, b)) = self.ranges.get(end) {
            let (a, b) = (u64::from(a), u64::from(b));
            if a > hi + 1 {
                break;
            }
            if a > cursor {
                added.push((cursor, (a - 1).min(hi)));
            }
            cursor = cursor.max(b + 1);
            merged_lo = merged_lo.min(a);
            merged_hi = merged_hi.max(b);
            end += 1;
        }
        if cursor <= hi {
            added.push((cursor, hi));
        }
        // Every value here came from a u32, so the narrowing cannot truncate.
        let narrow = |x: u64| x as u32;
        self.ranges.splice(
            start..end,
            std::iter::once((narrow(merged_lo), narrow(merged_hi))),
        );
        added
            .into_iter()
            .map(|(a, b)| (narrow(a), narrow(b)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A tiny deterministic generator (xorshift) so the differential test is reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn inserting_reports_only_the_new_parts_and_merges_neighbours() {
        let mut s = IntervalSet::new();
        assert_eq!(s.insert_range(10, 19), vec![(10, 19)]);
        assert_eq!(s.insert_range(30, 39), vec![(30, 39)]);
        assert_eq!(s.insert_range(15, 34), vec![(20, 29)]);
        assert_eq!(s.ranges(), &[(10, 39)]);
        assert_eq!(s.insert_range(40, 40), vec![(40, 40)]);
        assert_eq!(s.insert_range(5, 9), vec![(5, 9)]);
        assert_eq!(s.ranges(), &[(5, 40)]);
        assert_eq!(s.insert_range(6, 7), Vec::<(u32, u32)>::new());
        assert!(s.contains(5) && s.contains(40) && !s.contains(41) && !s.contains(4));
        assert_eq!(s.len(), 36);
    }

    #[test]
    fn the_largest_sequence_numbers_do_not_overflow() {
        let mut s = IntervalSet::new();
        assert_eq!(
            s.insert_range(u32::MAX - 1, u32::MAX),
            vec![(u32::MAX - 1, u32::MAX)]
        );
        assert_eq!(
            s.insert_range(u32::MAX - 3, u32::MAX),
            vec![(u32::MAX - 3, u32::MAX - 2)]
        );
        assert_eq!(s.insert_range(u32::MAX, u32::MAX), Vec::<(u32, u32)>::new());
        assert_eq!(s.ranges(), &[(u32::MAX - 3, u32::MAX)]);
        assert_eq!(s.insert_range(0, 0), vec![(0, 0)]);
        assert_eq!(s.ranges(), &[(0, 0), (u32::MAX - 3, u32::MAX)]);
    }

    #[test]
    fn interval_set_agrees_with_a_naive_set_under_random_inserts() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200 {
            let mut s = IntervalSet::new();
            let mut naive = BTreeSet::new();
            for _ in 0..40 {
                let a = (rng.next() % 200) as u32;
                let b = a + (rng.next() % 12) as u32;
                let added = s.insert_range(a, b);
                let expect: Vec<u32> = (a..=b).filter(|x| !naive.contains(x)).collect();
                let got: Vec<u32> = added.iter().flat_map(|&(x, y)| x..=y).collect();
                assert_eq!(got, expect, "round {round}");
                naive.extend(a..=b);
                assert_eq!(s.len(), naive.len() as u64);
                for w in s.ranges().windows(2) {
                    assert!(
                        w[0].1 + 1 < w[1].0,
                        "intervals must be disjoint and not adjacent: {:?}",
                        s.ranges()
                    );
                }
            }
            for x in 0..220 {
                assert_eq!(s.contains(x), naive.contains(&x));
            }
        }
    }
}
