//! The implementations of the handler contract's `Backend`, and
//! [`metered::Metered`], which wraps whichever one runs, and
//! [`deferred::Deferred`], which stands in for one still connecting.

pub mod deferred;
pub mod embedded;
pub mod metered;
pub mod pulsar;
