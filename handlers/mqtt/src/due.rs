//! Work that records in the metadata store schedule (a session's end, a
//! delayed will), done on time by every gateway: the records are read once
//! the backend answers and again every [`SWEEP`], and the work due before
//! the next reading is done at its time. Records another gateway wrote
//! since (a client that left it) are found by the next reading.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_api::metadata::Versioned;
use gateway_api::topic::{escape_word, unescape_word, Namespace};
use gateway_api::Context;
use tokio::sync::Semaphore;

use gateway_api::now_ms;

/// How long a gateway waits before reading the records again when the
/// backend did not answer (it may still be connecting).
const RETRY: Duration = Duration::from_secs(1);

/// At most this many pieces of due work run at once: records left by a
/// gateway that stopped long ago are all due at start.
pub(crate) const AT_ONCE: usize = 16;

/// How often the records are read again.
pub(crate) const SWEEP: Duration = Duration::from_secs(60);

/// The records under `prefix`, read again until the backend answers;
/// `None` if the gateway stops first.
pub(crate) async fn records(ctx: &Context, prefix: &str) -> Option<Vec<(String, Versioned)>> {
    loop {
        match ctx.backend.metadata().scan(prefix).await {
            Ok(found) => return Some(found),
            Err(e) => tracing::debug!(prefix, error = %e, "stored records not read yet"),
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return None,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Starts `work` on each item at its time (ms since the epoch), earliest
/// first; returns once all are started, or the gateway stops.
/// `running` bounds the work under way (of [`AT_ONCE`] permits).
pub(crate) async fn run_on_time<T, F, Fut>(
    ctx: Context,
    running: Arc<Semaphore>,
    mut items: Vec<(u64, T)>,
    work: F,
) where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    items.sort_by_key(|(at, _)| *at);
    for (at, item) in items {
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        let permit = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            permit = async {
                tokio::time::sleep(wait).await;
                running.clone().acquire_owned().await
            } => permit,
        };
        let Ok(permit) = permit else { return };
        let job = work(item);
        tokio::spawn(async move {
            job.await;
            drop(permit);
        });
    }
}

/// Waits until `at` (ms since the epoch); false if the gateway stops
/// first.
pub(crate) async fn wait_until(ctx: &Context, at: u64) -> bool {
    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
    tokio::select! {
        () = ctx.shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Every [`SWEEP`] until the gateway stops, reads the records of clients
/// under `prefix` (keys made by [`client_key`]) and runs `work` on each
/// client whose record `time_of` gives a time before the next reading, at
/// that time. `what` names them in the log (at the first reading).
pub(crate) async fn run_client_records<W, F, Fut>(
    ctx: Context,
    prefix: &str,
    what: &str,
    time_of: W,
    work: F,
) where
    W: Fn(&Namespace, Bytes) -> Option<u64>,
    F: Fn(Context, Namespace, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let running = Arc::new(Semaphore::new(AT_ONCE));
    let mut first = true;
    loop {
        let Some(found) = records(&ctx, prefix).await else {
            return;
        };
        let horizon = now_ms() + SWEEP.as_millis() as u64;
        let items: Vec<(u64, (Namespace, String))> = found
            .into_iter()
            .filter_map(|(key, versioned)| {
                let (namespace, client_id) = parse_client_key(prefix, &key)?;
                let at = time_of(&namespace, versioned.value).filter(|&at| at <= horizon)?;
                Some((at, (namespace, client_id)))
            })
            .collect();
        if first {
            tracing::info!(count = items.len(), "{what}");
            first = false;
        }
        let run = |(namespace, client_id)| work(ctx.clone(), namespace, client_id);
        run_on_time(ctx.clone(), running.clone(), items, run).await;
        if !wait_until(&ctx, horizon).await {
            return;
        }
    }
}

/// The key of a record of `client_id` of `namespace` under `prefix`:
/// `{prefix}{tenant}/{namespace}/{client id}`, each escaped.
pub(crate) fn client_key(prefix: &str, namespace: &Namespace, client_id: &str) -> String {
    format!(
        "{prefix}{}/{}/{}",
        escape_word(&namespace.tenant),
        escape_word(&namespace.namespace),
        escape_word(client_id)
    )
}

/// The namespace and client id a [`client_key`] names.
pub(crate) fn parse_client_key(prefix: &str, key: &str) -> Option<(Namespace, String)> {
    let mut words = key.strip_prefix(prefix)?.splitn(3, '/').map(unescape_word);
    let (tenant, namespace, client_id) = (words.next()??, words.next()??, words.next()??);
    Some((Namespace::new(&tenant, &namespace).ok()?, client_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_namespace_and_client() {
        let namespace = Namespace::new("t", "n").unwrap_or_else(|e| panic!("{e}"));
        let key = client_key("p/", &namespace, "odd/id %");
        assert_eq!(
            parse_client_key("p/", &key),
            Some((namespace, "odd/id %".to_owned()))
        );
        assert_eq!(parse_client_key("q/", &key), None);
    }
}
