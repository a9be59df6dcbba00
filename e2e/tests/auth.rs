//! The gateway's API keys (Secrets labelled kinfer.dev/api-key, watched) and placement
//! pinning (replicas on nodes of a zone), through the chart-installed release.
//!
//! Needs a cluster with kinfer installed (`e2e/install-kinfer.sh`, which turns authentication
//! on and creates the key the other tests send).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::{Duration, Instant};

use kinfer_crds::InferenceModel;
use kinfer_e2e::{
    create_api_key, delete_api_key, gateway_url, http, http_without_key, wait_for, TestNamespace,
};
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};

async fn chat(gateway: &str, key: Option<&str>, model: &str) -> reqwest::Response {
    let mut request = http_without_key()
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn key_secrets_are_created_restricted_and_revoked_without_a_restart() {
    let ns = TestNamespace::new("auth").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (allowed, allowed_id) = unique_test_example("chat-7b.yaml", &ns);
    let (mut other, other_id) = unique_test_example("embedding.yaml", &ns);
    other.metadata.name = Some("other".into());
    api.create(&PostParams::default(), &allowed).await.unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served_ok(&gateway, &allowed_id, 1).await;

    // No key, or an unknown one: 401 in the OpenAI envelope.
    let response = chat(&gateway, None, &allowed_id).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // A new Secret is a working key within seconds; it may use only its model.
    let secret = format!("{}-key", ns.name);
    let key = format!("sk-{}", uuid::Uuid::new_v4().simple());
    create_api_key(
        &ns.client,
        &secret,
        &[("key", key.as_str()), ("models", allowed_id.as_str())],
    )
    .await
    .unwrap();
    let created = Instant::now();
    wait_for(
        "the new key to be accepted",
        Duration::from_secs(15),
        || async { (chat(&gateway, Some(&key), &allowed_id).await.status() == 200).then_some(()) },
    )
    .await
    .unwrap();
    eprintln!(
        "key usable {:?} after its Secret was created",
        created.elapsed()
    );
    let forbidden = http_without_key()
        .post(format!("{gateway}/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({"model": other_id, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let models: Value = http_without_key()
        .get(format!("{gateway}/v1/models"))
        .bearer_auth(&key)
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
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [allowed_id.as_str()]);

    // Deleted: 401 within seconds.
    delete_api_key(&ns.client, &secret).await.unwrap();
    let deleted = Instant::now();
    wait_for(
        "the deleted key to be refused",
        Duration::from_secs(15),
        || async { (chat(&gateway, Some(&key), &allowed_id).await.status() == 401).then_some(()) },
    )
    .await
    .unwrap();
    eprintln!(
        "key refused {:?} after its Secret was deleted",
        deleted.elapsed()
    );
    assert!(deleted.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn requests_pinned_to_a_zone_reach_only_replicas_there() {
    let ns = TestNamespace::new("zones").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (mut im, id) = unique_test_example("chat-7b.yaml", &ns);
    im.spec.replicas = 2;
    im.spec
        .scheduling
        .node_selector
        .insert("topology.kubernetes.io/zone".into(), "zone-b".into());
    api.create(&PostParams::default(), &im).await.unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served_ok(&gateway, &id, 2).await;

    let client = http();
    let body =
        json!({"model": id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (header, value) in [("x-kinfer-zone", "zone-b"), ("x-kinfer-region", "local")] {
        // The node watch may publish the placement a moment after the pods.
        let response = wait_for(
            &format!("{header}: {value} to be served"),
            Duration::from_secs(20),
            || async {
                let response = client
                    .post(format!("{gateway}/v1/chat/completions"))
                    .header(header, value)
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(response)
            },
        )
        .await
        .unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-kinfer-zone"], "zone-b");
        let node = headers["x-kinfer-node"].to_str().unwrap();
        assert!(["gpu-node-1", "gpu-node-3"].contains(&node), "{node}");
        assert!(headers.contains_key("x-kinfer-gpu-product"));
        assert!(headers["x-kinfer-served-by"]
            .to_str()
            .unwrap()
            .starts_with(&ns.name));
    }
    let elsewhere = client
        .post(format!("{gateway}/v1/chat/completions"))
        .header("x-kinfer-zone", "zone-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 503);
    let error: Value = elsewhere.json().await.unwrap();
    assert_eq!(error["error"]["code"], "no_replica_in_placement");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("zone `zone-a`"));
}

fn unique_test_example(file: &str, ns: &TestNamespace) -> (InferenceModel, String) {
    kinfer_e2e::unique_example(file, ns).unwrap()
}

async fn wait_served_ok(gateway: &str, id: &str, replicas: u64) {
    kinfer_e2e::wait_served(gateway, id, replicas)
        .await
        .unwrap();
}
