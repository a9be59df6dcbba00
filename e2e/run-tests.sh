#!/usr/bin/env bash
# The whole test suite, as CI runs it (`make test`):
#   1. tools into the cache (kubectl, helm, etcd, kube-*, kwok, real vLLM's CPU
#      build and its generated models), skipped when fresh
#   2. cargo fmt --check and clippy -D warnings
#   3. unit and in-process tests of every crate; the OpenAI Python SDK suite
#      against the gateway (static discovery) and stand-in engines
#   4. the gateway's release build (`cargo build --release`, as the Dockerfile builds it) and
#      the SDK suite against it
#   5. the local cluster (e2e/cluster.sh up); the operator's integration tests
#      (in-process controller); kinfer installed with its Helm chart; the e2e
#      suite through it; the cluster torn down again, also on failure
#   6. the real-engine lane: the engine behaviour suite against real vLLM (step
#      3 ran it against vllm-sim), then InferenceModels on real vLLM pods
#      through the chart's gateway (e2e/tests/real_vllm.rs)
#
#   KINFER_CACHE          tool and build cache (default ~/.cache/kinfer)
#   KINFER_SKIP_E2E=1     stop after step 3
#   KINFER_SKIP_VLLM=1    no real vLLM (neither installed nor run)
#   KINFER_E2E_KEEP=1     keep test namespaces (and the cluster) for inspection
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
# shellcheck source=tools/cargo-target.sh
source "$repo/e2e/tools/cargo-target.sh"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
t0=$SECONDS
step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }

step "tools (cached in $KINFER_CACHE)"
real_vllm=1; [ "${KINFER_SKIP_VLLM:-0}" = "1" ] && real_vllm=0
if [ "$real_vllm" = 1 ]; then bash e2e/tools/install.sh all >/dev/null; else bash e2e/tools/install.sh >/dev/null; fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings

step "unit and in-process tests"
# No cluster here: tests that need one skip themselves without a kubeconfig.
env -u KUBECONFIG -u KINFER_IT_KUBECONFIG cargo test --locked --workspace --exclude kinfer-e2e

step "OpenAI Python SDK against the gateway and stand-in engines"
bash gateway/tests/openai_sdk/run.sh

if [ "${KINFER_SKIP_E2E:-0}" = "1" ]; then
  step "KINFER_SKIP_E2E=1: skipping the cluster tests"
  exit 0
fi

if [ "$real_vllm" = 1 ]; then
  step "engine behaviour suite against real vLLM (vllm-sim passed it in the unit tests)"
  KINFER_ENGINE=vllm cargo test --locked -p kinfer-vllm-sim --test conformance -- --test-threads 2
fi

step "release build of the gateway (what the image ships), checked with the SDK suite"
cargo build --locked --release -p kinfer-gateway
KINFER_GATEWAY_BIN="$CARGO_TARGET_DIR/release/kinfer-gateway" bash gateway/tests/openai_sdk/run.sh

step "local cluster up"
cleanup() {
  if [ "${KINFER_E2E_KEEP:-0}" = "1" ]; then
    echo "KINFER_E2E_KEEP=1: leaving the cluster up ($(bash e2e/cluster.sh env))"
  else
    bash e2e/cluster.sh down || true
  fi
}
trap cleanup EXIT
bash e2e/cluster.sh up
KUBECONFIG="$(bash e2e/cluster.sh kubeconfig)"
export KUBECONFIG

step "operator integration tests (in-process controller) against the cluster"
KINFER_IT_KUBECONFIG="$KUBECONFIG" cargo test --locked -p kinfer-operator --test cluster

step "install kinfer with its Helm chart"
bash e2e/install-kinfer.sh

step "e2e suite against $KUBECONFIG"
cargo test --locked -p kinfer-e2e -- --test-threads 4

if [ "$real_vllm" = 1 ]; then
  step "real-engine lane: InferenceModels on real vLLM through the chart's gateway"
  KINFER_REAL_VLLM=1 cargo test --locked -p kinfer-e2e --test real_vllm -- --test-threads 1 --nocapture
fi

step "all tests passed in $((SECONDS - t0))s"
