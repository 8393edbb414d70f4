//! The embedded durable store: a segmented log per topic partition with
//! cursors per subscription, for a gateway without a Pulsar cluster.

pub mod log;
