//! Print the InferenceModel reference (Markdown), generated from the CRD.
//!
//! `cargo run -p kinfer-crds --bin crddoc > docs/inferencemodel.md`

fn main() {
    print!("{}", kinfer_crds::reference::reference_markdown());
}
