#!/usr/bin/env bash
# CPU instructions per proxied request, counted by valgrind's callgrind: kinfer-gateway (one
# serving thread) and nginx (one worker), in front of the same two vllm-sim backends, with the
# same non-streaming chat request. Unlike requests/s on a shared 2-core machine, the count does
# not depend on what else runs, so it compares builds (before/after a change) exactly.
#
#   e2e/bench/instructions.sh [-n REQUESTS] [-s "kinfer nginx"] [-b BASELINE_BINARY]
#
#   -n  requests of the long run (default 3000); a run of n/3 is subtracted, which removes
#       start-up and shutdown: the result is (I(n) - I(n/3)) / (n - n/3)
#   -s  setups (default "kinfer nginx"); also `kinfer-plain`, the plain release build of the
#       same code (`kinfer` is the profile-guided build that ships, gateway/pgo/build.sh);
#       -b adds `kinfer-base`, an older gateway binary
#
# Needs valgrind (apt-get install valgrind when root) and oha (see gateway.sh). About 2 minutes
# per setup: callgrind runs the proxy some 50 times slower.
set -euo pipefail

requests=3000
setups="kinfer nginx"
baseline=
while getopts "n:s:b:" option; do
    case $option in
        n) requests=$OPTARG ;;
        s) setups=$OPTARG ;;
        b) baseline=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
[[ -z $baseline ]] || setups="$setups kinfer-base"
short=$((requests / 3))

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=lib/nginx.sh
source "$here/lib/nginx.sh"
# shellcheck source=lib/oha.sh
source "$here/lib/oha.sh"
# shellcheck source=lib/target.sh
source "$here/lib/target.sh"
# shellcheck source=../lib/ports.sh
source "$here/../lib/ports.sh"
note() { echo "== $*" >&2; }

if ! command -v valgrind >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        note "installing valgrind (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; } >&2
    else
        echo "valgrind is needed" >&2
        exit 1
    fi
fi
ensure_oha "$cache"
(cd "$root" && cargo build --release -p kinfer-gateway -p kinfer-vllm-sim --bins) >&2
bin=$target/release
optimized=
if [[ " $setups " == *" kinfer "* ]]; then
    optimized=$(CARGO_TARGET_DIR=$target KINFER_VLLM_SIM=$bin/vllm-sim bash "$root/gateway/pgo/build.sh")
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

read -r sim_a sim_b < <(free_ports 2)
for port in "$sim_a" "$sim_b"; do
    "$bin/vllm-sim" serve m --host 127.0.0.1 --port "$port" --max-num-seqs 4096 \
        --sim-ttft-ms 0 --sim-itl-ms 0 --sim-prefill-ms-per-token 0 >"$work/sim-$port.log" 2>&1 &
    pids+=($!)
done
cat >"$work/models.yaml" <<YAML
models:
  - id: m
    strategy: RoundRobin
    endpoints: [127.0.0.1:$sim_a, 127.0.0.1:$sim_b]
YAML
body='{"model":"m","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16}'

# Total instructions of one proxy process serving `count` requests (4 connections).
count_instructions() {  # setup, count
    local setup=$1 count=$2 port admin proxy out=$work/callgrind.$1.$2
    read -r port admin < <(free_ports 2)
    case $setup in
        kinfer | kinfer-plain | kinfer-base)
            local binary=$optimized
            [[ $setup == kinfer-plain ]] && binary=$bin/kinfer-gateway
            [[ $setup == kinfer-base ]] && binary=$baseline
            valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" \
                --discovery static --static-file "$work/models.yaml" \
                --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --log-filter warn \
                --worker-threads 1 --engine-metrics-interval 0s >"$work/$setup.log" 2>&1 &
            ;;
        nginx)
            write_nginx_conf "$work/nginx" "$port" "$sim_a" "$sim_b" \
                "worker_processes 1; master_process off;"
            valgrind --tool=callgrind --callgrind-out-file="$out" \
                "$(command -v nginx || echo /usr/sbin/nginx)" -p "$work/nginx" \
                -c "$work/nginx/nginx.conf" >"$work/$setup.log" 2>&1 &
            ;;
    esac
    proxy=$!
    local ready=
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null --max-time 2 -H 'content-type: application/json' -d "$body" \
            "http://127.0.0.1:$port/v1/chat/completions" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.2
    done
    [[ -n $ready ]] || { echo "$setup did not answer; log: $(tail -5 "$work/$setup.log")" >&2; exit 1; }
    timeout 600 oha -n "$count" -c 4 -m POST -H 'content-type: application/json' -d "$body" \
        --no-tui --output-format json "http://127.0.0.1:$port/v1/chat/completions" \
        >"$work/oha.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["summary"]["successRate"]; sys.exit(0 if s == 1 else f"success rate {s}")' "$work/oha.json"
    # nginx finishes on QUIT, the gateway on TERM; both write the profile on exit.
    kill -QUIT "$proxy" 2>/dev/null || true
    kill -TERM "$proxy" 2>/dev/null || true
    wait "$proxy" 2>/dev/null || true
    awk '/^totals:/ { print $2 }' "$out"
}

printf '| setup | instructions per request |\n|---|---:|\n'
for setup in $setups; do
    note "$setup: $short then $requests requests under callgrind"
    few=$(count_instructions "$setup" "$short")
    many=$(count_instructions "$setup" "$requests")
    printf '| %s | %s |\n' "$setup" "$(( (many - few) / (requests - short) ))"
done
