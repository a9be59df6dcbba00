//! Helpers shared by the HTTP tests: start a simulator on 127.0.0.1:0, send
//! JSON, read streams and metrics.

#![allow(dead_code)]

use std::time::Duration;

use kinfer_vllm_sim::{Config, SimHandle};
use serde_json::Value;

/// A running simulator and a client for it.
pub struct Sim {
    pub handle: SimHandle,
    pub base: String,
    pub client: reqwest::Client,
}

pub async fn start(config: Config) -> Sim {
    let (addr, handle) = kinfer_vllm_sim::spawn(config)
        .await
        .expect("spawn simulator");
    Sim {
        handle,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl Sim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("send request")
    }

    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let response = self.post(path, body).await;
        assert_eq!(response.status(), 200, "status of {path}");
        response.json().await.expect("json body")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("send request")
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// Value of the first sample `selector` names (see [`sample`]).
    pub async fn metric(&self, selector: &str) -> f64 {
        let text = self.metrics().await;
        sample(&text, selector).unwrap_or_else(|| panic!("no sample {selector} in\n{text}"))
    }

    /// Polls `check` on the metrics text until it holds (2 s at most).
    pub async fn wait_for_metrics(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let text = self.metrics().await;
            if check(&text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls the handle's stats until `check` holds (2 s at most).
    pub async fn wait_for_stats(
        &self,
        what: &str,
        check: impl Fn(&kinfer_vllm_sim::SimStats) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let stats = self.handle.stats();
            if check(&stats) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; stats: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Value of the first sample `selector` names: `name` or `name{label="value",...}` (those
/// labels among the sample's), read with the parser the gateway and the operator use.
pub fn sample(text: &str, selector: &str) -> Option<f64> {
    kinfer_crds::metrics_text::find(text, selector).map(|sample| sample.value)
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
pub fn sse_payloads(body: &str) -> Vec<&str> {
    assert!(
        body.ends_with("\n\n"),
        "body must end with a frame separator"
    );
    let frames: Vec<&str> = body[..body.len() - 2].split("\n\n").collect();
    frames
        .iter()
        .map(|frame| {
            frame
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("frame without `data: ` prefix: {frame:?}"))
        })
        .inspect(|payload| assert!(!payload.contains('\n'), "multi-line payload {payload:?}"))
        .collect()
}

pub fn json(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|err| panic!("bad JSON {payload:?}: {err}"))
}

pub fn chat(model: &str, content: &str) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    })
}
