//! Held requests, with paused time: the router is called in-process with `oneshot`, and no
//! socket is involved, so tokio can jump over the hold timeout.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use axum::body::Body;
use common::model;
use http::Request;
use http_body_util::BodyExt;
use kinfer_gateway::{build_admin_router, build_router, Gateway, GatewayConfig, Settings};
use tower::ServiceExt;

fn chat(model: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"model":"{model}","messages":[]}}"#
        )))
        .unwrap()
}

async fn json(response: axum::response::Response) -> serde_json::Value {
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn hold_times_out_with_503_and_retry_after() {
    let gateway = Gateway::new(GatewayConfig {
        settings: Settings {
            hold_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(15),
            ..Settings::default()
        },
        ..GatewayConfig::default()
    });
    gateway.index.publish(vec![model("cold", &[])]);
    let started = tokio::time::Instant::now();
    let response = build_router(gateway.clone())
        .oneshot(chat("cold"))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(120));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "15");
    assert!(response.headers().contains_key("x-request-id"));
    let body = json(response).await;
    assert_eq!(body["error"]["code"], "no_ready_replica");
    let metrics = gateway.metrics.encode();
    assert!(
        metrics.contains(r#"kinfer_gateway_queued_requests{model="cold"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kinfer_gateway_requests_total{model="cold",code="503"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn full_hold_queue_answers_at_once() {
    let gateway = Gateway::new(GatewayConfig {
        settings: Settings {
            hold_queue_limit: 1,
            ..Settings::default()
        },
        ..GatewayConfig::default()
    });
    gateway.index.publish(vec![model("cold", &[])]);
    let router = build_router(gateway.clone());
    let first = tokio::spawn(router.clone().oneshot(chat("cold")));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let started = tokio::time::Instant::now();
    let second = router.clone().oneshot(chat("cold")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(second.status(), 503);
    assert_eq!(json(second).await["error"]["code"], "hold_queue_full");
    // The model disappearing ends the hold with a 404.
    gateway.index.publish(vec![]);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 404);
}

#[tokio::test(start_paused = true)]
async fn per_model_hold_limits_override_the_flags() {
    let gateway = Gateway::new(GatewayConfig {
        settings: Settings {
            hold_timeout: Duration::from_secs(120),
            ..Settings::default()
        },
        ..GatewayConfig::default()
    });
    let mut quick = model("quick", &[]);
    quick.hold.timeout = Some(Duration::from_secs(5));
    let mut never = model("never", &[]);
    never.hold.queue_limit = Some(0);
    gateway.index.publish(vec![quick, never]);
    let router = build_router(gateway.clone());
    let started = tokio::time::Instant::now();
    let response = router.clone().oneshot(chat("quick")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(json(response).await["error"]["code"], "no_ready_replica");
    let started = tokio::time::Instant::now();
    let response = router.oneshot(chat("never")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(json(response).await["error"]["code"], "hold_queue_full");
}

#[tokio::test]
async fn admin_routes() {
    let gateway = Gateway::new(GatewayConfig::default());
    let admin = build_admin_router(gateway.clone());
    let ready = admin
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    gateway.index.publish(vec![model("m", &[])]);
    gateway.index.mark_synced();
    let ready = admin
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let live = admin
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let metrics = admin
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = String::from_utf8(
        metrics
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"kinfer_gateway_ready_replicas{model="m"} 0"#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

// Held stream requests and SSE keep-alives, through a real socket (keep-alives are about what
// a client sees on the wire), so with real time and a short interval.

mod keepalive {
    use super::*;
    use common::{address, chat_body, eventually, sim, upstream, TestGateway};

    const INTERVAL: Duration = Duration::from_millis(100);

    async fn gateway(interval: Duration) -> TestGateway {
        TestGateway::start(GatewayConfig {
            settings: Settings {
                hold_keepalive_interval: interval,
                ..Settings::default()
            },
            ..GatewayConfig::default()
        })
        .await
    }

    async fn send(gateway: &TestGateway, model: &str, stream: bool) -> reqwest::Response {
        gateway
            .client
            .post(gateway.url("/v1/chat/completions"))
            .header("x-request-id", "held-1")
            .json(&chat_body(model, stream))
            .send()
            .await
            .unwrap()
    }

    /// Read the body until it holds `count` keep-alive comments.
    async fn read_keep_alives(response: &mut reqwest::Response, count: usize) -> String {
        let mut text = String::new();
        while text.matches(": keep-alive\n\n").count() < count {
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    }

    async fn read_rest(response: reqwest::Response, mut text: String) -> String {
        text.push_str(&response.text().await.unwrap());
        text
    }

    /// An SSE body as a client parses it: (comment lines, data of each event).
    fn parse_sse(text: &str) -> (usize, Vec<String>) {
        assert!(text.ends_with("\n\n"), "{text:?}");
        let mut comments = 0;
        let mut events = Vec::new();
        for block in text.split("\n\n").filter(|block| !block.is_empty()) {
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    comments += 1;
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                } else {
                    panic!("unexpected SSE line {line:?} in {text:?}");
                }
            }
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        (comments, events)
    }

    fn assert_keepalive_head(response: &reqwest::Response) {
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-request-id"], "held-1");
    }

    #[tokio::test]
    async fn a_long_held_stream_gets_keep_alives_then_the_engine_stream() {
        let replica = sim("m", |_| {}).await;
        let gateway = gateway(INTERVAL).await;
        gateway.publish(vec![model("m", &[])]);
        let mut response = send(&gateway, "m", true).await;
        assert_keepalive_head(&response);
        let text = read_keep_alives(&mut response, 3).await;
        gateway.publish(vec![model("m", &[address(&replica)])]);
        let text = read_rest(response, text).await;
        let (comments, events) = parse_sse(&text);
        assert!(comments >= 3, "{text}");
        let first_data = text.find("data:").unwrap();
        assert!(!text[first_data..].contains(": keep-alive"), "{text}");
        let (last, chunks) = events.split_last().unwrap();
        assert_eq!(last, "[DONE]");
        assert!(!chunks.is_empty());
        for chunk in chunks {
            let chunk: serde_json::Value = serde_json::from_str(chunk).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        }
        let metrics = gateway.metrics();
        assert!(
            metrics.contains(r#"kinfer_gateway_requests_total{model="m",code="200"} 1"#),
            "{metrics}"
        );
        assert!(metrics.contains(r#"kinfer_gateway_queued_requests{model="m"} 0"#));
    }

    #[tokio::test]
    async fn a_hold_that_ends_without_a_replica_ends_the_stream_with_an_error_event() {
        let gateway = gateway(INTERVAL).await;
        let mut cold = model("cold", &[]);
        cold.hold.timeout = Some(Duration::from_millis(350));
        gateway.publish(vec![cold]);
        let response = send(&gateway, "cold", true).await;
        assert_keepalive_head(&response);
        let text = read_rest(response, String::new()).await;
        let (comments, events) = parse_sse(&text);
        assert!(comments >= 2, "{text}");
        assert_eq!(events.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(event["error"]["code"], "no_ready_replica");
        assert_eq!(event["error"]["type"], "api_error");
        assert!(event["error"]["message"].as_str().unwrap().contains("cold"));
        // Counted as the 503 it would have been.
        let metrics = gateway.metrics();
        assert!(
            metrics.contains(r#"kinfer_gateway_requests_total{model="cold",code="503"} 1"#),
            "{metrics}"
        );
        assert!(metrics.contains(r#"kinfer_gateway_queued_requests{model="cold"} 0"#));
    }

    #[tokio::test]
    async fn a_model_deleted_during_the_hold_ends_the_stream_with_not_found() {
        let gateway = gateway(INTERVAL).await;
        gateway.publish(vec![model("m", &[])]);
        let mut response = send(&gateway, "m", true).await;
        assert_keepalive_head(&response);
        let text = read_keep_alives(&mut response, 2).await;
        gateway.publish(vec![]);
        let text = read_rest(response, text).await;
        let (_, events) = parse_sse(&text);
        assert_eq!(events.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(event["error"]["code"], "model_not_found");
        assert_eq!(event["error"]["param"], "model");
    }

    #[tokio::test]
    async fn an_engine_error_after_keep_alives_is_an_error_event() {
        let engine_error = r#"{"error":{"message":"the prompt is too long","type":"BadRequestError","param":null,"code":400}}"#;
        let engine = upstream(axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || async move {
                (
                    http::StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    engine_error,
                )
            }),
        ))
        .await;
        let gateway = gateway(INTERVAL).await;
        gateway.publish(vec![model("m", &[])]);
        let mut response = send(&gateway, "m", true).await;
        let text = read_keep_alives(&mut response, 2).await;
        gateway.publish(vec![model("m", &[engine])]);
        let text = read_rest(response, text).await;
        let (_, events) = parse_sse(&text);
        assert_eq!(events.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
        let expected: serde_json::Value = serde_json::from_str(engine_error).unwrap();
        assert_eq!(event, expected);
        let metrics = gateway.metrics();
        assert!(
            metrics.contains(r#"kinfer_gateway_requests_total{model="m",code="400"} 1"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_client_gone_during_keep_alives_leaves_the_hold() {
        let gateway = gateway(INTERVAL).await;
        gateway.publish(vec![model("m", &[])]);
        let mut response = send(&gateway, "m", true).await;
        read_keep_alives(&mut response, 2).await;
        assert_eq!(gateway.state.holds.held("m"), 1);
        drop(response);
        let holds = &gateway.state.holds;
        assert!(eventually(Duration::from_secs(5), || holds.held("m") == 0).await);
        let metrics = gateway.metrics();
        assert!(
            metrics.contains(r#"kinfer_gateway_queued_requests{model="m"} 0"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"kinfer_gateway_requests_total{model="m",code="499"} 1"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn holds_shorter_than_the_interval_are_answered_as_before() {
        let replica = sim("m", |_| {}).await;
        let gateway = gateway(Duration::from_secs(5)).await;
        let mut quick = model("quick", &[]);
        quick.hold.timeout = Some(Duration::from_millis(100));
        gateway.publish(vec![model("m", &[]), quick.clone()]);
        // Released within the interval: the engine's own head and stream.
        let request = {
            let client = gateway.client.clone();
            let url = gateway.url("/v1/chat/completions");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&chat_body("m", true))
                    .send()
                    .await
                    .unwrap()
            })
        };
        let holds = &gateway.state.holds;
        assert!(eventually(Duration::from_secs(5), || holds.held("m") == 1).await);
        gateway.publish(vec![model("m", &[address(&replica)]), quick]);
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-kinfer-replica"));
        let text = response.text().await.unwrap();
        assert!(!text.contains("keep-alive"), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        // A hold that ends within the interval without a replica: the usual 503.
        let response = send(&gateway, "quick", true).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_ready_replica");
    }

    #[tokio::test]
    async fn non_stream_requests_never_get_keep_alives() {
        let replica = sim("m", |_| {}).await;
        let gateway = gateway(INTERVAL).await;
        let mut cold = model("cold", &[]);
        cold.hold.timeout = Some(Duration::from_millis(350));
        gateway.publish(vec![model("m", &[]), cold.clone()]);
        let request = {
            let client = gateway.client.clone();
            let url = gateway.url("/v1/chat/completions");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&chat_body("m", false))
                    .send()
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(INTERVAL * 3 + INTERVAL / 2).await;
        assert!(!request.is_finished());
        gateway.publish(vec![model("m", &[address(&replica)]), cold]);
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        // And a timed-out one is the usual 503.
        let response = send(&gateway, "cold", false).await;
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_ready_replica");
    }
}
