//! Prometheus metrics of the operator, in an explicit registry with the `kinfer_operator`
//! prefix. Labels are low-cardinality: the error kind, never an object name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Reconcile duration buckets in seconds: a few API round trips, up to a slow API server.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Label of [`Metrics::reconcile_errors`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `metric_label()` of the error.
    pub error: &'static str,
}

/// Labels of [`Metrics::autoscaler_decisions`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `up`, `down` or `to_zero`.
    pub direction: &'static str,
}

/// Labels of the per-model autoscaler gauges: one series per Builtin-autoscaled model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub namespace: String,
    /// The InferenceModel's name.
    pub model: String,
}

/// Labels of [`Metrics::autoscaler_scrape_errors`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeErrorLabels {
    /// `gateway` or `engine`.
    pub source: &'static str,
    /// `timeout`, `connect`, `status`, `malformed`, ...
    pub error: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciliations run, whatever their outcome.
    pub reconciliations: Counter,
    /// Reconciliations that failed, by error kind (retried with backoff).
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// InferenceModels found with a spec the operator refuses.
    pub invalid_specs: Counter,
    /// Time spent in one reconciliation.
    pub reconcile_duration: Histogram,
    /// 1 while this instance holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// Replica count changes of the built-in autoscaler, by direction.
    pub autoscaler_decisions: Family<DirectionLabels, Counter>,
    /// Load (in-flight plus queued requests, the larger of the gateway and engine views) the
    /// autoscaler last saw, per model.
    pub autoscaler_load: Family<ModelLabels, Gauge>,
    /// Replicas the autoscaler last chose, per model.
    pub autoscaler_desired_replicas: Family<ModelLabels, Gauge>,
    /// Failed scrapes of gateway or engine `/metrics`.
    pub autoscaler_scrape_errors: Family<ScrapeErrorLabels, Counter>,
    /// Time of one autoscaler round: scrape every source, decide every model.
    pub autoscaler_round_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kinfer_operator");
        let reconciliations = Counter::default();
        registry.register(
            "reconciliations",
            "InferenceModel reconciliations run",
            reconciliations.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "InferenceModel reconciliations that failed, by error kind",
            reconcile_errors.clone(),
        );
        let invalid_specs = Counter::default();
        registry.register(
            "invalid_specs",
            "Reconciliations that found a spec the operator refuses (InvalidSpec)",
            invalid_specs.clone(),
        );
        let reconcile_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one InferenceModel reconciliation",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance runs the controller (holds the leader lease)",
            leader.clone(),
        );
        let autoscaler_decisions = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "autoscaler_decisions",
            "Replica count changes made by the built-in autoscaler, by direction (up, down, to_zero)",
            autoscaler_decisions.clone(),
        );
        let autoscaler_load = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "autoscaler_load",
            "In-flight plus queued requests of a model as the built-in autoscaler last saw them",
            autoscaler_load.clone(),
        );
        let autoscaler_desired_replicas = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the built-in autoscaler last chose for a model",
            autoscaler_desired_replicas.clone(),
        );
        let autoscaler_scrape_errors = Family::<ScrapeErrorLabels, Counter>::default();
        registry.register(
            "autoscaler_scrape_errors",
            "Failed scrapes of gateway or engine /metrics, by source and error",
            autoscaler_scrape_errors.clone(),
        );
        let autoscaler_round_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "autoscaler_round_duration_seconds",
            "Time of one autoscaler round: scrape every source, decide every model",
            autoscaler_round_duration.clone(),
        );
        Self {
            registry,
            reconciliations,
            reconcile_errors,
            invalid_specs,
            reconcile_duration,
            leader,
            autoscaler_decisions,
            autoscaler_load,
            autoscaler_desired_replicas,
            autoscaler_scrape_errors,
            autoscaler_round_duration,
        }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_prefixed_metrics() {
        let metrics = Metrics::new();
        metrics.reconciliations.inc();
        metrics.reconcile_failed("apply");
        metrics.reconcile_duration.observe(0.02);
        metrics.leader.set(1);
        metrics
            .autoscaler_decisions
            .get_or_create(&DirectionLabels { direction: "up" })
            .inc();
        metrics
            .autoscaler_load
            .get_or_create(&ModelLabels {
                namespace: "ml".into(),
                model: "qwen".into(),
            })
            .set(37);
        let text = metrics.encode();
        for expected in [
            "kinfer_operator_reconciliations_total 1",
            "kinfer_operator_reconcile_errors_total{error=\"apply\"} 1",
            "kinfer_operator_reconcile_duration_seconds_count 1",
            "kinfer_operator_leader 1",
            "kinfer_operator_autoscaler_decisions_total{direction=\"up\"} 1",
            "kinfer_operator_autoscaler_load{namespace=\"ml\",model=\"qwen\"} 37",
            "kinfer_operator_autoscaler_round_duration_seconds_count 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
