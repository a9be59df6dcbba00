//! kinfer gateway: an OpenAI-compatible HTTP gateway that routes each request, by its `model`
//! field, to a ready engine replica of the matching InferenceModel.
//!
//! - [`server`]: the one routing table of the API, the admin port's, and serving them with
//!   hyper (HTTP/1.1, h2c, TLS with [`tls`]).
//! - [`pipeline`]: the request path of proxied requests, step by step: authenticate, resolve,
//!   admit, hold, place, pick and forward, account.
//! - [`request`]: the little the gateway reads from a request.
//! - [`index`]: the routing index (what exists) and the discovery sources feeding it;
//!   [`endpoint`]: one replica, its placement and live state (in flight, ejection).
//! - [`hold`]: requests held for a model with no ready replica, released in arrival order.
//! - [`policy`]: replica selection.
//! - [`proxy`]: the upstream client, retries, ejection and streaming pass-through.
//! - [`auth`]: API keys; [`quota`]: per-key quotas and per-model fair queueing;
//!   [`usage`]: token accounting from the engines' `usage`.
//! - [`prefix`]: prompt prefix block hashes for the PrefixCache policy; [`placement`]: region
//!   and zone pinning.
//! - [`metrics`], [`config`], [`error`].

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod hold;
pub mod index;
pub mod metrics;
pub mod pipeline;
pub mod placement;
pub mod pods;
pub mod policy;
pub mod prefix;
pub mod proxy;
pub mod quota;
pub mod request;
pub mod server;
pub mod tls;
pub mod usage;

use std::sync::Arc;

pub use error::ApiError;
pub use pipeline::{AppState, Gateway, Settings};
pub use server::{build_admin_router, build_router};

use auth::Auth;
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
    pub settings: Settings,
    /// Require an API key on `/v1/*` (see [`auth::KeySources::enabled`]).
    pub auth: bool,
    /// The per-model concurrency limit.
    pub model_queues: quota::ModelQueueConfig,
}

impl Gateway {
    /// A gateway with an empty index; a discovery source (or a test) publishes into
    /// `gateway.index`.
    pub fn new(config: GatewayConfig) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let room = Arc::new(endpoint::RoomSignal::default());
        let index = Arc::new(Index::new(
            config.default_strategy,
            config.policy,
            metrics.clone(),
            room.clone(),
        ));
        let auth = Arc::new(Auth::new(config.auth, metrics.access.clone()));
        Arc::new(Gateway {
            index,
            holds: Arc::new(hold::Holds::new(room)),
            proxy: Proxy::new(config.proxy, metrics.clone()),
            metrics,
            settings: config.settings,
            auth,
            peers: Arc::default(),
            model_queues: Arc::new(quota::ModelQueues::new(config.model_queues)),
            policy: config.policy,
        })
    }

    /// Another gateway over the same index, holds, keys, quotas and metrics, with its own
    /// upstream connection pool: one per serving thread (see main), so a request stays on the
    /// thread it arrived on, engine connection included, while holds and quotas stay per
    /// gateway process.
    pub fn worker(&self) -> AppState {
        Arc::new(Gateway {
            index: self.index.clone(),
            holds: self.holds.clone(),
            proxy: self.proxy.sibling(),
            metrics: self.metrics.clone(),
            settings: self.settings.clone(),
            auth: self.auth.clone(),
            peers: self.peers.clone(),
            model_queues: self.model_queues.clone(),
            policy: self.policy,
        })
    }
}
