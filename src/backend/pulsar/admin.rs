//! The few calls of Pulsar's admin REST API (v2) the backend needs: topic
//! creation, deletion, partition changes, and reading the broker's settings
//! for the start-up check. Everything else goes over the binary protocol.

use std::collections::HashMap;

use gateway_api::topic::Namespace;
use gateway_api::{BackendError, TopicName};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// A client of one cluster's admin API.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    /// `base` is the web service URL, e.g. `http://127.0.0.1:8080` or
    /// `https://host:8443`. HTTPS trusts the built-in public roots plus the
    /// PEM certificates of `trusted`, as the binary protocol does.
    pub fn new(
        base: &str,
        token: Option<String>,
        trusted: Option<&[u8]>,
    ) -> Result<Admin, BackendError> {
        use rustls::pki_types::pem::PemObject;
        let invalid = |e: String| BackendError::InvalidRequest(format!("admin API TLS: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let trusted = trusted.unwrap_or_default();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(trusted) {
            let cert = cert.map_err(|e| invalid(format!("trusted certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("trusted certificate: {e}")))?;
        }
        // The ring provider, the binary protocol's, set here rather than
        // process-wide.
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| BackendError::Unavailable(format!("admin HTTP client: {e}")))?;
        Ok(Admin {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `/admin/v2/persistent/tenant/ns/local` for a topic.
    pub(super) fn topic_path(topic: &TopicName) -> String {
        let ns = topic.namespace();
        format!(
            "/admin/v2/{}/{}/{}/{}",
            topic.domain().as_str(),
            ns.tenant,
            ns.namespace,
            topic.local_name()
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String), BackendError> {
        self.request(method, path, body)
            .await
            .map(|(status, _, text)| (status, text))
    }

    /// One request: status, headers and body text.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, String), BackendError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("admin API {path}: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Ok((status, headers, text))
    }

    /// Creates `topic` with `partitions` partitions (0: not partitioned).
    pub async fn create_topic(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        let path = Self::topic_path(topic);
        let (status, text) = if partitions == 0 {
            self.call(Method::PUT, &path, None).await?
        } else {
            self.call(
                Method::PUT,
                &format!("{path}/partitions"),
                Some(partitions.to_string()),
            )
            .await?
        };
        let exists = BackendError::TopicExists(topic.clone());
        outcome(topic, status, text, (StatusCode::CONFLICT, exists))
    }

    /// Raises a partitioned topic's partition count.
    pub async fn update_partitions(
        &self,
        topic: &TopicName,
        partitions: u32,
    ) -> Result<(), BackendError> {
        let path = format!("{}/partitions", Self::topic_path(topic));
        let (status, text) = self
            .call(Method::POST, &path, Some(partitions.to_string()))
            .await?;
        let missing = BackendError::TopicNotFound(topic.clone());
        outcome(topic, status, text, (StatusCode::NOT_FOUND, missing))
    }

    /// Deletes a topic, partitioned or not, with its subscriptions; Pulsar
    /// refuses while producers or consumers are connected to it.
    pub async fn delete_topic(
        &self,
        topic: &TopicName,
        partitioned: bool,
    ) -> Result<(), BackendError> {
        let path = Self::topic_path(topic);
        let path = if partitioned {
            format!("{path}/partitions")
        } else {
            path
        };
        let (status, text) = self.call(Method::DELETE, &path, None).await?;
        let missing = BackendError::TopicNotFound(topic.clone());
        outcome(topic, status, text, (StatusCode::NOT_FOUND, missing))
    }

    /// Moves a durable subscription's cursor on one partition (or topic
    /// without partitions) to `to`. Pulsar disconnects the subscription's
    /// consumers on that partition, which then resume from there.
    pub async fn reset_cursor(
        &self,
        topic: &TopicName,
        subscription: &str,
        to: CursorTarget,
    ) -> Result<(), BackendError> {
        let subscription =
            percent_encoding::utf8_percent_encode(subscription, percent_encoding::NON_ALPHANUMERIC);
        let path = format!(
            "{}/subscription/{subscription}/resetcursor",
            Self::topic_path(topic)
        );
        let (status, text) = match to {
            CursorTarget::Time(ms) => {
                self.call(Method::POST, &format!("{path}/{ms}"), None)
                    .await?
            }
            CursorTarget::Entry {
                ledger,
                entry,
                batch_index,
            } => {
                // Pulsar's `ResetCursorData`: the position itself is read
                // next (`isExcluded` false).
                let body = serde_json::json!({
                    "ledgerId": ledger,
                    "entryId": entry,
                    "batchIndex": batch_index,
                    "isExcluded": false,
                });
                self.call(Method::POST, &path, Some(body.to_string()))
                    .await?
            }
        };
        let missing = BackendError::TopicNotFound(topic.clone());
        outcome(topic, status, text, (StatusCode::NOT_FOUND, missing))
    }

    /// A namespace's own retention policy: `Ok(None)` when it has none (the
    /// broker's defaults apply), `Err(NotAuthorized)` when this role may
    /// not read it.
    pub async fn retention(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<Retention>, BackendError> {
        let path = format!(
            "/admin/v2/namespaces/{}/{}/retention",
            namespace.tenant, namespace.namespace
        );
        let (status, text) = self.call(Method::GET, &path, None).await?;
        match status {
            s if s.is_success() && text.trim().is_empty() => Ok(None),
            s if s.is_success() => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| BackendError::Unavailable(format!("admin API {path}: {e}"))),
            s => Err(namespace_refused(namespace, s, text)),
        }
    }

    /// Sets a namespace's retention policy.
    pub async fn set_retention(
        &self,
        namespace: &Namespace,
        retention: Retention,
    ) -> Result<(), BackendError> {
        let path = format!(
            "/admin/v2/namespaces/{}/{}/retention",
            namespace.tenant, namespace.namespace
        );
        let body = serde_json::to_string(&retention)
            .map_err(|e| BackendError::InvalidRequest(format!("retention policy: {e}")))?;
        let (status, text) = self.call(Method::POST, &path, Some(body)).await?;
        match status {
            s if s.is_success() => Ok(()),
            s => Err(namespace_refused(namespace, s, text)),
        }
    }

    /// The broker's effective settings, or `None` when the API does not let
    /// this role read them (it needs super-user rights).
    pub async fn broker_settings(&self) -> Result<Option<HashMap<String, String>>, BackendError> {
        let path = "/admin/v2/brokers/configuration/runtime";
        let (status, text) = self.call(Method::GET, path, None).await?;
        match status {
            s if s.is_success() => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| BackendError::Unavailable(format!("admin API {path}: {e}"))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            s => Err(BackendError::Unavailable(format!(
                "admin API {path}: {s} {text}"
            ))),
        }
    }
}

/// Where [`Admin::reset_cursor`] moves a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorTarget {
    /// To a message, by Pulsar's id: (-1, -1) is the earliest retained
    /// message, (`i64::MAX`, `i64::MAX`) the end; `batch_index` -1 for a
    /// whole entry.
    Entry {
        ledger: i64,
        entry: i64,
        batch_index: i32,
    },
    /// To the first message published at or after this time (ms).
    Time(u64),
}

impl CursorTarget {
    /// The earliest retained message.
    pub const EARLIEST: CursorTarget = CursorTarget::Entry {
        ledger: -1,
        entry: -1,
        batch_index: -1,
    };
    /// Past the last message.
    pub const LATEST: CursorTarget = CursorTarget::Entry {
        ledger: i64::MAX,
        entry: i64::MAX,
        batch_index: -1,
    };
}

/// How long a namespace keeps messages every subscription acknowledged, or
/// that no subscription will read: by age and by size; -1 is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Minutes kept, -1 for ever.
    pub retention_time_in_minutes: i64,
    /// Megabytes kept, -1 without limit.
    #[serde(rename = "retentionSizeInMB")]
    pub retention_size_in_mb: i64,
}

impl Retention {
    /// Whether this keeps at least what `other` keeps, in age and in size.
    pub fn covers(&self, other: &Retention) -> bool {
        let at_least = |mine: i64, wanted: i64| mine < 0 || (wanted >= 0 && mine >= wanted);
        at_least(
            self.retention_time_in_minutes,
            other.retention_time_in_minutes,
        ) && at_least(self.retention_size_in_mb, other.retention_size_in_mb)
    }
}

fn namespace_refused(namespace: &Namespace, status: StatusCode, text: String) -> BackendError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BackendError::InvalidRequest(format!(
            "this role may not manage namespace {}/{}'s retention: {status} {text}",
            namespace.tenant, namespace.namespace
        )),
        s => BackendError::Unavailable(format!("admin API: {s} {text}")),
    }
}

/// The result of a topic request: success, the one failure the request
/// expects (`expected` answered with `error`), or a refusal.
fn outcome(
    topic: &TopicName,
    status: StatusCode,
    text: String,
    (expected, error): (StatusCode, BackendError),
) -> Result<(), BackendError> {
    match status {
        s if s.is_success() => Ok(()),
        s if s == expected => Err(error),
        s => Err(refused(topic, s, text)),
    }
}

pub(super) fn refused(topic: &TopicName, status: StatusCode, text: String) -> BackendError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BackendError::NotAuthorized {
            topic: topic.clone(),
            action: gateway_api::Action::Admin,
        },
        s if passing(s, &text) => BackendError::Unavailable(format!("admin API: {s} {text}")),
        s if s.is_client_error() => BackendError::InvalidRequest(format!("{s}: {text}")),
        s => BackendError::Unavailable(format!("admin API: {s} {text}")),
    }
}

/// Whether a client-error answer only means "not now": a broker that does
/// not own the topic yet (412 "Can't find owner", while it starts or
/// moves bundles), one that timed out or throttles. A retry may succeed.
fn passing(status: StatusCode, text: &str) -> bool {
    match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::PRECONDITION_FAILED => text.contains("Can't find owner"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{refused, Retention, StatusCode};
    use gateway_api::{BackendError, TopicName};

    #[test]
    fn a_topic_without_owner_yet_is_retriable() {
        let topic: TopicName = "restarting".parse().unwrap();
        let owner = r#"{"reason":"Can't find owner for topic persistent://public/default/t"}"#;
        let e = refused(&topic, StatusCode::PRECONDITION_FAILED, owner.into());
        assert!(matches!(e, BackendError::Unavailable(_)), "{e:?}");
        let busy = r#"{"reason":"Topic has active producers/subscriptions"}"#;
        let e = refused(&topic, StatusCode::PRECONDITION_FAILED, busy.into());
        assert!(matches!(e, BackendError::InvalidRequest(_)), "{e:?}");
        let e = refused(&topic, StatusCode::TOO_MANY_REQUESTS, String::new());
        assert!(matches!(e, BackendError::Unavailable(_)), "{e:?}");
    }

    fn r(minutes: i64, mb: i64) -> Retention {
        Retention {
            retention_time_in_minutes: minutes,
            retention_size_in_mb: mb,
        }
    }

    #[test]
    fn unbounded_retention_covers_everything_and_zero_nothing() {
        assert!(r(-1, -1).covers(&r(10_080, -1)));
        assert!(r(20_000, -1).covers(&r(10_080, -1)));
        assert!(!r(20_000, 500).covers(&r(10_080, -1)));
        assert!(!r(0, 0).covers(&r(10_080, -1)));
        assert!(!r(60, -1).covers(&r(10_080, -1)));
        let json = serde_json::to_string(&r(5, -1)).unwrap();
        assert_eq!(
            json,
            r#"{"retentionTimeInMinutes":5,"retentionSizeInMB":-1}"#
        );
    }
}
