//! Background scrape of each engine's /metrics for its queue depth and KV cache usage, which
//! LeastLoad uses to break ties. Routing never waits for it: a failed or slow scrape only
//! leaves older figures, which policies ignore once they are stale.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use kinfer_crds::metric_names::vllm;
use kinfer_crds::metrics_text;
use tokio::time::Instant;

use super::HttpClient;
use crate::index::{Endpoint, EngineLoad, Index};
use crate::metrics::Metrics;

/// Largest /metrics body read.
const MAX_METRICS_BYTES: usize = 4 << 20;

/// Queue depth (summed over label sets) and KV cache usage (the highest) from a Prometheus
/// text exposition; `None` if the queue depth is absent. Lines that cannot be read are skipped.
pub fn parse_engine_metrics(text: &str) -> Option<(f64, f64)> {
    let mut waiting = None;
    let mut kv_cache_usage: f64 = 0.0;
    for sample in metrics_text::samples(text).flatten() {
        match sample.name {
            vllm::NUM_REQUESTS_WAITING => *waiting.get_or_insert(0.0) += sample.value,
            vllm::KV_CACHE_USAGE_PERC | vllm::GPU_CACHE_USAGE_PERC => {
                kv_cache_usage = kv_cache_usage.max(sample.value)
            }
            _ => {}
        }
    }
    waiting.map(|waiting| (waiting, kv_cache_usage))
}

async fn scrape(client: &HttpClient, endpoint: &Endpoint, timeout: Duration) -> Option<(f64, f64)> {
    let request =
        http::Request::get(endpoint.uri(http::uri::PathAndQuery::from_static("/metrics")))
            .body(Full::new(Bytes::new()))
            .ok()?;
    let fetch = async {
        let response = client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_METRICS_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        let text = std::str::from_utf8(&body).ok()?;
        // LoRA adapters loaded (PrefixCache prefers replicas that have a request's adapter).
        endpoint.set_adapters(
            crate::policy::prefix_cache::loaded_adapters(text),
            Instant::now(),
        );
        parse_engine_metrics(text)
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

/// Scrape every endpoint of the current table every `interval`, until the process ends.
pub async fn run(client: HttpClient, index: Arc<Index>, interval: Duration, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.min(Duration::from_secs(2));
    loop {
        ticker.tick().await;
        let endpoints: Vec<Arc<Endpoint>> = index.snapshot().endpoints();
        let results = join_all(
            endpoints
                .iter()
                .map(|endpoint| scrape(&client, endpoint, timeout)),
        )
        .await;
        let scraped_at = Instant::now();
        for (endpoint, result) in endpoints.iter().zip(results) {
            match result {
                Some((waiting, kv_cache_usage)) => endpoint.set_engine_load(Some(EngineLoad {
                    waiting,
                    kv_cache_usage,
                    scraped_at,
                })),
                None => {
                    metrics.scrape_failures.inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_exposition() {
        let text = r#"
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="weird } name"} 2.0
vllm:num_requests_waiting_total 99
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.5 1700000000
vllm:num_requests_running{engine="0"} 7.0
"#;
        assert_eq!(parse_engine_metrics(text), Some((5.0, 0.5)));
    }

    #[test]
    fn old_names_and_absence() {
        assert_eq!(
            parse_engine_metrics("vllm:num_requests_waiting 1\nvllm:gpu_cache_usage_perc 0.75\n"),
            Some((1.0, 0.75))
        );
        assert_eq!(parse_engine_metrics("up 1\n"), None);
        assert_eq!(
            parse_engine_metrics("vllm:num_requests_waiting{a=\"b\"} NaNx\n"),
            None
        );
    }
}
