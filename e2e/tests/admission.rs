//! The CRD's own validation at admission: every fixture under
//! `crds/tests/fixtures/` against the real API server. Valid manifests are
//! accepted; each invalid one is rejected with its rule's message, which
//! names the field.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use kinfer_e2e::{ensure_crd, repo_root, tools_bin, TestNamespace};
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Api;

struct Fixture {
    file: String,
    expect: Option<String>,
    object: DynamicObject,
}

fn fixtures() -> Vec<Fixture> {
    let dir = repo_root().join("crds/tests/fixtures");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures folder") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(|s| s.trim().to_string());
        let mut object: DynamicObject = serde_yaml::from_str(&text).unwrap();
        object.metadata.namespace = None;
        out.push(Fixture {
            file: path.file_name().unwrap().to_string_lossy().into(),
            expect,
            object,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

fn inference_models(ns: &TestNamespace) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kinfer.dev", "v1alpha1", "InferenceModel");
    Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk(&gvk))
}

#[tokio::test]
async fn every_fixture_is_accepted_or_rejected_with_its_rules_message() {
    let ns = TestNamespace::new("admission").await.expect("namespace");
    ensure_crd(&ns.client).await.expect("CRD");
    let api = inference_models(&ns);
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 20,
        "found only {} fixtures",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for fixture in fixtures {
        let result = api.create(&PostParams::default(), &fixture.object).await;
        match (&fixture.expect, result) {
            (None, Ok(_)) => {}
            (None, Err(e)) => failures.push(format!("{}: rejected: {e}", fixture.file)),
            (Some(expect), Ok(_)) => {
                failures.push(format!("{}: accepted, expected {expect:?}", fixture.file))
            }
            (Some(expect), Err(kube::Error::Api(e))) => {
                if e.code != 422 || !e.message.contains(expect.as_str()) {
                    failures.push(format!(
                        "{}: {} {:?}, expected {expect:?}",
                        fixture.file, e.code, e.message
                    ));
                }
            }
            (Some(_), Err(e)) => failures.push(format!("{}: {e}", fixture.file)),
        }
    }
    assert!(
        failures.is_empty(),
        "admission mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn kubectl_apply_of_an_invalid_spec_prints_the_rule_message() {
    let ns = TestNamespace::new("kubectl").await.expect("namespace");
    ensure_crd(&ns.client).await.expect("CRD");
    let file = repo_root().join("crds/tests/fixtures/invalid-autoscaling-min-above-max.yaml");
    let out = std::process::Command::new(tools_bin().join("kubectl"))
        .args(["apply", "-n", &ns.name, "-f"])
        .arg(&file)
        .output()
        .expect("kubectl runs");
    assert!(
        !out.status.success(),
        "kubectl apply accepted an invalid spec"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas"),
        "kubectl said: {stderr}"
    );
}
