//! The segmented, checksummed, group-committed log of one topic partition.
