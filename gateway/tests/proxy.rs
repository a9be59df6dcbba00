//! The gateway in-process against real upstream HTTP servers on 127.0.0.1 (vllm-sim replicas,
//! and small axum servers for slow or echoing upstreams).

mod common;

use std::time::{Duration, Instant};

use axum::routing::post;
use bytes::Bytes;
use common::*;
use futures::StreamExt;
use kinfer_crds::Feature;
use kinfer_gateway::index::EjectionPolicy;
use kinfer_gateway::proxy::ProxyConfig;
use kinfer_gateway::{GatewayConfig, Settings};

#[tokio::test]
async fn routes_by_model_with_replica_and_request_id_headers() {
    let replica = sim("Qwen/Qwen2.5-7B-Instruct", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model(
        "Qwen/Qwen2.5-7B-Instruct",
        &[address(&replica)],
    )]);

    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .header("x-request-id", "req-42")
        .json(&chat_body("Qwen/Qwen2.5-7B-Instruct", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(
        response.headers()["x-kinfer-replica"],
        address(&replica).as_str()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "Qwen/Qwen2.5-7B-Instruct");

    // A generated id when the client sends none.
    let response = gateway.chat("Qwen/Qwen2.5-7B-Instruct").await;
    assert_eq!(response.headers()["x-request-id"].len(), 36);

    let metrics = gateway.metrics();
    assert!(
        metrics.contains(
            r#"kinfer_gateway_requests_total{model="Qwen/Qwen2.5-7B-Instruct",code="200"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn round_robin_spreads_over_replicas() {
    let a = sim("m", |_| {}).await;
    let b = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&a), address(&b)])]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let response = gateway.chat("m").await;
        assert_eq!(response.status(), 200);
        seen.push(
            response.headers()["x-kinfer-replica"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
}

#[tokio::test]
async fn body_is_forwarded_byte_for_byte_on_any_v1_path() {
    let echo = upstream(axum::Router::new().route(
        "/v1/{*path}",
        post(|headers: http::HeaderMap, body: Bytes| async move {
            // What the engine got: the request id once, the client's own headers, no
            // hop-by-hop ones (nor the header the client's `Connection` named).
            let ids = headers.get_all("x-request-id").iter().count().to_string();
            let custom = headers
                .get("x-custom")
                .map_or("absent".into(), |value| value.to_str().unwrap().to_string());
            let hop = ["x-hop", "te", "keep-alive"]
                .iter()
                .any(|name| headers.contains_key(*name))
                .to_string();
            (
                [
                    ("x-seen-request-id", headers["x-request-id"].clone()),
                    ("x-seen-ids", ids.parse().unwrap()),
                    ("x-seen-custom", custom.parse().unwrap()),
                    ("x-seen-hop", hop.parse().unwrap()),
                    // The gateway's own response headers replace an engine's.
                    ("x-request-id", "from-the-engine".parse().unwrap()),
                    ("x-kinfer-replica", "from-the-engine".parse().unwrap()),
                ],
                body,
            )
        }),
    ))
    .await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut config = model("m", &[echo]);
    config.features = vec![];
    gateway.publish(vec![config]);
    // Odd spacing, key order, unicode escapes and unknown fields must all survive.
    let body = "{ \"z\" : [1,2,{\"deep\":true}],\n\"model\":\"m\", \"prompt\":\"caf\\u00e9 \u{1F600}\", \"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}] }";
    for path in ["/v1/completions", "/v1/responses", "/v1/tokenize?x=1"] {
        let response = gateway
            .client
            .post(gateway.url(path))
            .header("content-type", "application/json")
            .header("x-request-id", "echo-1")
            .header("X-Custom", "kept as sent")
            .header("TE", "trailers")
            .header("Connection", "keep-alive, X-Hop")
            .header("x-hop", "1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let seen = response.headers();
        assert_eq!(seen["x-seen-request-id"], "echo-1");
        assert_eq!(seen["x-seen-ids"], "1");
        assert_eq!(seen["x-seen-custom"], "kept as sent");
        assert_eq!(seen["x-seen-hop"], "false");
        let ids: Vec<_> = seen.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["echo-1"]);
        let replicas: Vec<_> = seen.get_all("x-kinfer-replica").iter().collect();
        assert_eq!(replicas.len(), 1);
        assert_ne!(replicas[0], "from-the-engine");
        assert_eq!(response.text().await.unwrap(), body, "{path}");
    }
}

#[tokio::test]
async fn streaming_passes_chunks_through_as_they_come() {
    // 4 tokens, 300 ms apart: the whole stream takes about a second.
    let replica = sim("m", |config| config.sim.itl_ms = 300.0).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&replica)])]);

    let started = Instant::now();
    let response = gateway
        .post("/v1/chat/completions", chat_body("m", true))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let time_to_first_chunk = started.elapsed();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let mut chunks = 1;
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = stream.next().await {
        chunks += 1;
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let total = started.elapsed();
    assert!(
        time_to_first_chunk < Duration::from_millis(250),
        "first chunk after {time_to_first_chunk:?}"
    );
    assert!(total >= Duration::from_millis(900), "stream took {total:?}");
    assert!(chunks >= 4, "{chunks} chunks: the stream was buffered");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn client_disconnect_aborts_the_upstream_request() {
    let replica = sim("m", |config| config.sim.itl_ms = 50.0).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let mut body = chat_body("m", true);
    body["max_tokens"] = 2_000.into();
    let response = gateway.post("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || replica.stats().aborted == 1).await,
        "the engine did not see the cancel: {:?}",
        replica.stats()
    );
    assert_eq!(replica.stats().running, 0);
    assert!(
        eventually(Duration::from_secs(2), || gateway
            .metrics()
            .contains(r#"kinfer_gateway_inflight_requests{model="m"} 0"#))
        .await
    );
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_requests_total{model="m",code="200"} 1"#));
}

#[tokio::test]
async fn connect_failures_retry_on_another_replica() {
    let good = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig {
        proxy: ProxyConfig {
            ejection: EjectionPolicy {
                consecutive_failures: 0,
                ..EjectionPolicy::default()
            },
            ..ProxyConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    gateway.publish(vec![model("m", &[dead_address().await, address(&good)])]);
    for _ in 0..6 {
        let response = gateway.chat("m").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-kinfer-replica"],
            address(&good).as_str()
        );
    }
    // Round robin sends every other request to the dead replica first.
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"kinfer_gateway_retries_total{model="m"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kinfer_gateway_upstream_errors_total{model="m",kind="connect"} 3"#));
}

#[tokio::test]
async fn engine_503_is_retried_elsewhere_and_500_passes_through() {
    let starting = sim("m", |config| config.sim.startup_delay_ms = 60_000).await;
    let good = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&starting), address(&good)])]);
    for _ in 0..2 {
        let response = gateway.chat("m").await;
        assert_eq!(response.status(), 200);
    }
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_retries_total{model="m"} 1"#));

    // With only the starting replica, its 503 comes back as it is.
    gateway.publish(vec![model("m", &[address(&starting)])]);
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 503);

    // Engine errors other than 502/503 are the engine's answer: passed through, not retried.
    let failing = sim("m", |config| config.sim.error_rate = 1.0).await;
    gateway.publish(vec![model("m", &[address(&failing), address(&good)])]);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = gateway.chat("m").await;
        statuses.push(response.status().as_u16());
        if response.status() == 500 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body.get("error").is_some() || body.get("message").is_some(),
                "{body}"
            );
        }
    }
    statuses.sort();
    assert_eq!(statuses, [200, 500]);
}

#[tokio::test]
async fn failing_replica_is_ejected() {
    let good = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig {
        proxy: ProxyConfig {
            ejection: EjectionPolicy {
                consecutive_failures: 2,
                base: Duration::from_secs(60),
                max: Duration::from_secs(60),
            },
            ..ProxyConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    gateway.publish(vec![model("m", &[dead_address().await, address(&good)])]);
    for _ in 0..20 {
        assert_eq!(gateway.chat("m").await.status(), 200);
    }
    let metrics = gateway.metrics();
    // Two failures eject the dead replica; no request tries it after that.
    assert!(
        metrics.contains(r#"kinfer_gateway_retries_total{model="m"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kinfer_gateway_replica_ejections_total{model="m"} 1"#));
}

#[tokio::test]
async fn every_replica_down_is_502() {
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model(
        "m",
        &[dead_address().await, dead_address().await],
    )]);
    let (status, error) = error_of(gateway.chat("m").await).await;
    assert_eq!(status, 502);
    assert_eq!(error["code"], "backend_unreachable");
    assert_eq!(error["type"], "api_error");
}

#[tokio::test]
async fn slow_headers_are_504_and_stalled_streams_are_cut() {
    let slow = upstream(
        axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            )
            .route(
                "/v1/completions",
                post(|| async {
                    let chunks = futures::stream::once(async {
                        Ok::<_, std::io::Error>(Bytes::from_static(b"data: 1\n\n"))
                    })
                    .chain(futures::stream::once(async {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Ok(Bytes::from_static(b"data: 2\n\n"))
                    }));
                    axum::body::Body::from_stream(chunks)
                }),
            ),
    )
    .await;
    let gateway = TestGateway::start(GatewayConfig {
        proxy: ProxyConfig {
            first_byte_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            ..ProxyConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    gateway.publish(vec![model("m", &[slow])]);

    let started = Instant::now();
    let (status, error) = error_of(gateway.chat("m").await).await;
    assert_eq!(status, 504);
    assert_eq!(error["code"], "backend_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));

    let started = Instant::now();
    let response = gateway
        .post(
            "/v1/completions",
            serde_json::json!({"model": "m", "prompt": "x"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), "data: 1\n\n");
    let end = stream.next().await;
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_upstream_errors_total{model="m",kind="idle_timeout"} 1"#));
}

#[tokio::test]
async fn body_limit_is_413_with_or_without_content_length() {
    let replica = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig {
        settings: Settings {
            max_body_bytes: 1024,
            ..Settings::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let big = serde_json::json!({"model": "m", "prompt": "x".repeat(2000)}).to_string();
    let response = gateway
        .client
        .post(gateway.url("/v1/completions"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 413);
    assert_eq!(error["code"], "body_too_large");

    // Chunked: no content-length, the limit applies while reading.
    let response = gateway.post_in_chunks("/v1/completions", &big, 100).await;
    assert_eq!(response.status(), 413);

    let small = serde_json::json!({"model": "m", "prompt": "x".repeat(500)});
    assert_eq!(
        gateway
            .post("/v1/completions", small.clone())
            .await
            .status(),
        200
    );

    // A body under the limit that arrives in many chunks is gathered whole (a piece lost or
    // repeated would not parse, here or at the engine).
    let response = gateway
        .post_in_chunks("/v1/completions", &small.to_string(), 50)
        .await;
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn held_request_is_released_when_a_replica_appears() {
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("cold", &[])]);
    let request = tokio::spawn({
        let client = gateway.client.clone();
        let url = gateway.url("/v1/chat/completions");
        async move {
            client
                .post(url)
                .json(&chat_body("cold", false))
                .send()
                .await
                .unwrap()
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || gateway
            .metrics()
            .contains(r#"kinfer_gateway_queued_requests{model="cold"} 1"#))
        .await
    );
    let replica = sim("cold", |_| {}).await;
    gateway.publish(vec![model("cold", &[address(&replica)])]);
    let response = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_queued_requests{model="cold"} 0"#));
}

#[tokio::test]
async fn draining_replica_finishes_its_stream_and_gets_nothing_new() {
    let draining = sim("m", |config| config.sim.itl_ms = 100.0).await;
    let staying = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&draining)])]);
    let mut body = chat_body("m", true);
    body["max_tokens"] = 8.into();
    let response = gateway.post("/v1/chat/completions", body).await;
    assert_eq!(
        response.headers()["x-kinfer-replica"],
        address(&draining).as_str()
    );
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();

    // The pod turns terminating: it leaves the table, new requests go elsewhere.
    gateway.publish(vec![model("m", &[address(&staying)])]);
    for _ in 0..3 {
        let response = gateway.chat("m").await;
        assert_eq!(
            response.headers()["x-kinfer-replica"],
            address(&staying).as_str()
        );
    }
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert_eq!(draining.stats().aborted, 0);
}

#[tokio::test]
async fn embeddings_and_feature_checks() {
    let embedder = sim("bge", |config| config.vllm.runner = Some("pooling".into())).await;
    let generator = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut bge = model("bge", &[address(&embedder)]);
    bge.features = vec![Feature::TextEmbedding];
    gateway.publish(vec![bge, model("m", &[address(&generator)])]);

    let response = gateway
        .post(
            "/v1/embeddings",
            serde_json::json!({"model": "bge", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    let (status, error) = error_of(
        gateway
            .post(
                "/v1/embeddings",
                serde_json::json!({"model": "m", "input": "a"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 501);
    assert_eq!(error["code"], "unsupported_endpoint");
    let (status, _) = error_of(gateway.chat("bge").await).await;
    assert_eq!(status, 501);
}

#[tokio::test]
async fn model_list_health_and_errors() {
    let replica = sim("Qwen/Qwen2.5-7B-Instruct", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut adapter = model("sql-lora", &[address(&replica)]);
    adapter.parent = Some("Qwen/Qwen2.5-7B-Instruct".into());
    gateway.publish(vec![
        model("Qwen/Qwen2.5-7B-Instruct", &[address(&replica)]),
        adapter,
        model("cold", &[]),
    ]);

    let list: serde_json::Value = gateway
        .client
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["Qwen/Qwen2.5-7B-Instruct", "cold", "sql-lora"]);
    assert_eq!(list["data"][2]["parent"], "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(list["data"][1]["ready_replicas"], 0);

    let one: serde_json::Value = gateway
        .client
        .get(gateway.url("/v1/models/Qwen/Qwen2.5-7B-Instruct"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(one["object"], "model");
    let (status, error) = error_of(
        gateway
            .client
            .get(gateway.url("/v1/models/no/such"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let health: serde_json::Value = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"]["Qwen/Qwen2.5-7B-Instruct"], 1);
    assert_eq!(health["models"]["cold"], 0);

    let (status, error) = error_of(gateway.chat("gpt-4").await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert_eq!(error["param"], "model");
    let (status, error) = error_of(
        gateway
            .post("/v1/chat/completions", serde_json::json!({"messages": []}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("missing_model"))
    );
    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_json"))
    );
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let (status, error) = error_of(
        gateway
            .client
            .get(gateway.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, error) = error_of(
        gateway
            .client
            .get(gateway.url("/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["code"].as_str()), (404, Some("unknown_url")));
}

/// The one routing table: what each method and path gets, through the server.
#[tokio::test]
async fn every_route_answers_as_the_table_says() {
    let replica = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    // (method, path, body, status, error code or the JSON `object`)
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/v1/chat/completions", chat, 200, "chat.completion"),
        (
            "POST",
            "/v1/completions",
            r#"{"model":"m","prompt":"hi","max_tokens":2}"#,
            200,
            "text_completion",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"unknown"}"#,
            404,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            "{not json",
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            400,
            "missing_model",
        ),
        ("POST", "/v1/models", chat, 405, "method_not_allowed"),
        ("POST", "/v1/models/m", chat, 405, "method_not_allowed"),
        ("POST", "/v1/", chat, 404, "unknown_url"),
        ("POST", "/v1", chat, 404, "unknown_url"),
        ("POST", "/v2/chat/completions", chat, 404, "unknown_url"),
        ("POST", "/health", chat, 405, "method_not_allowed"),
        ("GET", "/v1/chat/completions", "", 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/chat/completions",
            chat,
            405,
            "method_not_allowed",
        ),
        ("GET", "/v1/models", "", 200, "list"),
        ("GET", "/v1/models/m", "", 200, "model"),
    ];
    for &(method, path, body, status, what) in cases {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let served = gateway
            .client
            .request(method.clone(), gateway.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(served.status().as_u16(), status, "{method} {path}");
        let served: serde_json::Value = served.json().await.unwrap_or_default();
        let got = served["error"]["code"]
            .as_str()
            .or(served["object"].as_str())
            .unwrap_or_default()
            .to_string();
        assert_eq!(got, what, "{method} {path}: {served}");
    }
}

/// vLLM 0.32's answer to a new request once SIGTERM started its shutdown (`--shutdown-timeout`).
const SHUTDOWN_ANSWER: &str = r#"{"error":{"message":"cannot schedule new futures after shutdown","type":"InternalServerError","param":null,"code":500}}"#;

/// An upstream answering every chat request with `status` and `body` (JSON), counting them.
async fn answering(
    status: http::StatusCode,
    body: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let address = upstream(axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { (status, [("content-type", "application/json")], body) }
        }),
    ))
    .await;
    (address, count)
}

#[tokio::test]
async fn an_engine_shutting_down_is_retried_elsewhere_and_leaves_the_rotation() {
    let (shutting_down, refused) =
        answering(http::StatusCode::INTERNAL_SERVER_ERROR, SHUTDOWN_ANSWER).await;
    let good = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[shutting_down.clone(), address(&good)])]);
    for _ in 0..4 {
        let response = gateway.chat("m").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-kinfer-replica"],
            address(&good).as_str()
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
    }
    assert_eq!(
        refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "out of rotation after its first refusal"
    );
    let metrics = gateway.metrics();
    for line in [
        r#"kinfer_gateway_retries_total{model="m"} 1"#,
        r#"kinfer_gateway_upstream_errors_total{model="m",kind="shutdown"} 1"#,
        r#"kinfer_gateway_replica_ejections_total{model="m"} 1"#,
        r#"kinfer_gateway_requests_total{model="m",code="200"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // With nowhere else to go, the engine's answer is the client's, byte for byte.
    gateway.publish(vec![model("m", &[shutting_down])]);
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.unwrap(), SHUTDOWN_ANSWER);
}

#[tokio::test]
async fn other_engine_500s_pass_through_without_a_retry() {
    const ANSWER: &str = r#"{"error":{"message":"CUDA out of memory","type":"InternalServerError","param":null,"code":500}}"#;
    let (failing, failed) = answering(http::StatusCode::INTERNAL_SERVER_ERROR, ANSWER).await;
    let (good, served) = answering(http::StatusCode::OK, r#"{"object":"chat.completion"}"#).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[failing.clone(), good])]);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = gateway.chat("m").await;
        statuses.push(response.status().as_u16());
        if response.status() == 500 {
            assert_eq!(response.headers()["x-kinfer-replica"], failing.as_str());
            assert_eq!(response.text().await.unwrap(), ANSWER);
        }
    }
    statuses.sort();
    assert_eq!(statuses, [200, 500]);
    for count in [&failed, &served] {
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_retries_total{model="m"} 0"#));

    // A 500 longer than what is read to look for a shutdown, in chunks, even if it mentions
    // one: passed on whole.
    let long = format!("shutdown {}", "x".repeat(10_000));
    let answer = long.clone();
    let chunked = upstream(axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let pieces: Vec<Result<Bytes, std::io::Error>> = answer
                .as_bytes()
                .chunks(3000)
                .map(|piece| Ok(Bytes::copy_from_slice(piece)))
                .collect();
            async move {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::body::Body::from_stream(futures::stream::iter(pieces)),
                )
            }
        }),
    ))
    .await;
    gateway.publish(vec![model("m", &[chunked])]);
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.unwrap(), long);
}

const FIRST_EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
const SECOND_EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n";

/// Read the rest of a response body; a cut body fails the test.
async fn read_to_clean_end(
    mut stream: impl futures::Stream<Item = reqwest::Result<Bytes>> + Unpin,
) -> String {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a clean end of the body, not a cut");
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
    }
    text
}

/// The JSON of an SSE error event `data: {...}\n\n` that ends `text` after `before`.
fn error_event_after(text: &str, before: &str) -> serde_json::Value {
    let event = text
        .strip_prefix(before)
        .unwrap_or_else(|| panic!("{text:?} does not start with {before:?}"));
    let json = event
        .strip_prefix("data: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one event: {event:?}"));
    serde_json::from_str(json).expect("the event's data is JSON")
}

#[tokio::test]
async fn a_stream_that_falls_silent_ends_with_an_error_event() {
    let (closed, mut upstream_closed) = tokio::sync::mpsc::unbounded_channel();
    let silent = raw_upstream(move |mut stream| {
        let closed = closed.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(SSE_HEAD).await.unwrap();
            stream.write_all(&chunk(FIRST_EVENT)).await.unwrap();
            stream.write_all(&chunk(SECOND_EVENT)).await.unwrap();
            // Then nothing (vLLM stopped mid-generation), the connection open until the
            // gateway closes it.
            let mut rest = [0_u8; 64];
            while stream.read(&mut rest).await.is_ok_and(|read| read > 0) {}
            let _ = closed.send(());
        }
    })
    .await;
    let idle_timeout = Duration::from_millis(300);
    let gateway = TestGateway::start(GatewayConfig {
        proxy: ProxyConfig {
            idle_timeout,
            ..ProxyConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    gateway.publish(vec![model("m", &[silent])]);

    let started = Instant::now();
    let response = gateway
        .post("/v1/chat/completions", chat_body("m", true))
        .await;
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(
        Duration::from_secs(10),
        read_to_clean_end(response.bytes_stream()),
    )
    .await
    .expect("the stream ends");
    let took = started.elapsed();
    let event = error_event_after(&text, &format!("{FIRST_EVENT}{SECOND_EVENT}"));
    assert_eq!(event["error"]["code"], "upstream_idle_timeout");
    assert_eq!(event["error"]["type"], "server_error");
    assert_eq!(event["error"]["param"], serde_json::Value::Null);
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing for 0.3s"),
        "{event}"
    );
    assert!(
        took >= idle_timeout && took < idle_timeout + Duration::from_secs(2),
        "ended after {took:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), upstream_closed.recv())
        .await
        .expect("the engine's connection is closed");
    let metrics = gateway.metrics();
    for line in [
        r#"kinfer_gateway_stream_error_events_total{model="m",kind="upstream_idle_timeout"} 1"#,
        r#"kinfer_gateway_upstream_errors_total{model="m",kind="idle_timeout"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn a_stream_reset_mid_event_ends_with_an_error_event_of_its_own() {
    const PARTIAL: &str = "data: {\"choices\":[{\"del";
    let reset = std::sync::Arc::new(tokio::sync::Notify::new());
    let engine = raw_upstream({
        let reset = reset.clone();
        move |mut stream| {
            let reset = reset.clone();
            async move {
                use tokio::io::AsyncWriteExt;
                stream.write_all(SSE_HEAD).await.unwrap();
                stream.write_all(&chunk(FIRST_EVENT)).await.unwrap();
                stream.write_all(&chunk(PARTIAL)).await.unwrap();
                // Reset once the client has both (an RST can discard unread data).
                reset.notified().await;
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(stream);
            }
        }
    })
    .await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    gateway.publish(vec![model("m", &[engine])]);

    let response = gateway
        .post("/v1/chat/completions", chat_body("m", true))
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while !text.ends_with(PARTIAL) {
        let chunk = stream.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    reset.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), read_to_clean_end(stream))
        .await
        .expect("the stream ends");
    text.push_str(&rest);
    // The cut event is ended first, so the error event stands alone.
    let event = error_event_after(&text, &format!("{FIRST_EVENT}{PARTIAL}\n\n"));
    assert_eq!(event["error"]["code"], "upstream_error");
    assert_eq!(event["error"]["type"], "server_error");
    assert!(gateway.metrics().contains(
        r#"kinfer_gateway_stream_error_events_total{model="m",kind="upstream_error"} 1"#
    ));
}
