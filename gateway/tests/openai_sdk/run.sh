#!/usr/bin/env bash
# The OpenAI Python SDK against kinfer-gateway (static discovery) in front of vllm-sim
# replicas, everything on 127.0.0.1 with free ports: over HTTP/1.1 and h2c on the plain port,
# and over TLS (h2 and HTTP/1.1 by ALPN) on a TLS twin of each gateway, whose certificate a
# test CA made here with openssl signs.
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

# h2: httpx's HTTP/2.
if ! "$venv/bin/python" -c 'import openai, pytest, h2' 2>/dev/null; then
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check openai pytest h2
fi
command -v openssl >/dev/null || { echo "openssl is needed to make the test CA" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Thirteen free ports: three replicas, one port nothing listens on, the gateway and its admin,
# a second gateway with authentication on (test_auth.py) and its admin, the replica that
# late-model gets while a request is held (test_sdk.py), and the TLS twins of both gateways
# with their admins.
read -r sim_a sim_b sim_embed dead listen admin auth_listen auth_admin sim_late \
    tls_listen tls_admin auth_tls_listen auth_tls_admin < <(loopback_ports 13)

# A test CA and the gateways' certificate for 127.0.0.1 and localhost (P-256: fast to make).
cat >"$work/leaf.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EXT
{
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=kinfer SDK test CA" -keyout "$work/ca.key" -out "$work/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout "$work/tls.key" -out "$work/tls.csr" &&
        openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
            -CAcreateserial -days 1 -extfile "$work/leaf.ext" -out "$work/tls.crt"
} 2>"$work/openssl.log" || { cat "$work/openssl.log" >&2; exit 1; }
tls=(--tls-cert-file "$work/tls.crt" --tls-key-file "$work/tls.key")

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

# start_gateway NAME LISTEN ADMIN ARGS...: a gateway on models.yaml, its log in $work/NAME.log.
start_gateway() {
    local name=$1 listen=$2 admin=$3
    shift 3
    "$gateway_bin" --discovery static --static-file "$work/models.yaml" \
        --listen "127.0.0.1:$listen" --admin-listen "127.0.0.1:$admin" \
        --engine-metrics-interval 1s --log-format json --log-filter warn "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
}

flags=(--hold-timeout 1s --retry-after 2s --max-body-size 64KiB
    --hold-keepalive-interval 200ms --static-poll-interval 200ms)
start_gateway gateway "$listen" "$admin" "${flags[@]}"
start_gateway gateway-tls "$tls_listen" "$tls_admin" "${flags[@]}" "${tls[@]}"

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
auth_flags=(--auth true --api-keys-file "$work/keys.yaml")
start_gateway gateway-auth "$auth_listen" "$auth_admin" "${auth_flags[@]}"
start_gateway gateway-auth-tls "$auth_tls_listen" "$auth_tls_admin" "${auth_flags[@]}" "${tls[@]}"

for url in "$sim_a/health" "$sim_b/health" "$sim_embed/health" "$sim_late/health" "$admin/readyz" \
    "$auth_admin/readyz" "$tls_admin/readyz" "$auth_tls_admin/readyz"; do
    wait_for "http://127.0.0.1:$url" "$work"/*.log
done

status=0
KINFER_GATEWAY_URL="http://127.0.0.1:$listen" KINFER_ADMIN_URL="http://127.0.0.1:$admin" \
KINFER_AUTH_GATEWAY_URL="http://127.0.0.1:$auth_listen" KINFER_AUTH_ADMIN_URL="http://127.0.0.1:$auth_admin" \
KINFER_TLS_GATEWAY_URL="https://127.0.0.1:$tls_listen" KINFER_AUTH_TLS_GATEWAY_URL="https://127.0.0.1:$auth_tls_listen" \
KINFER_TLS_CA_FILE="$work/ca.crt" \
KINFER_MODEL="$model" KINFER_EMBEDDING_MODEL="$embedder" \
KINFER_MODELS_FILE="$work/models.yaml" KINFER_LATE_REPLICA_URL="http://127.0.0.1:$sim_late" \
    timeout 300 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_sdk.py" "$here/test_auth.py" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    for name in gateway gateway-tls gateway-auth gateway-auth-tls; do
        echo "--- $name log" >&2
        tail -n 50 "$work/$name.log" >&2
    done
fi
exit $status
