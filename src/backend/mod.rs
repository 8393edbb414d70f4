//! The implementations of the handler contract's `Backend`.

pub mod embedded;
