//! Smoke tests of the test bed itself: GPU pods are scheduled by the real
//! scheduler onto fake GPU nodes, the pod runner serves the engine stand-in at
//! the pod IP, and a pod that cannot fit stays Pending as Unschedulable.
//!
//! Needs a cluster: `e2e/cluster.sh up` then `cargo test -p kinfer-e2e`.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kinfer_e2e::{wait_for, TestNamespace};
use kube::api::{ListParams, PostParams};
use kube::Api;

fn gpu_deployment(name: &str, gpus: u32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "engine",
                        "image": "vllm/vllm-openai:v0.11.0",
                        "command": ["vllm", "serve"],
                        "args": ["Qwen/Qwen2.5-0.5B-Instruct", "--served-model-name", "qwen-small", "--port", "8000"],
                        "ports": [{"containerPort": 8000, "name": "http"}],
                        "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}},
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                    }],
                },
            },
        },
    }))
    .expect("valid deployment")
}

async fn pods_of(api: &Api<Pod>, app: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test]
async fn four_fake_gpu_nodes_advertise_eight_gpus_each() {
    let client = kinfer_e2e::client_from(None)
        .await
        .expect("KUBECONFIG must point at a cluster");
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels("nvidia.com/gpu.present=true"))
        .await
        .unwrap();
    assert!(
        nodes.items.len() >= 4,
        "expected 4 GPU nodes, found {}",
        nodes.items.len()
    );
    for node in nodes.items {
        let status = node.status.unwrap_or_default();
        let gpus = status
            .allocatable
            .unwrap_or_default()
            .get("nvidia.com/gpu")
            .map(|q| q.0.clone());
        assert_eq!(gpus.as_deref(), Some("8"), "node {:?}", node.metadata.name);
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "node {:?} not Ready", node.metadata.name);
    }
}

#[tokio::test]
async fn gpu_pod_is_scheduled_and_its_engine_answers_at_the_pod_ip() {
    let ns = TestNamespace::new("smoke").await.expect("namespace");
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &gpu_deployment("small", 2))
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();

    let pod = wait_for(
        "the GPU pod to become Ready",
        Duration::from_secs(60),
        || async {
            pods_of(&pods, "small").await.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
        },
    )
    .await
    .unwrap();

    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("scheduled");
    assert!(node.starts_with("gpu-node-"), "scheduled onto {node}");
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");

    let body: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{ip}:8000/v1/models"))
        .send()
        .await
        .expect("the engine stand-in answers at the pod IP")
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "qwen-small");
}

#[tokio::test]
async fn pod_needing_more_gpus_than_any_node_stays_pending_unschedulable() {
    let ns = TestNamespace::new("unsched").await.expect("namespace");
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &gpu_deployment("huge", 16))
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();

    let condition = wait_for(
        "the scheduler to mark the pod Unschedulable",
        Duration::from_secs(60),
        || async {
            pods_of(&pods, "huge").await.into_iter().find_map(|p| {
                let status = p.status?;
                if status.phase.as_deref() != Some("Pending") {
                    return None;
                }
                status.conditions?.into_iter().find(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                })
            })
        },
    )
    .await
    .unwrap();
    let message = condition.message.unwrap_or_default();
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "scheduler said: {message}"
    );
}
