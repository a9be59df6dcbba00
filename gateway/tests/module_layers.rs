//! The gateway's modules form layers: no import cycle between its top-level modules (`crate::x`
//! used from `y` and `crate::y` from `x`, directly or through others). Read from the sources:
//! every `crate::<module>` outside comments and test modules is an edge.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a file under `src/` (`proxy/body.rs` → `proxy`); `None` for the crate
/// roots.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The modules a source file names as `crate::<module>`, test modules and comments left out.
fn imports(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            if let Some(list) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: each item's first segment.
                let list = list.split('}').next().unwrap_or_default();
                for item in list.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
            }
        }
    }
    found
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            if let Some(module) = module_of(path.strip_prefix(root).unwrap()) {
                out.push((module, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
}

/// A cycle through `start`, if any: depth-first search of the graph.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|seen| seen == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_string());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn no_import_cycle_between_the_gateways_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(module, _)| module.clone()).collect();
    assert!(
        modules.contains("pipeline") && modules.contains("index"),
        "{modules:?}"
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in &files {
        let edges = graph.entry(module.clone()).or_default();
        for import in imports(source) {
            if import != *module && modules.contains(&import) {
                edges.insert(import);
            }
        }
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn imports_are_read_from_code_only() {
    let source = "//! see crate::hold\nuse crate::{index::Endpoint, error};\nfn f() { crate::proxy::x(); }\n#[cfg(test)]\nmod tests { use crate::server; }\n";
    let found: Vec<String> = imports(source).into_iter().collect();
    assert_eq!(found, ["error", "index", "proxy"]);
}
