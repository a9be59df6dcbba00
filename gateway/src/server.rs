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
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::index::{Index, ModelEntry};
use crate::metrics::Metrics;
use crate::policy::RequestInfo;
use crate::proxy::{self, Proxy, RequestLog, UpstreamRequest, REQUEST_ID_HEADER};
use crate::request;

/// Limits of the request path.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// How long a request for a model with no ready replica waits for one.
    pub hold_timeout: Duration,
    /// Requests that may wait per model; more are answered 503 at once.
    pub hold_queue_limit: usize,
    /// `Retry-After` of 503 answers.
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            hold_timeout: Duration::from_secs(180),
            hold_queue_limit: 1000,
            retry_after: Duration::from_secs(10),
        }
    }
}

/// Everything the handlers share.
pub struct Gateway {
    pub index: Arc<Index>,
    pub proxy: Proxy,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

pub type AppState = Arc<Gateway>;

/// The OpenAI-compatible API.
pub fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/{*endpoint}", post(proxy_request))
        .route("/health", get(health))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` completes, then wait for open connections
/// (streams included) to finish. Used by main and by tests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY, small SSE frames wait for the client's delayed ACK (about 40 ms).
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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

async fn proxy_request(State(gateway): State<AppState>, request: Request) -> Response {
    let request_id = request::request_id(request.headers().get(REQUEST_ID_HEADER));
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let log = RequestLog::new(gateway.metrics.clone(), request_id.clone(), path_and_query);
    let mut response = match gateway.route(request, log).await {
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

/// Decrements the held-requests gauge when a held request stops waiting, however it stops.
struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Gateway {
    async fn route(
        &self,
        request: Request,
        mut log: RequestLog,
    ) -> Result<Response, (ApiError, RequestLog)> {
        let (mut parts, body) = request.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
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
        let path = parts.uri.path();
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
        let entry = if entry.endpoints.is_empty() {
            match self.wait_for_replica(entry).await {
                Ok(entry) => entry,
                Err(error) => return Err((error, log)),
            }
        } else {
            entry
        };
        let info = RequestInfo {
            model: &entry.id,
            path,
            prefix_hash: None,
        };
        let upstream = UpstreamRequest {
            method: parts.method.clone(),
            path_and_query: log.path.clone(),
            headers: proxy::upstream_headers(std::mem::take(&mut parts.headers), &log.request_id),
            body,
        };
        self.proxy.forward(&entry, upstream, &info, log).await
    }

    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Body,
    ) -> Result<bytes::Bytes, ApiError> {
        let limit = self.limits.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => Err(ApiError::BodyTooLarge { limit }),
            Err(error) => Err(ApiError::BodyRead(axum::Error::new(error))),
        }
    }

    /// Hold a request for a known model until a replica is ready, the hold times out, or the
    /// model disappears.
    async fn wait_for_replica(&self, entry: Arc<ModelEntry>) -> Result<Arc<ModelEntry>, ApiError> {
        let model = entry.id.clone();
        let retry_after = self.limits.retry_after;
        let queued = entry.metrics.queued.clone();
        let limit = i64::try_from(self.limits.hold_queue_limit).unwrap_or(i64::MAX);
        // `inc` returns the previous value: the check and the increment are one atomic step.
        if queued.inc() >= limit {
            queued.dec();
            return Err(ApiError::HoldQueueFull { model, retry_after });
        }
        let _held = Held(queued);
        drop(entry);
        tracing::debug!(%model, "holding request until a replica is ready");
        let mut changes = self.index.subscribe();
        let wait = async {
            loop {
                match self.index.snapshot().get(&model) {
                    None => {
                        return Err(ApiError::ModelNotFound {
                            model: model.clone(),
                        })
                    }
                    Some(entry) if !entry.endpoints.is_empty() => return Ok(entry.clone()),
                    Some(_) => {}
                }
                if changes.changed().await.is_err() {
                    return Err(ApiError::NoReadyReplica {
                        model: model.clone(),
                        retry_after,
                    });
                }
            }
        };
        match tokio::time::timeout(self.limits.hold_timeout, wait).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ApiError::NoReadyReplica {
                model: model.clone(),
                retry_after,
            }),
        }
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

async fn list_models(State(gateway): State<AppState>) -> Json<Value> {
    let table = gateway.index.snapshot();
    let data: Vec<Value> = table
        .models()
        .into_iter()
        .map(|entry| model_json(entry))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn get_model(
    State(gateway): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id.strip_prefix('/').unwrap_or(&id);
    let table = gateway.index.snapshot();
    table
        .get(id)
        .map(|entry| Json(model_json(entry)))
        .ok_or_else(|| ApiError::ModelNotFound {
            model: id.to_string(),
        })
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
    if gateway.index.is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "discovery has not published its first routing table yet",
        )
            .into_response()
    }
}
