//! Behaviour tests of the partition log.
