//! The kinfer-gateway section of `docs/flags.md` is generated from the gateway's clap command
//! and must match it; after changing a flag, regenerate with
//!
//!     UPDATE_DOCS=1 cargo test -p kinfer-gateway --test flags_doc
//!
//! Also: every flag the Helm chart passes to the gateway exists.

// Test code: a panic with the failing value is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../operator/tests/flag_table/mod.rs"]
mod flag_table;

use clap::CommandFactory;
use kinfer_gateway::config::Cli;

const REGENERATE: &str = "UPDATE_DOCS=1 cargo test -p kinfer-gateway --test flags_doc";

#[test]
fn committed_flag_table_matches_the_command() {
    flag_table::check_section(
        "kinfer-gateway",
        &flag_table::render(&Cli::command()),
        REGENERATE,
    );
}

#[test]
fn the_chart_passes_only_real_flags() {
    let command = Cli::command();
    let flags = flag_table::chart_flags("gateway-deployment.yaml");
    assert!(
        flags.len() > 10,
        "no flags found in the template: {flags:?}"
    );
    for flag in flags {
        assert!(
            flag_table::has_flag(&command, &flag),
            "charts/kinfer/templates/gateway-deployment.yaml passes --{flag}, which kinfer-gateway does not take"
        );
    }
}
