//! kinfer gateway: an OpenAI-compatible HTTP gateway that routes each request, by its `model`
//! field, to a ready engine replica of the matching InferenceModel.
//!
//! - [`server`]: the API ([`server::build_router`]) and the admin port.
//! - [`request`]: the little the gateway reads from a request.
//! - [`index`]: the routing index and the discovery sources feeding it.
//! - [`hold`]: requests held for a model with no ready replica, released in arrival order.
//! - [`policy`]: replica selection.
//! - [`proxy`]: the upstream client, retries, ejection and streaming pass-through.
//! - [`auth`]: API keys; [`limits`]: per-key rate limits, per-model fair queueing;
//!   [`usage`]: token accounting from the engines' `usage`.
//! - [`prefix`]: prompt prefix block hashes for the PrefixCache policy; [`placement`]: region
//!   and zone pinning.
//! - [`metrics`], [`config`], [`error`].

pub mod auth;
pub mod config;
pub mod error;
pub mod hold;
pub mod http1;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod placement;
pub mod policy;
pub mod prefix;
pub mod proxy;
pub mod request;
pub mod server;
pub mod slice;
pub mod usage;

use std::sync::Arc;

pub use error::ApiError;
pub use server::{build_admin_router, build_router, AppState, Gateway, Limits};

use auth::{Access, AccessConfig};
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
    /// Authentication, key and model limits, placement.
    pub access: AccessConfig,
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
        let access = Arc::new(Access::new(config.access, metrics.access.clone()));
        Arc::new(Gateway {
            index,
            proxy: Proxy::new(config.proxy, metrics.clone()),
            metrics,
            limits: config.limits,
            access,
            policy: config.policy,
        })
    }

    /// Another gateway over the same index, metrics and access state (keys, limits), with its
    /// own upstream connection pool: one per serving thread (see main), so a request never
    /// leaves the thread it arrived on while limits stay per gateway process.
    pub fn worker(control: &Gateway, proxy: ProxyConfig, limits: Limits) -> AppState {
        Arc::new(Gateway {
            index: control.index.clone(),
            proxy: Proxy::new(proxy, control.metrics.clone()),
            metrics: control.metrics.clone(),
            limits,
            access: control.access.clone(),
            policy: control.policy,
        })
    }
}
