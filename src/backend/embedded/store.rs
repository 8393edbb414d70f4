//! The embedded store's small durable state, in one `redb` database: the
//! metadata key-value store of the contract, the topic registry (which
//! topics exist and how many partitions they have) and subscription cursors.
//!
//! `redb` is pure Rust, ACID, and commits with one fsync; each call runs on
//! the blocking pool so no async worker waits on the disk.

use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_api::{BackendError, ExpectedVersion, MetadataStore, Versioned};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Metadata store: key -> version (8 bytes, big-endian) ++ value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Topic registry: full base topic name -> partition count (0: not partitioned).
const TOPICS: TableDefinition<&str, u32> = TableDefinition::new("topics");
/// Cursors: `<partition topic>\0<subscription>` -> encoded cursor.
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
/// The last metadata version handed out, under [`LAST_VERSION`]: versions
/// rise across keys and deletes, so a key deleted and written again never
/// gets a version a conditional write read before (as on Pulsar, where a
/// version is a log offset).
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
const LAST_VERSION: &str = "last";

/// Maps any redb error to the contract's storage error.
fn storage<E: Into<redb::Error>>(e: E) -> BackendError {
    BackendError::Storage(e.into().to_string())
}

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct MetaDb {
    /// Shared by the metadata store, the topic registry and the cursor
    /// flusher; `None` once closed, so closing releases the file's lock even
    /// while handles to the store are still held elsewhere.
    db: Arc<RwLock<Option<Arc<Database>>>>,
}

impl MetaDb {
    /// Opens (or creates) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<MetaDb, BackendError> {
        let db = Database::create(path).map_err(|e| {
            BackendError::Storage(format!(
                "cannot open {}: {}",
                path.display(),
                redb::Error::from(e)
            ))
        })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(KV).map_err(storage)?;
        txn.open_table(TOPICS).map_err(storage)?;
        txn.open_table(CURSORS).map_err(storage)?;
        txn.open_table(VERSIONS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(MetaDb {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
        })
    }

    /// The open database, or `Closed`.
    fn db(&self) -> Result<Arc<Database>, BackendError> {
        let slot = self
            .db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.clone().ok_or(BackendError::Closed)
    }

    /// Releases the database (it closes when in-flight calls finish).
    pub fn close(&self) {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take();
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, BackendError> + Send + 'static,
    {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| BackendError::Storage(format!("metadata task failed: {e}")))?
    }

    /// Every registered topic with its partition count.
    pub fn topics_blocking(&self) -> Result<Vec<(String, u32)>, BackendError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(TOPICS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Registers or updates a topic's partition count.
    pub async fn put_topic(&self, topic: String, partitions: u32) -> Result<(), BackendError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(TOPICS)
                .map_err(storage)?
                .insert(topic.as_str(), partitions)
                .map_err(storage)?;
            txn.commit().map_err(storage)
        })
        .await
    }

    /// Removes a topic and every cursor of its partitions (`cursor_prefixes`
    /// are the partition topics' names).
    pub async fn delete_topic(
        &self,
        topic: String,
        cursor_prefixes: Vec<String>,
    ) -> Result<(), BackendError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(TOPICS)
                .map_err(storage)?
                .remove(topic.as_str())
                .map_err(storage)?;
            {
                let mut cursors = txn.open_table(CURSORS).map_err(storage)?;
                for prefix in cursor_prefixes {
                    let prefix = format!("{prefix}\0");
                    let keys = keys_with_prefix(&cursors, &prefix)?;
                    for k in keys {
                        cursors.remove(k.as_str()).map_err(storage)?;
                    }
                }
            }
            txn.commit().map_err(storage)
        })
        .await
    }

    /// The stored cursors of one partition: subscription name -> bytes.
    pub async fn cursors(&self, partition: String) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(CURSORS).map_err(storage)?;
            let prefix = format!("{partition}\0");
            let mut out = Vec::new();
            for row in table.range(prefix.as_str()..).map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let Some(sub) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                out.push((sub.to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Writes several cursors in one transaction (`None` deletes one).
    pub async fn write_cursors(
        &self,
        cursors: Vec<(String, String, Option<Vec<u8>>)>,
    ) -> Result<(), BackendError> {
        if cursors.is_empty() {
            return Ok(());
        }
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(CURSORS).map_err(storage)?;
                for (partition, sub, value) in &cursors {
                    let key = format!("{partition}\0{sub}");
                    match value {
                        Some(v) => {
                            table.insert(key.as_str(), v.as_slice()).map_err(storage)?;
                        }
                        None => {
                            table.remove(key.as_str()).map_err(storage)?;
                        }
                    }
                }
            }
            txn.commit().map_err(storage)
        })
        .await
    }
}

fn keys_with_prefix<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    prefix: &str,
) -> Result<Vec<String>, BackendError> {
    let mut keys = Vec::new();
    for row in table.range(prefix..).map_err(storage)? {
        let (k, _) = row.map_err(storage)?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        keys.push(k.to_owned());
    }
    Ok(keys)
}

/// The key's current version, if `expected` holds for it; a
/// `VersionConflict` otherwise.
fn check_version<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    key: &str,
    expected: ExpectedVersion,
) -> Result<Option<u64>, BackendError> {
    let current = match table.get(key).map_err(storage)? {
        Some(v) => Some(decode_versioned(v.value())?.version),
        None => None,
    };
    if expected.matches(current) {
        Ok(current)
    } else {
        Err(BackendError::VersionConflict(key.to_owned()))
    }
}

fn decode_versioned(raw: &[u8]) -> Result<Versioned, BackendError> {
    let (version, value) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| BackendError::Storage("metadata value shorter than its version".into()))?;
    Ok(Versioned {
        value: Bytes::copy_from_slice(value),
        version: u64::from_be_bytes(*version),
    })
}

#[async_trait]
impl MetadataStore for MetaDb {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(KV).map_err(storage)?;
            let value = table.get(key.as_str()).map_err(storage)?;
            value.map(|v| decode_versioned(v.value())).transpose()
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: ExpectedVersion,
    ) -> Result<u64, BackendError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            let version = {
                let mut table = txn.open_table(KV).map_err(storage)?;
                let current = check_version(&table, &key, expected)?;
                let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
                let last = versions
                    .get(LAST_VERSION)
                    .map_err(storage)?
                    .map_or(0, |v| v.value());
                // A store written before versions rose across keys may
                // hold a key above the last one handed out.
                let version = last.max(current.unwrap_or(0)) + 1;
                versions.insert(LAST_VERSION, version).map_err(storage)?;
                let mut raw = Vec::with_capacity(8 + value.len());
                raw.extend_from_slice(&version.to_be_bytes());
                raw.extend_from_slice(&value);
                table
                    .insert(key.as_str(), raw.as_slice())
                    .map_err(storage)?;
                version
            };
            txn.commit().map_err(storage)?;
            Ok(version)
        })
        .await
    }

    async fn delete(&self, key: &str, expected: ExpectedVersion) -> Result<(), BackendError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(KV).map_err(storage)?;
                check_version(&table, &key, expected)?;
                table.remove(key.as_str()).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, BackendError> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(KV).map_err(storage)?;
            let mut out = Vec::new();
            for row in table.range(prefix.as_str()..).map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.value().to_owned(), decode_versioned(v.value())?));
            }
            Ok(out)
        })
        .await
    }
}
