//! The real-engine lane: InferenceModels whose pods run real `vllm serve`
//! (CPU build, generated models) through the chart-installed gateway, with the
//! operator's exact arguments (the pod runner swaps in only the local model
//! paths and one-process parallelism: `kinfer_e2e::podrunner::plan::vllm_args`).
//!
//! Runs only with `KINFER_REAL_VLLM=1` (`make test` sets it in its real-engine
//! step) on a cluster whose pod runner has real vLLM (`e2e/tools/install.sh
//! vllm`); a pod picks it with the annotation `kinfer.dev/test-engine: vllm`.
//! A real engine takes 60-120 s to start here and ~4 GB of memory, so the
//! tests run one at a time (`--test-threads 1`) and start few engines at once.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kinfer_crds::InferenceModel;
use kinfer_e2e::{gateway_url, http, wait_for, wait_model_ready, TestNamespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde::Deserialize as _;
use serde_json::{json, Value};

/// Start-up budget of one real engine on this machine (two busy cores).
const START: Duration = Duration::from_secs(600);

fn enabled() -> bool {
    if std::env::var("KINFER_REAL_VLLM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set KINFER_REAL_VLLM=1 on a test bed with real vLLM installed");
    false
}

/// An example as a unique model in `ns`, its pods on real vLLM.
fn real(file: &str, ns: &TestNamespace) -> (InferenceModel, String) {
    let (im, id) = kinfer_e2e::unique_example(file, ns).unwrap();
    on_real_vllm(im, id)
}

fn on_real_vllm(mut im: InferenceModel, id: String) -> (InferenceModel, String) {
    im.spec
        .pod_template
        .annotations
        .insert("kinfer.dev/test-engine".into(), "vllm".into());
    (im, id)
}

async fn create_ready(api: &Api<InferenceModel>, im: &InferenceModel) -> String {
    let name = im.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), im).await.unwrap();
    wait_model_ready(api, &name, START).await.unwrap();
    name
}

async fn wait_served(gateway: &str, id: &str, replicas: u64) {
    kinfer_e2e::wait_served_within(gateway, id, replicas, START)
        .await
        .unwrap();
}

fn chat(model: &str, content: &str, max_tokens: u64) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

async fn post(gateway: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{gateway}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A stream through the gateway, read to its end: the payloads, and whether
/// the body ended cleanly.
async fn stream(
    gateway: &str,
    body: &Value,
    budget: Duration,
) -> (Vec<String>, Result<(), String>) {
    let response = http()
        .post(format!("{gateway}/v1/chat/completions"))
        .timeout(budget)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    let end = loop {
        match bytes.next().await {
            None => break Ok(()),
            Some(Ok(chunk)) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Some(Err(error)) => break Err(error.to_string()),
        }
    };
    let payloads = text
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| f.strip_prefix("data: ").unwrap_or(f).to_string())
        .collect();
    (payloads, end)
}

/// The engine pods' `/metrics`, scraped at their pod IPs.
async fn engine_metrics(ns: &TestNamespace, name: &str) -> Vec<String> {
    let pods: Api<Pod> = ns.api();
    let list = pods
        .list(&ListParams::default().labels(&format!("kinfer.dev/model={name}")))
        .await
        .unwrap();
    let mut out = Vec::new();
    for pod in list.items {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        if let Ok(response) = http().get(format!("http://{ip}:8000/metrics")).send().await {
            out.push(response.text().await.unwrap_or_default());
        }
    }
    out
}

/// `kinfer_gateway_engine_scrape_failures_total` over the gateway's pods
/// (their admin port, 9090 in the chart).
async fn gateway_scrape_failures(ns: &TestNamespace) -> f64 {
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &kinfer_e2e::release_namespace());
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
        .await
        .unwrap();
    let mut texts = Vec::new();
    for pod in list.items {
        let ip = pod.status.and_then(|s| s.pod_ip).unwrap();
        let text = http()
            .get(format!("http://{ip}:9090/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        texts.push(text);
    }
    assert!(!texts.is_empty(), "no gateway pods");
    sample_sum(&texts, "kinfer_gateway_engine_scrape_failures_total")
}

/// The values of every sample called `name` in `texts`, added up.
fn sample_sum(texts: &[String], name: &str) -> f64 {
    texts
        .iter()
        .flat_map(|text| kinfer_crds::metrics_text::samples(text).flatten())
        .filter(|sample| sample.name == name)
        .map(|sample| sample.value)
        .sum()
}

/// Chat, streaming with usage, completions, embeddings, a LoRA adapter as a
/// model id, `/v1/models`, errors, and prefix-cache hits counted by the engine.
#[tokio::test]
async fn openai_api_through_the_gateway_on_real_vllm() {
    if !enabled() {
        return;
    }
    let ns = TestNamespace::new("vllm-api").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (chat_model, chat_id) = real("lora-adapters.yaml", &ns);
    let (embed_model, embed_id) = real("embedding.yaml", &ns);
    api.create(&PostParams::default(), &embed_model)
        .await
        .unwrap();
    let chat_name = create_ready(&api, &chat_model).await;
    wait_model_ready(&api, embed_model.metadata.name.as_deref().unwrap(), START)
        .await
        .unwrap();
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served(&gateway, &chat_id, 1).await;
    wait_served(&gateway, &embed_id, 1).await;
    let scrape_failures = gateway_scrape_failures(&ns).await;

    // /v1/models: the model, its adapters and the embedding model.
    let models: Value = http()
        .get(format!("{gateway}/v1/models"))
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
    let adapter = chat_model.spec.adapters[0].name.clone();
    let adapter_id = ids
        .iter()
        .find(|id| id.ends_with(adapter.as_str()))
        .map(|id| id.to_string())
        .unwrap_or_else(|| panic!("adapter {adapter} missing from {models}"));
    assert!(
        ids.contains(&chat_id.as_str()) && ids.contains(&embed_id.as_str()),
        "{models}"
    );

    // Chat, served by vLLM under the manifest's model id.
    let (status, body) = post(
        &gateway,
        "/v1/chat/completions",
        &chat(&chat_id, "hello", 4),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], chat_id.as_str());
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert!(
        body["system_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("vllm-")),
        "{body}"
    );

    // The LoRA adapter as a model id.
    let (status, body) = post(
        &gateway,
        "/v1/chat/completions",
        &chat(&adapter_id, "hello", 2),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], adapter_id.as_str());

    // Streaming with the usage chunk.
    let mut request = chat(&chat_id, "hello", 5);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (payloads, end) = stream(&gateway, &request, Duration::from_secs(60)).await;
    end.unwrap();
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5, "{usage}");

    // Completions.
    let (status, body) = post(
        &gateway,
        "/v1/completions",
        &json!({"model": chat_id, "prompt": "def f(", "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");

    // Embeddings from the pooling runner.
    let (status, body) = post(
        &gateway,
        "/v1/embeddings",
        &json!({"model": embed_id, "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    // Errors: the gateway's own (unknown model) and vLLM's, relayed.
    let (status, body) = post(&gateway, "/v1/chat/completions", &chat("nope/nope", "x", 2)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = post(
        &gateway,
        "/v1/chat/completions",
        &chat(&chat_id, "x", 1_000_000),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_tokens", "{body}");

    // Prefix caching, counted by the engine itself.
    let before = sample_sum(
        &engine_metrics(&ns, &chat_name).await,
        "vllm:prefix_cache_hits_total",
    );
    let prompt = "def handler(request, response):\n    return response\n".repeat(40);
    for _ in 0..2 {
        let (status, body) = post(
            &gateway,
            "/v1/chat/completions",
            &chat(&chat_id, &prompt, 1),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let after = sample_sum(
        &engine_metrics(&ns, &chat_name).await,
        "vllm:prefix_cache_hits_total",
    );
    assert!(
        after >= before + 256.0,
        "prefix cache hits {before} -> {after}"
    );

    // The OpenAI Python SDK decodes all of it, errors included (the SDK suite's venv).
    let python = kinfer_e2e::cache_dir().join("venv-sdk/bin/python");
    let script = kinfer_e2e::repo_root().join("e2e/tests/sdk/real_vllm_sdk.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .args([
            format!("{gateway}/v1"),
            kinfer_e2e::api_key(),
            chat_id.clone(),
            adapter_id.clone(),
            embed_id.clone(),
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run gateway/tests/openai_sdk/run.sh once)",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "SDK against real vLLM:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The gateway scraped the real engines' /metrics all along without a failure.
    assert_eq!(gateway_scrape_failures(&ns).await, scrape_failures);
}

/// The autoscaler reads real vLLM's load and adds a replica; then, with
/// streams open on both replicas, the model is scaled back to one: every
/// stream finishes with `[DONE]` (the engine drains with --shutdown-timeout),
/// none is cut or left hanging.
#[tokio::test]
async fn autoscaling_on_real_load_and_scale_down_under_streaming() {
    if !enabled() {
        return;
    }
    let ns = TestNamespace::new("vllm-scale").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let (mut im, id) = real("chat-7b.yaml", &ns);
    im.spec.replicas = 1;
    im.spec.autoscaling = Some(
        serde_json::from_value(json!({
            "mode": "Builtin", "minReplicas": 1, "maxReplicas": 2,
            "targetRequestsPerReplica": 2, "scaleDownDelaySeconds": 600,
            "idleSecondsBeforeScaleToZero": 900
        }))
        .unwrap(),
    );
    let name = create_ready(&api, &im).await;
    let gateway = gateway_url(&ns.client).await.unwrap();
    wait_served(&gateway, &id, 1).await;
    let deployments: Api<Deployment> = ns.api();

    // Load: six long streams on one replica; the autoscaler scrapes
    // vllm:num_requests_running from the engine and asks for a second.
    let mut long = chat(&id, "hello", 1500);
    long["stream"] = json!(true);
    long["ignore_eos"] = json!(true);
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (gateway, long) = (gateway.clone(), long.clone());
            tokio::spawn(async move { stream(&gateway, &long, Duration::from_secs(300)).await })
        })
        .collect();
    wait_for(
        "the autoscaler to ask for 2 replicas",
        Duration::from_secs(120),
        || async {
            let d = deployments.get(&name).await.ok()?;
            (d.spec?.replicas? == 2).then_some(())
        },
    )
    .await
    .unwrap();
    for task in load {
        let (payloads, end) = task.await.unwrap();
        end.unwrap();
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    }
    wait_served(&gateway, &id, 2).await;

    // Streams on both replicas, then back to one replica.
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let (gateway, long) = (gateway.clone(), long.clone());
            tokio::spawn(async move { stream(&gateway, &long, Duration::from_secs(300)).await })
        })
        .collect();
    // Up to a minute for the streams to reach both engines.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut metrics = engine_metrics(&ns, &name).await;
    while metrics
        .iter()
        .filter(|t| sample_sum(std::slice::from_ref(t), "vllm:num_requests_running") > 0.0)
        .count()
        < 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        metrics = engine_metrics(&ns, &name).await;
    }
    assert_eq!(metrics.len(), 2, "two engines");
    let started = Instant::now();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"maxReplicas": 1}}})),
    )
    .await
    .unwrap();
    for task in streams {
        let (payloads, end) = task.await.unwrap();
        assert!(end.is_ok(), "stream cut: {end:?}");
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "every stream finishes on a draining engine: {:?}",
            payloads.iter().rev().take(2).collect::<Vec<_>>()
        );
    }
    wait_served(&gateway, &id, 1).await;
    eprintln!(
        "scale-down with 4 open streams: all finished in {:?}",
        started.elapsed()
    );
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

/// The InferenceModel of an example file (the first such document of a
/// multi-document file), made unique to `ns` as [`kinfer_e2e::unique_example`]
/// does, on real vLLM.
fn example_model(file: &str, ns: &TestNamespace) -> (InferenceModel, String) {
    let path = kinfer_e2e::repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let im: InferenceModel = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .find(|doc| doc["kind"] == "InferenceModel")
        .map(|doc| serde_yaml::from_value(doc).unwrap())
        .unwrap_or_else(|| panic!("{file}: no InferenceModel"));
    // Named after the resource: two examples may serve the same model.
    let id = format!("{}/{}", ns.name, im.metadata.name.clone().unwrap());
    let (im, id) = kinfer_e2e::serve_as(im, id);
    on_real_vllm(im, id)
}

/// Every example starts on real vLLM with the operator's exact arguments and
/// answers a request through the gateway, two at a time.
#[tokio::test]
async fn every_example_starts_on_real_vllm() {
    if !enabled() {
        return;
    }
    let ns = TestNamespace::new("vllm-examples").await.unwrap();
    let api: Api<InferenceModel> = ns.api();
    let gateway = gateway_url(&ns.client).await.unwrap();
    let mut files: Vec<String> = std::fs::read_dir(kinfer_e2e::repo_root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    // The InferenceModels beside an HPA or a KEDA ScaledObject in
    // examples/external-autoscaling/ too (multi-document files).
    let external = kinfer_e2e::repo_root().join("examples/external-autoscaling");
    for entry in std::fs::read_dir(&external).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") {
            files.push(format!("external-autoscaling/{name}"));
        }
    }
    files.sort();
    for pair in files.chunks(2) {
        let mut started = Vec::new();
        for file in pair {
            let (im, id) = example_model(file, &ns);
            api.create(&PostParams::default(), &im)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            started.push((file.clone(), im, id));
        }
        for (file, im, id) in &started {
            let name = im.metadata.name.clone().unwrap();
            let began = Instant::now();
            wait_model_ready(&api, &name, START)
                .await
                .unwrap_or_else(|e| panic!("{file} on real vLLM: {e}"));
            wait_served(&gateway, id, 1).await;
            let embeds = im
                .spec
                .features
                .iter()
                .any(|f| format!("{f:?}").contains("Embedding"));
            let (status, body) = if embeds {
                post(
                    &gateway,
                    "/v1/embeddings",
                    &json!({"model": id, "input": "x"}),
                )
                .await
            } else {
                post(&gateway, "/v1/chat/completions", &chat(id, "hello", 2)).await
            };
            assert_eq!(status, 200, "{file}: {body}");
            eprintln!("{file}: ready on real vLLM in {:?}", began.elapsed());
        }
        for (_, im, _) in &started {
            api.delete(
                im.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await
            .unwrap();
        }
        // The next pair starts once these engines are gone (memory).
        let pods: Api<Pod> = ns.api();
        wait_for("the engines to stop", Duration::from_secs(300), || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await
        .unwrap();
    }
}
