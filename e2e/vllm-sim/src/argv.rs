//! Lenient argv handling, so any `vllm serve` command line starts the simulator.
//!
//! vLLM has hundreds of flags and adds more every release; the simulator knows a
//! few dozen. Rather than mirror them all, argv is pre-filtered before clap sees
//! it: flags clap knows (long names and aliases, read from the clap `Command`
//! itself, so the two cannot drift) are kept with their values, everything else
//! is dropped. Rules, in order:
//!
//! 1. A leading `serve` word is dropped, so `vllm-sim serve MODEL ...` works like
//!    `vllm serve MODEL ...`.
//! 2. Flag names are normalised like vLLM's parser does: `--max_model_len`
//!    becomes `--max-model-len`.
//! 3. A known flag keeps its value (`--port 8000` or `--port=8000`); a
//!    multi-value flag (`--served-model-name a b`) keeps every following word up
//!    to the next `-`-prefixed one. A known boolean given `=false` is dropped.
//! 4. An unknown flag is dropped. Without an inline `=value` it also swallows the
//!    next word, unless that word starts with `-` (and is not a number) or the
//!    flag looks boolean (`--enable-*`, `--disable-*`, `--no-*` or a known vLLM
//!    switch such as `--trust-remote-code`), so `--trust-remote-code MODEL`
//!    keeps MODEL. Unknown short flags (`-tp 2`) swallow a value the same way
//!    unless they carry it inline (`-O3`).
//! 5. The first bare word is the positional MODEL; later bare words are dropped.
//!    It is passed to clap after `--`, so a multi-value flag cannot absorb it.
//!
//! The heuristic in rule 4 can mistake the model for an unknown boolean
//! switch's value when MODEL follows a switch this module does not list;
//! `vllm serve` documents MODEL first, which always works.

use std::collections::HashMap;
use std::ffi::OsString;

/// Result of [`filter`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Arguments for clap, program name first.
    pub kept: Vec<String>,
    /// Arguments dropped as unknown, for logging.
    pub ignored: Vec<String>,
}

/// How a known flag consumes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arity {
    Switch,
    One,
    Many,
}

/// vLLM switches (store_true) whose names do not say so.
const KNOWN_SWITCHES: &[&str] = &[
    "trust-remote-code",
    "enforce-eager",
    "headless",
    "skip-tokenizer-init",
    "async-scheduling",
    "use-tqdm-on-load",
    "fully-sharded-loras",
    "calculate-kv-scales",
    "return-tokens-as-token-ids",
    "kv-sharing-fast-prefill",
];

/// Keeps the arguments `command` understands (see the module docs for the rules).
pub fn filter<I, T>(args: I, command: &mut clap::Command) -> Filtered
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let known = known_flags(command);
    let mut words = args
        .into_iter()
        .map(|arg| arg.into().to_string_lossy().into_owned())
        .peekable();

    let mut filtered = Filtered {
        kept: vec![words.next().unwrap_or_else(|| "vllm-sim".to_owned())],
        ignored: Vec::new(),
    };
    if words.peek().is_some_and(|word| word == "serve") {
        words.next();
    }

    let mut positional: Option<String> = None;
    let mut keep_positional = |word: String, filtered: &mut Filtered| {
        if positional.is_none() {
            positional = Some(word);
        } else {
            filtered.ignored.push(word);
        }
    };

    while let Some(word) = words.next() {
        if word == "--" {
            for rest in words.by_ref() {
                keep_positional(rest, &mut filtered);
            }
            break;
        }
        if let Some(body) = word.strip_prefix("--") {
            let (raw_name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (body, None),
            };
            let name = raw_name.replace('_', "-");
            match known.get(name.as_str()) {
                Some(Arity::Switch) => {
                    let disabled = inline
                        .as_deref()
                        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "false" | "0"));
                    if !disabled {
                        filtered.kept.push(format!("--{name}"));
                    }
                }
                Some(Arity::One) => {
                    filtered.kept.push(format!("--{name}"));
                    match inline {
                        Some(value) => filtered.kept.push(value),
                        // Values may look like flags (negative numbers), so the
                        // next word is taken whatever it is, like argparse does
                        // for numbers.
                        None => {
                            if let Some(value) = words.next() {
                                filtered.kept.push(value);
                            }
                        }
                    }
                }
                Some(Arity::Many) => {
                    filtered.kept.push(format!("--{name}"));
                    if let Some(value) = inline {
                        filtered.kept.push(value);
                    }
                    while let Some(value) = words.next_if(|next| !next.starts_with('-')) {
                        filtered.kept.push(value);
                    }
                }
                None => {
                    filtered.ignored.push(word.clone());
                    if inline.is_none() && !looks_boolean(&name) {
                        if let Some(value) =
                            words.next_if(|next| !next.starts_with('-') || is_number(next))
                        {
                            filtered.ignored.push(value);
                        }
                    }
                }
            }
        } else if word.len() > 1 && word.starts_with('-') && !is_number(&word) {
            match word.as_str() {
                "-h" | "-V" => filtered.kept.push(word),
                _ => {
                    // `-tp 2` takes a value; `-O3` carries it inline.
                    let takes_next = word[1..].chars().all(|c| c.is_ascii_alphabetic());
                    filtered.ignored.push(word);
                    if takes_next {
                        if let Some(value) = words.next_if(|next| !next.starts_with('-')) {
                            filtered.ignored.push(value);
                        }
                    }
                }
            }
        } else {
            keep_positional(word, &mut filtered);
        }
    }

    if let Some(model) = positional {
        filtered.kept.push("--".to_owned());
        filtered.kept.push(model);
    }
    filtered
}

fn looks_boolean(name: &str) -> bool {
    name.starts_with("enable-")
        || name.starts_with("disable-")
        || name.starts_with("no-")
        || KNOWN_SWITCHES.contains(&name)
}

fn is_number(word: &str) -> bool {
    word.parse::<f64>().is_ok()
}

/// Long names and aliases of the flags `command` defines, with their arity.
fn known_flags(command: &mut clap::Command) -> HashMap<String, Arity> {
    command.build();
    let mut known = HashMap::new();
    for arg in command.get_arguments() {
        if arg.is_positional() {
            continue;
        }
        let arity = if !arg.get_action().takes_values() {
            Arity::Switch
        } else if arg
            .get_num_args()
            .is_some_and(|range| range.max_values() > 1)
        {
            Arity::Many
        } else {
            Arity::One
        };
        let names = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default());
        for name in names {
            known.insert(name.to_owned(), arity);
        }
    }
    known.insert("help".to_owned(), Arity::Switch);
    known.insert("version".to_owned(), Arity::Switch);
    known
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::Config;

    fn run(args: &[&str]) -> Filtered {
        filter(args.iter().copied(), &mut Config::command())
    }

    #[test]
    fn serve_word_and_unknown_flags_are_dropped() {
        let out = run(&[
            "vllm",
            "serve",
            "facebook/opt-125m",
            "--dtype",
            "half",
            "--enforce-eager",
            "--port",
            "8001",
            "--compilation-config",
            r#"{"level":3}"#,
            "-O3",
        ]);
        assert_eq!(
            out.kept,
            vec!["vllm", "--port", "8001", "--", "facebook/opt-125m"]
        );
        assert_eq!(
            out.ignored,
            vec![
                "--dtype",
                "half",
                "--enforce-eager",
                "--compilation-config",
                r#"{"level":3}"#,
                "-O3"
            ]
        );
    }

    #[test]
    fn boolean_unknown_flag_does_not_eat_the_model() {
        let out = run(&[
            "vllm-sim",
            "--trust-remote-code",
            "my/model",
            "--disable-log-requests",
        ]);
        assert_eq!(out.kept, vec!["vllm-sim", "--", "my/model"]);
    }

    #[test]
    fn underscores_inline_values_and_multi_values() {
        let out = run(&[
            "vllm-sim",
            "--max_model_len=2048",
            "--served-model-name",
            "a",
            "b",
            "--enable-lora=false",
            "--lora-modules=x=/x",
            "y=/y",
        ]);
        assert_eq!(
            out.kept,
            vec![
                "vllm-sim",
                "--max-model-len",
                "2048",
                "--served-model-name",
                "a",
                "b",
                "--lora-modules",
                "x=/x",
                "y=/y"
            ]
        );
    }

    #[test]
    fn negative_numbers_are_values() {
        let out = run(&["vllm-sim", "--sim-ttft-ms", "-1", "--seed", "-5"]);
        assert_eq!(out.kept, vec!["vllm-sim", "--sim-ttft-ms", "-1"]);
        assert_eq!(out.ignored, vec!["--seed", "-5"]);
    }

    #[test]
    fn extra_positionals_are_ignored() {
        let out = run(&["vllm-sim", "m1", "m2"]);
        assert_eq!(out.kept, vec!["vllm-sim", "--", "m1"]);
        assert_eq!(out.ignored, vec!["m2"]);
    }
}
