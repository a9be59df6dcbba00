# shellcheck shell=bash
# Sourced by the benchmarks that build kinfer (gateway.sh, instructions.sh); needs $root, the
# checkout. Sets $target (the cargo target directory) and $cache (KINFER_CACHE), and claims the
# target for this checkout before anything is built into it: gateway/pgo/build.sh cleans kinfer's
# crates, a vllm-sim just built included, out of a target that another checkout built last.
target=${CARGO_TARGET_DIR:-$root/target}
cache=${KINFER_CACHE:-$HOME/.cache/kinfer}
repo=$root
export KINFER_CACHE=$cache CARGO_TARGET_DIR=$target
# shellcheck source=../../tools/cargo-target.sh
source "$root/e2e/tools/cargo-target.sh"
export PATH="$cache/bin:$HOME/.cargo/bin:$PATH"
