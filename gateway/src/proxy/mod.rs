//! Forwarding a request to an engine replica: hyper's client with its pool of keep-alive
//! connections per replica, timeouts,
//! retries on another replica before any response byte, passive outlier ejection, and the
//! streaming pass-through of the response body.
//!
//! What is retried on another replica (the request body is whole in memory, so it can be sent
//! again): a failed connect, a connection reset before the response head, 502 and 503, and the
//! 500 an engine shutting down gives to requests it will no longer schedule (vLLM with
//! `--shutdown-timeout` finishes what it runs and refuses the rest with "cannot schedule new
//! futures after shutdown"); that replica also leaves the rotation for a while. Every other
//! answer, other 500s included, goes to the client as the engine gave it.

mod body;
mod budget;
pub mod scraper;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

pub use body::{InflightGuard, Outcome, ProxyBody, RequestLog};
pub use budget::RetryBudget;

use crate::error::ApiError;
use crate::index::{EjectionPolicy, Endpoint, ModelEntry};
use crate::metrics::Metrics;
use crate::policy::RequestInfo;

/// Header naming the replica that served the request.
pub const REPLICA_HEADER: HeaderName = HeaderName::from_static("x-kinfer-replica");
/// Header carrying the request id (propagated from the client or generated).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// TCP connect timeout to a replica (a timed-out connect is retried elsewhere).
    pub connect_timeout: Duration,
    /// Time from sending the request to the engine's response headers. Non-streaming
    /// completions answer only when generation is done, so this must be generous.
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks of a response.
    pub idle_timeout: Duration,
    /// Further attempts on other replicas after a failure before any response byte.
    pub max_retries: u32,
    /// Retries allowed per request, as a fraction of requests (0.2: one retry per five
    /// requests on average), on top of `retry_budget_burst`.
    pub retry_budget_ratio: f64,
    /// Retries that may be spent at once (the budget's size).
    pub retry_budget_burst: u32,
    pub ejection: EjectionPolicy,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            max_retries: 2,
            retry_budget_ratio: 0.2,
            retry_budget_burst: 100,
            ejection: EjectionPolicy::default(),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
        }
    }
}

/// A client with a pool of keep-alive connections per replica: the proxy's, and the engine
/// metrics scraper's.
pub fn http_client(config: &ProxyConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// The parts of the client's request sent upstream.
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The client's fields, stripped of hop-by-hop ones ([`strip_hop_by_hop`]). `host`,
    /// `expect`, `content-length` and `x-request-id` are replaced: the client writes the
    /// replica's `host` and the body's length, and the gateway's request id goes as sent.
    pub headers: HeaderMap,
    /// Sent as `x-request-id` (instead of any the fields have).
    pub request_id: HeaderValue,
    pub body: Bytes,
}

pub struct Proxy {
    client: HttpClient,
    config: ProxyConfig,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
}

/// A 500 body up to this size is read whole to see whether the engine is shutting down (vLLM's
/// answer is about a hundred bytes); a larger one is an answer to pass on.
const SHUTDOWN_BODY_LIMIT: usize = 4096;

/// A failure before any response byte that another replica might not have.
enum Retryable {
    Unreachable(String),
    /// Boxed: the rare path should not make every attempt's future larger.
    Status(Box<Answered>),
}

/// An engine's answer not yet passed on: its head, the start of its body if it was read (see
/// [`read_error_body`]), and the rest.
struct Answered {
    head: http::response::Parts,
    read: Bytes,
    body: Incoming,
    guard: InflightGuard,
}

/// The start of an error answer's body, read before deciding what to do with the answer.
enum ErrorBody {
    /// The whole body.
    Whole(Bytes),
    /// Longer than the limit, or slower than the idle timeout: the rest is still to come.
    Partial(Bytes),
}

/// Read `body` to its end if it ends within `limit` bytes and `idle_timeout`.
async fn read_error_body(
    body: &mut Incoming,
    limit: usize,
    idle_timeout: Duration,
) -> Result<ErrorBody, hyper::Error> {
    let mut read = bytes::BytesMut::new();
    let reading = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                read.extend_from_slice(&data);
                if read.len() > limit {
                    return Ok(false);
                }
            }
        }
        Ok::<bool, hyper::Error>(true)
    };
    // A frame is whole or not read at all (the body keeps what it has not returned), so
    // stopping at the deadline loses nothing.
    let whole = tokio::time::timeout(idle_timeout, reading)
        .await
        .unwrap_or(Ok(false))?;
    let read = read.freeze();
    Ok(if whole {
        ErrorBody::Whole(read)
    } else {
        ErrorBody::Partial(read)
    })
}

/// Whether an error body says the engine is shutting down (vLLM: "cannot schedule new futures
/// after shutdown", in its JSON error envelope or as plain text).
fn mentions_shutdown(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    ["shutdown", "shutting down", "shut down"]
        .iter()
        .any(|phrase| memchr::memmem::find(&lower, phrase.as_bytes()).is_some())
}

impl Proxy {
    /// Another proxy with the same settings and metrics and a pool of its own (see
    /// [`crate::Gateway::worker`]).
    pub fn sibling(&self) -> Self {
        Self::new(self.config.clone(), self.metrics.clone())
    }

    pub fn new(config: ProxyConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            client: http_client(&config),
            budget: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_burst),
            config,
            metrics,
        }
    }

    /// The request for one attempt on `endpoint`. Only the body's reference count is copied,
    /// not its bytes.
    fn upstream(
        &self,
        endpoint: &Endpoint,
        request: &UpstreamRequest,
    ) -> Result<http::Request<Full<Bytes>>, http::Error> {
        let mut upstream = http::Request::new(Full::new(request.body.clone()));
        *upstream.method_mut() = request.method.clone();
        *upstream.uri_mut() = endpoint.uri(request.path_and_query.clone());
        let headers = upstream.headers_mut();
        headers.reserve(request.headers.len() + 1);
        for (name, value) in &request.headers {
            if !matches!(
                *name,
                header::HOST | header::EXPECT | header::CONTENT_LENGTH
            ) && name != REQUEST_ID_HEADER
            {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(REQUEST_ID_HEADER, request.request_id.clone());
        Ok(upstream)
    }

    /// A replica for the request: not already tried, and not ejected unless every untried
    /// replica is (then ejection is ignored rather than failing the request).
    fn choose(
        &self,
        entry: &ModelEntry,
        tried: &[Arc<Endpoint>],
        info: &RequestInfo<'_>,
        now: Instant,
    ) -> Option<Arc<Endpoint>> {
        let all = &entry.endpoints;
        if let ([only], true) = (all.as_slice(), tried.is_empty()) {
            if only.is_available(now) {
                return Some(only.clone());
            }
        }
        if tried.is_empty() && all.iter().all(|endpoint| endpoint.is_available(now)) {
            return entry.policy.pick(all, info).map(|index| all[index].clone());
        }
        let untried: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|endpoint| !tried.iter().any(|done| Arc::ptr_eq(done, endpoint)))
            .cloned()
            .collect();
        let available: Vec<Arc<Endpoint>> = untried
            .iter()
            .filter(|endpoint| endpoint.is_available(now))
            .cloned()
            .collect();
        let candidates = if available.is_empty() {
            untried
        } else {
            available
        };
        // A single candidate needs no policy (and must not move a round-robin position).
        if let [only] = candidates.as_slice() {
            return Some(only.clone());
        }
        entry
            .policy
            .pick(&candidates, info)
            .map(|index| candidates[index].clone())
    }

    /// The engine refused the request because it is shutting down: it takes no new request
    /// until its pod is gone from the index, so it leaves the rotation for the first ejection
    /// time (unless ejection is off).
    fn record_shutdown(&self, entry: &ModelEntry, endpoint: &Endpoint) {
        self.metrics.count_upstream_error(&entry.id, "shutdown");
        let policy = &self.config.ejection;
        if policy.consecutive_failures == 0 {
            return;
        }
        if endpoint.eject_draining(Instant::now(), policy.base) {
            entry.metrics.ejections.inc();
            tracing::info!(
                replica = endpoint.name(),
                model = %entry.id,
                seconds = policy.base.as_secs_f64(),
                "replica is shutting down; out of rotation"
            );
        }
    }

    fn record_failure(&self, entry: &ModelEntry, endpoint: &Endpoint, kind: &'static str) {
        self.metrics.count_upstream_error(&entry.id, kind);
        if let Some(duration) = endpoint.record_failure(Instant::now(), &self.config.ejection) {
            entry.metrics.ejections.inc();
            tracing::warn!(
                replica = endpoint.name(),
                model = %entry.id,
                seconds = duration.as_secs_f64(),
                "replica ejected after consecutive failures"
            );
        }
    }

    /// Send `request` to a replica of `entry`, retrying on another one when the failure
    /// happens before any response byte. Engine responses (errors included) are returned as
    /// they are; a response whose body is streaming is never retried.
    pub async fn forward(
        &self,
        entry: &Arc<ModelEntry>,
        request: UpstreamRequest,
        info: &RequestInfo<'_>,
        mut log: RequestLog,
    ) -> Result<Response, (ApiError, RequestLog)> {
        self.budget.deposit();
        let attempts = self.config.max_retries as usize + 1;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let Some(mut endpoint) = self.choose(entry, &tried, info, Instant::now()) else {
            let error = ApiError::NoReadyReplica {
                model: entry.id.clone(),
                retry_after: Duration::from_secs(1),
            };
            return Err((error, log));
        };
        loop {
            tried.push(endpoint.clone());
            let guard = InflightGuard::new(endpoint.clone(), entry.metrics.inflight.clone());
            // hyper's client adds the replica's `host` and the body's content-length.
            let sent = match self.upstream(&endpoint, &request) {
                Ok(upstream) => {
                    let timeout = self.config.first_byte_timeout;
                    match tokio::time::timeout(timeout, self.client.request(upstream)).await {
                        Ok(Ok(response)) => Ok(response.into_parts()),
                        Ok(Err(error)) => Err(SendError::Failed(error)),
                        Err(_) => Err(SendError::Timeout(timeout)),
                    }
                }
                Err(error) => Err(SendError::Invalid(error)),
            };
            let failure = match sent {
                Err(SendError::Timeout(after)) => {
                    self.record_failure(entry, &endpoint, "timeout");
                    log.replica = Some(endpoint);
                    let error = ApiError::BackendTimeout {
                        model: entry.id.clone(),
                        after,
                    };
                    return Err((error, log));
                }
                Err(SendError::Invalid(error)) => {
                    // A header the engine's HTTP/1.1 cannot carry: no replica would take it.
                    log.replica = Some(endpoint);
                    let error = ApiError::Protocol {
                        status: StatusCode::BAD_REQUEST,
                        code: "invalid_request",
                        message: format!("the request cannot be forwarded: {error}"),
                    };
                    return Err((error, log));
                }
                Err(SendError::Failed(error)) => {
                    let kind = if error.is_connect() {
                        "connect"
                    } else {
                        "reset"
                    };
                    self.record_failure(entry, &endpoint, kind);
                    let reason = format!("{} ({})", endpoint.name(), error_chain(&error));
                    Retryable::Unreachable(reason)
                }
                Ok((parts, body))
                    if matches!(
                        parts.status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    ) =>
                {
                    self.record_failure(entry, &endpoint, "status");
                    Retryable::Status(Box::new(Answered {
                        head: parts,
                        read: Bytes::new(),
                        body,
                        guard,
                    }))
                }
                Ok((parts, mut body)) if parts.status == StatusCode::INTERNAL_SERVER_ERROR => {
                    let idle_timeout = self.config.idle_timeout;
                    // Boxed: the rare path should not make every attempt's future larger.
                    let reading = read_error_body(&mut body, SHUTDOWN_BODY_LIMIT, idle_timeout);
                    match Box::pin(reading).await {
                        Ok(ErrorBody::Whole(read)) if mentions_shutdown(&read) => {
                            self.record_shutdown(entry, &endpoint);
                            Retryable::Status(Box::new(Answered {
                                head: parts,
                                read,
                                body,
                                guard,
                            }))
                        }
                        Ok(ErrorBody::Whole(read) | ErrorBody::Partial(read)) => {
                            endpoint.record_success();
                            let answered = Answered {
                                head: parts,
                                read,
                                body,
                                guard,
                            };
                            return Ok(self.respond(answered, log));
                        }
                        // Nothing reached the client yet: as a connection reset before the
                        // answer.
                        Err(error) => {
                            self.record_failure(entry, &endpoint, "reset");
                            Retryable::Unreachable(format!("{} ({error})", endpoint.name()))
                        }
                    }
                }
                Ok((parts, body)) => {
                    endpoint.record_success();
                    let answered = Answered {
                        head: parts,
                        read: Bytes::new(),
                        body,
                        guard,
                    };
                    return Ok(self.respond(answered, log));
                }
            };
            let next = if tried.len() < attempts {
                self.choose(entry, &tried, info, Instant::now())
            } else {
                None
            };
            match next {
                Some(next) if self.budget.withdraw() => {
                    tracing::debug!(
                        request_id = ?log.request_id,
                        from = endpoint.name(),
                        to = next.name(),
                        "retrying on another replica"
                    );
                    entry.metrics.retries.inc();
                    log.retries += 1;
                    endpoint = next;
                }
                _ => {
                    return match failure {
                        Retryable::Status(answered) => Ok(self.respond(*answered, log)),
                        Retryable::Unreachable(reason) => {
                            log.replica = Some(endpoint);
                            let error = ApiError::BackendUnreachable {
                                model: entry.id.clone(),
                                reason,
                            };
                            Err((error, log))
                        }
                    };
                }
            }
        }
    }

    fn respond(&self, answered: Answered, mut log: RequestLog) -> Response {
        let Answered {
            head: mut parts,
            read,
            body: upstream,
            guard,
        } = answered;
        strip_hop_by_hop(&mut parts.headers);
        let endpoint = guard.endpoint().clone();
        // The gateway's own headers replace an engine's of the same name.
        parts
            .headers
            .insert(REPLICA_HEADER, endpoint.replica_header().clone());
        // x-kinfer-served-by, -node, -gpu-product, -zone (see crate::placement).
        for (name, value) in endpoint.placement_headers() {
            parts.headers.insert(name.clone(), value.clone());
        }
        log.status = Some(parts.status.as_u16());
        log.replica = Some(endpoint);
        let mut body =
            ProxyBody::new(upstream, self.config.idle_timeout, guard, log).with_read(read);
        // An error event can follow what the engine sent only where no length was announced.
        if !parts.headers.contains_key(header::CONTENT_LENGTH)
            && parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|value| body::is_event_stream(value.as_bytes()))
        {
            body = body.with_error_events();
        }
        Response::from_parts(parts, AxumBody::new(body))
    }
}

/// Why an attempt got no response head.
enum SendError {
    /// Connect, write or read failed (hyper's client error).
    Failed(hyper_util::client::legacy::Error),
    /// No response head within the first-byte timeout.
    Timeout(Duration),
    /// The request cannot be written (a header value HTTP/1.1 cannot carry).
    Invalid(http::Error),
}

/// An error and its causes on one line: hyper's client error says "client error (Connect)" and
/// keeps the useful part ("Connection refused") in its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Remove the fields that describe one connection, not the message (RFC 9110 section 7.6.1),
/// including those the `Connection` field names: of a client's request before it goes to the
/// engine, and of the engine's response before it goes to the client.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The hop-by-hop headers of RFC 9110 section 7.6.1 (and `transfer-encoding`, which each
/// connection writes itself).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("authorization", "Bearer k"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-request-id", "client-id"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-request-id"]);
    }

    #[test]
    fn shutdown_answers_are_recognised() {
        for body in [
            &br#"{"error":{"message":"cannot schedule new futures after shutdown","type":"InternalServerError","param":null,"code":500}}"#[..],
            br#"{"object":"error","message":"RuntimeError: cannot schedule new futures after Shutdown","type":"InternalServerError","code":500}"#,
            b"Internal Server Error: the engine is shutting down",
        ] {
            assert!(mentions_shutdown(body), "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &br#"{"error":{"message":"CUDA out of memory","type":"InternalServerError","param":null,"code":500}}"#[..],
            b"Internal Server Error",
            b"",
        ] {
            assert!(!mentions_shutdown(body), "{}", String::from_utf8_lossy(body));
        }
    }
}
