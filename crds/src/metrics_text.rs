//! The one reader of Prometheus-style metrics text in kinfer: the gateway reads vLLM's
//! `/metrics` (Prometheus text format 0.0.4, names with `:`), the operator reads the gateway's
//! (OpenMetrics 1.0 text from `prometheus-client`: `# EOF`, `_total`, `_created`) and vLLM's,
//! and the tests read all of them.
//!
//! It reads line by line and never gives up on a whole scrape: a line it cannot read comes out
//! as a [`Malformed`] item and the next line is read as usual, so each caller decides whether a
//! bad line of a metric it wants is an error. Blank lines and comments other than `# HELP`,
//! `# TYPE` and `# EOF` are skipped; `# EOF` ends the text. Label values are unescaped (`\\`,
//! `\"`, `\n`); values and timestamps may be `NaN`, `+Inf`, `-Inf`; an OpenMetrics exemplar
//! (`# {trace_id="..."} 1.0`) after a value is skipped.
//!
//! Why not a crate (crates.io, checked when this was written): `prometheus-parse` 0.2.5 matches
//! names with `\w+` (so `vllm:num_requests_waiting` is not a sample) and splits label sets on
//! `,` and `=` without escapes; `openmetrics-parser` 0.5.1 is LGPL-3.0 and parses a whole
//! exposition or fails it; `prom_text_format_parser` 0.1.0 keeps label escapes as written and
//! reads no exemplar; `prometheus-exposition-format-rs` 0.1.2 is on nom 5 and reads timestamps
//! as integer milliseconds only (OpenMetrics writes float seconds). What kinfer needs is small:
//! name, labels and value of each sample line, tolerant of the lines around them.

use std::borrow::Cow;

/// One sample line: `name{labels} value [timestamp] [# exemplar]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The text between the braces (empty without braces), checked when the line was read.
    labels: &'a str,
    pub value: f64,
    /// As written: milliseconds since the epoch in the Prometheus format, seconds in OpenMetrics.
    pub timestamp: Option<f64>,
}

impl<'a> Sample<'a> {
    /// The labels in the order written, values unescaped.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + 'a {
        let mut rest = self.labels;
        std::iter::from_fn(move || {
            // The label set was checked when the line was read: an error cannot happen here.
            let (name, raw, after) = next_label(rest).ok()??;
            rest = after;
            Some((name, unescape(raw)))
        })
    }

    /// The value of the label `name`, unescaped.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Whether this sample is called `name` and has every label of `labels` (others may follow).
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(key, value)| self.label(key).is_some_and(|found| found == *value))
    }
}

/// A line that means something.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    Sample(Sample<'a>),
    /// `# TYPE name kind`, the kind as written (`counter`, `gauge`, `histogram`, ...).
    Type {
        name: &'a str,
        kind: &'a str,
    },
    /// `# HELP name text`, the text as written (escapes kept).
    Help {
        name: &'a str,
        text: &'a str,
    },
    /// `# EOF`, the end of an OpenMetrics exposition; nothing after it is read.
    Eof,
}

/// A line that is not in the format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is not in the Prometheus text format: {reason}")]
pub struct Malformed<'a> {
    /// 1-based.
    pub line: usize,
    /// The metric name the line starts with, when it starts with one.
    pub name: Option<&'a str>,
    pub reason: &'static str,
}

/// Every line of `text` that means something, in order, up to `# EOF`.
pub fn lines(text: &str) -> impl Iterator<Item = Result<Line<'_>, Malformed<'_>>> {
    let mut numbered = text.lines().enumerate();
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        for (index, line) in numbered.by_ref() {
            match parse_line(line) {
                Ok(None) => continue,
                Ok(Some(line)) => {
                    ended = matches!(line, Line::Eof);
                    return Some(Ok(line));
                }
                Err((name, reason)) => {
                    return Some(Err(Malformed {
                        line: index + 1,
                        name,
                        reason,
                    }))
                }
            }
        }
        None
    })
}

/// The sample lines of `text` (and the lines that could not be read).
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, Malformed<'_>>> {
    lines(text).filter_map(|line| match line {
        Ok(Line::Sample(sample)) => Some(Ok(sample)),
        Ok(_) => None,
        Err(malformed) => Some(Err(malformed)),
    })
}

/// The first sample of `text` that `selector` names: `name`, or `name{label="value",...}` for a
/// sample that has those labels among its own. `None` also when `selector` is not in that form.
/// For tests and tools that look up one value.
pub fn find<'a>(text: &'a str, selector: &str) -> Option<Sample<'a>> {
    let line = format!("{selector} 0");
    let wanted = samples(&line).next()?.ok()?;
    let labels: Vec<(&str, Cow<'_, str>)> = wanted.labels().collect();
    samples(text).flatten().find(|sample| {
        sample.name == wanted.name
            && labels
                .iter()
                .all(|(key, value)| sample.label(key).as_deref() == Some(value.as_ref()))
    })
}

type LineError<'a> = (Option<&'a str>, &'static str);

fn parse_line(line: &str) -> Result<Option<Line<'_>>, LineError<'_>> {
    let line = line.trim_matches(BLANK);
    if line.is_empty() {
        return Ok(None);
    }
    if let Some(comment) = line.strip_prefix('#') {
        return Ok(parse_comment(comment));
    }
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err((None, "a sample line starts with a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = "";
    if let Some(after_brace) = rest.trim_start_matches(BLANK).strip_prefix('{') {
        let end = check_labels(after_brace).map_err(|reason| (Some(name), reason))?;
        labels = &after_brace[..end];
        rest = &after_brace[end + 1..];
    }
    if rest.trim_start_matches(BLANK).is_empty() {
        return Err((Some(name), "a sample without a value"));
    }
    if !rest.starts_with(BLANK) {
        return Err((
            Some(name),
            "no blank between the name or labels and the value",
        ));
    }
    // An exemplar starts with `#`, which no value or timestamp contains.
    let (rest, exemplar) = match rest.find('#') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    if exemplar.is_some_and(|exemplar| !exemplar.trim_start_matches(BLANK).starts_with('{')) {
        return Err((Some(name), "text after the value that is not an exemplar"));
    }
    let mut fields = rest.split(BLANK).filter(|field| !field.is_empty());
    let value = fields
        .next()
        .ok_or((Some(name), "a sample without a value"))?;
    let value = parse_number(value).ok_or((Some(name), "the value is not a number"))?;
    let timestamp = match fields.next() {
        Some(timestamp) => {
            Some(parse_number(timestamp).ok_or((Some(name), "the timestamp is not a number"))?)
        }
        None => None,
    };
    if fields.next().is_some() {
        return Err((Some(name), "text after the timestamp"));
    }
    Ok(Some(Line::Sample(Sample {
        name,
        labels,
        value,
        timestamp,
    })))
}

/// `# HELP`, `# TYPE` and `# EOF`; any other comment is `None`.
fn parse_comment(comment: &str) -> Option<Line<'_>> {
    let comment = comment.trim_start_matches(BLANK);
    let (keyword, rest) = comment.split_once(BLANK).unwrap_or((comment, ""));
    let rest = rest.trim_start_matches(BLANK);
    let (name, rest) = rest.split_once(BLANK).unwrap_or((rest, ""));
    let rest = rest.trim_start_matches(BLANK);
    let named = !name.is_empty() && name.chars().all(is_name_char);
    match keyword {
        "EOF" if name.is_empty() => Some(Line::Eof),
        "TYPE" if named && !rest.is_empty() => Some(Line::Type { name, kind: rest }),
        "HELP" if named => Some(Line::Help { name, text: rest }),
        _ => None,
    }
}

const BLANK: [char; 2] = [' ', '\t'];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// `NaN`, `+Inf`, `-Inf` (any case) or a decimal number.
fn parse_number(text: &str) -> Option<f64> {
    // Rust reads `inf`, `infinity` and `nan` in any case with an optional sign, as Go's
    // strconv.ParseFloat does for Prometheus.
    text.parse().ok()
}

/// Checks the label set after `{` and returns the index of its closing `}`.
fn check_labels(text: &str) -> Result<usize, &'static str> {
    let mut rest = text;
    while let Some((_, _, after)) = next_label(rest)? {
        rest = after;
    }
    let rest = rest.trim_start_matches(BLANK);
    if !rest.starts_with('}') {
        return Err("the label set has no closing brace");
    }
    Ok(text.len() - rest.len())
}

/// The next `name="value"` of a label set (value still escaped) and the text after it and its
/// comma; `None` at the closing brace.
fn next_label(text: &str) -> Result<Option<(&str, &str, &str)>, &'static str> {
    let text = text.trim_start_matches(BLANK);
    if text.starts_with('}') || text.is_empty() {
        return Ok(None);
    }
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a label name is expected");
    }
    let rest = text[name_end..]
        .trim_start_matches(BLANK)
        .strip_prefix('=')
        .ok_or("a label without '='")?
        .trim_start_matches(BLANK)
        .strip_prefix('"')
        .ok_or("a label value without its opening quote")?;
    let mut escaped = false;
    let close = rest
        .char_indices()
        .find(|&(_, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes
        })
        .map(|(at, _)| at)
        .ok_or("a label value without its closing quote")?;
    let value = &rest[..close];
    let after = rest[close + 1..].trim_start_matches(BLANK);
    let after = match after.strip_prefix(',') {
        Some(after) => after,
        // The end of the text: `Sample::labels` reads the label set without its brace.
        None if after.starts_with('}') || after.is_empty() => after,
        None => return Err("a label not followed by ',' or '}'"),
    };
    Ok(Some((name, value, after)))
}

/// `\\`, `\"` and `\n` unescaped; any other backslash is kept as written.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            value.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => value.push('\n'),
            Some(c @ ('\\' | '"')) => value.push(c),
            Some(other) => {
                value.push('\\');
                value.push(other);
            }
            None => value.push('\\'),
        }
    }
    Cow::Owned(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_sample(line: &str) -> Sample<'_> {
        let mut all: Vec<_> = samples(line).collect();
        assert_eq!(all.len(), 1, "{line:?}: {all:?}");
        all.remove(0).unwrap()
    }

    fn labels<'a>(sample: &Sample<'a>) -> Vec<(&'a str, String)> {
        sample
            .labels()
            .map(|(key, value)| (key, value.into_owned()))
            .collect()
    }

    #[test]
    fn names_labels_values_and_timestamps() {
        let sample = only_sample(
            "vllm:num_requests_waiting{engine=\"0\",model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 3.0",
        );
        assert_eq!(sample.name, "vllm:num_requests_waiting");
        assert_eq!(
            labels(&sample),
            [
                ("engine", "0".to_string()),
                ("model_name", "Qwen/Qwen2.5-7B-Instruct".to_string())
            ]
        );
        assert_eq!((sample.value, sample.timestamp), (3.0, None));
        assert!(sample.matches("vllm:num_requests_waiting", &[("engine", "0")]));
        assert!(!sample.matches("vllm:num_requests_waiting", &[("engine", "1")]));
        assert!(!sample.matches("vllm:num_requests_running", &[]));

        let sample = only_sample("up 1 1712000000000");
        assert_eq!(labels(&sample), []);
        assert_eq!(
            (sample.value, sample.timestamp),
            (1.0, Some(1712000000000.0))
        );
        let sample = only_sample("up{} 1.5e3 1712000000.25");
        assert_eq!(
            (sample.value, sample.timestamp),
            (1500.0, Some(1712000000.25))
        );
        let sample = only_sample("\t up {a = \"1\" , b=\"2\",}\t-2 ");
        assert_eq!(sample.value, -2.0);
        assert_eq!(sample.label("b").as_deref(), Some("2"));
    }

    #[test]
    fn label_escapes() {
        let sample = only_sample(r#"m{a="q\"x\\y\nz",b="} ,=",c="\d"} 1"#);
        assert_eq!(sample.label("a").as_deref(), Some("q\"x\\y\nz"));
        assert_eq!(sample.label("b").as_deref(), Some("} ,="));
        assert_eq!(
            sample.label("c").as_deref(),
            Some("\\d"),
            "unknown escape kept"
        );
        assert!(matches!(sample.label("b"), Some(Cow::Borrowed(_))));
        assert_eq!(sample.label("missing"), None);
        let sample = only_sample(r#"m{a="ends with \\"} 2"#);
        assert_eq!(sample.label("a").as_deref(), Some("ends with \\"));
        assert_eq!(sample.value, 2.0);
    }

    #[test]
    fn infinities_and_nan() {
        let bucket = only_sample(r#"x_bucket{le="+Inf"} +Inf"#);
        assert_eq!(bucket.label("le").as_deref(), Some("+Inf"));
        assert_eq!(bucket.value, f64::INFINITY);
        assert_eq!(only_sample("x -Inf").value, f64::NEG_INFINITY);
        assert_eq!(only_sample("x inf").value, f64::INFINITY);
        assert!(only_sample("x NaN").value.is_nan());
        assert!(only_sample("x nan 5").value.is_nan());
    }

    #[test]
    fn comments_help_type_blank_lines_and_eof() {
        let text = "\n# HELP kinfer_gateway_requests Requests answered, by \\\\ model.\n\
                    # TYPE kinfer_gateway_requests counter\n\
                    #   a free comment\n\
                    #TYPE\n\
                    # UNIT x seconds\n\
                    \n   \n\
                    kinfer_gateway_requests_total{model=\"m\",code=\"200\"} 2\n\
                    kinfer_gateway_requests_created{model=\"m\",code=\"200\"} 1712000000.123\n\
                    # EOF\n\
                    after_eof 1\n";
        let lines: Vec<_> = lines(text).map(Result::unwrap).collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(
            lines[0],
            Line::Help {
                name: "kinfer_gateway_requests",
                text: "Requests answered, by \\\\ model."
            }
        );
        assert_eq!(
            lines[1],
            Line::Type {
                name: "kinfer_gateway_requests",
                kind: "counter"
            }
        );
        let Line::Sample(total) = &lines[2] else {
            panic!("{lines:?}")
        };
        assert!(total.matches(
            "kinfer_gateway_requests_total",
            &[("model", "m"), ("code", "200")]
        ));
        assert_eq!(lines[4], Line::Eof);
        assert_eq!(samples(text).count(), 2);
    }

    #[test]
    fn exemplars_are_skipped() {
        let sample = only_sample(
            r#"latency_bucket{le="0.5"} 7 # {trace_id="KOO5S4vxi0o"} 0.67 1712000000.1"#,
        );
        assert_eq!(sample.value, 7.0);
        assert_eq!(sample.timestamp, None);
        assert_eq!(labels(&sample), [("le", "0.5".to_string())]);
        let sample = only_sample(r#"requests_total 9 1712000000 # {id="a # b"} 1"#);
        assert_eq!((sample.value, sample.timestamp), (9.0, Some(1712000000.0)));
    }

    #[test]
    fn malformed_lines_are_items_and_the_next_line_is_read() {
        let cases = [
            (
                "x{a=\"1} 1",
                Some("x"),
                "a label value without its closing quote",
            ),
            (
                "x{a=\"1\" 1",
                Some("x"),
                "a label not followed by ',' or '}'",
            ),
            ("x{a 1} 1", Some("x"), "a label without '='"),
            (
                "x{a=1} 1",
                Some("x"),
                "a label value without its opening quote",
            ),
            ("x{=\"1\"} 1", Some("x"), "a label name is expected"),
            (
                "x{a=\"1\",",
                Some("x"),
                "the label set has no closing brace",
            ),
            ("x", Some("x"), "a sample without a value"),
            ("x{} ", Some("x"), "a sample without a value"),
            (
                "x{}1",
                Some("x"),
                "no blank between the name or labels and the value",
            ),
            (
                "x-y 1",
                Some("x"),
                "no blank between the name or labels and the value",
            ),
            ("x NaNx", Some("x"), "the value is not a number"),
            ("x 1 later", Some("x"), "the timestamp is not a number"),
            ("x 1 2 3", Some("x"), "text after the timestamp"),
            (
                "x 1 # trailing",
                Some("x"),
                "text after the value that is not an exemplar",
            ),
            (
                "{a=\"1\"} 1",
                None,
                "a sample line starts with a metric name",
            ),
            ("9lives 1", None, "a sample line starts with a metric name"),
            ("é 1", None, "a sample line starts with a metric name"),
        ];
        for (line, name, reason) in cases {
            let text = format!("{line}\ngood 1\n");
            let read: Vec<_> = samples(&text).collect();
            assert_eq!(
                read[0],
                Err(Malformed {
                    line: 1,
                    name,
                    reason
                }),
                "{line:?}"
            );
            assert_eq!(read[1].as_ref().map(|sample| sample.name), Ok("good"));
            assert_eq!(read.len(), 2, "{line:?}");
        }
    }

    #[test]
    fn find_by_name_and_some_labels() {
        let text = "a{x=\"1\",y=\"q\\\"\"} 1\na{x=\"2\",y=\"z\"} 2\nb 3\n";
        let value = |selector: &str| find(text, selector).map(|sample| sample.value);
        assert_eq!(value("a"), Some(1.0));
        assert_eq!(value("a{x=\"2\"}"), Some(2.0));
        assert_eq!(value("a{y=\"z\",x=\"2\"}"), Some(2.0));
        assert_eq!(value("a{y=\"q\\\"\"}"), Some(1.0));
        assert_eq!(value("b{}"), Some(3.0));
        assert_eq!(value("a{x=\"3\"}"), None);
        assert_eq!(value("c"), None);
        assert_eq!(value("a{x="), None, "not a selector");
    }

    #[test]
    fn never_panics_on_any_cut_of_a_real_exposition() {
        let text = "# HELP a b\n# TYPE a_total counter\n\
                    a_total{x=\"y\\\"z\",é=\"ü\"} 1 2 # {t=\"1\"} 3\nb{le=\"+Inf\"} NaN\n# EOF\n";
        for end in (0..=text.len()).filter(|end| text.is_char_boundary(*end)) {
            for line in lines(&text[..end]) {
                if let Ok(Line::Sample(sample)) = line {
                    let _ = sample.labels().count();
                }
            }
        }
    }
}
