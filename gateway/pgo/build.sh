#!/usr/bin/env bash
# An optional profile-guided (PGO) release build of kinfer-gateway: neither `make test` nor the
# image uses it; they ship `cargo build --release -p kinfer-gateway` (why: docs/gateway.md, "The
# release build"). Builds an instrumented gateway, trains it on loopback against vllm-sim
# replicas with the traffic below, merges the profile with the toolchain's llvm-profdata and
# builds the gateway again with it. Prints the path of the optimized binary on stdout; progress
# goes to stderr.
#
#   make gateway-pgo  (or gateway/pgo/build.sh) -> $CARGO_TARGET_DIR/pgo/release/kinfer-gateway
#
# Training traffic (every run bounded in time, every answer checked to be a 200): chat
# completions non-streaming and streaming at concurrency 1, 16 and 64, completions, embeddings,
# the model list, with the RoundRobin, LeastLoad and PrefixCache policies, and the same with API
# keys on. What the profile does not see (errors, retries, discovery) is compiled as cold code:
# correct, just not laid out for speed. The final binary is checked with the same requests.
#
# The target directory is $CARGO_TARGET_DIR, by default $KINFER_CACHE/target as for the tests
# (e2e/tools/cargo-target.sh). Cost: two release builds of the gateway and its dependencies, in
# their own target directories ($target/pgo-generate, $target/pgo), then a no-op while neither
# the sources nor the toolchain change (the profile is reused while the instrumented binary is
# the same). oha is installed into $KINFER_CACHE/bin (e2e/bench/lib/oha.sh), llvm-tools with
# rustup when missing. KINFER_VLLM_SIM names a vllm-sim binary that the caller has built already
# (otherwise it is built here, release, uninstrumented).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../../e2e/bench/lib/oha.sh
source "$root/e2e/bench/lib/oha.sh"
# shellcheck source=../../e2e/tools/loopback.sh
source "$root/e2e/tools/loopback.sh"
export KINFER_CACHE=${KINFER_CACHE:-$HOME/.cache/kinfer}
repo=$root
# shellcheck source=../../e2e/tools/cargo-target.sh
source "$root/e2e/tools/cargo-target.sh"
target=$CARGO_TARGET_DIR
note() { echo "== pgo: $*" >&2; }

# --- tools -----------------------------------------------------------------------------------
ensure_oha "$KINFER_CACHE"
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    note "installing the llvm-tools rustup component (llvm-profdata)"
    rustup component add llvm-tools >&2 || rustup component add llvm-tools-preview >&2
fi
[[ -x $profdata ]] || { echo "pgo: $profdata is missing (rustup component add llvm-tools)" >&2; exit 1; }

# --- 1. the instrumented gateway and the stand-in engines -------------------------------------
generate_target=$target/pgo-generate
use_target=$target/pgo
kinfer_own_target "$generate_target"
kinfer_own_target "$use_target"
mkdir -p "$use_target/profiles"
note "instrumented build ($generate_target)"
# Build scripts are instrumented too; their profiles go to a directory nothing reads (the
# training gateway writes where LLVM_PROFILE_FILE says).
(cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$generate_target/build-profiles" \
    CARGO_TARGET_DIR=$generate_target cargo build --release --locked -p kinfer-gateway) >&2
instrumented=$generate_target/release/kinfer-gateway
sim=${KINFER_VLLM_SIM:-}
if [[ -z $sim ]]; then
    (cd "$root" && cargo build --release --locked -p kinfer-vllm-sim --bins) >&2
    sim=$target/release/vllm-sim
fi

# --- helpers ---------------------------------------------------------------------------------
work=$(mktemp -d)
engines=()
gateways=()
cleanup() {
    for pid in "${engines[@]}" "${gateways[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${engines[@]}" "${gateways[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# load URL_BASE SECONDS CONCURRENCY PATH BODY_FILE [KEY]: one bounded oha run, every answer a 200.
load() {
    local base=$1 seconds=$2 concurrency=$3 path=$4 body=$5 key=${6:-}
    local args=(-z "${seconds}s" -c "$concurrency" --no-tui --output-format json)
    [[ -n $key ]] && args+=(-H "authorization: Bearer $key")
    if [[ $body == GET ]]; then
        args+=(-m GET)
    else
        args+=(-m POST -H 'content-type: application/json' -D "$body")
    fi
    timeout $((seconds + 30)) oha "${args[@]}" "$base$path" >"$work/oha.json"
    python3 - "$work/oha.json" "$path" "$concurrency" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
codes = summary.get("statusCodeDistribution", {})
# `-z` cuts the requests in flight at the deadline; nothing else may fail.
errors = {e: n for e, n in summary.get("errorDistribution", {}).items() if e != "aborted due to deadline"}
if not codes or set(codes) != {"200"} or errors:
    sys.exit(f"pgo: {sys.argv[2]} at c={sys.argv[3]}: status codes {codes}, errors {errors}")
PY
}

read -r sim_a sim_b sim_embed listen admin auth_listen auth_admin < <(loopback_ports 7)
chat=pgo-chat
embedder=pgo-embed
for port in "$sim_a" "$sim_b"; do
    # The served names of the three chat models below; zero latencies, as in the benchmark.
    "$sim" serve "$chat" --served-model-name "$chat" "$chat-ll" "$chat-prefix" \
        --host 127.0.0.1 --port "$port" --max-num-seqs 4096 \
        --sim-ttft-ms 0 --sim-itl-ms 0 --sim-prefill-ms-per-token 0 >"$work/sim-$port.log" 2>&1 &
    engines+=($!)
done
"$sim" serve "$embedder" --runner pooling --host 127.0.0.1 --port "$sim_embed" \
    >"$work/sim-$sim_embed.log" 2>&1 &
engines+=($!)
cat >"$work/models.yaml" <<YAML
models:
  - id: $chat
    strategy: RoundRobin
    endpoints: [127.0.0.1:$sim_a, 127.0.0.1:$sim_b]
  - id: $chat-ll
    strategy: LeastLoad
    endpoints: [127.0.0.1:$sim_a, 127.0.0.1:$sim_b]
  - id: $chat-prefix
    strategy: PrefixCache
    endpoints: [127.0.0.1:$sim_a, 127.0.0.1:$sim_b]
  - id: $embedder
    features: [TextEmbedding]
    endpoints: [127.0.0.1:$sim_embed]
YAML
key=sk-pgo-training
cat >"$work/keys.yaml" <<YAML
keys:
  - name: training
    key: $key
  - name: metered
    key: $key-metered
    tokensPerMinute: 1000000000
YAML
body() {  # file model stream
    printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello there, how are you?"}],"max_tokens":%s%s}' \
        "$2" "$([[ $3 == true ]] && echo 32 || echo 16)" "$([[ $3 == true ]] && echo ',"stream":true')" >"$work/$1"
}
body chat.json "$chat" false
body chat-stream.json "$chat" true
body chat-ll.json "$chat-ll" false
body chat-ll-stream.json "$chat-ll" true
body chat-prefix.json "$chat-prefix" false
printf '{"model":"%s","prompt":"Once upon a time","max_tokens":16}' "$chat" >"$work/completion.json"
printf '{"model":"%s","prompt":"Once upon a time","max_tokens":32,"stream":true}' "$chat" \
    >"$work/completion-stream.json"
printf '{"model":"%s","input":["kinfer serves models", "on your own GPUs"]}' "$embedder" \
    >"$work/embedding.json"

start_gateway() {  # binary name listen admin [flags...]
    local binary=$1 name=$2 port=$3 admin_port=$4
    shift 4
    "$binary" --discovery static --static-file "$work/models.yaml" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin_port" --log-filter warn "$@" >"$work/$name.log" 2>&1 &
    gateways+=($!)
    wait_for "http://127.0.0.1:$admin_port/readyz" "$work"/*.log
}
stop_gateways() {  # SIGTERM: a gateway drains and exits normally, which writes its profile
    for pid in "${gateways[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    gateways=()
}

# traffic SECONDS: the training mix against both gateways (the second with API keys).
traffic() {
    local s=$1 plain=http://127.0.0.1:$listen auth=http://127.0.0.1:$auth_listen
    for c in 1 16 64; do
        load "$plain" "$s" "$c" /v1/chat/completions "$work/chat.json"
        load "$plain" "$s" "$c" /v1/chat/completions "$work/chat-stream.json"
    done
    load "$plain" "$s" 16 /v1/chat/completions "$work/chat-ll.json"
    load "$plain" "$s" 16 /v1/chat/completions "$work/chat-ll-stream.json"
    load "$plain" "$s" 16 /v1/chat/completions "$work/chat-prefix.json"
    load "$plain" "$s" 16 /v1/completions "$work/completion.json"
    load "$plain" "$s" 16 /v1/completions "$work/completion-stream.json"
    load "$plain" "$s" 16 /v1/embeddings "$work/embedding.json"
    load "$plain" 1 4 /v1/models GET
    for c in 1 64; do
        load "$auth" "$s" "$c" /v1/chat/completions "$work/chat.json" "$key"
        load "$auth" "$s" "$c" /v1/chat/completions "$work/chat-stream.json" "$key-metered"
    done
}

for port in "$sim_a" "$sim_b" "$sim_embed"; do
    wait_for "http://127.0.0.1:$port/health" "$work"/*.log
done

# --- 2. train, unless this instrumented binary was trained before ------------------------------
stamp=$(sha256sum "$instrumented" | cut -c1-16)
merged=$use_target/profiles/gateway-$stamp.profdata
if [[ -s $merged ]]; then
    note "reusing $merged (same instrumented binary)"
else
    note "training ($work)"
    mkdir -p "$work/profiles"
    # Where the instrumented gateways write (one file per process); the rest ignores it.
    export LLVM_PROFILE_FILE="$work/profiles/gateway-%p.profraw"
    start_gateway "$instrumented" train "$listen" "$admin"
    start_gateway "$instrumented" train-auth "$auth_listen" "$auth_admin" \
        --auth true --api-keys-file "$work/keys.yaml"
    traffic 2
    stop_gateways
    unset LLVM_PROFILE_FILE
    compgen -G "$work/profiles/*.profraw" >/dev/null ||
        { echo "pgo: the training gateways wrote no profile" >&2; exit 1; }
    "$profdata" merge -o "$merged.tmp" "$work"/profiles/*.profraw
    mv "$merged.tmp" "$merged"
    # Older profiles of this tree are dead weight.
    find "$use_target/profiles" -name 'gateway-*.profdata' ! -name "gateway-$stamp.profdata" -delete
fi

# --- 3. the optimized build, checked with the same traffic -----------------------------------
note "optimized build ($use_target)"
# The profile is named after the instrumented binary it was trained on: a new profile has a new
# path, so cargo rebuilds what it optimizes.
(cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$merged" \
    CARGO_TARGET_DIR=$use_target cargo build --release --locked -p kinfer-gateway) >&2
optimized=$use_target/release/kinfer-gateway
note "checking $optimized"
start_gateway "$optimized" check "$listen" "$admin"
start_gateway "$optimized" check-auth "$auth_listen" "$auth_admin" \
    --auth true --api-keys-file "$work/keys.yaml"
traffic 1
stop_gateways
echo "$optimized"
