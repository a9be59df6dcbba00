//! The request path of the proxied API (every `POST /v1/*` but the model list), in the order a
//! request takes it:
//!
//! 1. **authenticate**: the API key, when authentication is on ([`Gateway::authenticate`]);
//! 2. **resolve**: read the body, find the model in the routing table, check the key may use it
//!    and the model serves the endpoint;
//! 3. **admit**: the key's quotas (requests and tokens per minute, concurrency), before any
//!    waiting ([`Gateway::admit`]);
//! 4. **hold**: while the model has no ready replica, or requests are already held for it
//!    ([`crate::hold`]);
//! 5. **place**: region and zone pinning, own-zone preference ([`crate::placement`]);
//! 6. **pick and forward**: the model's concurrency slot ([`crate::quota::fair_queue`]), then
//!    the routing policy's replica, retries and ejection ([`crate::proxy`]);
//! 7. **account**: quota headers, tokens counted from the engine's `usage` ([`crate::usage`]).
//!
//! An error at any step is answered in the OpenAI error envelope ([`ApiError`]), and every
//! request, answered or not, leaves one access log line and its metrics ([`RequestLog`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;

use crate::auth::keys::{ApiKey, API_KEY_HEADER};
use crate::auth::{Auth, LimitLabels};
use crate::error::{insert_rate_headers, ApiError};
use crate::hold::{self, HoldDefaults};
use crate::index::{Index, ModelEntry};
use crate::metrics::Metrics;
use crate::placement::{self, Placed};
use crate::policy::{PolicyConfig, RequestInfo};
use crate::proxy::{self, Proxy, RequestLog, UpstreamRequest, REQUEST_ID_HEADER};
use crate::quota::{ConcurrencySlot, ModelQueues, ModelSlot, Peers, QueueError, RateStatus};
use crate::usage::{AccountedBody, Accounting, Charged, Charger, Usage};
use crate::{prefix, request, usage};

/// Settings of the request path.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Longest wait for the next part of a request body (408 after).
    pub body_timeout: Duration,
    /// How long a request for a model with no ready replica waits for one.
    pub hold_timeout: Duration,
    /// Requests that may wait per model; more are answered 503 at once.
    pub hold_queue_limit: usize,
    /// How often a held stream request gets an SSE keep-alive comment, once its hold has
    /// lasted this long; zero: never (see [`crate::hold::stream`]).
    pub hold_keepalive_interval: Duration,
    /// `Retry-After` of 503 answers.
    pub retry_after: Duration,
    /// The gateway's own zone: replicas there are preferred while not saturated.
    pub own_zone: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            body_timeout: Duration::from_secs(30),
            hold_timeout: Duration::from_secs(180),
            hold_queue_limit: 1000,
            hold_keepalive_interval: Duration::from_secs(15),
            retry_after: Duration::from_secs(10),
            own_zone: None,
        }
    }
}

/// What every request shares: the routing index (what exists), the held requests, the proxy
/// (upstream connections, retries), authentication, quotas, metrics and settings.
pub struct Gateway {
    pub index: Arc<Index>,
    /// Requests held per model (live state, apart from the index).
    pub holds: Arc<hold::Holds>,
    pub proxy: Proxy,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// API keys.
    pub auth: Arc<Auth>,
    /// Gateway replicas sharing each key's quotas.
    pub peers: Arc<Peers>,
    /// The per-model concurrency limit's queues.
    pub model_queues: Arc<ModelQueues>,
    pub policy: PolicyConfig,
}

pub type AppState = Arc<Gateway>;

/// A request that passed every check before the hold (model known and allowed, key quotas).
struct Admitted {
    parts: http::request::Parts,
    body: Bytes,
    key: Option<Arc<ApiKey>>,
    /// The key's concurrency slot and rate figures, when it has quotas.
    admitted: Option<(ConcurrencySlot, RateStatus)>,
    log: RequestLog,
}

/// Name of every request in the model queues when authentication is off.
const ANONYMOUS: &str = "(anonymous)";

/// Serve one proxied request.
pub async fn handle(gateway: AppState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request::request_id(
        parts
            .headers
            .get(REQUEST_ID_HEADER)
            .map(http::HeaderValue::as_bytes),
    );
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let log = RequestLog::new(gateway.metrics.clone(), request_id.clone(), path_and_query);
    let mut response = match gateway.route(parts, body, log).await {
        Ok(response) => response,
        Err((error, mut log)) => {
            log.status = Some(error.status().as_u16());
            log.error = Some(error.metric_label());
            error.into_response()
        }
    };
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    response
}

impl Gateway {
    /// Steps 1 to 4: the key, the model, the quotas, the hold; then [`Self::dispatch`].
    async fn route(
        self: &Arc<Self>,
        mut parts: http::request::Parts,
        body: Body,
        mut log: RequestLog,
    ) -> Result<Response, (ApiError, RequestLog)> {
        let key = match self.authenticate(&parts.headers) {
            Ok(key) => key,
            Err(error) => return Err((error, log)),
        };
        if key.is_some() {
            // Engines (and their logs) never see the key.
            parts.headers.remove(header::AUTHORIZATION);
            parts.headers.remove(API_KEY_HEADER);
        }
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(error) => return Err((error, log)),
        };
        let entry = match self.resolve(&parts, &body, key.as_deref()) {
            Ok(entry) => entry,
            Err(error) => return Err((error, log)),
        };
        log.model = Some(entry.metrics.clone());
        // Step 3, quotas before holding: a refused request is not kept waiting first.
        let admitted = match key.as_deref().filter(|key| !key.spec.limits.is_empty()) {
            Some(key) => match self.admit(key) {
                Ok(admitted) => Some(admitted),
                Err(error) => return Err((error, log)),
            },
            None => None,
        };
        let request = Admitted {
            parts,
            body,
            key,
            admitted,
            log,
        };
        // Step 4: held while the model has no ready replica, and behind requests already
        // held for it.
        if !entry.endpoints.is_empty() && !self.holds.is_holding(&entry.id) {
            return self.dispatch(entry, None, request).await;
        }
        // Boxed: the held path's state is large, and would otherwise be part of (and moved
        // with) every request's future.
        Box::pin(self.route_held(entry, request)).await
    }

    /// The model of the request, as the routing table has it: known, allowed for the key,
    /// and serving the endpoint.
    fn resolve(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        key: Option<&ApiKey>,
    ) -> Result<Arc<ModelEntry>, ApiError> {
        let model = request::model_of(body)?;
        let table = self.index.snapshot();
        let entry = table.get(&model).ok_or_else(|| ApiError::ModelNotFound {
            model: model.into_owned(),
        })?;
        if let Some(key) = key.filter(|key| !key.allows(&entry.id)) {
            return Err(ApiError::ModelNotAllowed {
                model: entry.id.clone(),
                key: key.name().to_string(),
            });
        }
        let path = parts.uri.path();
        if let Some(feature) = request::required_feature(path) {
            if !entry.serves(feature) {
                return Err(ApiError::UnsupportedEndpoint {
                    model: entry.id.clone(),
                    path: path.to_string(),
                    features: entry.features_string(),
                    required: feature.as_str(),
                });
            }
        }
        Ok(entry.clone())
    }

    /// Step 1: the request's key, when authentication is on.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<ApiKey>>, ApiError> {
        self.auth
            .authenticate(headers)
            .map_err(|reason| ApiError::Unauthorized { reason })
    }

    /// Apply the key's limits: a concurrency slot and the rate figures for the headers.
    fn admit(&self, key: &ApiKey) -> Result<(ConcurrencySlot, RateStatus), ApiError> {
        let peers = self.peers.get();
        key.state
            .admit(&key.spec.limits, peers, tokio::time::Instant::now())
            .map_err(|rejection| {
                self.auth
                    .metrics
                    .rate_limited
                    .get_or_create(&LimitLabels {
                        key: key.name().to_string(),
                        limit: rejection.kind.as_str(),
                    })
                    .inc();
                ApiError::RateLimited {
                    key: key.name().to_string(),
                    kind: rejection.kind,
                    limit: rejection.limit,
                    retry_after: rejection.retry_after,
                    status: rejection.status,
                }
            })
    }

    /// A slot of the model's concurrency limit, if models have one.
    async fn model_slot(
        &self,
        entry: &ModelEntry,
        key: Option<&ApiKey>,
    ) -> Result<Option<ModelSlot>, ApiError> {
        let Some(queue) = self.model_queues.queue(&entry.id) else {
            return Ok(None);
        };
        let name: Arc<str> = Arc::from(key.map_or(ANONYMOUS, |key| key.name()));
        let retry_after = self.settings.retry_after;
        match queue.acquire(&name, self.model_queues.config.timeout).await {
            Ok(slot) => Ok(Some(slot)),
            Err(QueueError::Full) => Err(ApiError::ModelQueueFull {
                model: entry.id.clone(),
                retry_after,
            }),
            Err(QueueError::Timeout) => Err(ApiError::ModelQueueTimeout {
                model: entry.id.clone(),
                retry_after,
            }),
        }
    }

    /// A request for a model with no ready replica, or behind requests already held for it.
    async fn route_held(
        self: &Arc<Self>,
        entry: Arc<ModelEntry>,
        request: Admitted,
    ) -> Result<Response, (ApiError, RequestLog)> {
        let interval = self.settings.hold_keepalive_interval;
        if interval.is_zero() || !hold::stream::is_stream(&request.body) {
            let released = match self.wait_for_replica(entry).await {
                Ok(released) => released,
                Err(error) => return Err((error, request.log)),
            };
            return self
                .dispatch(released.entry, released.release, request)
                .await;
        }
        // A held stream request: if the hold outlasts one interval, the client gets a 200 with
        // SSE keep-alives at once, and the rest of the request runs in the response body.
        let hold_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut rest: hold::stream::Continuation = Box::pin({
            let gateway = self.clone();
            let hold_ended = hold_ended.clone();
            async move {
                let released = gateway.wait_for_replica(entry).await;
                hold_ended.store(true, std::sync::atomic::Ordering::Relaxed);
                let released = match released {
                    Ok(released) => released,
                    Err(error) => return Err((error, request.log)),
                };
                gateway
                    .dispatch(released.entry, released.release, request)
                    .await
            }
        });
        tokio::select! {
            biased;
            result = &mut rest => result,
            () = tokio::time::sleep(interval) => {
                // `rest` runs on this task: the flag is as it left it.
                if hold_ended.load(std::sync::atomic::Ordering::Relaxed) {
                    // Released in time, waiting for the engine: answered as usual.
                    rest.await
                } else {
                    Ok(hold::stream::keepalive_response(rest, interval))
                }
            }
        }
    }

    /// Send a request, held or not, to a replica of `entry`; `release` is the reservation of a
    /// request the hold released, kept until the request is in flight on its replica.
    async fn dispatch(
        &self,
        entry: Arc<ModelEntry>,
        release: Option<hold::Release<'_>>,
        request: Admitted,
    ) -> Result<Response, (ApiError, RequestLog)> {
        let Admitted {
            mut parts,
            body,
            key,
            admitted,
            log,
        } = request;
        let entry = match self.place(entry, &parts.headers, &body) {
            Ok(entry) => entry,
            Err(error) => return Err((error, log)),
        };
        let prefix_blocks = if entry.strategy == kinfer_crds::RoutingStrategy::PrefixCache {
            prefix::prefix_blocks(&body, &entry.id)
        } else {
            Vec::new()
        };
        let counts_tokens = key
            .as_ref()
            .is_some_and(|key| key.spec.limits.tokens_per_minute.is_some());
        let request_bytes = body.len();
        let (body, accounting) = if counts_tokens {
            let (body, accounting) = usage::prepare_request(body);
            (body, Some(accounting))
        } else {
            (body, None)
        };
        let model_slot = match self.model_slot(&entry, key.as_deref()).await {
            Ok(slot) => slot,
            Err(error) => return Err((error, log)),
        };
        let path = parts.uri.path();
        let info = RequestInfo {
            model: &entry.id,
            path,
            prefix_blocks: &prefix_blocks,
            adapter: entry.parent.is_some().then_some(entry.id.as_str()),
        };
        proxy::strip_hop_by_hop(&mut parts.headers);
        let upstream = UpstreamRequest {
            method: parts.method.clone(),
            path_and_query: log.path.clone(),
            headers: std::mem::take(&mut parts.headers),
            request_id: log.request_id.clone(),
            body,
        };
        // Pinned here, and lent to `hand_over`: the forward future is large, and a copy of it
        // per request (a move into another future) measured as a tenth of the instructions.
        let mut forward = std::pin::pin!(self.proxy.forward(&entry, upstream, &info, log));
        let response = match release {
            None => forward.await?,
            Some(release) => hold::hand_over(forward.as_mut(), release).await?,
        };
        if admitted.is_none() && model_slot.is_none() && accounting.is_none() {
            return Ok(response);
        }
        let (mut head, body) = response.into_parts();
        let (slot, status) = match admitted {
            Some((slot, status)) => (Some(slot), Some(status)),
            None => (None, None),
        };
        if let Some(status) = &status {
            insert_rate_headers(&mut head.headers, status);
        }
        // Engine errors have no usage to count.
        let accounting = accounting.filter(|_| head.status.is_success());
        if matches!(accounting, Some(Accounting::Stream { strip: true })) {
            head.headers.remove(header::CONTENT_LENGTH);
        }
        let charger = match (&accounting, key) {
            (Some(_), Some(key)) => Some(self.token_charger(key, request_bytes)),
            _ => None,
        };
        let body = AccountedBody::new(body, accounting, charger, (slot, model_slot));
        Ok(Response::from_parts(head, Body::new(body)))
    }

    /// Charges a response's tokens to its key when the response ends or is dropped.
    fn token_charger(&self, key: Arc<ApiKey>, request_bytes: usize) -> Charger {
        let peers = self.peers.clone();
        let estimated = self.auth.metrics.tokens_estimated.clone();
        let counter = key
            .tokens_counter
            .get_or_init(|| {
                self.auth
                    .metrics
                    .tokens
                    .get_or_create_owned(&crate::auth::KeyLabels {
                        key: key.name().to_string(),
                    })
            })
            .clone();
        let charge = Box::new(move |usage: Usage, charged: Charged| {
            let tokens = usage.tokens();
            match charged {
                Charged::Reported => {
                    counter.inc_by(tokens);
                }
                // Rare (a cut response): the labelled counter is looked up here.
                Charged::Estimated => {
                    estimated
                        .get_or_create(&crate::auth::KeyLabels {
                            key: key.name().to_string(),
                        })
                        .inc_by(tokens);
                }
            }
            key.state.charge_tokens(
                &key.spec.limits,
                peers.get(),
                tokens,
                tokio::time::Instant::now(),
            );
        });
        Charger {
            request_bytes,
            charge,
        }
    }

    /// The entry restricted to the replicas that may serve the request (placement pinning,
    /// own-zone preference); the entry itself when nothing restricts it.
    fn place(
        &self,
        entry: Arc<ModelEntry>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Arc<ModelEntry>, ApiError> {
        let wanted = placement::requested(headers, body);
        let own_zone = self.settings.own_zone.as_deref();
        if wanted.is_empty() && own_zone.is_none() {
            return Ok(entry);
        }
        let saturation = (
            self.policy.engine_metrics_max_age,
            self.policy.saturated_queue_depth,
        );
        match placement::place(&entry, &wanted, own_zone, saturation) {
            Placed::All => Ok(entry),
            Placed::Subset(subset) => Ok(subset),
            Placed::Nowhere => Err(ApiError::NoReplicaInPlacement {
                model: entry.id.clone(),
                placement: wanted.to_string(),
                retry_after: self.settings.retry_after,
            }),
        }
    }

    /// The whole request body, at most `max_body_bytes` (413 above), each part arriving
    /// within `body_timeout` of the one before (408 after).
    async fn read_body(&self, body: Body) -> Result<Bytes, ApiError> {
        use hyper::body::Body as _;
        let limit = self.settings.max_body_bytes;
        if body.size_hint().lower() > limit as u64 {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let mut body = body;
        let mut first: Option<Bytes> = None;
        let mut gathered: Option<bytes::BytesMut> = None;
        let mut total = 0_usize;
        loop {
            let frame = match tokio::time::timeout(self.settings.body_timeout, body.frame()).await {
                Ok(Some(frame)) => frame.map_err(ApiError::BodyRead)?,
                Ok(None) => break,
                Err(_) => {
                    return Err(ApiError::BodyTimeout {
                        after: self.settings.body_timeout,
                    })
                }
            };
            // Trailers are not forwarded (the body is sent whole, with a content-length).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            // A body that came in one frame is kept as it is (no buffer, no copy).
            match (&mut gathered, first.take()) {
                (Some(buffer), _) => buffer.extend_from_slice(&data),
                (None, None) => first = Some(data),
                (None, Some(earlier)) => {
                    let mut buffer = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                    buffer.extend_from_slice(&earlier);
                    buffer.extend_from_slice(&data);
                    gathered = Some(buffer);
                }
            }
        }
        Ok(match gathered {
            Some(buffer) => buffer.freeze(),
            None => first.unwrap_or_default(),
        })
    }

    /// Hold a request for a model with no ready replica, or behind the requests already held for
    /// it, until the release rule of [`crate::hold`] lets it go. The release reservation it
    /// returns goes to [`hold::hand_over`] with the forward.
    async fn wait_for_replica(
        &self,
        entry: Arc<ModelEntry>,
    ) -> Result<hold::Released<'_>, ApiError> {
        let defaults = HoldDefaults {
            timeout: self.settings.hold_timeout,
            queue_limit: self.settings.hold_queue_limit,
            retry_after: self.settings.retry_after,
        };
        hold::hold(&self.index, &self.holds, entry, &defaults).await
    }
}
