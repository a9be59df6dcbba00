//! The HTTP surface: [`build_router`] (the OpenAI-compatible API, used by main and by tests)
//! and [`build_admin_router`] (metrics and probes, on their own port).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use crate::auth::keys::{ApiKey, API_KEY_HEADER};
use crate::auth::{Access, LimitLabels, ReasonLabels};
use crate::error::{insert_rate_headers, ApiError};
use crate::hold::{self, HoldDefaults};
use crate::http1::server::{accept, Handler, Reply, RequestHead, ServerConfig};
use crate::http1::{Fields, HeaderLookup};
use crate::index::{Index, ModelEntry};
use crate::limits::{ConcurrencySlot, ModelSlot, QueueError, RateStatus};
use crate::metrics::Metrics;
use crate::placement::{self, Placed};
use crate::policy::{PolicyConfig, RequestInfo};
use crate::proxy::{self, Proxy, RequestLog, UpstreamRequest, REQUEST_ID_HEADER};
use crate::usage::{AccountedBody, Accounting, Charged, Charger, Usage};
use crate::{prefix, request, usage};

/// Limits of the request path.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// How long a request for a model with no ready replica waits for one.
    pub hold_timeout: Duration,
    /// Requests that may wait per model; more are answered 503 at once.
    pub hold_queue_limit: usize,
    /// How often a held stream request gets an SSE keep-alive comment, once its hold has
    /// lasted this long; zero: never (see [`crate::hold::stream`]).
    pub hold_keepalive_interval: Duration,
    /// `Retry-After` of 503 answers.
    pub retry_after: Duration,
    /// The rest of a request head, and each next part of a request body, must arrive within
    /// this (see [`crate::http1::server::ServerConfig`]).
    pub client_header_timeout: Duration,
    /// An idle client keep-alive connection is closed after this.
    pub client_keepalive_timeout: Duration,
    /// A client that takes no byte of its response for this long is disconnected.
    pub client_send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            hold_timeout: Duration::from_secs(180),
            hold_queue_limit: 1000,
            hold_keepalive_interval: Duration::from_secs(15),
            retry_after: Duration::from_secs(10),
            client_header_timeout: Duration::from_secs(30),
            client_keepalive_timeout: Duration::from_secs(75),
            client_send_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything the handlers share.
pub struct Gateway {
    pub index: Arc<Index>,
    pub proxy: Proxy,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// API keys, their limits, model queues: shared by every serving thread.
    pub access: Arc<Access>,
    pub policy: PolicyConfig,
}

/// A request that passed every check before the hold (model known and allowed, key limits).
struct Admitted {
    head: Box<RequestHead>,
    body: bytes::Bytes,
    key: Option<Arc<ApiKey>>,
    /// The key's concurrency slot and rate figures, when it has limits.
    admitted: Option<(ConcurrencySlot, RateStatus)>,
    log: RequestLog,
}

/// Name of every request in the model queues when authentication is off.
const ANONYMOUS: &str = "(anonymous)";

pub type AppState = Arc<Gateway>;

/// The OpenAI-compatible API.
pub fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route(
            "/v1/{*endpoint}",
            post(|State(gateway): State<AppState>, request: Request| {
                let (parts, body) = request.into_parts();
                async move {
                    proxy_request(gateway, Box::new(RequestHead::from_parts(parts)), body)
                        .await
                        .into_response()
                }
            }),
        )
        .route("/health", get(health))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Whether [`serve_api`] sends a request straight to the proxy: a POST to `/v1/<endpoint>`
/// other than the model list, exactly the requests `build_router` routes to the proxy. The
/// others go through the router (and its 404 and 405 answers).
fn is_proxied(method: &http::Method, path: &str) -> bool {
    method == http::Method::POST
        && path.len() > "/v1/".len()
        && path.starts_with("/v1/")
        && path != "/v1/models"
        && !path.starts_with("/v1/models/")
}

/// The API as [`serve_api`] serves it: the same answers as [`build_router`], with the proxied
/// requests (nearly all of them) handed to the proxy without the router. Matching,
/// path-parameter extraction and the boxed handler future were a tenth of the instructions of
/// a proxied request (callgrind, docs/benchmarks.md).
pub fn api_service(gateway: AppState) -> impl Handler {
    use futures::future::Either;
    use tower::ServiceExt;
    let router = build_router(gateway.clone());
    move |head: Box<RequestHead>, body: Body| {
        if is_proxied(&head.method, head.uri.path()) {
            Either::Left(proxy_request(gateway.clone(), head, body))
        } else {
            let router = router.clone();
            Either::Right(async move {
                let response = match head.into_request(body) {
                    Ok(request) => match router.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    Err(malformed) => *malformed,
                };
                Reply::from(response)
            })
        }
    }
}

/// Serve the API (see [`api_service`]) on `listener` with the gateway's own HTTP/1.1 server
/// ([`crate::http1::server`]) until `shutdown` completes, then wait for open connections
/// (streams included) to finish. Used by main and by tests.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    gateway: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = ServerConfig {
        header_timeout: gateway.limits.client_header_timeout,
        keep_alive_timeout: gateway.limits.client_keepalive_timeout,
        send_timeout: gateway.limits.client_send_timeout,
        max_body_bytes: gateway.limits.max_body_bytes,
    };
    crate::http1::server::serve(listener, api_service(gateway), config, shutdown).await
}

/// Serve `router` (the admin port: metrics and probes) with hyper until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use tower::ServiceExt;
    let service =
        router.map_request(|request: http::Request<hyper::body::Incoming>| request.map(Body::new));
    let service = hyper_util::service::TowerToHyperService::new(service);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper::server::conn::http1::Builder::new();
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some(stream) = accept(&listener, shutdown.as_mut()).await {
        let connection = builder.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "admin connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Prometheus metrics and the gateway's own probes.
pub fn build_admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn route_not_found(request: Request) -> ApiError {
    ApiError::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    }
}

async fn proxy_request(gateway: AppState, head: Box<RequestHead>, body: Body) -> Reply {
    let request_id = request::request_id(head.headers.get(REQUEST_ID_HEADER.as_str()));
    let path_and_query = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let log = RequestLog::new(gateway.metrics.clone(), request_id.clone(), path_and_query);
    let mut response = match gateway.route(head, body, log).await {
        Ok(response) => response,
        Err((error, mut log)) => {
            log.status = Some(error.status().as_u16());
            log.error = Some(error.metric_label());
            error.into_response().into()
        }
    };
    response.set_header(REQUEST_ID_HEADER, request_id);
    response
}

impl Gateway {
    /// The request's key, when authentication is on.
    fn authenticate(&self, headers: &impl HeaderLookup) -> Result<Option<Arc<ApiKey>>, ApiError> {
        if !self.access.config.enabled {
            return Ok(None);
        }
        match self.access.keys.authenticate(headers) {
            Ok(key) => Ok(Some(key)),
            Err(reason) => {
                self.access
                    .metrics
                    .auth_failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.metric_label(),
                    })
                    .inc();
                Err(ApiError::Unauthorized { reason })
            }
        }
    }

    /// Apply the key's limits: a concurrency slot and the rate figures for the headers.
    fn admit(&self, key: &ApiKey) -> Result<(ConcurrencySlot, RateStatus), ApiError> {
        let peers = self.access.peers.get();
        key.state
            .admit(&key.spec.limits, peers, tokio::time::Instant::now())
            .map_err(|rejection| {
                self.access
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
        let Some(queue) = self.access.queue(&entry.id) else {
            return Ok(None);
        };
        let name: Arc<str> = Arc::from(key.map_or(ANONYMOUS, |key| key.name()));
        let retry_after = self.limits.retry_after;
        match queue
            .acquire(&name, self.access.config.model_queue_timeout)
            .await
        {
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

    async fn route(
        self: &Arc<Self>,
        mut head: Box<RequestHead>,
        body: Body,
        log: RequestLog,
    ) -> Result<Reply, (ApiError, RequestLog)> {
        let key = match self.authenticate(&head.headers) {
            Ok(key) => key,
            Err(error) => return Err((error, log)),
        };
        if key.is_some() {
            // Engines (and their logs) never see the key.
            head.headers.remove(header::AUTHORIZATION.as_str());
            head.headers.remove(API_KEY_HEADER.as_str());
        }
        self.route_with_key(head, body, key, log).await
    }

    async fn route_with_key(
        self: &Arc<Self>,
        head: Box<RequestHead>,
        body: Body,
        key: Option<Arc<ApiKey>>,
        mut log: RequestLog,
    ) -> Result<Reply, (ApiError, RequestLog)> {
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(error) => return Err((error, log)),
        };
        let model = match request::model_of(&body) {
            Ok(model) => model,
            Err(error) => return Err((error, log)),
        };
        let table = self.index.snapshot();
        let Some(entry) = table.get(&model) else {
            let error = ApiError::ModelNotFound {
                model: model.into_owned(),
            };
            return Err((error, log));
        };
        log.model = Some(entry.metrics.clone());
        if let Some(key) = &key {
            if !key.allows(&entry.id) {
                let error = ApiError::ModelNotAllowed {
                    model: entry.id.clone(),
                    key: key.name().to_string(),
                };
                return Err((error, log));
            }
        }
        let path = head.uri.path();
        if let Some(feature) = request::required_feature(path) {
            if !entry.serves(feature) {
                let error = ApiError::UnsupportedEndpoint {
                    model: entry.id.clone(),
                    path: path.to_string(),
                    features: entry.features_string(),
                    required: feature.as_str(),
                };
                return Err((error, log));
            }
        }
        let entry = entry.clone();
        drop(table);
        drop(model);
        // Limits before holding: a refused request is not kept waiting first.
        let admitted = match key.as_deref().filter(|key| !key.spec.limits.is_empty()) {
            Some(key) => match self.admit(key) {
                Ok(admitted) => Some(admitted),
                Err(error) => return Err((error, log)),
            },
            None => None,
        };
        // Held while the model has no ready replica, and behind requests already held for it.
        let request = Admitted {
            head,
            body,
            key,
            admitted,
            log,
        };
        if !entry.endpoints.is_empty() && !self.index.holds().is_holding(&entry.id) {
            return self.dispatch(entry, None, request).await;
        }
        // Boxed: the held path's state is large, and would otherwise be part of (and moved
        // with) every request's future.
        Box::pin(self.route_held(entry, request)).await
    }

    /// A request for a model with no ready replica, or behind requests already held for it.
    async fn route_held(
        self: &Arc<Self>,
        entry: Arc<ModelEntry>,
        request: Admitted,
    ) -> Result<Reply, (ApiError, RequestLog)> {
        let interval = self.limits.hold_keepalive_interval;
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
                    Ok(hold::stream::keepalive_response(rest, interval).into())
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
    ) -> Result<Reply, (ApiError, RequestLog)> {
        let Admitted {
            mut head,
            body,
            key,
            admitted,
            log,
        } = request;
        let entry = match self.place(entry, &head.headers, &body) {
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
        let path = head.uri.path();
        let info = RequestInfo {
            model: &entry.id,
            path,
            prefix_blocks: &prefix_blocks,
            adapter: entry.parent.is_some().then_some(entry.id.as_str()),
        };
        proxy::strip_hop_by_hop(&mut head.headers);
        let upstream = UpstreamRequest {
            method: head.method.clone(),
            path_and_query: log.path.clone(),
            headers: std::mem::take(&mut head.headers),
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
        let Reply {
            response,
            headers,
            mut forwarded,
        } = response;
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
            forwarded.remove(header::CONTENT_LENGTH.as_str());
        }
        let charger = match (&accounting, key) {
            (Some(_), Some(key)) => Some(self.token_charger(key, request_bytes)),
            _ => None,
        };
        let body = AccountedBody::new(body, accounting, charger, (slot, model_slot));
        Ok(Reply {
            response: Response::from_parts(head, Body::new(body)),
            headers,
            forwarded,
        })
    }

    /// Charges a response's tokens to its key when the response ends or is dropped.
    fn token_charger(&self, key: Arc<ApiKey>, request_bytes: usize) -> Charger {
        let peers = self.access.peers.clone();
        let estimated = self.access.metrics.tokens_estimated.clone();
        let counter = key
            .tokens_counter
            .get_or_init(|| {
                self.access
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
        headers: &Fields,
        body: &[u8],
    ) -> Result<Arc<ModelEntry>, ApiError> {
        let wanted = placement::requested(headers, body);
        let own_zone = self.access.config.own_zone.as_deref();
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
                retry_after: self.limits.retry_after,
            }),
        }
    }

    async fn read_body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        let limit = self.limits.max_body_bytes;
        use hyper::body::Body as _;
        // The declared length (the server's body knows it from the head: no header lookup).
        let declared = body.size_hint().exact();
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        // Gathered here rather than with `Limited` and `collect`: a body that came with its
        // head is one frame, kept as it is (no buffer, no copy).
        let mut body = body;
        let mut first: Option<bytes::Bytes> = None;
        let mut gathered: Option<bytes::BytesMut> = None;
        let mut total = 0_usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(ApiError::BodyRead)?.into_data() else {
                // Trailers.
                continue;
            };
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
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
            timeout: self.limits.hold_timeout,
            queue_limit: self.limits.hold_queue_limit,
            retry_after: self.limits.retry_after,
        };
        hold::hold(&self.index, entry, &defaults).await
    }
}

fn model_json(entry: &ModelEntry) -> Value {
    json!({
        "id": entry.id,
        "object": "model",
        "created": entry.created,
        "owned_by": "kinfer",
        "root": entry.parent.as_deref().unwrap_or(&entry.id),
        "parent": entry.parent,
        "ready_replicas": entry.endpoints.len(),
        "features": entry.features.iter().map(|feature| feature.as_str()).collect::<Vec<_>>(),
        "routing_strategy": entry.policy.name(),
    })
}

/// Every model, or with authentication on, the models the key may use.
async fn list_models(
    State(gateway): State<AppState>,
    headers: http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = gateway.authenticate(&headers)?;
    let table = gateway.index.snapshot();
    let data: Vec<Value> = table
        .models()
        .into_iter()
        .filter(|entry| key.as_ref().is_none_or(|key| key.allows(&entry.id)))
        .map(|entry| model_json(entry))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn get_model(
    State(gateway): State<AppState>,
    Path(id): Path<String>,
    headers: http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = gateway.authenticate(&headers)?;
    let id = id.strip_prefix('/').unwrap_or(&id);
    let table = gateway.index.snapshot();
    let entry = table.get(id).ok_or_else(|| ApiError::ModelNotFound {
        model: id.to_string(),
    })?;
    if let Some(key) = key.filter(|key| !key.allows(&entry.id)) {
        return Err(ApiError::ModelNotAllowed {
            model: entry.id.clone(),
            key: key.name().to_string(),
        });
    }
    Ok(Json(model_json(entry)))
}

async fn health(State(gateway): State<AppState>) -> Json<Value> {
    let table = gateway.index.snapshot();
    let models: Map<String, Value> = table
        .models()
        .into_iter()
        .map(|entry| (entry.id.clone(), json!(entry.endpoints.len())))
        .collect();
    Json(json!({ "status": "ok", "models": models }))
}

async fn metrics(State(gateway): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        gateway.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(gateway): State<AppState>) -> Response {
    if !gateway.access.is_synced() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the API key Secrets have not been listed yet",
        )
            .into_response()
    } else if gateway.index.is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "discovery has not published its first routing table yet",
        )
            .into_response()
    }
}
