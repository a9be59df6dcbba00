//! The generated CRD: drift against the committed YAML, names and subresources, the CEL rules,
//! and the admission fixtures evaluated client-side with kube-cel.

use std::path::{Path, PathBuf};

use kinfer_crds::{crd_yaml, rules, CelRule, InferenceModel, REGENERATE_COMMAND};
use kube::CustomResourceExt;
use serde_json::Value;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The openAPIV3Schema of the only version, as JSON.
fn root_schema() -> Value {
    let crd = InferenceModel::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|validation| validation.open_api_v3_schema.as_ref())
        .expect("the CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("the schema serializes to JSON")
}

/// The schema node at a rule's location, `[]` meaning the list's items.
fn schema_at<'a>(root: &'a Value, location: &str) -> &'a Value {
    location.split('.').fold(root, |node, segment| {
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        let node = &node["properties"][name];
        assert!(!node.is_null(), "no schema at {location} ({name})");
        if items {
            &node["items"]
        } else {
            node
        }
    })
}

#[test]
fn committed_crd_matches_the_types() {
    let path = crate_dir().join("yaml/inferencemodels.kinfer.dev.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd_yaml();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(committed, generated)| committed != generated)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is out of date with the Rust types (first difference at line {}).\n\
             Regenerate it from the workspace root with:\n\n    {REGENERATE_COMMAND}\n",
            path.display(),
            first_difference + 1,
        );
    }
}

#[test]
fn committed_reference_matches_the_crd() {
    use kinfer_crds::reference::{
        reference_markdown, REFERENCE_PATH, REGENERATE_REFERENCE_COMMAND,
    };
    let path = crate_dir().join("..").join(REFERENCE_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = reference_markdown();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(committed, generated)| committed != generated)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{REFERENCE_PATH} is out of date with the CRD (first difference at line {}).\n\
             Regenerate it from the workspace root with:\n\n    {REGENERATE_REFERENCE_COMMAND}\n",
            first_difference + 1,
        );
    }
}

#[test]
fn names_scope_and_subresources() {
    let crd = InferenceModel::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("inferencemodels.kinfer.dev")
    );
    assert_eq!(crd.spec.group, "kinfer.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "InferenceModel");
    assert_eq!(crd.spec.names.plural, "inferencemodels");
    assert_eq!(crd.spec.names.short_names, Some(vec!["im".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["kinfer".to_string()]));

    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    let subresources = version.subresources.as_ref().unwrap();
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn scale_paths_exist_in_the_schema() {
    let root = root_schema();
    assert_eq!(schema_at(&root, "spec.replicas")["type"], "integer");
    // Present on every object, so `kubectl scale` and HPAs can read it.
    assert_eq!(schema_at(&root, "spec.replicas")["default"], 1);
    assert_eq!(schema_at(&root, "status.replicas")["type"], "integer");
    assert_eq!(schema_at(&root, "status.selector")["type"], "string");
}

#[test]
fn printer_columns() {
    let crd = InferenceModel::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap();
    let summary: Vec<(&str, &str, i32)> = columns
        .iter()
        .map(|column| {
            (
                column.name.as_str(),
                column.json_path.as_str(),
                column.priority.unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Model", ".spec.model.name", 0),
            ("GPUs", ".spec.resources.gpus", 0),
            ("Ready", ".status.readyReplicas", 0),
            ("Desired", ".status.desiredReplicas", 0),
            (
                "Status",
                ".status.conditions[?(@.type==\"Ready\")].reason",
                0
            ),
            ("Age", ".metadata.creationTimestamp", 0),
            (
                "Message",
                ".status.conditions[?(@.type==\"Ready\")].message",
                1
            ),
        ]
    );
}

#[test]
fn every_rule_is_in_the_schema_with_its_message() {
    let root = root_schema();
    for rule in rules::ALL {
        let node = schema_at(&root, rule.location);
        let entries = node["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("no x-kubernetes-validations at {}", rule.location));
        let entry = entries
            .iter()
            .find(|entry| entry["rule"] == rule.rule)
            .unwrap_or_else(|| panic!("rule {:?} missing at {}", rule.rule, rule.location));
        assert_eq!(entry["message"], rule.message);
        assert_eq!(entry["fieldPath"].as_str(), rule.field_path);
        assert!(entry.get("reason").is_none(), "a reason hides the message");
    }
    let total = count_rules(&root);
    assert_eq!(
        total,
        rules::ALL.len(),
        "a rule in the schema is not in rules::ALL"
    );
}

fn count_rules(node: &Value) -> usize {
    let own = node["x-kubernetes-validations"]
        .as_array()
        .map_or(0, Vec::len);
    let children: usize = match node {
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| key.as_str() != "x-kubernetes-validations")
            .map(|(_, child)| count_rules(child))
            .sum(),
        Value::Array(items) => items.iter().map(count_rules).sum(),
        _ => 0,
    };
    own + children
}

#[test]
fn schema_bounds_match_the_rust_constants() {
    use kinfer_crds::spec::{MAX_ADAPTERS, MAX_NAME_LENGTH, MAX_SOURCE_LENGTH};
    let root = root_schema();
    let bound = |location: &str, keyword: &str| {
        schema_at(&root, location)[keyword]
            .as_u64()
            .unwrap_or_else(|| panic!("no {keyword} at {location}")) as usize
    };
    assert_eq!(bound("spec.model.name", "maxLength"), MAX_NAME_LENGTH);
    assert_eq!(bound("spec.model.source", "maxLength"), MAX_SOURCE_LENGTH);
    assert_eq!(bound("spec.adapters", "maxItems"), MAX_ADAPTERS);
    assert_eq!(bound("spec.adapters[].name", "maxLength"), MAX_NAME_LENGTH);
    assert_eq!(
        bound("spec.adapters[].source", "maxLength"),
        MAX_SOURCE_LENGTH
    );
}

#[test]
fn every_message_names_its_field() {
    for rule in rules::ALL {
        assert!(
            rule.message.starts_with("spec."),
            "message of {} does not name a field: {}",
            rule.location,
            rule.message
        );
    }
}

#[test]
fn rules_compile_and_stay_within_the_cost_budget() {
    let root = root_schema();
    let compiled = kube_cel::compile_schema(&root);
    assert_no_compilation_errors(&compiled, "");
    for rule in rules::ALL {
        let node = kube_cel::compile_schema(schema_at(&root, rule.location));
        // Only the cost estimate: kube-cel's scope check mistakes comprehension variables
        // (`a` in `self.all(a, ...)`) for unknown top-level variables.
        let warnings = kube_cel::estimate_rule_cost(rule.rule, &node);
        assert!(
            warnings.is_empty(),
            "{}: {:?}",
            rule.location,
            warnings
                .iter()
                .map(|warning| &warning.message)
                .collect::<Vec<_>>()
        );
    }
}

fn assert_no_compilation_errors(node: &kube_cel::CompiledSchema, path: &str) {
    let errors = node.compilation_errors();
    assert!(errors.is_empty(), "{path}: {errors:?}");
    for (name, child) in &node.properties {
        assert_no_compilation_errors(child, &format!("{path}.{name}"));
    }
    if let Some(items) = &node.items {
        assert_no_compilation_errors(items, &format!("{path}[]"));
    }
}

/// A fixture: the manifest and, for invalid ones, the expected message substring.
struct Fixture {
    name: String,
    manifest: Value,
    expect: Option<String>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = crate_dir().join("tests/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures is readable")
        .map(|entry| entry.expect("tests/fixtures is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("a directory entry has a name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("fixtures are readable");
            let first_line = text.lines().next().unwrap_or_default();
            let expect = first_line
                .strip_prefix("# expect: ")
                .map(|expect| expect.trim().to_string());
            if name.starts_with("invalid-") {
                assert!(
                    expect.is_some(),
                    "{name}: first line must be `# expect: ...`"
                );
            } else {
                assert!(
                    name.starts_with("valid-"),
                    "{name}: name must start with valid- or invalid-"
                );
                assert!(expect.is_none(), "{name}: a valid fixture expects no error");
            }
            let manifest = serde_yaml::from_str(&text)
                .unwrap_or_else(|error| panic!("{name} is not YAML: {error}"));
            Fixture {
                name,
                manifest,
                expect,
            }
        })
        .collect()
}

/// The CEL errors the API server would report, as kube-cel evaluates them after defaulting.
fn cel_errors(manifest: &Value) -> Vec<String> {
    match kube_cel::Validator::new().validate(&root_schema(), manifest, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn fixtures_against_the_cel_rules() {
    for fixture in fixtures() {
        let errors = cel_errors(&fixture.manifest);
        match &fixture.expect {
            None => assert!(errors.is_empty(), "{}: {errors:?}", fixture.name),
            Some(expect) => {
                assert_eq!(
                    errors.len(),
                    1,
                    "{}: expected one error, got {errors:?}",
                    fixture.name
                );
                assert!(
                    errors[0].contains(expect.as_str()),
                    "{}: {:?} does not contain {expect:?}",
                    fixture.name,
                    errors[0]
                );
            }
        }
    }
}

#[test]
fn fixtures_against_rust_validation() {
    for fixture in fixtures() {
        let model: InferenceModel = serde_json::from_value(fixture.manifest.clone())
            .unwrap_or_else(|error| panic!("{}: {error}", fixture.name));
        let errors = model.spec.validation_errors();
        match &fixture.expect {
            None => assert!(errors.is_empty(), "{}: {errors:?}", fixture.name),
            Some(expect) => {
                assert_eq!(
                    errors.len(),
                    1,
                    "{}: expected one error, got {errors:?}",
                    fixture.name
                );
                let message = errors[0].to_string();
                assert!(
                    message.starts_with(expect.as_str()),
                    "{}: {message:?} does not start with {expect:?}",
                    fixture.name
                );
                assert_eq!(
                    errors[0].rule().map(|rule| rule.message),
                    Some(expect_rule(expect).message)
                );
            }
        }
    }
}

fn expect_rule(expect: &str) -> &'static CelRule {
    rules::ALL
        .iter()
        .copied()
        .find(|rule| rule.message.starts_with(expect))
        .unwrap_or_else(|| panic!("no rule has a message starting with {expect:?}"))
}

#[test]
fn fixtures_cover_every_rule() {
    let fixtures = fixtures();
    for rule in rules::ALL {
        assert!(
            fixtures
                .iter()
                .filter_map(|fixture| fixture.expect.as_deref())
                .any(|expect| rule.message.starts_with(expect)),
            "no invalid fixture for {:?}",
            rule.message
        );
    }
}

#[test]
fn defaults_fill_a_minimal_manifest_like_serde_does() {
    // What the API server stores for a minimal manifest (schema defaults applied) must
    // deserialize to the same spec as the minimal manifest itself (serde defaults).
    let minimal = fixtures()
        .into_iter()
        .find(|fixture| fixture.name == "valid-minimal.yaml")
        .unwrap()
        .manifest;
    let defaulted = kube_cel::apply_defaults(&root_schema(), &minimal);
    assert_eq!(defaulted["spec"]["resources"]["gpus"], 1);
    assert_eq!(defaulted["spec"]["engine"]["port"], 8000);
    assert_eq!(defaulted["spec"]["parallelism"]["pipeline"], 1);
    assert_eq!(defaulted["spec"]["features"][0], "TextGeneration");
    let from_server: InferenceModel = serde_json::from_value(defaulted).unwrap();
    let from_serde: InferenceModel = serde_json::from_value(minimal).unwrap();
    assert_eq!(from_server, from_serde);
}
