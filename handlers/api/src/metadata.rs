//! A small durable key-value store with compare-and-set and prefix scans.
//!
//! Consumer-group offsets, AMQP exchanges and bindings, MQTT retained
//! messages and sessions live here. Values are small (kilobytes); keys are
//! `/`-separated paths chosen by each handler under its own prefix
//! (`kafka/`, `mqtt/`, `amqp/`).

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BackendError;

/// A value with the version it was written at. Versions grow with each write
/// of the key; compare-and-set compares them. Only their order and equality
/// mean anything: the embedded store counts each key's writes from 1, the
/// Pulsar backend uses positions in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Bytes,
    /// The version of this write, at least 1.
    pub version: u64,
}

/// The condition of a conditional write or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Write whatever is there.
    Any,
    /// Write only if the key does not exist.
    Absent,
    /// Write only if the key is at this version.
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether a key currently at `current` (None = absent) meets this.
    pub fn matches(self, current: Option<u64>) -> bool {
        match (self, current) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::Absent, None) => true,
            (ExpectedVersion::Exactly(want), Some(have)) => want == have,
            _ => false,
        }
    }
}

/// Durable, shared by every gateway instance on the same backend.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BackendError>;

    /// Writes `value` if `expected` holds; returns the new version. Fails with
    /// [`BackendError::VersionConflict`] otherwise. Durable when it returns.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: ExpectedVersion,
    ) -> Result<u64, BackendError>;

    /// Deletes `key` if `expected` holds; deleting an absent key with
    /// `Any` succeeds.
    async fn delete(&self, key: &str, expected: ExpectedVersion) -> Result<(), BackendError>;

    /// Every key starting with `prefix`, in key order.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, BackendError>;
}
