//! The flag tables of `docs/flags.md`, rendered from a binary's clap command, and the drift check
//! of that file. Shared by `operator/tests/flags_doc.rs` and `gateway/tests/flags_doc.rs`
//! (through `#[path]`): each owns the section between its `<!-- BEGIN name -->` and
//! `<!-- END name -->` markers, so the two crates regenerate their halves independently.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::Command;

/// The generated file, relative to the workspace root.
pub const FLAGS_PATH: &str = "docs/flags.md";

/// Set to `1` to rewrite the section instead of failing on a difference (as `UPDATE_GOLDEN`
/// does for the operator's golden files).
pub const UPDATE_VARIABLE: &str = "UPDATE_DOCS";

/// The Markdown of `command`'s flags: its about line, its subcommands, then one table per help
/// heading, for it and for each subcommand that takes flags. `--help` and `--version` are left
/// out: every command has them.
pub fn render(command: &Command) -> String {
    let mut command = command.clone();
    // Fills in what clap derives lazily (propagated settings, the help and version flags).
    command.build();
    let mut out = String::new();
    let name = command.get_name().to_string();
    render_command(&mut out, &name, &command, 2);
    out
}

fn render_command(out: &mut String, full_name: &str, command: &Command, level: usize) {
    let hashes = "#".repeat(level);
    let _ = writeln!(out, "{hashes} `{full_name}`\n");
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    let subcommands: Vec<&Command> = command
        .get_subcommands()
        .filter(|subcommand| !subcommand.is_hide_set() && subcommand.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        let _ = writeln!(out, "| command | description |\n|---|---|");
        for subcommand in &subcommands {
            let about = subcommand
                .get_about()
                .map(|about| cell(&about.to_string()))
                .unwrap_or_default();
            let _ = writeln!(out, "| `{full_name} {}` | {about} |", subcommand.get_name());
        }
        out.push('\n');
    }

    // Headings in the order of their first flag, as `--help` shows them.
    let mut groups: Vec<(String, Vec<&clap::Arg>)> = Vec::new();
    for argument in command.get_arguments() {
        let id = argument.get_id().as_str();
        if argument.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        let heading = argument.get_help_heading().unwrap_or("Options").to_string();
        match groups.iter_mut().find(|(name, _)| *name == heading) {
            Some((_, arguments)) => arguments.push(argument),
            None => groups.push((heading, vec![argument])),
        }
    }
    for (heading, arguments) in groups {
        let _ = writeln!(out, "{hashes}# {heading}\n");
        let _ = writeln!(
            out,
            "| flag | environment variable | default | description |\n|---|---|---|---|"
        );
        for argument in arguments {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                flag(argument),
                argument
                    .get_env()
                    .map(|variable| code(&variable.to_string_lossy()))
                    .unwrap_or_default(),
                default(argument),
                description(argument),
            );
        }
        out.push('\n');
    }

    for subcommand in subcommands {
        let takes_flags = subcommand.get_arguments().any(|argument| {
            !argument.is_hide_set() && !matches!(argument.get_id().as_str(), "help" | "version")
        });
        if takes_flags {
            let name = format!("{full_name} {}", subcommand.get_name());
            render_command(out, &name, subcommand, level + 1);
        }
    }
}

fn flag(argument: &clap::Arg) -> String {
    let long = argument.get_long().map(|long| format!("`--{long}`"));
    let short = argument.get_short().map(|short| format!("`-{short}`"));
    match (short, long) {
        (Some(short), Some(long)) => format!("{short}, {long}"),
        (short, long) => short
            .or(long)
            // A positional argument.
            .unwrap_or_else(|| format!("`<{}>`", argument.get_id().as_str().to_uppercase())),
    }
}

fn default(argument: &clap::Arg) -> String {
    if argument.is_hide_default_value_set() {
        return String::new();
    }
    let values: Vec<String> = argument
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    match values.as_slice() {
        [] => String::new(),
        [single] if single.is_empty() => "`\"\"`".to_string(),
        values => code(&values.join(",")),
    }
}

/// The whole help text on one line, then the accepted values of an enumerated flag (with
/// their own help when they have one).
fn description(argument: &clap::Arg) -> String {
    let mut text = argument
        .get_long_help()
        .or(argument.get_help())
        .map(|help| one_line(&help.to_string()))
        .unwrap_or_default();
    let values: Vec<String> = argument
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| match value.get_help() {
            Some(help) => format!("`{}`: {}", value.get_name(), one_line(&help.to_string())),
            None => format!("`{}`", value.get_name()),
        })
        .collect();
    if !values.is_empty() {
        if !text.is_empty() {
            // clap drops the final period of a one-paragraph help.
            if !text.ends_with(['.', ':', ';']) {
                text.push('.');
            }
            text.push(' ');
        }
        let separator = if values.iter().any(|value| value.contains(": ")) {
            "; "
        } else {
            ", "
        };
        let _ = write!(text, "Values: {}.", values.join(separator));
    }
    cell(&text)
}

/// Paragraphs and lines joined by single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Safe inside a Markdown table cell: `|` escaped everywhere (GitHub's tables split on it even
/// in code spans), `*` outside code spans (two in one cell would turn into emphasis).
fn cell(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for character in one_line(text).chars() {
        match character {
            '`' => in_code = !in_code,
            '|' => out.push('\\'),
            '*' if !in_code => out.push('\\'),
            _ => {}
        }
        out.push(character);
    }
    out
}

/// `text` as a code span in a table cell.
fn code(text: &str) -> String {
    format!("`{}`", text.replace('|', "\\|"))
}

fn workspace_root() -> PathBuf {
    // Both crates sit one directory below the root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Compare the section of `binary` in [`FLAGS_PATH`] with `generated`, or rewrite it when
/// [`UPDATE_VARIABLE`] is `1`. `regenerate` is the command that rewrites it, for the message.
pub fn check_section(binary: &str, generated: &str, regenerate: &str) {
    let path = workspace_root().join(FLAGS_PATH);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let begin = format!("<!-- BEGIN {binary} -->\n");
    let end = format!("<!-- END {binary} -->");
    let (Some(start), Some(stop)) = (text.find(&begin), text.find(&end)) else {
        panic!(
            "{FLAGS_PATH} has no `{}` ... `{end}` markers: add them where the section of \
             {binary} belongs, then run\n\n    {regenerate}\n",
            begin.trim_end()
        );
    };
    let content_start = start + begin.len();
    assert!(
        content_start <= stop,
        "{FLAGS_PATH}: `{end}` comes before its BEGIN marker"
    );
    let committed = &text[content_start..stop];
    let generated = format!("\n{generated}");
    if committed == generated {
        return;
    }
    if std::env::var_os(UPDATE_VARIABLE).is_some_and(|value| value == "1") {
        let updated = format!("{}{generated}{}", &text[..content_start], &text[stop..]);
        std::fs::write(&path, updated)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        return;
    }
    let first_difference = committed
        .lines()
        .zip(generated.lines())
        .position(|(committed, generated)| committed != generated)
        .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
    let line_in_file = text[..content_start].lines().count() + first_difference + 1;
    panic!(
        "The {binary} section of {FLAGS_PATH} is out of date with its command-line flags \
         (first difference at line {line_in_file}).\nRegenerate it from the workspace root \
         with:\n\n    {regenerate}\n\nand review the diff.",
    );
}

/// The long flags (`--name`, without the dashes) passed in the `args:` of a chart template.
/// Template expressions are left in the values; only the names matter here.
pub fn chart_flags(template: &str) -> Vec<String> {
    let path = workspace_root()
        .join("charts/kinfer/templates")
        .join(template);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("- --"))
        .map(|flag| {
            flag.split(|character: char| character == '=' || character.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Whether `command` takes `--flag`.
pub fn has_flag(command: &Command, flag: &str) -> bool {
    command
        .get_arguments()
        .any(|argument| argument.get_long() == Some(flag))
}
