//! kinfer gateway: an OpenAI-compatible HTTP gateway that routes each request, by its `model`
//! field, to a ready engine replica of the matching InferenceModel.
//!
//! - [`server`]: the API ([`server::build_router`]) and the admin port.
//! - [`request`]: the little the gateway reads from a request.
//! - [`index`]: the routing index and the discovery sources feeding it.
//! - [`policy`]: replica selection.
//! - [`proxy`]: the upstream client, retries, ejection and streaming pass-through.
//! - [`metrics`], [`config`], [`error`].

pub mod config;
pub mod error;
pub mod index;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod server;

use std::sync::Arc;

pub use error::ApiError;
pub use server::{build_admin_router, build_router, AppState, Gateway, Limits};

use index::Index;
use metrics::Metrics;
use policy::PolicyConfig;
use proxy::{Proxy, ProxyConfig};

/// Settings of [`Gateway::new`].
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    pub default_strategy: kinfer_crds::RoutingStrategy,
    pub policy: PolicyConfig,
    pub proxy: ProxyConfig,
    pub limits: Limits,
}

impl Gateway {
    /// A gateway with an empty index; a discovery source (or a test) publishes into
    /// `gateway.index`.
    pub fn new(config: GatewayConfig) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let index = Arc::new(Index::new(
            config.default_strategy,
            config.policy,
            metrics.clone(),
        ));
        Self::sharing(&index, &metrics, config.proxy, config.limits)
    }

    /// Another gateway over the same index and metrics, with its own upstream connection pool:
    /// one per serving thread (see main), so a request never leaves the thread it arrived on.
    pub fn sharing(
        index: &Arc<Index>,
        metrics: &Arc<Metrics>,
        proxy: ProxyConfig,
        limits: Limits,
    ) -> AppState {
        Arc::new(Gateway {
            index: index.clone(),
            proxy: Proxy::new(proxy, metrics.clone()),
            metrics: metrics.clone(),
            limits,
        })
    }
}
