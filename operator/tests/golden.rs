//! Snapshot tests of the builders: every InferenceModel in `operator/tests/fixtures/` and in
//! `examples/` is rendered to its children (Deployment, Service, cache claim, PodDisruptionBudget) and compared with
//! `operator/tests/golden/<source>-<file>`. After an intended change, regenerate with
//!
//!     UPDATE_GOLDEN=1 cargo test -p kinfer-operator --test golden
//!
//! and review the diff of the golden files like code.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kinfer_crds::InferenceModel;
use kinfer_operator::autoscaler::desired_replicas;
use kinfer_operator::controller::build::{build, BuildConfig};

fn operator_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    files.sort();
    files
}

/// The children of the model in `path`, as a multi-document YAML string.
fn render(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut model: InferenceModel = serde_yaml::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not an InferenceModel: {error}", path.display()));
    // What the API server would have set.
    model
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    model.metadata.uid = Some("6f1c2a4e-0000-4000-8000-000000000001".into());
    model.metadata.generation = Some(1);
    let replicas = desired_replicas(&model.spec, None, None);
    let children = build(&model, replicas, &BuildConfig::default())
        .unwrap_or_else(|error| panic!("cannot build {}: {error}", path.display()));
    let mut documents = vec![
        serde_yaml::to_string(&children.deployment).unwrap(),
        serde_yaml::to_string(&children.service).unwrap(),
    ];
    if let Some(claim) = &children.cache_claim {
        documents.push(serde_yaml::to_string(claim).unwrap());
    }
    documents.push(serde_yaml::to_string(&children.disruption_budget).unwrap());
    format!(
        "# Generated from {} by operator/tests/golden.rs; do not edit.\n# Regenerate: UPDATE_GOLDEN=1 cargo test -p kinfer-operator --test golden\n---\n{}",
        path.strip_prefix(operator_dir().parent().unwrap()).unwrap_or(path).display(),
        documents.join("---\n")
    )
}

#[test]
fn children_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|value| value == "1");
    let golden_dir = operator_dir().join("tests/golden");
    let sources = [
        ("fixture", operator_dir().join("tests/fixtures")),
        ("example", operator_dir().join("../examples")),
    ];
    let mut mismatches = Vec::new();
    let mut expected_files = Vec::new();
    for (kind, directory) in sources {
        for path in yaml_files(&directory) {
            let file_name = format!("{kind}-{}", path.file_name().unwrap().to_string_lossy());
            let golden = golden_dir.join(&file_name);
            expected_files.push(file_name);
            let rendered = render(&path);
            if update {
                std::fs::write(&golden, &rendered).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&golden).unwrap_or_default();
            if committed != rendered {
                let line = committed
                    .lines()
                    .zip(rendered.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()))
                    + 1;
                mismatches.push(format!(
                    "{} differs from what {} renders (first difference at line {line})",
                    golden.display(),
                    path.display()
                ));
            }
        }
    }
    // A golden file whose source was removed is stale.
    for path in yaml_files(&golden_dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !expected_files.contains(&name) {
            if update {
                std::fs::remove_file(&path).unwrap();
            } else {
                mismatches.push(format!("{} has no source any more", path.display()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n\nIf the change is intended, regenerate with\n    UPDATE_GOLDEN=1 cargo test -p kinfer-operator --test golden\nand review the diff.",
        mismatches.join("\n")
    );
}
