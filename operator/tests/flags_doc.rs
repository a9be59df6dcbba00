//! The kinfer-operator section of `docs/flags.md` is generated from the operator's clap command
//! and must match it; after changing a flag, regenerate with
//!
//!     UPDATE_DOCS=1 cargo test -p kinfer-operator --test flags_doc
//!
//! Also: every flag the Helm chart passes to the operator exists.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod flag_table;

use clap::CommandFactory;
use kinfer_operator::cli::Cli;

const REGENERATE: &str = "UPDATE_DOCS=1 cargo test -p kinfer-operator --test flags_doc";

#[test]
fn committed_flag_table_matches_the_command() {
    flag_table::check_section(
        "kinfer-operator",
        &flag_table::render(&Cli::command()),
        REGENERATE,
    );
}

#[test]
fn the_chart_passes_only_real_flags() {
    let command = Cli::command();
    let run = command
        .find_subcommand("run")
        .expect("kinfer-operator has a run subcommand");
    let flags = flag_table::chart_flags("operator-deployment.yaml");
    assert!(
        flags.len() > 10,
        "no flags found in the template: {flags:?}"
    );
    for flag in flags {
        assert!(
            flag_table::has_flag(run, &flag),
            "charts/kinfer/templates/operator-deployment.yaml passes --{flag}, which kinfer-operator run does not take"
        );
    }
}
