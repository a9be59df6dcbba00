//! API keys, limits, token accounting, placement and PrefixCache routing, in-process against
//! vllm-sim replicas on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use common::*;
use futures::StreamExt;
use kinfer_crds::RoutingStrategy;
use kinfer_gateway::auth::keys::{KeyHash, KeyLimits, KeySpec};
use kinfer_gateway::index::EndpointConfig;
use kinfer_gateway::placement::Placement;
use kinfer_gateway::GatewayConfig;
use kinfer_gateway::Settings;

fn key(name: &str, secret: &str, models: &[&str], limits: KeyLimits) -> KeySpec {
    KeySpec {
        name: name.into(),
        hash: KeyHash::of(secret),
        models: models.iter().map(|model| model.to_string()).collect(),
        limits,
    }
}

async fn gateway_with_auth() -> TestGateway {
    TestGateway::start(GatewayConfig {
        auth: true,
        ..GatewayConfig::default()
    })
    .await
}

async fn post_with(
    gateway: &TestGateway,
    header: Option<(&str, &str)>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut request = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .json(&body);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn keys_authenticate_and_restrict_models() {
    let a = sim("team-model", |_| {}).await;
    let b = sim("other-model", |_| {}).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![
        model("team-model", &[address(&a)]),
        model("other-model", &[address(&b)]),
    ]);
    gateway.state.auth.publish_keys(
        "test",
        vec![
            key("team-a", "sk-team-a", &["team-*"], KeyLimits::default()),
            key("admin", "sk-admin", &[], KeyLimits::default()),
        ],
    );

    let (status, error) =
        error_of(post_with(&gateway, None, chat_body("team-model", false)).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let wrong = Some(("authorization", "Bearer sk-wrong"));
    let (status, _) =
        error_of(post_with(&gateway, wrong, chat_body("team-model", false)).await).await;
    assert_eq!(status, 401);

    let team = Some(("authorization", "Bearer sk-team-a"));
    let response = post_with(&gateway, team, chat_body("team-model", false)).await;
    assert_eq!(response.status(), 200);
    let (status, error) =
        error_of(post_with(&gateway, team, chat_body("other-model", false)).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    assert!(!error["message"].as_str().unwrap().contains("sk-team-a"));
    let admin = Some(("x-api-key", "sk-admin"));
    assert_eq!(
        post_with(&gateway, admin, chat_body("other-model", false))
            .await
            .status(),
        200
    );

    // /v1/models lists only what the key may use.
    let list = |key: &'static str| {
        gateway
            .client
            .get(gateway.url("/v1/models"))
            .bearer_auth(key)
            .send()
    };
    let models: serde_json::Value = list("sk-team-a").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-model"]);
    let models: serde_json::Value = list("sk-admin").await.unwrap().json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let anonymous = gateway
        .client
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Revoked: 401 at once.
    gateway.state.auth.publish_keys("test", vec![]);
    let (status, _) =
        error_of(post_with(&gateway, team, chat_body("team-model", false)).await).await;
    assert_eq!(status, 401);
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(r#"kinfer_gateway_auth_failures_total{reason="missing"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("sk-"), "no key in metrics");
}

#[tokio::test]
async fn engines_never_see_the_key() {
    // An engine that answers with the key headers it got.
    let echo = upstream(axum::Router::new().route(
        "/v1/{*path}",
        axum::routing::post(|headers: http::HeaderMap| async move {
            let seen = ["authorization", "x-api-key"]
                .iter()
                .filter(|name| headers.contains_key(**name))
                .copied()
                .collect::<Vec<_>>()
                .join(",");
            serde_json::json!({ "seen": seen }).to_string()
        }),
    ))
    .await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[echo])]);
    gateway.state.auth.publish_keys(
        "test",
        vec![key("team", "sk-team", &[], KeyLimits::default())],
    );
    for (name, value) in [
        ("Authorization", "Bearer sk-team"),
        ("X-Api-Key", "sk-team"),
    ] {
        let response = post_with(&gateway, Some((name, value)), chat_body("m", false)).await;
        assert_eq!(response.status(), 200, "{name}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["seen"], "", "{name}");
    }
}

#[tokio::test]
async fn request_limit_answers_429_with_openai_headers() {
    let replica = sim("m", |_| {}).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let limits = KeyLimits {
        requests_per_minute: Some(2),
        ..KeyLimits::default()
    };
    gateway
        .state
        .auth
        .publish_keys("test", vec![key("small", "sk-small", &[], limits)]);
    let auth = Some(("authorization", "Bearer sk-small"));
    for remaining in ["1", "0"] {
        let response = post_with(&gateway, auth, chat_body("m", false)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(
            response.headers()["x-ratelimit-remaining-requests"],
            remaining
        );
    }
    let response = post_with(&gateway, auth, chat_body("m", false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "30");
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(response
        .headers()
        .contains_key("x-ratelimit-reset-requests"));
    let (_, error) = error_of(response).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "requests");
    assert!(gateway
        .metrics()
        .contains(r#"kinfer_gateway_rate_limited_total{key="small",limit="requests"} 1"#));
}

/// A `data: ...` stream with the per-response parts (ids, timestamps) made equal.
fn normalize(stream: &[u8]) -> String {
    let text = String::from_utf8(stream.to_vec()).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("\"created\":") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 10..];
        let end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        out.push_str("\"created\":0");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

async fn raw_stream(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Vec<u8> {
    let mut request = client
        .post(url)
        .header("x-request-id", "same-id")
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn token_limits_count_streams_without_changing_them() {
    let replica = sim("m", |_| {}).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let limits = KeyLimits {
        tokens_per_minute: Some(100_000),
        ..KeyLimits::default()
    };
    gateway
        .state
        .auth
        .publish_keys("test", vec![key("metered", "sk-metered", &[], limits)]);
    let auth = [("authorization", "Bearer sk-metered")];
    let direct_url = format!("http://{}/v1/chat/completions", address(&replica));

    // The client did not ask for usage: the gateway asks, counts, and strips the chunk.
    let body = chat_body("m", true);
    let direct = raw_stream(&gateway.client, &direct_url, &[], &body).await;
    let through = raw_stream(
        &gateway.client,
        &gateway.url("/v1/chat/completions"),
        &auth,
        &body,
    )
    .await;
    assert!(!normalize(&direct).contains("\"usage\":{"));
    assert_eq!(normalize(&through), normalize(&direct));
    let metrics = gateway.metrics();
    let counted = metrics
        .lines()
        .find(|line| line.starts_with(r#"kinfer_gateway_key_tokens_total{key="metered"}"#))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!counted.ends_with(" 0"), "{counted}");

    // A client that asked gets the usage chunk as the engine sent it.
    let mut asked = chat_body("m", true);
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let direct = raw_stream(&gateway.client, &direct_url, &[], &asked).await;
    let through = raw_stream(
        &gateway.client,
        &gateway.url("/v1/chat/completions"),
        &auth,
        &asked,
    )
    .await;
    assert!(normalize(&through).contains("\"usage\":{"));
    assert_eq!(normalize(&through), normalize(&direct));

    // Non-streaming: usage read from the body, body unchanged.
    let response = post_with(&gateway, Some(auth[0]), chat_body("m", false)).await;
    assert!(response
        .headers()
        .contains_key("x-ratelimit-remaining-tokens"));
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Whole responses are charged their usage, never an estimate besides.
    let metrics = gateway.metrics();
    assert!(
        !metrics.contains("kinfer_gateway_key_tokens_estimated_total{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn exhausted_token_budget_is_429_tokens() {
    let replica = sim("m", |_| {}).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let limits = KeyLimits {
        tokens_per_minute: Some(5),
        ..KeyLimits::default()
    };
    gateway
        .state
        .auth
        .publish_keys("test", vec![key("tiny", "sk-tiny", &[], limits)]);
    let auth = Some(("authorization", "Bearer sk-tiny"));
    // Admitted while the budget is positive, charged after: the stream spends it.
    let body = chat_body("m", true);
    let first = raw_stream(
        &gateway.client,
        &gateway.url("/v1/chat/completions"),
        &[("authorization", "Bearer sk-tiny")],
        &body,
    )
    .await;
    assert!(normalize(&first).ends_with("data: [DONE]\n\n"));
    let response = post_with(&gateway, auth, chat_body("m", false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-limit-tokens"], "5");
    let (_, error) = error_of(response).await;
    assert_eq!(error["type"], "tokens");
}

/// The value of the first sample `selector` (`name{label="value",...}`) names, if there is one.
fn metric_value(metrics: &str, selector: &str) -> Option<u64> {
    kinfer_crds::metrics_text::find(metrics, selector).map(|sample| sample.value as u64)
}

#[tokio::test]
async fn a_stream_the_client_leaves_before_its_usage_is_charged_an_estimate() {
    // 1000 tokens, 20 ms apart: the stream would run for 20 s.
    let replica = sim("m", |config| config.sim.itl_ms = 20.0).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let limits = KeyLimits {
        tokens_per_minute: Some(20),
        ..KeyLimits::default()
    };
    gateway
        .state
        .auth
        .publish_keys("test", vec![key("leaver", "sk-leaver", &[], limits)]);
    let mut body = chat_body("m", true);
    body["max_tokens"] = 1000.into();
    let body = serde_json::to_vec(&body).unwrap();
    let prompt_estimate = body.len().div_ceil(4) as u64;
    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-leaver")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Read a few events, then hang up.
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    while received
        .windows(7)
        .filter(|window| *window == b"data: {")
        .count()
        < 3
    {
        received.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    drop(stream);

    let estimated = r#"kinfer_gateway_key_tokens_estimated_total{key="leaver"}"#;
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            metric_value(&gateway.metrics(), estimated).is_some()
        })
        .await,
        "{}",
        gateway.metrics()
    );
    let metrics = gateway.metrics();
    let charged = metric_value(&metrics, estimated).unwrap();
    assert!(
        (prompt_estimate + 3..=prompt_estimate + 1001).contains(&charged),
        "charged {charged}, prompt estimate {prompt_estimate}"
    );
    let reported = r#"kinfer_gateway_key_tokens_total{key="leaver"}"#;
    assert_eq!(metric_value(&metrics, reported), Some(0), "{metrics}");
    // The estimate went into the bucket: the key is out of tokens.
    let response = post_with(
        &gateway,
        Some(("authorization", "Bearer sk-leaver")),
        chat_body("m", false),
    )
    .await;
    assert_eq!(response.status(), 429);
    let (_, error) = error_of(response).await;
    assert_eq!(error["type"], "tokens");
}

#[tokio::test]
async fn a_stream_the_engine_cuts_is_charged_an_estimate() {
    let replica = sim("m", |config| config.sim.drop_rate = 1.0).await;
    let gateway = gateway_with_auth().await;
    gateway.publish(vec![model("m", &[address(&replica)])]);
    let limits = KeyLimits {
        tokens_per_minute: Some(100_000),
        ..KeyLimits::default()
    };
    gateway
        .state
        .auth
        .publish_keys("test", vec![key("cut", "sk-cut", &[], limits)]);
    let mut body = chat_body("m", true);
    body["max_tokens"] = 16.into();
    let prompt_estimate = serde_json::to_vec(&body).unwrap().len().div_ceil(4) as u64;
    let response = post_with(&gateway, Some(("authorization", "Bearer sk-cut")), body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    while let Some(Ok(_)) = stream.next().await {}

    let estimated = r#"kinfer_gateway_key_tokens_estimated_total{key="cut"}"#;
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            // The prompt, and the events that came before the cut.
            metric_value(&gateway.metrics(), estimated)
                .is_some_and(|tokens| tokens > prompt_estimate)
        })
        .await,
        "{}",
        gateway.metrics()
    );
    let reported = r#"kinfer_gateway_key_tokens_total{key="cut"}"#;
    assert_eq!(metric_value(&gateway.metrics(), reported), Some(0));
}

fn placed(address: String, name: &str, zone: &str, node: &str) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        address,
        placement: Placement {
            node: Some(node.into()),
            zone: Some(zone.into()),
            region: Some("local".into()),
            gpu_product: Some("NVIDIA-L4".into()),
        },
    }
}

#[tokio::test]
async fn placement_pins_zones_and_names_the_replica() {
    let a = sim("m", |_| {}).await;
    let b = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut config = model("m", &[]);
    config.endpoints = vec![
        placed(address(&a), "ml/m-a", "zone-a", "gpu-node-0"),
        placed(address(&b), "ml/m-b", "zone-b", "gpu-node-1"),
    ];
    gateway.publish(vec![config]);

    for _ in 0..4 {
        let response = post_with(
            &gateway,
            Some(("x-kinfer-zone", "zone-b")),
            chat_body("m", false),
        )
        .await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["x-kinfer-served-by"], "ml/m-b");
        assert_eq!(headers["x-kinfer-node"], "gpu-node-1");
        assert_eq!(headers["x-kinfer-zone"], "zone-b");
        assert_eq!(headers["x-kinfer-gpu-product"], "NVIDIA-L4");
    }
    // Also on streams.
    let response = post_with(
        &gateway,
        Some(("x-kinfer-zone", "zone-a")),
        chat_body("m", true),
    )
    .await;
    assert_eq!(response.headers()["x-kinfer-served-by"], "ml/m-a");
    // The jurisdiction body field pins a region.
    let mut body = chat_body("m", false);
    body["jurisdiction"] = "local".into();
    assert_eq!(post_with(&gateway, None, body.clone()).await.status(), 200);
    body["jurisdiction"] = "eu".into();
    let (status, error) = error_of(post_with(&gateway, None, body).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (503, Some("no_replica_in_placement"))
    );
    assert!(error["message"].as_str().unwrap().contains("region `eu`"));
}

#[tokio::test]
async fn own_zone_is_preferred() {
    let a = sim("m", |_| {}).await;
    let b = sim("m", |_| {}).await;
    let gateway = TestGateway::start(GatewayConfig {
        settings: Settings {
            own_zone: Some("zone-b".into()),
            ..Settings::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let mut config = model("m", &[]);
    config.endpoints = vec![
        placed(address(&a), "ml/m-a", "zone-a", "gpu-node-0"),
        placed(address(&b), "ml/m-b", "zone-b", "gpu-node-1"),
    ];
    gateway.publish(vec![config]);
    for _ in 0..6 {
        let response = gateway.chat("m").await;
        assert_eq!(response.headers()["x-kinfer-zone"], "zone-b");
    }
}

#[tokio::test]
async fn prefix_cache_keeps_a_system_prompt_on_one_replica() {
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(sim("m", |_| {}).await);
    }
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut config = model("m", &replicas.iter().map(address).collect::<Vec<_>>());
    config.strategy = Some(RoutingStrategy::PrefixCache);
    gateway.publish(vec![config]);
    let mut served =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for system in 0..4 {
        let prompt = format!("System prompt number {system}. ").repeat(60);
        for user in 0..5 {
            let body = serde_json::json!({
                "model": "m",
                "max_tokens": 2,
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": format!("question {user}")},
                ],
            });
            let response = post_with(&gateway, None, body).await;
            assert_eq!(response.status(), 200);
            let replica = response.headers()["x-kinfer-replica"]
                .to_str()
                .unwrap()
                .to_string();
            served.entry(prompt.clone()).or_default().insert(replica);
        }
    }
    for replicas in served.values() {
        assert_eq!(replicas.len(), 1, "{served:?}");
    }
}
