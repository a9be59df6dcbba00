#!/usr/bin/env bash
# The OpenAI Python SDK against kinfer-gateway (static discovery) in front of vllm-sim
# replicas, everything on 127.0.0.1 with free ports.
#
#   gateway/tests/openai_sdk/run.sh [pytest arguments]
#
# Environment: KINFER_CACHE (default ~/.cache/kinfer) holds the venv (venv-sdk);
# KINFER_PROFILE=release builds and runs release binaries (default debug);
# KINFER_GATEWAY_BIN runs that gateway binary instead (CI: the profile-guided build);
# CARGO_TARGET_DIR is honoured.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../e2e/tools/loopback.sh
source "$root/e2e/tools/loopback.sh"
cache=${KINFER_CACHE:-$HOME/.cache/kinfer}
venv=$cache/venv-sdk
profile=${KINFER_PROFILE:-debug}
target=${CARGO_TARGET_DIR:-$root/target}

build_flags=()
[[ $profile == release ]] && build_flags+=(--release)
(cd "$root" && cargo build "${build_flags[@]}" -p kinfer-gateway -p kinfer-vllm-sim --bins)
bin=$target/$profile
gateway_bin=${KINFER_GATEWAY_BIN:-$bin/kinfer-gateway}

if ! "$venv/bin/python" -c 'import openai, pytest' 2>/dev/null; then
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check openai pytest
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Nine free ports: three replicas, one port nothing listens on, the gateway and its admin,
# a second gateway with authentication on (test_auth.py) and its admin, and the replica that
# late-model gets while a request is held (test_sdk.py).
read -r sim_a sim_b sim_embed dead listen admin auth_listen auth_admin sim_late < <(loopback_ports 9)

model=Qwen/Qwen2.5-0.5B-Instruct
embedder=BAAI/bge-small-en-v1.5
for port in "$sim_a" "$sim_b"; do
    "$bin/vllm-sim" serve "$model" --host 127.0.0.1 --port "$port" --max-model-len 2048 \
        --enable-lora --lora-modules sql-lora=/adapters/sql-lora \
        --sim-ttft-ms 5 --sim-itl-ms 2 >"$work/sim-$port.log" 2>&1 &
    pids+=($!)
done
"$bin/vllm-sim" serve "$embedder" --runner pooling --host 127.0.0.1 --port "$sim_embed" \
    >"$work/sim-$sim_embed.log" 2>&1 &
pids+=($!)
"$bin/vllm-sim" serve late-model --host 127.0.0.1 --port "$sim_late" --max-model-len 2048 \
    --sim-ttft-ms 5 --sim-itl-ms 2 >"$work/sim-$sim_late.log" 2>&1 &
pids+=($!)

cat >"$work/models.yaml" <<YAML
models:
  - id: $model
    adapters: [sql-lora]
    strategy: RoundRobin
    endpoints:
      - url: http://127.0.0.1:$sim_a
        name: sim-a
      - url: http://127.0.0.1:$sim_b
        name: sim-b
  - id: $embedder
    features: [TextEmbedding]
    endpoints: [http://127.0.0.1:$sim_embed]
  - id: cold-model
  # No replica until test_sdk.py adds one to this file while a stream request is held.
  - id: late-model
    holdTimeoutSeconds: 30
  - id: broken-model
    endpoints: [http://127.0.0.1:$dead]
YAML

"$gateway_bin" --discovery static --static-file "$work/models.yaml" \
    --listen "127.0.0.1:$listen" --admin-listen "127.0.0.1:$admin" \
    --hold-timeout 1s --retry-after 2s --max-body-size 64KiB --engine-metrics-interval 1s \
    --hold-keepalive-interval 200ms --static-poll-interval 200ms \
    --log-format json --log-filter warn >"$work/gateway.log" 2>&1 &
pids+=($!)

# API keys of the second gateway (test_auth.py).
cat >"$work/keys.yaml" <<YAML
keys:
  - name: full
    key: sk-test-full
  - name: generation-only
    key: sk-test-generation
    models: ["Qwen/*", "sql-lora"]
  - name: one-per-minute
    key: sk-test-slow
    requestsPerMinute: 1
  - name: metered
    key: sk-test-metered
    tokensPerMinute: 1000000
YAML
"$gateway_bin" --discovery static --static-file "$work/models.yaml" \
    --listen "127.0.0.1:$auth_listen" --admin-listen "127.0.0.1:$auth_admin" \
    --auth true --api-keys-file "$work/keys.yaml" --engine-metrics-interval 1s \
    --log-format json --log-filter warn >"$work/gateway-auth.log" 2>&1 &
pids+=($!)

for url in "$sim_a/health" "$sim_b/health" "$sim_embed/health" "$sim_late/health" "$admin/readyz" \
    "$auth_admin/readyz"; do
    wait_for "http://127.0.0.1:$url" "$work"/*.log
done

status=0
KINFER_GATEWAY_URL="http://127.0.0.1:$listen" KINFER_ADMIN_URL="http://127.0.0.1:$admin" \
KINFER_AUTH_GATEWAY_URL="http://127.0.0.1:$auth_listen" KINFER_AUTH_ADMIN_URL="http://127.0.0.1:$auth_admin" \
KINFER_MODEL="$model" KINFER_EMBEDDING_MODEL="$embedder" \
KINFER_MODELS_FILE="$work/models.yaml" KINFER_LATE_REPLICA_URL="http://127.0.0.1:$sim_late" \
    timeout 300 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_sdk.py" "$here/test_auth.py" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- gateway log" >&2
    tail -n 50 "$work/gateway.log" >&2
    echo "--- gateway (auth) log" >&2
    tail -n 50 "$work/gateway-auth.log" >&2
fi
exit $status
