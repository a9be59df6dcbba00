//! The HTTP surface: the one routing table of the OpenAI-compatible API ([`build_router`]), the
//! admin port's ([`build_admin_router`]), and [`serve`], which serves a router with hyper:
//! HTTP/1.1, HTTP/2 with prior knowledge (h2c), and with TLS both, chosen by ALPN.
//!
//! What a client connection gets:
//! - HTTP/1.1 keep-alive (HTTP/1.0 on request), pipelining, `Expect: 100-continue`, chunked
//!   request bodies; hyper's parser refuses what RFC 9112 makes invalid (differing
//!   Content-Lengths, a non-chunked final transfer coding, obs-fold, oversized heads, trailers
//!   or chunk extensions over 16 KiB) and closes the connection after a request that had both
//!   Content-Length and Transfer-Encoding;
//! - a request head must arrive whole within the header timeout, which also closes an idle
//!   keep-alive connection (hyper starts it when it waits for the next head);
//! - a client that takes no byte of its response for the send timeout is disconnected, which
//!   cancels the engine's request;
//! - a request without `Host` on HTTP/1.1, or with more than one, gets 400 (RFC 9112 section
//!   3.2), a head over [`MAX_HEAD_BYTES`] 431, a transfer coding other than chunked 501, before
//!   any handler (see `check_head`);
//! - on shutdown, idle connections close at once and busy ones after their responses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ApiError;
use crate::index::ModelEntry;
use crate::pipeline::{self, AppState};
use crate::tls::TlsAcceptor;

/// The OpenAI-compatible API: the model list and health here, every other `POST /v1/*` through
/// the [`pipeline`].
pub fn build_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route(
            "/v1/{*endpoint}",
            post(|State(gateway): State<AppState>, request: Request| {
                pipeline::handle(gateway, request)
            }),
        )
        .route("/health", get(health))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Prometheus metrics and the gateway's own probes.
pub fn build_admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Largest request head the API takes, field names and values counted (431 above). hyper's
/// own limit (its read buffer, about 400 KiB) is checked between reads, so a larger head can
/// get through it in one read; this one is exact, and nearer what engines accept.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What hyper's parser leaves to the application, checked before any handler:
/// - RFC 9112 section 3.2: an HTTP/1.1 request has exactly one `Host`; no request has two
///   (HTTP/2 carries the authority in `:authority`, HTTP/1.0 may omit it): 400;
/// - a head larger than [`MAX_HEAD_BYTES`]: 431;
/// - a transfer coding other than `chunked` (hyper frames by the final `chunked` and ignores
///   the rest, RFC 9112 section 6.1 says 501): 501.
async fn check_head(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    let missing = hosts == 0 && request.version() == http::Version::HTTP_11;
    let refused = if missing || hosts > 1 {
        let message = if missing {
            "the request has no Host header (HTTP/1.1 requires one)"
        } else {
            "the request has more than one Host header"
        };
        Some((StatusCode::BAD_REQUEST, "invalid_host", message.to_string()))
    } else if head_bytes(headers) > MAX_HEAD_BYTES {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_header_fields_too_large",
            format!("the request's header fields are larger than {MAX_HEAD_BYTES} bytes"),
        ))
    } else {
        other_transfer_coding(headers).map(|coding| {
            (
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
                format!(
                    "the transfer coding `{}` is not supported; send the body with a Content-Length or `Transfer-Encoding: chunked` only",
                    crate::error::quote(&coding)
                ),
            )
        })
    };
    match refused {
        Some((status, code, message)) => ApiError::Protocol {
            status,
            code,
            message,
        }
        .into_response(),
        None => next.run(request).await,
    }
}

/// Bytes of the header fields as sent: `name: value` and the line end.
fn head_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The first transfer coding that is not `chunked`, if any.
fn other_transfer_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
        .map(|coding| String::from_utf8_lossy(coding).into_owned())
}

/// How client connections are served.
#[derive(Clone)]
pub struct ServeConfig {
    /// A request head must arrive whole within this; an idle keep-alive connection is closed
    /// after it too.
    pub header_timeout: Duration,
    /// A client that takes no byte of its response for this long is disconnected (nginx's
    /// `send_timeout`): a stalled reader must not hold an engine's slot forever.
    pub send_timeout: Duration,
    /// TLS (HTTP/2 and HTTP/1.1 by ALPN); `None`: plain TCP (HTTP/1.1 and h2c).
    pub tls: Option<TlsAcceptor>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Serve `router` on `listener` until `shutdown` completes, then wait for open connections
/// (streams included) to finish their responses. Used by main (API and admin ports) and tests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    let service = router
        .layer(axum::middleware::from_fn(check_head))
        .map_request(|request: http::Request<hyper::body::Incoming>| request.map(Body::new));
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find dead peers of long streams; a peer that does not answer is cut.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some(stream) = accept(&listener, shutdown.as_mut()).await {
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(config.send_timeout));
        let stream = Box::pin(stream);
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        let tls = config.tls.clone();
        let handshake_timeout = config.header_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(handshake_timeout, tls.accept(stream)).await;
                    let stream = match accepted {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The next connection, or `None` once `shutdown` completes.
async fn accept(
    listener: &TcpListener,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => return Some(stream),
                Err(error) => accept_failed(error).await,
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// Like hyper 0.14's server: a reset before accept is the client's business; anything else
/// (out of file descriptors) is logged and accepting pauses for a second.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    headers: HeaderMap,
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
    headers: HeaderMap,
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
    if !gateway.auth.is_synced() {
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
