//! The few calls of Pulsar's admin REST API (v2) the backend needs: topic
//! creation, deletion, partition changes, and reading the broker's settings
//! for the start-up check. Everything else goes over the binary protocol.

use std::collections::HashMap;

use gateway_api::{BackendError, TopicName};
use reqwest::{Method, StatusCode};

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
    fn topic_path(topic: &TopicName) -> String {
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
        let text = response.text().await.unwrap_or_default();
        Ok((status, text))
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

    /// Deletes a topic, partitioned or not, with its subscriptions.
    pub async fn delete_topic(
        &self,
        topic: &TopicName,
        partitioned: bool,
    ) -> Result<(), BackendError> {
        let path = Self::topic_path(topic);
        let path = if partitioned {
            format!("{path}/partitions?force=true")
        } else {
            format!("{path}?force=true")
        };
        let (status, text) = self.call(Method::DELETE, &path, None).await?;
        let missing = BackendError::TopicNotFound(topic.clone());
        outcome(topic, status, text, (StatusCode::NOT_FOUND, missing))
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

fn refused(topic: &TopicName, status: StatusCode, text: String) -> BackendError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BackendError::NotAuthorized {
            topic: topic.clone(),
            action: gateway_api::Action::Admin,
        },
        s if s.is_client_error() => BackendError::InvalidRequest(format!("{s}: {text}")),
        s => BackendError::Unavailable(format!("admin API: {s} {text}")),
    }
}
