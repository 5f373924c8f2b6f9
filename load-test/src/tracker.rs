//! Per-publisher sequence accounting of one subscriber: loss (gaps),
//! duplicates and reordering, without storing every sequence number.

/// What one received sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The next expected one.
    InOrder,
    /// Ahead of the next expected one: the skipped ones are missing for now.
    Ahead,
    /// A missing one arriving late (after a higher sequence number).
    Reordered,
    /// Seen before.
    Duplicate,
}

/// Tracks the sequence numbers received from one publisher.
///
/// Missing numbers are kept as sorted half-open ranges, so memory grows with
/// the number of gaps, not with the number of messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqTracker {
    next: u64,
    gaps: Vec<(u64, u64)>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
}

impl SeqTracker {
    #[inline]
    pub(crate) fn observe(&mut self, seq: u64) -> Outcome {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
            return Outcome::InOrder;
        }
        if seq > self.next {
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            self.unique += 1;
            return Outcome::Ahead;
        }
        // seq < next: either fills a gap or is a duplicate.
        let i = self.gaps.partition_point(|&(_, end)| end <= seq);
        match self.gaps.get(i).copied() {
            Some((start, end)) if start <= seq => {
                if start + 1 == end {
                    self.gaps.remove(i);
                } else if seq == start {
                    self.gaps[i].0 += 1;
                } else if seq + 1 == end {
                    self.gaps[i].1 -= 1;
                } else {
                    self.gaps[i].1 = seq;
                    self.gaps.insert(i + 1, (seq + 1, end));
                }
                self.unique += 1;
                self.reordered += 1;
                Outcome::Reordered
            }
            _ => {
                self.duplicates += 1;
                Outcome::Duplicate
            }
        }
    }

    /// Distinct sequence numbers received.
    pub(crate) fn unique(&self) -> u64 {
        self.unique
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub(crate) fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Messages of the `published` ones (sequence numbers `0..published`) never received.
    pub(crate) fn lost(&self, published: u64) -> u64 {
        let in_gaps: u64 = self
            .gaps
            .iter()
            .map(|&(s, e)| e.min(published).saturating_sub(s))
            .sum();
        in_gaps + published.saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let t = feed(&[0, 1, 2, 3, 4]);
        assert_eq!(t.unique(), 5);
        assert_eq!(t.lost(5), 0);
        assert_eq!((t.duplicates(), t.reordered()), (0, 0));
    }

    #[test]
    fn tail_loss_counts_against_published() {
        let t = feed(&[0, 1, 2]);
        assert_eq!(t.lost(5), 2);
        assert_eq!(SeqTracker::default().lost(4), 4);
    }

    #[test]
    fn gaps_are_loss_until_filled() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Outcome::InOrder);
        assert_eq!(t.observe(5), Outcome::Ahead); // 1..5 missing
        assert_eq!(t.lost(6), 4);
        assert_eq!(t.observe(3), Outcome::Reordered); // splits the gap
        assert_eq!(t.observe(1), Outcome::Reordered); // gap start
        assert_eq!(t.observe(4), Outcome::Reordered); // gap end
        assert_eq!(t.lost(6), 1); // only 2 missing
        assert_eq!(t.observe(2), Outcome::Reordered); // last one, gap removed
        assert_eq!(t.lost(6), 0);
        assert_eq!(t.unique(), 6);
        assert_eq!(t.reordered(), 4);
        assert_eq!(t.duplicates(), 0);
    }

    #[test]
    fn duplicates_are_not_counted_twice() {
        let mut t = feed(&[0, 1, 2]);
        assert_eq!(t.observe(1), Outcome::Duplicate);
        assert_eq!(t.observe(2), Outcome::Duplicate);
        t.observe(4);
        assert_eq!(t.observe(4), Outcome::Duplicate);
        assert_eq!(t.observe(3), Outcome::Reordered);
        assert_eq!(t.observe(3), Outcome::Duplicate);
        assert_eq!(t.unique(), 5);
        assert_eq!(t.duplicates(), 4);
        assert_eq!(t.reordered(), 1);
        assert_eq!(t.lost(5), 0);
    }

    #[test]
    fn several_gaps_stay_sorted() {
        let mut t = feed(&[0, 3, 7, 10]); // missing 1,2 4,5,6 8,9
        assert_eq!(t.lost(11), 7);
        assert_eq!(t.observe(5), Outcome::Reordered);
        assert_eq!(t.observe(8), Outcome::Reordered);
        assert_eq!(t.observe(2), Outcome::Reordered);
        assert_eq!(t.observe(5), Outcome::Duplicate);
        assert_eq!(t.lost(11), 4); // 1, 4, 6, 9
        assert_eq!(t.lost(12), 5);
    }

    #[test]
    fn received_beyond_published_is_not_negative_loss() {
        let t = feed(&[0, 1, 2, 3]);
        assert_eq!(t.lost(2), 0);
    }
}
