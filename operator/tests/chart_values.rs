//! `charts/kinfer/values.schema.json` and `values.yaml` describe the same keys: every value is
//! typed by the schema (so a typo fails `helm install`), and the schema declares no key that
//! values.yaml does not document. `helm lint` checks values.yaml against the schema; this test
//! needs no helm.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::Path;

use serde_json::Value;

fn chart_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/kinfer")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The schema node after following a local `$ref`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
            &root["definitions"][name]
        }
        None => node,
    }
}

/// Compares the keys of `values` and of the closed object `schema` below `path`.
fn compare(root: &Value, schema: &Value, values: &Value, path: &str, problems: &mut Vec<String>) {
    let schema = resolve(root, schema);
    let (Some(properties), Some(values)) = (schema["properties"].as_object(), values.as_object())
    else {
        return;
    };
    if schema["additionalProperties"] != false {
        return; // a free-form object (resources, affinity, ...): any keys
    }
    for key in values.keys() {
        if !properties.contains_key(key) {
            problems.push(format!(
                "{path}.{key} is in values.yaml but not in the schema"
            ));
        }
    }
    for (key, child) in properties {
        let child_path = format!("{path}.{key}");
        match values.get(key) {
            None if key != "global" => {
                problems.push(format!(
                    "{child_path} is in the schema but not in values.yaml"
                ));
            }
            None => {}
            Some(value) => compare(root, child, value, &child_path, problems),
        }
    }
}

#[test]
fn schema_and_values_declare_the_same_keys() {
    let schema: Value = serde_json::from_str(&chart_file("values.schema.json")).unwrap();
    let values: Value = serde_yaml::from_str(&chart_file("values.yaml")).unwrap();
    let mut problems = Vec::new();
    compare(&schema, &schema, &values, "", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn enums_match_what_the_binaries_accept() {
    let schema: Value = serde_json::from_str(&chart_file("values.schema.json")).unwrap();
    let strategies: Vec<&str> = schema["properties"]["gateway"]["properties"]["defaultStrategy"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_str().unwrap())
        .collect();
    let crd: Vec<&str> = [
        kinfer_crds::RoutingStrategy::LeastLoad,
        kinfer_crds::RoutingStrategy::RoundRobin,
        kinfer_crds::RoutingStrategy::PrefixCache,
    ]
    .iter()
    .map(|strategy| strategy.as_str())
    .collect();
    assert_eq!(strategies, crd);
    assert_eq!(
        schema["definitions"]["logFormat"]["enum"],
        serde_json::json!(["json", "text"])
    );
}
