//! Held requests, with paused time: the router is called in-process with `oneshot`, and no
//! socket is involved, so tokio can jump over the hold timeout.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use axum::body::Body;
use common::model;
use http::Request;
use http_body_util::BodyExt;
use kinfer_gateway::{build_admin_router, build_router, Gateway, GatewayConfig, Limits};
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
        limits: Limits {
            hold_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(15),
            ..Limits::default()
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
        limits: Limits {
            hold_queue_limit: 1,
            ..Limits::default()
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
        limits: Limits {
            hold_timeout: Duration::from_secs(120),
            ..Limits::default()
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
