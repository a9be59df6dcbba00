//! The whole path, installed with the Helm chart: InferenceModel → operator →
//! Deployment on a fake GPU node → engine stand-in at the pod IP → the chart's
//! gateway, reached as an application would through the OpenAI API.
//!
//! Needs a cluster with kinfer installed (`e2e/install-kinfer.sh`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kinfer_crds::InferenceModel;
use kinfer_e2e::{gateway_url, http, wait_for, wait_model_ready, TestNamespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

#[tokio::test]
async fn every_example_becomes_ready_and_is_listed_by_the_gateway() {
    let ns = TestNamespace::new("examples").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let mut files: Vec<String> = std::fs::read_dir(kinfer_e2e::repo_root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples: {files:?}");
    let mut ids = Vec::new();
    for file in &files {
        let (im, id) = unique_test_example(file, &ns);
        api.create(&PostParams::default(), &im)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        ids.push((im.metadata.name.clone().unwrap(), id, im.spec.gpus()));
    }
    let deployments: Api<Deployment> = ns.api();
    for (name, id, gpus) in &ids {
        let im = wait_model_ready(&api, name, Duration::from_secs(60))
            .await
            .unwrap();
        let deployment = deployments.get(name).await.unwrap();
        let limits = deployment.spec.unwrap().template.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap();
        assert_eq!(
            limits["nvidia.com/gpu"].0,
            gpus.to_string(),
            "{name}: GPU limit"
        );
        let served = im.status.unwrap().served_models;
        assert!(served.contains(id), "{name}: servedModels {served:?}");
    }
    let gateway = gateway_url(&ns.client).await.unwrap();
    let models: Value = http()
        .get(format!("{gateway}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (_, id, _) in &ids {
        assert!(
            models["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == *id),
            "{id} missing from /v1/models: {models}"
        );
    }
}

#[tokio::test]
async fn openai_requests_reach_the_engine_through_the_gateway() {
    let ns = TestNamespace::new("traffic").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (chat, chat_id) = unique_test_example("chat-7b.yaml", &ns);
    let (embed, embed_id) = unique_test_example("embedding.yaml", &ns);
    api.create(&PostParams::default(), &chat).await.unwrap();
    api.create(&PostParams::default(), &embed).await.unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served_ok(&gateway, &chat_id, 1).await;
    wait_served_ok(&gateway, &embed_id, 1).await;

    let client = http();
    let response = client
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": chat_id, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let replica = response.headers()["x-kinfer-replica"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(replica.starts_with(&ns.name), "served by {replica}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    // Streaming: SSE frames end with [DONE].
    let stream = client
        .post(format!("{gateway}/v1/completions"))
        .json(&json!({"model": chat_id, "prompt": "once upon", "max_tokens": 5, "stream": true}))
        .send()
        .await
        .unwrap();
    let content_type = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let text = stream.text().await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    assert!(frames.len() >= 6, "{text}");

    let embedding: Value = client
        .post(format!("{gateway}/v1/embeddings"))
        .json(&json!({"model": embed_id, "input": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedding["data"].as_array().unwrap().len(), 2);

    // The chat model has no embeddings; unknown models are 404 model_not_found.
    let wrong = client
        .post(format!("{gateway}/v1/embeddings"))
        .json(&json!({"model": chat_id, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 501);
    let missing = client
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": "no-such-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
}

/// Scale up, delete a pod and roll out a new spec while requests flow: no
/// request fails.
#[tokio::test]
async fn no_request_fails_while_replicas_scale_restart_and_roll_out() {
    let ns = TestNamespace::new("churn").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (mut im, id) = unique_test_example("chat-7b.yaml", &ns);
    im.spec.replicas = 2;
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &im).await.unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served_ok(&gateway, &id, 2).await;

    // Bounded load: 4 workers, sequential requests, until told to stop (at most 2 min).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (gateway, id, stop) = (gateway.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http();
                let (mut ok, mut failed) = (0u32, Vec::new());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && tokio::time::Instant::now() < deadline
                {
                    let body = json!({"model": id, "prompt": "x", "max_tokens": 8, "stream": true});
                    match client
                        .post(format!("{gateway}/v1/completions"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            let mut stream = r.bytes_stream();
                            let mut text = Vec::new();
                            while let Some(chunk) = stream.next().await {
                                match chunk {
                                    Ok(c) => text.extend_from_slice(&c),
                                    Err(e) => {
                                        failed.push(format!("stream cut: {e}"));
                                        break;
                                    }
                                }
                            }
                            if text.ends_with(b"data: [DONE]\n\n") {
                                ok += 1;
                            }
                        }
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(format!("request: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let pods: Api<Pod> = ns.api();
    let selector = format!("kinfer.dev/model={name}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Scale to 3 through the scale subresource (as kubectl scale does).
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_served_ok(&gateway, &id, 3).await;
    // Delete one pod: it leaves the routing table as it terminates.
    let victim = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    wait_served_ok(&gateway, &id, 3).await;
    // Roll out a new spec (engine args change → new pod template).
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"engine": {"args": ["--max-num-seqs", "128"]}}})),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = ns.api();
    wait_for("the rollout to finish", Duration::from_secs(60), || async {
        let d = deployments.get(&name).await.ok()?;
        let args = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .args
            .clone()?;
        let status = d.status?;
        (args.iter().any(|a| a == "--max-num-seqs")
            && status.updated_replicas == Some(3)
            && status.ready_replicas == Some(3)
            && status.replicas == Some(3))
        .then_some(())
    })
    .await
    .unwrap();
    wait_served_ok(&gateway, &id, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during churn: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 20, "only {total} requests completed");
}

fn unique_test_example(file: &str, ns: &TestNamespace) -> (InferenceModel, String) {
    kinfer_e2e::unique_example(file, ns).unwrap()
}

async fn wait_served_ok(gateway: &str, id: &str, replicas: u64) {
    kinfer_e2e::wait_served(gateway, id, replicas)
        .await
        .unwrap();
}
