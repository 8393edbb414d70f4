//! The implementations of the handler contract's `Backend`, and
//! [`metered::Metered`], which wraps whichever one runs.

pub mod embedded;
pub mod metered;
pub mod pulsar;
