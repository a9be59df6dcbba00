//! Engine pods run under Pod Security "restricted": a model in a namespace
//! that enforces it becomes Ready (the API server's PodSecurity admission
//! would refuse the ReplicaSet's pods otherwise).
//!
//! Needs a cluster with kinfer installed (`e2e/install-kinfer.sh`).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kinfer_crds::InferenceModel;
use kinfer_e2e::{wait_model_ready, TestNamespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn engine_pods_are_admitted_under_pod_security_restricted() {
    let ns = TestNamespace::new("restricted").await.unwrap();
    Api::<Namespace>::all(ns.client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
    let api: Api<InferenceModel> = ns.api();
    for file in ["chat-7b.yaml", "embedding.yaml"] {
        let (im, _) = kinfer_e2e::unique_example(file, &ns).unwrap();
        api.create(&PostParams::default(), &im).await.unwrap();
        let name = im.metadata.name.clone().unwrap();
        wait_model_ready(&api, &name, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{file} under restricted: {e}"));
    }
}
