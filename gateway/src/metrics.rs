//! Prometheus metrics of the gateway, in an explicit registry with the `kinfer_gateway` prefix.
//! The families the operator's autoscaler reads are registered under the names of
//! [`kinfer_crds::metric_names::gateway`], which the operator reads them by.
//!
//! Labels are the model id (only ids the index knows; anything else is [`UNKNOWN_MODEL`]) and
//! the HTTP status code: never a replica address, a request id or anything a client chooses.

use kinfer_crds::metric_names::gateway as names;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub key: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: String,
}

/// Metrics of authentication and limits (registered by [`Metrics`]). Keys
/// appear by name (the Secret's name, the file's `name`), never by value.
#[derive(Clone, Debug, Default)]
pub struct AccessMetrics {
    /// Requests refused 401, by reason (`missing`, `invalid`).
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Requests refused 429, by key name and limit (`requests`, `tokens`, `concurrency`).
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Prompt plus completion tokens counted from `usage` (keys with a token limit only).
    pub tokens: Family<KeyLabels, Counter>,
    /// Tokens charged by estimate, for responses that ended or were cut before their `usage`
    /// (not in `tokens`).
    pub tokens_estimated: Family<KeyLabels, Counter>,
    /// API keys loaded.
    pub keys: Gauge,
}

/// Model label of requests whose model the index does not know (or could not be read).
pub const UNKNOWN_MODEL: &str = "(unknown)";

/// Bucket bounds in seconds: from a fast embedding to a long generation.
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub model: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub model: String,
    pub kind: &'static str,
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    request_duration: HistogramFamily,
    time_to_first_byte: HistogramFamily,
    inflight: Family<ModelLabels, Gauge>,
    queued: Family<ModelLabels, Gauge>,
    ready_replicas: Family<ModelLabels, Gauge>,
    retries: Family<ModelLabels, Counter>,
    upstream_errors: Family<ErrorLabels, Counter>,
    stream_error_events: Family<ErrorLabels, Counter>,
    ejections: Family<ModelLabels, Counter>,
    /// Routing table publications (one per discovery change).
    pub index_updates: Counter,
    /// Engine /metrics scrapes that failed.
    pub scrape_failures: Counter,
    /// Authentication and limits.
    pub access: AccessMetrics,
}

/// Handles of one model's metrics, looked up once per routing-table publication so the request
/// path does not hash label sets.
#[derive(Clone, Debug)]
pub struct ModelMetrics {
    pub model: String,
    pub ok: Counter,
    pub request_duration: Histogram,
    pub time_to_first_byte: Histogram,
    pub inflight: Gauge,
    pub queued: Gauge,
    pub retries: Counter,
    pub ejections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(names::PREFIX);
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            names::REQUESTS_FAMILY,
            "Requests answered, by model and HTTP status code",
            requests.clone(),
        );
        let request_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response body (the whole stream)",
            request_duration.clone(),
        );
        let time_to_first_byte: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "time_to_first_byte_seconds",
            "Time from receiving a request to the first response body chunk from the engine (time to first token for streams)",
            time_to_first_byte.clone(),
        );
        let inflight = Family::<ModelLabels, Gauge>::default();
        registry.register(
            names::INFLIGHT_REQUESTS_FAMILY,
            "Requests sent to an engine and not finished yet (streams included)",
            inflight.clone(),
        );
        let queued = Family::<ModelLabels, Gauge>::default();
        registry.register(
            names::QUEUED_REQUESTS_FAMILY,
            "Requests held while the model has no ready replica",
            queued.clone(),
        );
        let ready_replicas = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "ready_replicas",
            "Replicas in the routing table",
            ready_replicas.clone(),
        );
        let retries = Family::<ModelLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests sent again to another replica after a failure before any response byte",
            retries.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failures talking to an engine, by kind (connect, reset, timeout, status, shutdown, body, idle_timeout)",
            upstream_errors.clone(),
        );
        let stream_error_events = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "stream_error_events",
            "SSE error events the gateway wrote to end a stream whose engine failed or fell silent, by the event's code (upstream_error, upstream_idle_timeout)",
            stream_error_events.clone(),
        );
        let ejections = Family::<ModelLabels, Counter>::default();
        registry.register(
            "replica_ejections",
            "Replicas taken out of rotation for a while after consecutive failures or an engine's shutdown answer",
            ejections.clone(),
        );
        let index_updates = Counter::default();
        registry.register(
            "index_updates",
            "Routing table publications",
            index_updates.clone(),
        );
        let scrape_failures = Counter::default();
        registry.register(
            "engine_scrape_failures",
            "Failed scrapes of an engine's /metrics",
            scrape_failures.clone(),
        );
        let access = AccessMetrics::default();
        registry.register(
            "auth_failures",
            "Requests refused 401 (no API key, or an unknown one), by reason",
            access.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused 429 by a key's limit, by key name and limit",
            access.rate_limited.clone(),
        );
        registry.register(
            "key_tokens",
            "Prompt plus completion tokens from the engines' usage, by key name (keys with a token limit)",
            access.tokens.clone(),
        );
        registry.register(
            "key_tokens_estimated",
            "Tokens charged by estimate (request bytes / 4 + stream events) for responses that ended or were cut before the engine's usage, by key name",
            access.tokens_estimated.clone(),
        );
        registry.register("api_keys", "API keys loaded", access.keys.clone());
        Self {
            access,
            registry,
            requests,
            request_duration,
            time_to_first_byte,
            inflight,
            queued,
            ready_replicas,
            retries,
            upstream_errors,
            stream_error_events,
            ejections,
            index_updates,
            scrape_failures,
        }
    }

    pub fn model(&self, model: &str) -> ModelMetrics {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        ModelMetrics {
            model: model.to_string(),
            ok: self.requests.get_or_create_owned(&CodeLabels {
                model: model.to_string(),
                code: "200".to_string(),
            }),
            request_duration: self.request_duration.get_or_create_owned(&labels),
            time_to_first_byte: self.time_to_first_byte.get_or_create_owned(&labels),
            inflight: self.inflight.get_or_create_owned(&labels),
            queued: self.queued.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            ejections: self.ejections.get_or_create_owned(&labels),
        }
    }

    /// Count one answered request.
    pub fn count_request(&self, model: &ModelMetrics, code: u16) {
        if code == 200 {
            model.ok.inc();
        } else {
            self.count_request_by_name(&model.model, code);
        }
    }

    pub fn count_request_by_name(&self, model: &str, code: u16) {
        self.requests
            .get_or_create(&CodeLabels {
                model: model.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn count_upstream_error(&self, model: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                model: model.to_string(),
                kind,
            })
            .inc();
    }

    /// Count one SSE error event written to a client; `kind` is the event's code.
    pub fn count_stream_error_event(&self, model: &str, kind: &'static str) {
        self.stream_error_events
            .get_or_create(&ErrorLabels {
                model: model.to_string(),
                kind,
            })
            .inc();
    }

    pub fn set_ready_replicas(&self, model: &str, ready: usize) {
        self.ready_replicas
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
    }

    pub fn forget_model(&self, model: &str) {
        self.ready_replicas.remove(&ModelLabels {
            model: model.to_string(),
        });
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_autoscaler_relies_on() {
        let metrics = Metrics::new();
        let model = metrics.model("Qwen/Qwen2.5-7B-Instruct");
        model.inflight.inc();
        model.queued.inc();
        metrics.count_request(&model, 200);
        metrics.count_request(&model, 503);
        let text = metrics.encode();
        let samples: Vec<_> = kinfer_crds::metrics_text::samples(&text)
            .collect::<Result<_, _>>()
            .unwrap();
        // Every sample name the operator reads, with the model label it sums by.
        for name in names::READ_BY_OPERATOR {
            assert!(
                samples
                    .iter()
                    .any(|sample| sample.matches(name, &[(names::MODEL_LABEL, &model.model)])),
                "no {name} in\n{text}"
            );
        }
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|sample| sample.matches(name, labels))
                .map(|sample| sample.value)
        };
        let qwen = [(names::MODEL_LABEL, "Qwen/Qwen2.5-7B-Instruct")];
        assert_eq!(value(names::INFLIGHT_REQUESTS, &qwen), Some(1.0));
        assert_eq!(value(names::QUEUED_REQUESTS, &qwen), Some(1.0));
        let code_503 = [qwen[0], ("code", "503")];
        assert_eq!(value(names::REQUESTS_TOTAL, &code_503), Some(1.0));
        assert!(text.contains("kinfer_gateway_request_duration_seconds_bucket"));
    }
}
