//! The load signals the autoscaler reads, from the Prometheus text the gateway and the engines
//! export, and their aggregation into one [`Load`] per model. Pure: no socket, no clock.
//!
//! - Gateway (`kinfer_gateway_*`, one report per gateway replica): `inflight_requests{model}`
//!   (sent to an engine, not finished), `queued_requests{model}` (held while the model has no
//!   ready replica) and the `requests_total{model,code}` counter. `model` is the model id the
//!   client sent: an InferenceModel's `spec.model.name` or one of its adapter names.
//! - Engine (vLLM, one report per ready engine pod): `vllm:num_requests_running`,
//!   `vllm:num_requests_waiting` and the `vllm:request_success_total` counter, summed over their
//!   series (one per engine and finish reason; a pod serves one InferenceModel).
//!
//! The text is read by [`kinfer_crds::metrics_text`] and the names come from
//! [`kinfer_crds::metric_names`], which the gateway registers its metrics with. A line of one
//! of those metrics that cannot be read is an error; any other line is skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kinfer_crds::metric_names::{gateway, vllm};
use kinfer_crds::metrics_text::{self, Sample};

/// Errors reading a `/metrics` answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignalError {
    #[error("line {line} of the metrics is not in the Prometheus text format: {reason}")]
    Malformed { line: usize, reason: &'static str },

    #[error("the answer has no {0} metric: is this a kinfer gateway admin port / a vLLM engine?")]
    MissingMetric(&'static str),
}

impl SignalError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SignalError::Malformed { .. } => "malformed",
            SignalError::MissingMetric(_) => "missing_metric",
        }
    }
}

/// The samples of `text` whose metric name is one of `names`. A line that cannot be read is an
/// error when it starts with one of `names`, and skipped otherwise.
fn samples<'a>(
    text: &'a str,
    names: &'a [&str],
) -> impl Iterator<Item = Result<Sample<'a>, SignalError>> + 'a {
    metrics_text::samples(text).filter_map(move |sample| match sample {
        Ok(sample) => names.contains(&sample.name).then_some(Ok(sample)),
        Err(malformed) => malformed
            .name
            .is_some_and(|name| names.contains(&name))
            .then_some(Err(SignalError::Malformed {
                line: malformed.line,
                reason: malformed.reason,
            })),
    })
}

/// A gauge or counter value as a count: negative, NaN and absurd values count as 0.
fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        // Truncation is intended: the gauges are integers; a counter's fraction is noise.
        value.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// What one gateway replica reports for one model id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayModelLoad {
    pub inflight: u64,
    pub queued: u64,
    /// `kinfer_gateway_requests_total`, all codes: only its increase matters.
    pub requests: u64,
}

/// What one gateway replica reports, by model id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayReport {
    pub models: HashMap<String, GatewayModelLoad>,
}

/// Parses a gateway's `/metrics`.
pub fn parse_gateway(text: &str) -> Result<GatewayReport, SignalError> {
    // A gateway that knows no model yet exports the metric families without series.
    if !text.contains(gateway::INFLIGHT_REQUESTS) {
        return Err(SignalError::MissingMetric(gateway::INFLIGHT_REQUESTS));
    }
    let mut report = GatewayReport::default();
    for sample in samples(text, &gateway::READ_BY_OPERATOR) {
        let sample = sample?;
        let Some(model) = sample.label(gateway::MODEL_LABEL) else {
            continue;
        };
        let value = count(sample.value);
        let entry = report.models.entry(model.into_owned()).or_default();
        match sample.name {
            gateway::INFLIGHT_REQUESTS => entry.inflight += value,
            gateway::QUEUED_REQUESTS => entry.queued += value,
            _ => entry.requests += value,
        }
    }
    Ok(report)
}

/// What one engine pod reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineReport {
    pub running: u64,
    pub waiting: u64,
    /// `vllm:request_success_total`, all finish reasons: only its increase matters.
    pub finished: u64,
}

/// Parses a vLLM engine's `/metrics`.
pub fn parse_engine(text: &str) -> Result<EngineReport, SignalError> {
    let mut report = EngineReport::default();
    let mut seen_running = false;
    let names = [
        vllm::NUM_REQUESTS_RUNNING,
        vllm::NUM_REQUESTS_WAITING,
        vllm::REQUEST_SUCCESS_TOTAL,
    ];
    for sample in samples(text, &names) {
        let sample = sample?;
        let value = count(sample.value);
        match sample.name {
            vllm::NUM_REQUESTS_RUNNING => {
                seen_running = true;
                report.running += value;
            }
            vllm::NUM_REQUESTS_WAITING => report.waiting += value,
            _ => report.finished += value,
        }
    }
    if !seen_running {
        return Err(SignalError::MissingMetric(vllm::NUM_REQUESTS_RUNNING));
    }
    Ok(report)
}

/// The load of one model at one instant, from the fresh sources only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// In-flight plus queued requests summed over the fresh gateway replicas; `None` when no
    /// gateway replica is known or none answered recently.
    pub gateway: Option<u64>,
    /// Of those, the requests held for want of a ready replica.
    pub queued: u64,
    /// Running plus waiting requests summed over the model's fresh ready engine pods; `None`
    /// when the model has ready pods but none answered recently.
    pub engines: Option<u64>,
    /// A request finished or was answered since the previous scrape (a counter went up), even
    /// if it was too short to show in the gauges.
    pub activity: bool,
}

impl Load {
    /// The larger of the two views (they count the same requests twice, so never their sum);
    /// `None` when neither is known.
    pub fn total(&self) -> Option<u64> {
        match (self.gateway, self.engines) {
            (None, None) => None,
            (gateway, engines) => Some(gateway.unwrap_or(0).max(engines.unwrap_or(0))),
        }
    }
}

/// The last successful scrape of one source.
#[derive(Clone, Debug)]
struct Scraped<R> {
    at: Instant,
    report: R,
    /// A counter went up between the previous successful scrape and this one.
    activity: HashMap<String, bool>,
}

/// Identifies a model: namespace and InferenceModel name.
pub type ModelKey = (String, String);

/// The latest reports of every source, by source key (a pod `namespace/name` or a URL).
///
/// Sources that are no longer listed are dropped at once ([`Sources::retain`]): a gateway
/// replica that goes away stops counting. Sources that fail to answer keep their last report
/// until it is older than the staleness limit, then are ignored.
#[derive(Debug, Default)]
pub struct Sources {
    gateways: BTreeMap<String, Scraped<GatewayReport>>,
    engines: BTreeMap<String, (ModelKey, Scraped<EngineReport>)>,
}

const ENGINE_ACTIVITY: &str = "";

impl Sources {
    /// Forgets the sources not in `gateways` / `engines`.
    pub fn retain(&mut self, gateways: &dyn Fn(&str) -> bool, engines: &dyn Fn(&str) -> bool) {
        self.gateways.retain(|key, _| gateways(key));
        self.engines.retain(|key, _| engines(key));
    }

    pub fn record_gateway(&mut self, key: &str, report: GatewayReport, now: Instant) {
        let activity = report
            .models
            .iter()
            .map(|(model, load)| {
                let before = self
                    .gateways
                    .get(key)
                    .and_then(|previous| previous.report.models.get(model))
                    .map(|previous| previous.requests);
                // A new source or a restarted gateway (counter reset) is not activity: its
                // totals cover an unknown time.
                let went_up = before.is_some_and(|before| load.requests > before);
                (model.clone(), went_up)
            })
            .collect();
        self.gateways.insert(
            key.to_string(),
            Scraped {
                at: now,
                report,
                activity,
            },
        );
    }

    pub fn record_engine(
        &mut self,
        key: &str,
        model: ModelKey,
        report: EngineReport,
        now: Instant,
    ) {
        let before = self
            .engines
            .get(key)
            .map(|(_, previous)| previous.report.finished);
        let went_up = before.is_some_and(|before| report.finished > before);
        self.engines.insert(
            key.to_string(),
            (
                model,
                Scraped {
                    at: now,
                    report,
                    activity: HashMap::from([(ENGINE_ACTIVITY.to_string(), went_up)]),
                },
            ),
        );
    }

    /// Running plus waiting requests of one engine pod, if its report is fresh.
    pub fn engine_load(&self, key: &str, now: Instant, stale_after: Duration) -> Option<u64> {
        let (_, scraped) = self.engines.get(key)?;
        (now.saturating_duration_since(scraped.at) <= stale_after)
            .then_some(scraped.report.running + scraped.report.waiting)
    }

    /// The load of `model` (serving the ids `served_ids`) from the sources scraped within
    /// `stale_after` of `now`. `ready_engine_pods` is how many ready pods the model has: with
    /// none, the engine view is a known 0; with some but none fresh, it is unknown.
    pub fn load(
        &self,
        model: &ModelKey,
        served_ids: &[String],
        ready_engine_pods: usize,
        now: Instant,
        stale_after: Duration,
    ) -> Load {
        let fresh = |at: Instant| now.saturating_duration_since(at) <= stale_after;
        let mut load = Load::default();
        for scraped in self.gateways.values().filter(|scraped| fresh(scraped.at)) {
            let mut sum = load.gateway.unwrap_or(0);
            for id in served_ids {
                if let Some(model_load) = scraped.report.models.get(id) {
                    sum = sum.saturating_add(model_load.inflight + model_load.queued);
                    load.queued = load.queued.saturating_add(model_load.queued);
                    load.activity |= scraped.activity.get(id).copied().unwrap_or(false);
                }
            }
            load.gateway = Some(sum);
        }
        let mut engines = None;
        for (_, scraped) in self
            .engines
            .values()
            .filter(|(owner, scraped)| owner == model && fresh(scraped.at))
        {
            let report = scraped.report;
            engines = Some(
                engines
                    .unwrap_or(0u64)
                    .saturating_add(report.running + report.waiting),
            );
            load.activity |= scraped.activity.values().any(|went_up| *went_up);
        }
        load.engines = match (engines, ready_engine_pods) {
            (Some(sum), _) => Some(sum),
            (None, 0) => Some(0),
            (None, _) => None,
        };
        load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` of a real kinfer-gateway (static discovery) with one request in flight for
    /// the base model (two answered before) and two held for `sql-lora`, which has no replica.
    pub const GATEWAY_SAMPLE: &str = include_str!("testdata/gateway-metrics.txt");
    /// `/metrics` of a real vllm-sim (e2e/vllm-sim, `--max-num-seqs 3`) with 3 running and 4
    /// waiting requests, 9 finished.
    pub const ENGINE_SAMPLE: &str = include_str!("testdata/vllm-sim-metrics.txt");

    #[test]
    fn only_the_wanted_names_and_values_as_counts() {
        let text = "# HELP x y\nfoo{a=\"1\"} 3.5e0 1712\nbar 5\nfoo 4\nfoo{} NaN\n";
        let parsed: Vec<_> = samples(text, &["foo"]).map(Result::unwrap).collect();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].label("a").as_deref(), Some("1"));
        assert_eq!(count(parsed[0].value), 3);
        assert_eq!(count(parsed[1].value), 4);
        assert_eq!(count(parsed[2].value), 0, "NaN");
        assert_eq!(count(-1.0), 0);
        assert_eq!(count(f64::INFINITY), 0);
    }

    #[test]
    fn malformed_lines_of_interest_are_errors_others_are_skipped() {
        let error = parse_engine("vllm:num_requests_running{a=\"x} 1\n").unwrap_err();
        assert!(
            matches!(error, SignalError::Malformed { line: 1, .. }),
            "{error}"
        );
        let report = parse_engine("garbage here {\nvllm:num_requests_running 2\n").unwrap();
        assert_eq!(report.running, 2);
        assert_eq!(
            parse_engine("up 1\n").unwrap_err(),
            SignalError::MissingMetric(vllm::NUM_REQUESTS_RUNNING)
        );
        assert_eq!(
            parse_gateway("up 1\n").unwrap_err(),
            SignalError::MissingMetric(gateway::INFLIGHT_REQUESTS)
        );
    }

    #[test]
    fn reads_real_gateway_output() {
        let report = parse_gateway(GATEWAY_SAMPLE).unwrap();
        let base = report.models["Qwen/Qwen2.5-7B-Instruct"];
        assert_eq!((base.inflight, base.queued), (1, 0));
        assert_eq!(base.requests, 2);
        let adapter = report.models["sql-lora"];
        assert_eq!((adapter.inflight, adapter.queued), (0, 2));
    }

    #[test]
    fn reads_real_vllm_sim_output() {
        let report = parse_engine(ENGINE_SAMPLE).unwrap();
        assert_eq!((report.running, report.waiting), (3, 4));
        assert_eq!(report.finished, 9, "all finish reasons summed");
    }

    #[test]
    fn an_empty_gateway_is_a_known_zero() {
        let text = "# HELP kinfer_gateway_inflight_requests x\n# TYPE kinfer_gateway_inflight_requests gauge\n# EOF\n";
        assert_eq!(parse_gateway(text).unwrap(), GatewayReport::default());
    }

    fn gateway(models: &[(&str, u64, u64, u64)]) -> GatewayReport {
        GatewayReport {
            models: models
                .iter()
                .map(|(id, inflight, queued, requests)| {
                    (
                        id.to_string(),
                        GatewayModelLoad {
                            inflight: *inflight,
                            queued: *queued,
                            requests: *requests,
                        },
                    )
                })
                .collect(),
        }
    }

    fn key(name: &str) -> ModelKey {
        ("ml".to_string(), name.to_string())
    }

    #[test]
    fn gateway_replicas_are_summed_over_the_served_ids_and_the_larger_view_wins() {
        let now = Instant::now();
        let stale = Duration::from_secs(3);
        let ids = vec!["base".to_string(), "adapter".to_string()];
        let mut sources = Sources::default();
        sources.record_gateway(
            "gw-a",
            gateway(&[("base", 3, 0, 10), ("other", 50, 0, 0)]),
            now,
        );
        sources.record_gateway(
            "gw-b",
            gateway(&[("base", 2, 0, 5), ("adapter", 0, 1, 0)]),
            now,
        );
        let load = sources.load(&key("m"), &ids, 0, now, stale);
        assert_eq!(load.gateway, Some(6));
        assert_eq!(load.queued, 1);
        assert_eq!(load.engines, Some(0), "no ready pod: a known zero");
        assert_eq!(load.total(), Some(6));

        let engine = |running, waiting| EngineReport {
            running,
            waiting,
            finished: 0,
        };
        sources.record_engine("ml/m-1", key("m"), engine(4, 3), now);
        sources.record_engine("ml/m-2", key("m"), engine(2, 0), now);
        sources.record_engine("ml/x-1", key("x"), engine(99, 0), now);
        let load = sources.load(&key("m"), &ids, 2, now, stale);
        assert_eq!(load.engines, Some(9));
        assert_eq!(
            load.total(),
            Some(9),
            "the engines see more than the gateways"
        );
    }

    #[test]
    fn stale_sources_are_ignored_and_vanished_gateways_drop_out() {
        let start = Instant::now();
        let stale = Duration::from_secs(3);
        let ids = vec!["base".to_string()];
        let mut sources = Sources::default();
        sources.record_gateway("gw-a", gateway(&[("base", 10, 0, 0)]), start);
        sources.record_gateway("gw-b", gateway(&[("base", 7, 0, 0)]), start);
        let later = start + Duration::from_secs(2);
        sources.record_gateway("gw-b", gateway(&[("base", 5, 0, 0)]), later);
        assert_eq!(
            sources.load(&key("m"), &ids, 0, later, stale).gateway,
            Some(15)
        );

        // gw-a stops answering: ignored once its report is older than 3 s
        let much_later = start + Duration::from_secs(4);
        assert_eq!(
            sources.load(&key("m"), &ids, 0, much_later, stale).gateway,
            Some(5)
        );

        // gw-b's pod is deleted: gone at once
        sources.retain(&|key| key != "gw-b", &|_| true);
        let load = sources.load(&key("m"), &ids, 0, later, stale);
        assert_eq!(load.gateway, Some(10));

        // nothing fresh: the gateway view is unknown, the engine view unknown with ready pods
        let load = sources.load(&key("m"), &ids, 1, start + Duration::from_secs(10), stale);
        assert_eq!(
            (load.gateway, load.engines, load.total()),
            (None, None, None)
        );
    }

    #[test]
    fn counters_going_up_are_activity_but_new_sources_and_resets_are_not() {
        let now = Instant::now();
        let stale = Duration::from_secs(3);
        let ids = vec!["base".to_string()];
        let mut sources = Sources::default();
        sources.record_gateway("gw", gateway(&[("base", 0, 0, 7)]), now);
        assert!(!sources.load(&key("m"), &ids, 0, now, stale).activity);
        sources.record_gateway("gw", gateway(&[("base", 0, 0, 8)]), now);
        assert!(sources.load(&key("m"), &ids, 0, now, stale).activity);
        sources.record_gateway("gw", gateway(&[("base", 0, 0, 8)]), now);
        assert!(!sources.load(&key("m"), &ids, 0, now, stale).activity);
        sources.record_gateway("gw", gateway(&[("base", 0, 0, 1)]), now);
        assert!(
            !sources.load(&key("m"), &ids, 0, now, stale).activity,
            "reset"
        );

        let finished = |finished| EngineReport {
            running: 0,
            waiting: 0,
            finished,
        };
        sources.record_engine("ml/m-1", key("m"), finished(3), now);
        assert!(!sources.load(&key("m"), &ids, 1, now, stale).activity);
        sources.record_engine("ml/m-1", key("m"), finished(4), now);
        assert!(sources.load(&key("m"), &ids, 1, now, stale).activity);
    }
}
