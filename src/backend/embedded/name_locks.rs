//! One lock per base topic name: changes to a topic's registration
//! (creation, more partitions, deletion) wait for each other, changes to
//! different topics run at once. Creating a topic costs fsyncs of its
//! directory, log file and metadata (about 1 ms here), which many new
//! topics then pay side by side rather than in turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_api::TopicName;
use tokio::sync::OwnedMutexGuard;

type Lock = Arc<tokio::sync::Mutex<()>>;

/// The locks wanted now, by name: made on demand, dropped once nobody
/// holds or waits for them.
#[derive(Default)]
pub(super) struct NameLocks {
    locks: Mutex<HashMap<TopicName, Lock>>,
}

/// A held name lock, released on drop.
pub(super) struct NameGuard<'a> {
    locks: &'a NameLocks,
    name: TopicName,
    lock: Lock,
    guard: Option<OwnedMutexGuard<()>>,
}

impl NameLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<TopicName, Lock>> {
        // The map stays whole if a holder panicked.
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for `name`'s lock.
    pub(super) async fn lock(&self, name: &TopicName) -> NameGuard<'_> {
        let lock = self.map().entry(name.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        NameGuard {
            locks: self,
            name: name.clone(),
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // The map's reference and this one: nobody else holds or waits
        // (a waiter clones under the map's lock, held here).
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::topic::Namespace;

    fn name(s: &str) -> TopicName {
        TopicName::parse(s, &Namespace::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn one_name_waits_other_names_do_not() {
        let locks = Arc::new(NameLocks::default());
        let a = locks.lock(&name("a")).await;
        // Another name is free at once.
        let b = locks.lock(&name("b")).await;
        drop(b);
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _a = locks.lock(&name("a")).await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the same name waits");
        drop(a);
        waiting.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(locks.len(), 0, "no lock kept once unwanted");
    }
}
