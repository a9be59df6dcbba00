//! Simulated engine behaviour seen from outside: metrics, queueing, prefix
//! cache, startup delay, faults, cancellation, and the real binary's command line.

mod common;

use std::time::{Duration, Instant};

use common::{chat, sample, start};
use futures::StreamExt;
use kinfer_vllm_sim::{Config, LoraModule};
use serde_json::{json, Value};

const MODEL: &str = "test/model";
const LABELS: &str = r#"{model_name="test/model",engine="0"}"#;

#[tokio::test]
async fn metrics_have_vllm_names_and_counters_move() {
    let sim = start(Config::for_tests(MODEL)).await;
    let text = sim.metrics().await;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(&format!("{name}{{model_name=\"test/model\""))),
            "missing {name} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE vllm:num_requests_running gauge"));
    assert!(text.contains("# TYPE vllm:prompt_tokens_total counter"));
    assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    // No LoRA configured: no LoRA info, as in vLLM.
    assert!(!text.contains("vllm:lora_requests_info"));

    let mut request = chat(MODEL, "count me");
    request["max_tokens"] = json!(3);
    let response = sim.post_ok("/v1/chat/completions", request).await;
    let prompt_tokens = response["usage"]["prompt_tokens"].as_f64().unwrap();

    let text = sim.metrics().await;
    let value = |name: &str| {
        sample(&text, &format!("{name}{LABELS}")).unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(value("vllm:generation_tokens_total"), 3.0);
    assert_eq!(value("vllm:prompt_tokens_total"), prompt_tokens);
    assert_eq!(value("vllm:prefix_cache_queries_total"), prompt_tokens);
    assert_eq!(value("vllm:time_to_first_token_seconds_count"), 1.0);
    assert_eq!(value("vllm:e2e_request_latency_seconds_count"), 1.0);
    assert_eq!(value("vllm:inter_token_latency_seconds_count"), 2.0);
    assert_eq!(value("vllm:num_requests_running"), 0.0);
    assert_eq!(
        sample(
            &text,
            r#"vllm:request_success_total{model_name="test/model",engine="0",finished_reason="length"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sim.get("/metrics").await.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
}

#[tokio::test]
async fn second_request_waits_when_max_num_seqs_is_one() {
    let mut config = Config::for_tests(MODEL);
    config.vllm.max_num_seqs = 1;
    config.sim.itl_ms = 20.0;
    let sim = start(config).await;
    let mut request = chat(MODEL, "slow");
    request["max_tokens"] = json!(15);

    let send = |request: Value| {
        let client = sim.client.clone();
        let url = sim.url("/v1/chat/completions");
        tokio::spawn(async move {
            let response = client.post(url).json(&request).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        })
    };
    let first = send(request.clone());
    sim.wait_for_metrics("one running", |text| {
        sample(text, &format!("vllm:num_requests_running{LABELS}")) == Some(1.0)
    })
    .await;
    let second = send(request);
    sim.wait_for_metrics("one running and one waiting", |text| {
        sample(text, &format!("vllm:num_requests_running{LABELS}")) == Some(1.0)
            && sample(text, &format!("vllm:num_requests_waiting{LABELS}")) == Some(1.0)
    })
    .await;
    assert!(
        sim.metric(&format!("vllm:kv_cache_usage_perc{LABELS}"))
            .await
            > 0.0
    );

    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        first["choices"][0]["message"],
        second["choices"][0]["message"]
    );
    let stats = sim.handle.stats();
    assert_eq!((stats.running, stats.waiting, stats.finished), (0, 0, 2));
    assert!(
        sim.metric(&format!("vllm:request_queue_time_seconds_sum{LABELS}"))
            .await
            > 0.1
    );
}

#[tokio::test]
async fn repeated_long_prompt_hits_the_prefix_cache_and_starts_faster() {
    let mut config = Config::for_tests(MODEL);
    config.sim.ttft_ms = 5.0;
    config.sim.prefill_ms_per_token = 0.5;
    config.vllm.enable_prompt_tokens_details = true;
    let sim = start(config).await;
    // ~600 tokens: 300 ms of prefill when nothing is cached.
    let mut request = chat(MODEL, &"a long shared system prompt ".repeat(85));
    request["max_tokens"] = json!(1);

    let started = Instant::now();
    let first = sim.post_ok("/v1/chat/completions", request.clone()).await;
    let cold = started.elapsed();
    let started = Instant::now();
    let second = sim.post_ok("/v1/chat/completions", request).await;
    let warm = started.elapsed();

    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 500, "{prompt_tokens}");
    assert_eq!(first["usage"]["prompt_tokens_details"], Value::Null);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, (prompt_tokens - 1) / 16 * 16);
    assert!(cold >= Duration::from_millis(290), "cold TTFT {cold:?}");
    assert!(
        warm + Duration::from_millis(200) < cold,
        "warm {warm:?} vs cold {cold:?}"
    );

    let hits = sim
        .metric(&format!("vllm:prefix_cache_hits_total{LABELS}"))
        .await;
    assert_eq!(hits, cached as f64);
    let queries = sim
        .metric(&format!("vllm:prefix_cache_queries_total{LABELS}"))
        .await;
    assert_eq!(queries, 2.0 * prompt_tokens as f64);
}

#[tokio::test]
async fn startup_delay_answers_503_then_200() {
    let mut config = Config::for_tests(MODEL);
    config.sim.startup_delay_ms = 300;
    let sim = start(config).await;
    let health = sim.get("/health").await;
    assert_eq!(health.status(), 503);
    let models = sim.get("/v1/models").await;
    assert_eq!(models.status(), 503);
    let body: Value = models.json().await.unwrap();
    assert_eq!(body["error"]["code"], 503);
    assert_eq!(
        sim.post("/v1/chat/completions", chat(MODEL, "x"))
            .await
            .status(),
        503
    );

    let deadline = Instant::now() + Duration::from_secs(2);
    while sim.get("/health").await.status() != 200 {
        assert!(Instant::now() < deadline, "never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.get("/v1/models").await.status(), 200);
}

#[tokio::test]
async fn error_rate_one_answers_500() {
    let mut config = Config::for_tests(MODEL);
    config.sim.error_rate = 1.0;
    let sim = start(config).await;
    let response = sim.post("/v1/chat/completions", chat(MODEL, "x")).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "InternalServerError");
    assert_eq!(body["error"]["code"], 500);
    assert_eq!(body["error"]["param"], Value::Null);
    // Validation still comes first, and health is unaffected.
    assert_eq!(
        sim.post("/v1/chat/completions", chat("nope", "x"))
            .await
            .status(),
        404
    );
    assert_eq!(sim.get("/health").await.status(), 200);
}

#[tokio::test]
async fn drop_rate_one_cuts_streams_before_done() {
    let mut config = Config::for_tests(MODEL);
    config.sim.drop_rate = 1.0;
    let sim = start(config).await;
    let mut request = chat(MODEL, "x");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(10);
    let response = sim.post("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let text = String::from_utf8(received).unwrap();
    assert!(failed, "the body should end with an error, got {text:?}");
    assert!(
        text.starts_with("data: "),
        "some frames arrive first: {text:?}"
    );
    assert!(!text.contains("[DONE]"));
    sim.wait_for_stats("the cut stream counted as aborted", |s| {
        s.aborted == 1 && s.running == 0
    })
    .await;
    // Non-streaming requests are not cut.
    assert_eq!(
        sim.post("/v1/chat/completions", chat(MODEL, "x"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn client_disconnect_cancels_streaming_and_non_streaming_requests() {
    let mut config = Config::for_tests(MODEL);
    config.sim.itl_ms = 50.0;
    let sim = start(config).await;
    let mut request = chat(MODEL, "long answer");
    request["max_tokens"] = json!(100);

    // Streaming: read the first frames, then hang up.
    request["stream"] = json!(true);
    let response = sim.post("/v1/chat/completions", request.clone()).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(sim.handle.stats().running, 1);
    drop(body);
    sim.wait_for_stats("stream aborted", |s| s.running == 0 && s.aborted == 1)
        .await;

    // Non-streaming: the client gives up while the request runs.
    request["stream"] = json!(false);
    let client = sim.client.clone();
    let url = sim.url("/v1/chat/completions");
    let pending = tokio::spawn(async move { client.post(url).json(&request).send().await });
    sim.wait_for_stats("request running", |s| s.running == 1)
        .await;
    pending.abort();
    sim.wait_for_stats("request aborted", |s| s.running == 0 && s.aborted == 2)
        .await;
    assert!(
        sim.metric(r#"vllm:request_success_total{model_name="test/model",engine="0",finished_reason="abort"}"#)
            .await
            == 2.0
    );
}

#[tokio::test]
async fn lora_requests_info_lists_running_adapters() {
    let mut config = Config::for_tests(MODEL);
    config.sim.itl_ms = 20.0;
    config.vllm.max_loras = 4;
    config.vllm.lora_modules = vec![LoraModule {
        name: "sql".into(),
        path: "/a/sql".into(),
        base_model_name: None,
    }];
    let sim = start(config).await;
    assert!(sim.metrics().await.contains(
        r#"vllm:lora_requests_info{max_lora="4",waiting_lora_adapters="",running_lora_adapters=""}"#
    ));
    let mut request = chat("sql", "adapter work");
    request["max_tokens"] = json!(20);
    let client = sim.client.clone();
    let url = sim.url("/v1/chat/completions");
    let running = tokio::spawn(async move { client.post(url).json(&request).send().await });
    sim.wait_for_metrics("adapter running", |text| {
        text.contains(r#"vllm:lora_requests_info{max_lora="4",waiting_lora_adapters="",running_lora_adapters="sql"}"#)
    })
    .await;
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn binary_accepts_a_vllm_serve_command_line_and_env_knobs() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vllm-sim"))
        .args([
            "serve",
            "org/model",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--tensor-parallel-size",
            "4",
            "--dtype",
            "bfloat16",
            "--gpu-memory-utilization=0.95",
            "--trust-remote-code",
            "--enable-chunked-prefill",
            "--max-num-batched-tokens",
            "8192",
            "--kv-transfer-config",
            r#"{"kv_connector":"NixlConnector"}"#,
            "-O3",
            "--served-model-name",
            "served",
            "--lora-modules",
            "sql=/a/sql",
            r#"{"name":"chat","path":"/a/chat"}"#,
            "--max_num_seqs",
            "8",
        ])
        .env("VLLM_SIM_TTFT_MS", "0")
        .env("VLLM_SIM_ITL_MS", "0")
        .env("VLLM_SIM_DEFAULT_MAX_TOKENS", "3")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start vllm-sim");

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            if response.status() == 200 {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vllm-sim exited early: {status}");
        }
        assert!(Instant::now() < deadline, "vllm-sim never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["served", "sql", "chat"]);
    let response: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("chat", "hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["usage"]["completion_tokens"], 3);
    child.kill().await.expect("stop vllm-sim");
}
