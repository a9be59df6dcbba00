//! The Helm chart ships the CRD from `charts/kinfer/files/crds/`; it must be exactly what the
//! kinfer-crds types generate (the committed `crds/yaml/` copy is checked by kinfer-crds).

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

const CHART_CRD: &str = "charts/kinfer/files/crds/inferencemodels.kinfer.dev.yaml";

#[test]
fn chart_crd_matches_the_generated_crd() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = workspace.join(CHART_CRD);
    let in_chart = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        in_chart == kinfer_crds::crd_yaml(),
        "{CHART_CRD} is out of date with the kinfer-crds types. From the workspace root run:\n\n    \
         cargo run -p kinfer-crds --bin crdgen > {CHART_CRD}\n"
    );
}
