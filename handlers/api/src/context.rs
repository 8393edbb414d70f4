//! What every handler receives.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::backend::Backend;
use crate::budget::ByteBudget;
use crate::metrics::Metrics;
use crate::router::Router;

/// The gateway's shared services, the same for every protocol: a handle
/// of one pointer, as every connection holds one (several copies of a
/// struct of services would cost each idle connection hundreds of bytes).
/// Its fields are [`Services`]'.
#[derive(Clone)]
pub struct Context(Arc<Services>);

impl Context {
    /// The handle to `services`.
    pub fn new(services: Services) -> Context {
        Context(Arc::new(services))
    }
}

impl std::ops::Deref for Context {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What a [`Context`] gives access to.
pub struct Services {
    /// Where messages are published and consumed.
    pub backend: Arc<dyn Backend>,
    /// Checks credentials; [`crate::AllowAll`] when auth is off.
    pub auth: Arc<dyn Authenticator>,
    /// Resolves names to topics and authorizes actions.
    pub router: Arc<dyn Router>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Bytes of client requests held in memory, across every connection of
    /// every protocol: a handler reserves a request's size before reading
    /// it and holds the reservation until the request is answered.
    pub inbound: ByteBudget,
    /// Cancelled when the gateway shuts down: stop reading new requests,
    /// finish in-flight acknowledgements, close.
    pub shutdown: CancellationToken,
}
