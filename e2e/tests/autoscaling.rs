//! Autoscaling through the installed chart: the chart's gateway holds requests
//! for a model at zero and the chart's operator (its built-in autoscaler)
//! scrapes the gateway and the engines.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kinfer_crds::InferenceModel;
use kinfer_e2e::{example, gateway_url, http, wait_for, wait_model_ready, TestNamespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

fn model(
    file: &str,
    ns: &TestNamespace,
    autoscaling: Value,
    extra: Value,
) -> (InferenceModel, String) {
    let im = example(file).unwrap();
    let id = format!("{}/{}", ns.name, im.spec.model.name.replace('/', "-"));
    let mut value = serde_json::to_value(&im).unwrap();
    value["spec"]["model"]["source"] = json!(format!("hf://{}", im.spec.model.name));
    value["spec"]["model"]["name"] = json!(id);
    value["spec"]["autoscaling"] = autoscaling;
    if let (Some(spec), Some(extra)) = (value["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    (serde_json::from_value(value).unwrap(), id)
}

async fn deployment_replicas(api: &Api<Deployment>, name: &str) -> Option<i32> {
    api.get(name).await.ok()?.spec?.replicas
}

async fn wait_replicas(api: &Api<Deployment>, name: &str, want: i32, timeout: Duration) {
    wait_for(
        &format!("Deployment {name} at {want} replicas"),
        timeout,
        || async { (deployment_replicas(api, name).await == Some(want)).then_some(()) },
    )
    .await
    .unwrap();
}

async fn scale_events(ns: &TestNamespace, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
        .filter(|(reason, _)| reason.starts_with("Scaled"))
        .collect()
}

async fn chat(gateway: &str, id: &str, max_tokens: u32) -> reqwest::Response {
    http()
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_model_at_zero_wakes_on_a_request_and_returns_to_zero_when_idle() {
    let ns = TestNamespace::new("zero").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (im, id) = model(
        "scale-to-zero.yaml",
        &ns,
        json!({"mode": "Builtin", "minReplicas": 0, "maxReplicas": 2, "targetRequestsPerReplica": 4,
               "scaleDownDelaySeconds": 2, "idleSecondsBeforeScaleToZero": 3}),
        json!({}),
    );
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &im).await.unwrap();
    let deployments: Api<Deployment> = ns.api();
    // Nobody calls it: it gives its GPU back.
    wait_replicas(&deployments, &name, 0, Duration::from_secs(60)).await;
    let gateway = gateway_url(&ns.client).await.unwrap();
    // Still listed, with no replica.
    wait_for(
        "the gateway to list the model at zero",
        Duration::from_secs(30),
        || async {
            let models: Value = http()
                .get(format!("{gateway}/v1/models"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            models["data"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == id && m["ready_replicas"] == 0)
                .then_some(())
        },
    )
    .await
    .unwrap();

    let started = Instant::now();
    let response = chat(&gateway, &id, 4).await;
    let answered = started.elapsed();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    eprintln!("request at zero answered in {answered:?}");
    assert!(answered < Duration::from_secs(30));
    let events = scale_events(&ns, &name).await;
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "ScaledUp" && note.contains("0→1")),
        "{events:?}"
    );

    // Idle again: back to zero.
    wait_replicas(&deployments, &name, 0, Duration::from_secs(60)).await;
    // The status says so in words (written by the reconcile after the scale-down).
    wait_for(
        "Ready=True with reason ScaledToZero",
        Duration::from_secs(30),
        || async {
            let status = api.get(&name).await.ok()?.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "ScaledToZero")
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_load_step_gets_the_replicas_it_needs_in_one_decision() {
    let ns = TestNamespace::new("burst").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (im, id) = model(
        "chat-7b.yaml",
        &ns,
        json!({"mode": "Builtin", "minReplicas": 1, "maxReplicas": 8, "targetRequestsPerReplica": 2,
               "scaleDownDelaySeconds": 3, "idleSecondsBeforeScaleToZero": 600}),
        // Slow tokens so 8 streams stay in flight for several seconds.
        json!({"engine": {"env": [{"name": "VLLM_SIM_ITL_MS", "value": "100"}]}}),
    );
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &im).await.unwrap();
    wait_model_ready(&api, &name, Duration::from_secs(60))
        .await
        .unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    let deployments: Api<Deployment> = ns.api();
    wait_replicas(&deployments, &name, 1, Duration::from_secs(30)).await;

    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (gateway, id) = (gateway.clone(), id.clone());
            tokio::spawn(async move { chat(&gateway, &id, 80).await.status() })
        })
        .collect();
    // 8 in flight / 2 per replica = 4 replicas, in one step.
    wait_replicas(&deployments, &name, 4, Duration::from_secs(10)).await;
    let ups: Vec<_> = scale_events(&ns, &name)
        .await
        .into_iter()
        .filter(|(r, _)| r == "ScaledUp")
        .collect();
    assert_eq!(ups.len(), 1, "expected one scale-up decision: {ups:?}");
    assert!(ups[0].1.contains("1→4"), "{ups:?}");
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn external_mode_leaves_replicas_to_the_scale_subresource() {
    let ns = TestNamespace::new("external").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (im, _) = model(
        "chat-7b.yaml",
        &ns,
        json!({"mode": "External", "minReplicas": 1, "maxReplicas": 4}),
        json!({}),
    );
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &im).await.unwrap();
    wait_model_ready(&api, &name, Duration::from_secs(60))
        .await
        .unwrap();
    // What HPA, KEDA and `kubectl scale` do.
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = ns.api();
    wait_replicas(&deployments, &name, 3, Duration::from_secs(30)).await;
    // With no load at all, the built-in autoscaler would scale down; External leaves it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(deployment_replicas(&deployments, &name).await, Some(3));
    assert!(scale_events(&ns, &name).await.is_empty());
}

/// What the traffic of the scale-down test saw.
#[derive(Debug, Default)]
struct Traffic {
    sent: usize,
    failures: Vec<String>,
    replicas: std::collections::BTreeSet<String>,
}

/// One client sending requests back to back while `running` holds.
fn client_loop(
    gateway: String,
    id: String,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Traffic> {
    tokio::spawn(async move {
        let mut traffic = Traffic::default();
        while running.load(std::sync::atomic::Ordering::Relaxed) {
            traffic.sent += 1;
            let response = chat(&gateway, &id, 10).await;
            let status = response.status();
            if let Some(replica) = response.headers().get("x-kinfer-replica") {
                traffic
                    .replicas
                    .insert(replica.to_str().unwrap_or_default().to_string());
            }
            match response.text().await {
                Ok(body) if status == 200 && body.contains("\"choices\"") => {}
                Ok(body) => traffic.failures.push(format!("{status}: {body}")),
                Err(error) => traffic
                    .failures
                    .push(format!("{status}: body cut: {error}")),
            }
        }
        traffic
    })
}

#[tokio::test]
async fn no_request_is_lost_while_load_drops_and_replicas_are_removed() {
    let ns = TestNamespace::new("scaledown").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (im, id) = model(
        "chat-7b.yaml",
        &ns,
        json!({"mode": "Builtin", "minReplicas": 1, "maxReplicas": 6, "targetRequestsPerReplica": 2,
               "scaleDownDelaySeconds": 2, "idleSecondsBeforeScaleToZero": 600}),
        // About half a second per request, so requests are in flight on the replicas removed.
        json!({"engine": {"env": [{"name": "VLLM_SIM_ITL_MS", "value": "50"}]}}),
    );
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &im).await.unwrap();
    wait_model_ready(&api, &name, Duration::from_secs(60))
        .await
        .unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    let deployments: Api<Deployment> = ns.api();

    // Replica counts as the Deployment goes through them.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let history = tokio::spawn({
        let (deployments, name, watching) = (deployments.clone(), name.clone(), watching.clone());
        async move {
            let mut history: Vec<i32> = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(replicas) = deployment_replicas(&deployments, &name).await {
                    if history.last() != Some(&replicas) {
                        history.push(replicas);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            history
        }
    });

    // High: 8 clients back to back (4 replicas at 2 per replica).
    let low = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let high = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut clients: Vec<_> = (0..2)
        .map(|_| client_loop(gateway.clone(), id.clone(), low.clone()))
        .collect();
    clients.extend((0..6).map(|_| client_loop(gateway.clone(), id.clone(), high.clone())));
    wait_replicas(&deployments, &name, 4, Duration::from_secs(30)).await;
    // Let every replica turn ready and take traffic.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Low: 2 clients go on while the autoscaler removes replicas one step at a time.
    high.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_replicas(&deployments, &name, 1, Duration::from_secs(90)).await;
    // And a while on the last replica, with the removed pods gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    low.store(false, std::sync::atomic::Ordering::Relaxed);

    let mut total = Traffic::default();
    for client in clients {
        let traffic = client.await.unwrap();
        total.sent += traffic.sent;
        total.failures.extend(traffic.failures);
        total.replicas.extend(traffic.replicas);
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let history = history.await.unwrap();
    eprintln!(
        "scale-down under traffic: {} requests, {} failed, replicas {history:?}, served by {} pods",
        total.sent,
        total.failures.len(),
        total.replicas.len()
    );
    assert!(total.failures.is_empty(), "{:?}", total.failures);
    assert!(total.replicas.len() >= 4, "{:?}", total.replicas);
    let downs: Vec<_> = scale_events(&ns, &name)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "ScaledDown")
        .collect();
    assert!(!downs.is_empty(), "no scale-down decision");
}
