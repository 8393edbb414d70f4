//! A subscription's durable position in one partition, as Pulsar's managed
//! cursor keeps it: a mark-delete offset (everything below it is
//! acknowledged) and the ranges acknowledged individually above it.

use std::collections::BTreeMap;

/// At most this many individually-acknowledged ranges are persisted (as
/// Pulsar's `managedLedgerMaxUnackedRangesToPersist`); past it, the newest
/// ranges are left out of the stored form and those messages are
/// redelivered after a restart (at-least-once), never lost.
pub const MAX_PERSISTED_RANGES: usize = 10_000;

/// Position plus individual acknowledgements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// First offset not acknowledged: all below it are.
    mark_delete: u64,
    /// Acknowledged ranges above `mark_delete`: start -> end (exclusive),
    /// disjoint and not adjacent.
    acked: BTreeMap<u64, u64>,
}

impl Cursor {
    /// A cursor whose first unacknowledged message is `offset`.
    pub fn at(offset: u64) -> Cursor {
        Cursor {
            mark_delete: offset,
            acked: BTreeMap::new(),
        }
    }

    /// First offset not acknowledged.
    pub fn mark_delete(&self) -> u64 {
        self.mark_delete
    }

    /// Whether `offset` is acknowledged.
    pub fn is_acked(&self, offset: u64) -> bool {
        offset < self.mark_delete
            || self
                .acked
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, &end)| offset < end)
    }

    /// The first offset at or after `offset` that is not acknowledged.
    pub fn next_unacked(&self, offset: u64) -> u64 {
        let offset = offset.max(self.mark_delete);
        match self.acked.range(..=offset).next_back() {
            Some((_, &end)) if offset < end => end,
            _ => offset,
        }
    }

    /// Acknowledges one offset.
    pub fn ack(&mut self, offset: u64) {
        if self.is_acked(offset) {
            return;
        }
        let mut start = offset;
        let mut end = offset + 1;
        if let Some((&s, &e)) = self.acked.range(..offset).next_back() {
            if e == offset {
                start = s;
                self.acked.remove(&s);
            }
        }
        if let Some(e) = self.acked.remove(&end) {
            end = e;
        }
        self.acked.insert(start, end);
        self.compact();
    }

    /// Acknowledges every offset up to and including `offset`.
    pub fn ack_cumulative(&mut self, offset: u64) {
        if offset >= self.mark_delete {
            self.mark_delete = offset + 1;
            self.compact();
        }
    }

    /// Moves the mark-delete position to exactly `offset` (a seek): every
    /// acknowledgement is forgotten.
    pub fn reset(&mut self, offset: u64) {
        self.mark_delete = offset;
        self.acked.clear();
    }

    /// Folds ranges that touch the mark-delete position into it.
    fn compact(&mut self) {
        while let Some((&start, &end)) = self.acked.first_key_value() {
            if start > self.mark_delete {
                break;
            }
            self.acked.remove(&start);
            self.mark_delete = self.mark_delete.max(end);
        }
    }

    /// Stored form: mark-delete, range count, ranges; all u64 big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let ranges: Vec<_> = self.acked.iter().take(MAX_PERSISTED_RANGES).collect();
        let mut out = Vec::with_capacity(16 + ranges.len() * 16);
        out.extend_from_slice(&self.mark_delete.to_be_bytes());
        out.extend_from_slice(&(ranges.len() as u64).to_be_bytes());
        for (start, end) in ranges {
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        out
    }

    /// Parses [`Cursor::encode`]; `None` if the bytes are malformed.
    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        let mut words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])));
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mark_delete = words.next()?;
        let count = usize::try_from(words.next()?).ok()?;
        if count > MAX_PERSISTED_RANGES || bytes.len() != 16 + count * 16 {
            return None;
        }
        let mut cursor = Cursor::at(mark_delete);
        for _ in 0..count {
            let (start, end) = (words.next()?, words.next()?);
            if start >= end || start < mark_delete {
                return None;
            }
            cursor.acked.insert(start, end);
        }
        Some(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn individual_acks_fold_into_the_mark() {
        let mut c = Cursor::at(0);
        c.ack(2);
        c.ack(1);
        assert_eq!(c.mark_delete(), 0);
        assert!(c.is_acked(1) && c.is_acked(2) && !c.is_acked(0));
        assert_eq!(c.next_unacked(1), 3);
        c.ack(0);
        assert_eq!(c.mark_delete(), 3);
        assert_eq!(c, Cursor::at(3));
    }

    #[test]
    fn cumulative_ack_swallows_ranges() {
        let mut c = Cursor::at(0);
        c.ack(5);
        c.ack(7);
        c.ack_cumulative(5);
        assert_eq!(c.mark_delete(), 6);
        assert!(c.is_acked(7) && !c.is_acked(6));
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(acks in proptest::collection::vec(0u64..64, 0..80)) {
            let mut c = Cursor::at(0);
            let mut set = std::collections::BTreeSet::new();
            for a in acks {
                c.ack(a);
                set.insert(a);
            }
            for o in 0..70 {
                prop_assert_eq!(c.is_acked(o), set.contains(&o));
            }
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Cursor::decode(&bytes);
        }
    }
}
