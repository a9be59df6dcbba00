//! The built-in autoscaler against a real cluster (the local test bed: `bash e2e/cluster.sh up`),
//! gated like `tests/cluster.rs`: without `KINFER_IT_KUBECONFIG` or `KUBECONFIG` the tests print
//! a message and pass. The controller and the autoscaler run in-process on a fresh namespace;
//! engines are the test bed's vllm-sim, reached at their pod IPs on loopback.
//!
//!     KINFER_IT_KUBECONFIG=~/.cache/kinfer/cluster/kubeconfig \
//!         cargo test -p kinfer-operator --test autoscaler -- --nocapture --test-threads=1
//!
//! The scale-from-zero test also runs a real kinfer-gateway (`cargo build -p kinfer-gateway`
//! first; `KINFER_GATEWAY_BIN` overrides the path), scraped through `--gateway-metrics-url`.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kinfer_crds::{labels, InferenceModel};
use kinfer_operator::autoscaler::AutoscalerConfig;
use kinfer_operator::metrics::{DirectionLabels, Metrics};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{kubeconfig_path, test_client, wait_for, TestNamespace, TEST_MANAGER};

/// The leader's work (controller + autoscaler), in-process on one namespace.
struct Leader {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Leader {
    async fn start(client: &Client, namespace: &str, autoscaler: AutoscalerConfig) -> Self {
        let (context, metrics) = common::controller_context(client, namespace);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kinfer_operator::run_leader(
            context,
            Some(autoscaler),
            shutdown.clone(),
        ));
        Self {
            shutdown,
            task,
            metrics,
        }
    }

    fn decisions(&self, direction: &'static str) -> u64 {
        self.metrics
            .autoscaler_decisions
            .get_or_create(&DirectionLabels { direction })
            .get()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the leader stops")
            .expect("the leader task ends cleanly");
    }
}

async fn apply(ns: &TestNamespace, yaml: &str) -> InferenceModel {
    let mut model: InferenceModel = serde_yaml::from_str(yaml).unwrap();
    model.metadata.namespace = Some(ns.name.clone());
    ns.api::<InferenceModel>()
        .patch(
            &model.name_any(),
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&model),
        )
        .await
        .expect("the model is accepted")
}

async fn deployment_replicas(ns: &TestNamespace, name: &str) -> Option<i32> {
    ns.api::<Deployment>().get(name).await.ok()?.spec?.replicas
}

/// Notes of the autoscaler's events of `reason` (the controller also reports a Ready reason
/// `ScaledToZero`, with action `Reconcile`).
async fn event_notes(ns: &TestNamespace, reason: &str) -> Vec<String> {
    let events: Api<Event> = ns.api();
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some(reason))
        .filter(|event| event.action.as_deref() == Some("Autoscale"))
        .filter_map(|event| event.note)
        .collect()
}

/// `http://podIP:port` of every ready engine pod of `model`.
async fn ready_engines(ns: &TestNamespace, model: &str) -> Vec<String> {
    let pods: Api<Pod> = ns.api();
    let list = pods
        .list(&ListParams::default().labels(&labels::selector_string(model)))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|status| status.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
                })
        })
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            let port = pod
                .annotations()
                .get(labels::annotations::PORT)
                .cloned()
                .unwrap_or_else(|| "8000".into());
            Some(format!("http://{ip}:{port}"))
        })
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A streamed completion read to its end (or until the task is aborted, which cancels it).
fn stream_completion(base: &str, model: &str, max_tokens: u32) -> JoinHandle<()> {
    let url = format!("{base}/v1/completions");
    let body =
        json!({"model": model, "prompt": "hello there", "max_tokens": max_tokens, "stream": true});
    tokio::spawn(async move {
        let Ok(response) = http().post(&url).json(&body).send().await else {
            return;
        };
        let mut chunks = response.bytes_stream();
        while let Some(Ok(_)) = chunks.next().await {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_load_scales_up_in_one_step_and_down_one_step_at_a_time() {
    let Some(client) =
        test_client("engine_load_scales_up_in_one_step_and_down_one_step_at_a_time").await
    else {
        return;
    };
    let ns = TestNamespace::create(&client, "autoscale-engine").await;
    let leader = Leader::start(&client, &ns.name, AutoscalerConfig::default()).await;
    // Streams at 100 ms per token, two at a time per engine: the rest wait in its queue.
    apply(
        &ns,
        r#"
apiVersion: kinfer.dev/v1alpha1
kind: InferenceModel
metadata: {name: busy}
spec:
  model: {name: test/busy}
  resources: {gpus: 0}
  engine:
    args: ["--max-num-seqs", "2"]
    env: [{name: VLLM_SIM_ITL_MS, value: "100"}]
  replicas: 1
  autoscaling: {minReplicas: 1, maxReplicas: 6, targetRequestsPerReplica: 2, scaleDownDelaySeconds: 3}
"#,
    )
    .await;
    let models: Api<InferenceModel> = ns.api();
    let engine = wait_for(
        "a ready engine and the first autoscaling decision",
        || async {
            let model = models.get("busy").await.ok()?;
            model.status?.condition("Autoscaling")?;
            ready_engines(&ns, "busy").await.into_iter().next()
        },
    )
    .await;

    // 9 requests: 2 running + 7 waiting = load 9, target 2 -> 5 replicas
    let streams: Vec<JoinHandle<()>> = (0..9)
        .map(|_| stream_completion(&engine, "test/busy", 60))
        .collect();
    let started = Instant::now();
    wait_for("the Deployment at 5 replicas", || async {
        (deployment_replicas(&ns, "busy").await? == 5).then_some(())
    })
    .await;
    let to_five = started.elapsed();
    let ups = leader.decisions("up");
    eprintln!("MEASURE engine load 9 / target 2: Deployment 1->5 in {to_five:?}, {ups} scale-up decision(s)");
    assert_eq!(ups, 1, "one decision from 1 to 5");
    wait_for("the ScaledUp event and the status", || async {
        let notes = event_notes(&ns, "ScaledUp").await;
        let explained = notes
            .iter()
            .any(|note| note == "1→5: load 9 / target 2 per replica");
        let status = models.get("busy").await.ok()?.status?;
        let condition = status.condition("Autoscaling")?;
        (explained
            && status.desired_replicas == 5
            && condition.status == "True"
            && condition.reason == "ScaledUp")
            .then_some(())
    })
    .await;
    wait_for("5 ready replicas", || async {
        let status = models.get("busy").await.ok()?.status?;
        (status.ready_replicas == 5).then_some(())
    })
    .await;

    // The load stops: one replica less every 3 s, down to minReplicas.
    for stream in &streams {
        stream.abort();
    }
    let stopped = Instant::now();
    let mut steps: Vec<(i32, Duration)> = vec![(5, Duration::ZERO)];
    // Pods the autoscaler marks for removal (pod-deletion-cost) before each step, from a watch:
    // a marked pod is deleted within milliseconds.
    let marked = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let pods: Api<Pod> = ns.api();
    let watch = {
        let marked = marked.clone();
        let events =
            kube::runtime::watcher(pods.clone(), kube::runtime::watcher::Config::default());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(kube::runtime::watcher::Event::Apply(pod)) = event {
                    if pod
                        .annotations()
                        .contains_key(labels::annotations::POD_DELETION_COST)
                    {
                        marked.lock().unwrap().insert(pod.name_any());
                    }
                }
            }
        })
    };
    while steps.last().unwrap().0 > 1 {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "scale-down stalled: {steps:?}"
        );
        if let Some(replicas) = deployment_replicas(&ns, "busy").await {
            if replicas != steps.last().unwrap().0 {
                steps.push((replicas, stopped.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("MEASURE scale-down steps after the load stopped (replicas, time): {steps:?}");
    let counts: Vec<i32> = steps.iter().map(|(replicas, _)| *replicas).collect();
    assert_eq!(counts, [5, 4, 3, 2, 1]);
    for pair in steps.windows(2).skip(1) {
        assert!(
            pair[1].1 - pair[0].1 >= Duration::from_millis(2500),
            "steps at least the scale-down delay apart: {steps:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        deployment_replicas(&ns, "busy").await,
        Some(1),
        "never below min"
    );
    assert_eq!(leader.decisions("down"), 4);
    // Each step marked the least loaded pod, and the ReplicaSet removed the marked ones.
    let remaining: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| pod.name_any())
        .collect();
    watch.abort();
    let marked = marked.lock().unwrap().clone();
    eprintln!("MEASURE pods marked with a deletion cost: {marked:?}; remaining: {remaining:?}");
    assert!(marked.len() >= 4, "{marked:?}");
    assert!(
        remaining.iter().all(|pod| !marked.contains(pod)),
        "{marked:?} {remaining:?}"
    );
    assert_eq!(event_notes(&ns, "ScaledDown").await.len(), 4);
    leader.stop().await;
}

/// A kinfer-gateway process watching one namespace, killed on drop.
struct Gateway {
    child: tokio::process::Child,
    api: String,
    metrics: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_gateway(namespace: &str) -> Option<Gateway> {
    let binary = std::env::var_os("KINFER_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kinfer-gateway")
        });
    if !binary.exists() {
        eprintln!(
            "skipping: no kinfer-gateway binary at {} (cargo build -p kinfer-gateway)",
            binary.display()
        );
        return None;
    }
    let (port, admin) = (free_port(), free_port());
    let child = tokio::process::Command::new(binary)
        .args([
            "--discovery=kubernetes",
            &format!("--namespaces={namespace}"),
            &format!("--listen=127.0.0.1:{port}"),
            &format!("--admin-listen=127.0.0.1:{admin}"),
            "--log-filter=warn",
        ])
        .env("KUBECONFIG", kubeconfig_path().unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts");
    let gateway = Gateway {
        child,
        api: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{admin}/metrics"),
    };
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    wait_for("the gateway to be ready", || async {
        let response = http().get(&ready).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    Some(gateway)
}

/// The HTTP status of a small completion through the gateway; 0 when no answer came.
async fn complete(gateway: &str, model: &str) -> u16 {
    let body = json!({"model": model, "prompt": "hello", "max_tokens": 4});
    http()
        .post(format!("{gateway}/v1/completions"))
        .json(&body)
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wake_a_model_at_zero_and_idle_scales_it_back() {
    let Some(client) =
        test_client("held_requests_wake_a_model_at_zero_and_idle_scales_it_back").await
    else {
        return;
    };
    let ns = TestNamespace::create(&client, "autoscale-zero").await;
    let Some(gateway) = start_gateway(&ns.name).await else {
        return;
    };
    let leader = Leader::start(
        &client,
        &ns.name,
        AutoscalerConfig {
            gateway_metrics_urls: vec![gateway.metrics.clone()],
            ..AutoscalerConfig::default()
        },
    )
    .await;
    apply(
        &ns,
        r#"
apiVersion: kinfer.dev/v1alpha1
kind: InferenceModel
metadata: {name: sleepy}
spec:
  model: {name: test/sleepy}
  resources: {gpus: 0}
  replicas: 0
  autoscaling: {minReplicas: 0, maxReplicas: 8, targetRequestsPerReplica: 2, scaleDownDelaySeconds: 2, idleSecondsBeforeScaleToZero: 4}
"#,
    )
    .await;
    let models: Api<InferenceModel> = ns.api();
    wait_for("the model at zero, known to the gateway", || async {
        let status = models.get("sleepy").await.ok()?.status?;
        let ready = status.condition("Ready")?;
        let at_zero = ready.reason == "ScaledToZero" && status.condition("Autoscaling").is_some();
        let known = http()
            .get(format!("{}/v1/models/test/sleepy", gateway.api))
            .send()
            .await
            .ok()?
            .status()
            .is_success();
        (at_zero && known && deployment_replicas(&ns, "sleepy").await? == 0).then_some(())
    })
    .await;

    // One request held by the gateway -> a replica requested -> the request answered.
    let started = Instant::now();
    let request = {
        let api = gateway.api.clone();
        tokio::spawn(async move { complete(&api, "test/sleepy").await })
    };
    let requested = wait_for("the Deployment at 1 replica", || async {
        (deployment_replicas(&ns, "sleepy").await? >= 1).then(|| started.elapsed())
    })
    .await;
    let code = request.await.unwrap();
    let answered = started.elapsed();
    assert_eq!(code, 200);
    eprintln!(
        "MEASURE from zero: first held request -> Deployment replicas 0->1 in {requested:?}; -> answered in {answered:?}"
    );
    assert!(requested < Duration::from_secs(2), "{requested:?}");
    let notes = event_notes(&ns, "ScaledUp").await;
    assert!(
        notes
            .iter()
            .any(|note| note
                .starts_with("0→1: load 1 / target 2 per replica, 1 held by the gateway")),
        "{notes:?}"
    );

    // Idle for 4 s -> back to zero.
    let idle_from = Instant::now();
    wait_for("the model back at zero", || async {
        (deployment_replicas(&ns, "sleepy").await? == 0).then_some(())
    })
    .await;
    eprintln!(
        "MEASURE idle 4 s -> scaled to zero after {:?}",
        idle_from.elapsed()
    );
    // The removed replica drains (preStop, then SIGTERM); the step load starts once the
    // gateway has dropped it, so that every request of the burst is held: a clean step from 0.
    wait_for("the gateway to see no replica", || async {
        let model: serde_json::Value = http()
            .get(format!("{}/v1/models/test/sleepy", gateway.api))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (model["ready_replicas"] == 0).then_some(())
    })
    .await;
    assert_eq!(event_notes(&ns, "ScaledToZero").await.len(), 1);

    // A step load of 16 held requests, target 2 -> 8 replicas in one decision.
    let ups_before = leader.decisions("up");
    let started = Instant::now();
    let burst: Vec<JoinHandle<u16>> = (0..16)
        .map(|_| {
            let api = gateway.api.clone();
            tokio::spawn(async move { complete(&api, "test/sleepy").await })
        })
        .collect();
    let to_eight = wait_for("the Deployment at 8 replicas", || async {
        (deployment_replicas(&ns, "sleepy").await? == 8).then(|| started.elapsed())
    })
    .await;
    let decisions = leader.decisions("up") - ups_before;
    let mut codes = Vec::new();
    for request in burst {
        codes.push(request.await.unwrap());
    }
    eprintln!(
        "MEASURE step load 16 held / target 2 from zero: Deployment 0->8 in {to_eight:?} with {decisions} scale-up decision(s); answered after {:?}: {codes:?}",
        started.elapsed()
    );
    assert_eq!(decisions, 1);
    assert!(codes.iter().all(|code| *code == 200), "{codes:?}");
    drop(gateway);
    leader.stop().await;
}
