//! Print the InferenceModel CRD as YAML.
//!
//! `cargo run -p kinfer-crds --bin crdgen > crds/yaml/inferencemodels.kinfer.dev.yaml`

fn main() {
    print!("{}", kinfer_crds::crd_yaml());
}
