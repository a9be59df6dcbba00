//! The chart's Grafana dashboard (`charts/kinfer/dashboards/kinfer.json`) is valid JSON and every
//! metric its PromQL reads is one that kinfer or vLLM exports, with the right suffix for its
//! type (`_total` for counters, `_bucket`/`_sum`/`_count` for histograms):
//!
//! - the operator's: its real exposition (`Metrics::new().encode()`);
//! - the gateway's: the names registered in `gateway/src/metrics.rs` (this crate does not
//!   depend on the gateway; a name given as a constant is looked up in
//!   `crds/src/metric_names.rs`), typed by the declaration of the registered value;
//! - vLLM's: the names the engine stand-in `e2e/vllm-sim/src/metrics.rs` renders, which the
//!   e2e suite checks against what the operator and the gateway parse.
//!
//! A renamed metric fails here instead of leaving an empty panel.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kinfer_crds::metrics_text::Line;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("charts/kinfer/dashboards/kinfer.json"))
        .expect("dashboards/kinfer.json is not valid JSON")
}

/// Every series name a metric of `kind` called `base` exposes.
fn series_names(base: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Gauge => vec![base.to_string()],
        Kind::Counter => vec![format!("{base}_total")],
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{base}{suffix}"))
            .collect(),
    }
}

fn kind_of(word: &str) -> Option<Kind> {
    match word.to_ascii_lowercase().as_str() {
        "counter" => Some(Kind::Counter),
        "gauge" => Some(Kind::Gauge),
        "histogram" => Some(Kind::Histogram),
        _ => None,
    }
}

/// The operator's metrics from its real exposition: `# TYPE <name> <kind>` lines.
fn operator_metrics() -> BTreeMap<String, Kind> {
    use kinfer_operator::metrics::{DirectionLabels, Metrics, ModelLabels, ScrapeErrorLabels};
    let metrics = Metrics::new();
    // Families without a series are not exposed at all: give each one a series.
    metrics.reconcile_failed("kube");
    let model = ModelLabels {
        namespace: "models".to_string(),
        model: "chat".to_string(),
    };
    metrics.autoscaler_load.get_or_create(&model).set(1);
    metrics
        .autoscaler_desired_replicas
        .get_or_create(&model)
        .set(1);
    metrics
        .autoscaler_decisions
        .get_or_create(&DirectionLabels { direction: "up" })
        .inc();
    metrics
        .autoscaler_scrape_errors
        .get_or_create(&ScrapeErrorLabels {
            source: "gateway",
            error: "timeout",
        })
        .inc();
    let text = metrics.encode();
    kinfer_crds::metrics_text::lines(&text)
        .filter_map(|line| match line.unwrap() {
            Line::Type { name, kind } => Some((name.to_string(), kind_of(kind)?)),
            _ => None,
        })
        .collect()
}

/// The string literal starting at or after `from`, and the index just past it.
fn next_literal(source: &str, from: usize) -> Option<(String, usize)> {
    let start = from + source[from..].find('"')? + 1;
    let end = start + source[start..].find('"')?;
    Some((source[start..end].to_string(), end + 1))
}

/// The last of Counter, Gauge, Histogram named in `text`.
fn last_kind_in(text: &str) -> Option<Kind> {
    ["Counter", "Gauge", "Histogram"]
        .iter()
        .filter_map(|word| text.rfind(word).map(|at| (at, *word)))
        .max_by_key(|(at, _)| *at)
        .and_then(|(_, word)| kind_of(word))
}

/// The gateway's metrics: `Registry::with_prefix("p")` and each `registry.register("name", help,
/// value)`. The kind comes from the statements since the previous registration (`let requests =
/// Family::<CodeLabels, Counter>::default();`) or, failing that, from a field declaration of the
/// registered value (`auth_failures: Family<..., Counter>`) anywhere in `gateway/src`.
fn gateway_metrics() -> BTreeMap<String, Kind> {
    let source = read("gateway/src/metrics.rs");
    let all_sources = rust_sources(&repo_root().join("gateway/src"));
    let prefix_call = "Registry::with_prefix(";
    let at = source
        .find(prefix_call)
        .expect("the gateway's registry prefix");
    let (prefix, _) = first_argument(&source, at + prefix_call.len());
    let mut metrics = BTreeMap::new();
    let mut previous_end = at;
    let mut search = at;
    let register_call = "registry.register(";
    while let Some(offset) = source[search..].find(register_call) {
        let call = search + offset;
        let (name, after_name) = first_argument(&source, call + register_call.len());
        let (_, after_help) = next_literal(&source, after_name).unwrap();
        let end = after_help + source[after_help..].find(';').unwrap();
        // `, value.clone(),\n)` -> `value`
        let arguments = source[after_help..end].trim();
        let arguments = arguments.strip_suffix(')').unwrap_or(arguments).trim();
        let value = arguments
            .trim_matches(|c: char| c == ',' || c.is_whitespace())
            .trim_end_matches(".clone()")
            .to_string();
        let field = value.rsplit('.').next().unwrap_or(&value).to_string();
        let kind = last_kind_in(&source[previous_end..call])
            .or_else(|| declared_kind(&all_sources, &field))
            .unwrap_or_else(|| panic!("kind of gateway metric {name} ({value}) not found"));
        metrics.insert(format!("{prefix}_{name}"), kind);
        previous_end = end;
        search = end;
    }
    assert!(metrics.len() >= 10, "too few gateway metrics: {metrics:?}");
    metrics
}

/// The string a call's first argument (starting at `from`) stands for, and the index after it:
/// a literal, or a constant of `kinfer_crds::metric_names` (the names the operator reads).
fn first_argument(source: &str, from: usize) -> (String, usize) {
    let start = from + source[from..].len() - source[from..].trim_start().len();
    if source[start..].starts_with('"') {
        return next_literal(source, start).unwrap();
    }
    let end = start + source[start..].find([',', ')']).unwrap();
    let path = source[start..end].trim();
    let constant = path.rsplit("::").next().unwrap();
    let names = read("crds/src/metric_names.rs");
    let declaration = format!("const {constant}: &str = ");
    let mut found = names.match_indices(&declaration);
    let (at, _) = found
        .next()
        .unwrap_or_else(|| panic!("{path}: no `{declaration}` in crds/src/metric_names.rs"));
    assert!(found.next().is_none(), "{constant} is declared twice");
    let (value, _) = next_literal(&names, at).unwrap();
    (value, end)
}

fn declared_kind(sources: &[String], field: &str) -> Option<Kind> {
    let needle = format!("{field}: ");
    sources.iter().find_map(|source| {
        source.match_indices(&needle).find_map(|(at, _)| {
            let line_end = at + source[at..].find('\n').unwrap_or(source.len() - at);
            last_kind_in(&source[at..line_end])
        })
    })
}

fn rust_sources(dir: &Path) -> Vec<String> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            sources.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    sources
}

/// vLLM's metrics as the stand-in renders them: `self.gauge(out, "vllm:...")`,
/// `self.counter(...)`, `self.histogram(...)`, or `header(out, "vllm:...", help, "counter")`.
fn vllm_metrics() -> BTreeMap<String, Kind> {
    let source = read("e2e/vllm-sim/src/metrics.rs");
    // Not the unit tests, which read series lines.
    let source = source.split("#[cfg(test)]").next().unwrap();
    let mut metrics = BTreeMap::new();
    for (at, _) in source.match_indices("\"vllm:") {
        let (name, after) = next_literal(source, at).unwrap();
        if name.contains('{') {
            continue; // a series line of a metric declared by header()
        }
        let call_start = source[..at].rfind('(').unwrap();
        let callee = source[..call_start]
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        if callee == "created_header" {
            continue; // the `_created` gauge beside a counter, not a metric of its own
        }
        let kind = kind_of(callee).or_else(|| {
            let (_, after_help) = next_literal(source, after)?;
            let (kind, _) = next_literal(source, after_help)?;
            kind_of(&kind)
        });
        let kind = kind.unwrap_or_else(|| panic!("kind of vLLM metric {name} not found"));
        metrics.insert(name, kind);
    }
    assert!(metrics.len() >= 10, "too few vLLM metrics: {metrics:?}");
    metrics
}

fn exported_series() -> BTreeMap<String, &'static str> {
    let mut series = BTreeMap::new();
    for (source, metrics) in [
        ("operator", operator_metrics()),
        ("gateway", gateway_metrics()),
        ("vLLM", vllm_metrics()),
    ] {
        for (name, kind) in metrics {
            for series_name in series_names(&name, kind) {
                series.insert(series_name, source);
            }
        }
    }
    series
}

/// Metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// range selectors and grouping clauses that are not function calls, keywords or numbers.
fn metric_names(expr: &str) -> Vec<String> {
    // Blank out string literals, `{...}` and `[...]`.
    let mut cleaned = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => cleaned.push(c),
            _ => {}
        }
        if quote.is_some() || depth > 0 {
            cleaned.push(' ');
        }
    }
    let tokens: Vec<(usize, &str)> = {
        let mut tokens = Vec::new();
        let mut start = None;
        for (i, c) in cleaned.char_indices() {
            let part = c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '$';
            match (start, part) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    tokens.push((s, &cleaned[s..i]));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            tokens.push((s, &cleaned[s..]));
        }
        tokens
    };
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
    ];
    // Aggregations may put `by (...)` between their name and their argument.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut names = Vec::new();
    // End of a `by (...)`-style label list being skipped.
    let mut group_end = 0;
    for (at, token) in tokens {
        if at < group_end {
            continue;
        }
        let rest = cleaned[at + token.len()..].trim_start();
        if KEYWORDS.contains(&token) {
            if rest.starts_with('(') {
                let open = cleaned.len() - rest.len();
                group_end = open + cleaned[open..].find(')').unwrap_or(cleaned.len() - open);
            }
            continue;
        }
        let is_number = token.chars().next().is_some_and(|c| c.is_ascii_digit());
        if is_number
            || token.starts_with('$')
            || rest.starts_with('(')
            || AGGREGATIONS.contains(&token)
        {
            continue;
        }
        names.push(token.to_string());
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), target["expr"].as_str().unwrap().to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(query);
            out.push((format!("variable {}", variable["name"]), inner.to_string()));
        }
    }
    out
}

#[test]
fn promql_reader_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (model, le) (rate(kinfer_gateway_request_duration_seconds_bucket{model=~"$model",code="5.."}[$__rate_interval])))"#
        ),
        vec!["kinfer_gateway_request_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            r#"sum by (model_name) (vllm:num_requests_waiting) / on (model) group_left sum(a_total) or vector(0)"#
        ),
        vec!["vllm:num_requests_waiting", "a_total"]
    );
}

#[test]
fn dashboard_is_a_grafana_dashboard() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "kinfer-overview");
    assert!(dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = Vec::new();
    for panel in panels {
        ids.push(panel["id"].as_u64().unwrap());
        let grid = &panel["gridPos"];
        assert!(grid["w"].as_u64().unwrap() <= 24, "{}", panel["title"]);
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}: use the datasource variable",
                panel["title"]
            );
            assert!(!panel["targets"].as_array().unwrap().is_empty());
        }
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "panel ids must be unique");
    // What the issue asks the dashboard to show.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Request rate",
        "Error rate",
        "Request latency p50 / p95",
        "Time to first token p50 / p95",
        "Tokens per second",
        "Replicas: desired / ready",
        "Queue depth",
        "KV-cache usage",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}");
    }
}

#[test]
fn every_metric_in_the_dashboard_is_exported() {
    let exported = exported_series();
    let mut used = 0;
    for (panel, expr) in expressions(&dashboard()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{panel}: no metric in {expr}");
        for name in names {
            used += 1;
            assert!(
                exported.contains_key(&name),
                "{panel}: {name} is not exported by kinfer or vLLM (expression: {expr}).\n\
                 Exported: {:?}",
                exported.keys().collect::<Vec<_>>()
            );
        }
    }
    assert!(used >= 20, "only {used} metric references");
}
