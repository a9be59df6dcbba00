//! The InferenceModel reference (`docs/inferencemodel.md`), generated from the CRD itself so it
//! cannot disagree with what the API server enforces: every field with its type, default,
//! bounds and CEL rules, read from the openAPIV3Schema that [`crate::crd_yaml`] also renders.
//!
//! `cargo run -p kinfer-crds --bin crddoc > docs/inferencemodel.md`; `tests/crd.rs` fails when
//! the committed file differs.

use std::fmt::Write;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::InferenceModel;

/// Path of the committed reference, relative to the workspace root.
pub const REFERENCE_PATH: &str = "docs/inferencemodel.md";

/// Command that regenerates [`REFERENCE_PATH`], run from the workspace root.
pub const REGENERATE_REFERENCE_COMMAND: &str =
    "cargo run -p kinfer-crds --bin crddoc > docs/inferencemodel.md";

/// Fields whose type is a Kubernetes API type: the reference names the type instead of
/// repeating its upstream schema (`kubectl explain` shows it in full).
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    ("spec.engine.env[]", "core/v1 EnvVar"),
    ("spec.scheduling.tolerations[]", "core/v1 Toleration"),
    ("spec.scheduling.affinity", "core/v1 Affinity"),
    (
        "spec.podTemplate.imagePullSecrets[]",
        "core/v1 LocalObjectReference",
    ),
    ("status.conditions[]", "meta/v1 Condition"),
];

/// The reference as Markdown.
pub fn reference_markdown() -> String {
    let crd = InferenceModel::crd();
    let version = &crd.spec.versions[0];
    // The CRD is built from plain data; failing to serialize it is a bug in the types.
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|validation| validation.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema"),
    )
    .expect("the schema serializes to JSON");

    let mut out = String::new();
    let names = &crd.spec.names;
    let _ = writeln!(out, "# InferenceModel reference\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the kinfer-crds types; do not edit. Regenerate: {REGENERATE_REFERENCE_COMMAND} -->\n"
    );
    let _ = writeln!(
        out,
        "`{}/{}`, kind `{}`, {} scope, short name {}, category {}. Subresources: `status`, and \
         `scale` (`spec.replicas`, `status.replicas`, selector `status.selector`), so \
         `kubectl scale`, HorizontalPodAutoscalers and KEDA work on it.\n",
        crd.spec.group,
        version.name,
        names.kind,
        crd.spec.scope.to_lowercase(),
        list_code(names.short_names.as_deref().unwrap_or_default()),
        list_code(names.categories.as_deref().unwrap_or_default()),
    );
    let _ = writeln!(out, "{}\n", text(&schema["description"]));
    let _ = writeln!(
        out,
        "The defaults are stored by the API server, so `kubectl get -o yaml` shows them. The \
         rules are checked at admission (`kubectl apply` fails with the message) and again by \
         the operator, which reports a broken one as `InvalidSpec` in the Ready condition.\n"
    );

    let _ = writeln!(out, "## `kubectl get` columns\n");
    let _ = writeln!(out, "| column | JSON path | shown | description |");
    let _ = writeln!(out, "|---|---|---|---|");
    for column in version.additional_printer_columns.iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            column.name,
            code(&column.json_path),
            if column.priority.unwrap_or(0) > 0 {
                "`-o wide`"
            } else {
                "always"
            },
            cell(column.description.as_deref().unwrap_or("")),
        );
    }

    for section in ["spec", "status"] {
        let node = &schema["properties"][section];
        let _ = writeln!(out, "\n## `{section}`\n");
        let _ = writeln!(out, "{}\n", text(&node["description"]));
        let whole: Vec<String> = node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| format!("- {}", text(&entry["message"])))
            .collect();
        if !whole.is_empty() {
            let _ = writeln!(out, "Rules across fields:\n\n{}\n", whole.join("\n"));
        }
        let _ = writeln!(out, "| field | type | default | validation | description |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        let mut rows = Vec::new();
        fields(node, section, &mut rows);
        for row in rows {
            out.push_str(&row);
        }
    }

    let _ = writeln!(out, "\n## Validation rules (CEL)\n");
    let _ = writeln!(
        out,
        "`x-kubernetes-validations` of the CRD; `self` is the field in the first column. The \
         message is what `kubectl apply` prints.\n"
    );
    let _ = writeln!(out, "| field | rule | message |");
    let _ = writeln!(out, "|---|---|---|");
    let mut rules = Vec::new();
    cel_rules(&schema, "", &mut rules);
    for (path, rule, message) in rules {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            code(&path),
            code(&rule),
            cell(&message)
        );
    }
    out
}

/// One table row per property of `node` (recursively), in schema order (alphabetical).
fn fields(node: &Value, path: &str, rows: &mut Vec<String>) {
    let Some(properties) = node["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = node["required"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in properties {
        let child_path = format!("{path}.{name}");
        let is_list = child["type"] == "array";
        let element_path = if is_list {
            format!("{child_path}[]")
        } else {
            child_path.clone()
        };
        let kubernetes_type = KUBERNETES_TYPES
            .iter()
            .find(|(path, _)| *path == element_path)
            .map(|(_, name)| *name);
        let mut validation = Vec::new();
        if required.contains(&name.as_str()) {
            validation.push("required".to_string());
        }
        validation.extend(bounds(child));
        if is_list {
            validation.extend(
                bounds(&child["items"])
                    .into_iter()
                    .map(|b| format!("items: {b}")),
            );
        }
        for entry in child["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            validation.push(format!("rule: {}", text(&entry["message"])));
        }
        let default = match &child["default"] {
            Value::Null => String::new(),
            value => code(&value.to_string()),
        };
        rows.push(format!(
            "| {} | {} | {} | {} | {} |\n",
            code(&child_path),
            type_name(child, kubernetes_type),
            default,
            cell(&validation.join("; ")),
            cell(&text(&child["description"])),
        ));
        if kubernetes_type.is_some() {
            continue;
        }
        if is_list {
            fields(&child["items"], &element_path, rows);
        } else {
            fields(child, &child_path, rows);
        }
    }
}

fn type_name(node: &Value, kubernetes_type: Option<&str>) -> String {
    if node["x-kubernetes-int-or-string"] == true {
        return "quantity (int or string)".to_string();
    }
    let base = |node: &Value| -> String {
        if let Some(name) = kubernetes_type {
            return name.to_string();
        }
        match node["type"].as_str().unwrap_or("any") {
            "object" => match &node["additionalProperties"] {
                Value::Object(values) => {
                    format!("map[string]{}", values["type"].as_str().unwrap_or("any"))
                }
                _ => "object".to_string(),
            },
            "integer" => match node["format"].as_str() {
                Some(format) => format!("integer ({format})"),
                None => "integer".to_string(),
            },
            "number" => match node["format"].as_str() {
                Some(format) => format!("number ({format})"),
                None => "number".to_string(),
            },
            other => other.to_string(),
        }
    };
    if node["type"] == "array" {
        format!("list of {}", base(&node["items"]))
    } else {
        base(node)
    }
}

/// The OpenAPI bounds of a node, in words.
fn bounds(node: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = node["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| code(&text(v))).collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    for (keyword, words) in [
        ("minimum", ">="),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
    ] {
        if let Some(number) = node[keyword].as_f64() {
            out.push(format!("{words} {}", number_text(number)));
        }
    }
    if let Some(pattern) = node["pattern"].as_str() {
        out.push(format!("matches {}", code(pattern)));
    }
    match node["x-kubernetes-list-type"].as_str() {
        Some("set") => out.push("unique items".to_string()),
        Some("map") => {
            let keys: Vec<String> = node["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|key| code(&text(key)))
                .collect();
            out.push(format!("one item per {}", keys.join(", ")));
        }
        _ => {}
    }
    out
}

fn cel_rules(node: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    for entry in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push((
            path.to_string(),
            text(&entry["rule"]),
            text(&entry["message"]),
        ));
    }
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            cel_rules(child, &child_path, out);
        }
    }
    if node["items"].is_object() {
        cel_rules(&node["items"], &format!("{path}[]"), out);
    }
}

fn number_text(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        number.to_string()
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Markdown table cells cannot hold `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn code(text: &str) -> String {
    format!("`{}`", cell(text))
}

fn list_code(items: &[String]) -> String {
    items
        .iter()
        .map(|item| code(item))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kubernetes_type_path_exists() {
        let reference = reference_markdown();
        for (path, name) in KUBERNETES_TYPES {
            let field = path.trim_end_matches("[]");
            assert!(
                reference.contains(&format!("| `{field}` | ")) && reference.contains(name),
                "{path} is not in the reference"
            );
        }
    }

    #[test]
    fn pipes_in_rules_are_escaped() {
        let reference = reference_markdown();
        assert!(reference.contains("\\|\\|"));
        for line in reference.lines().filter(|line| line.starts_with('|')) {
            let columns = line.replace("\\|", "").matches('|').count();
            assert!(columns == 5 || columns == 4 || columns == 6, "{line}");
        }
    }
}
