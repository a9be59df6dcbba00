#!/usr/bin/env bash
# Overhead of authentication and key limits on non-streaming throughput: kinfer-gateway
# (static discovery, two zero-latency vllm-sim backends) with auth off, with a key without
# limits, with request/concurrency limits, and with a token limit (usage read from every
# response body). oha, loopback only, RUN_SECONDS per run (default 5), REPEATS (3) rounds with
# the setups alternated; medians, and ratios to "auth off" within the run.
#
#   e2e/bench/auth-overhead.sh            CONCURRENCY=16 by default
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/ports.sh
source "$here/../lib/ports.sh"
target=${CARGO_TARGET_DIR:-$root/target}
seconds=${RUN_SECONDS:-5}
repeats=${REPEATS:-3}
concurrency=${CONCURRENCY:-16}
command -v oha >/dev/null || { echo "oha is needed: cargo install oha --locked" >&2; exit 1; }
(cd "$root" && cargo build --release -p kinfer-gateway -p kinfer-vllm-sim --bins)
bin=$target/release

work=$(mktemp -d)
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT

wait_for() {
    for _ in $(seq 1 100); do curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2; return 1
}

model=bench-model
read -r sim_a sim_b < <(free_ports 2)
for sim in $sim_a $sim_b; do
    VLLM_SIM_TTFT_MS=0 VLLM_SIM_PREFILL_MS_PER_TOKEN=0 VLLM_SIM_ITL_MS=0 \
        "$bin/vllm-sim" "$model" --host 127.0.0.1 --port "$sim" >"$work/sim-$sim.log" 2>&1 &
    pids+=($!)
done
cat >"$work/models.yaml" <<YAML
models:
  - id: $model
    endpoints: [http://127.0.0.1:$sim_a, http://127.0.0.1:$sim_b]
YAML
cat >"$work/keys.yaml" <<YAML
keys:
  - name: plain
    key: sk-plain
  - name: limited
    key: sk-limited
    requestsPerMinute: 100000000
    maxConcurrent: 100000
  - name: metered
    key: sk-metered
    tokensPerMinute: 100000000000
YAML

declare -A url
start_gateway() {  # name, extra args...
    local name=$1; shift
    local listen admin
    read -r listen admin < <(free_ports 2)
    "$bin/kinfer-gateway" --discovery static --static-file "$work/models.yaml" \
        --listen "127.0.0.1:$listen" --admin-listen "127.0.0.1:$admin" --engine-metrics-interval 0s \
        --log-filter warn "$@" >"$work/gateway-$name.log" 2>&1 &
    pids+=($!)
    wait_for "http://127.0.0.1:$admin/readyz"
    url[$name]="http://127.0.0.1:$listen/v1/chat/completions"
}
start_gateway off
start_gateway on --auth true --api-keys-file "$work/keys.yaml"
for sim in $sim_a $sim_b; do wait_for "http://127.0.0.1:$sim/health"; done

echo '{"model":"'$model'","messages":[{"role":"user","content":"hello"}],"max_tokens":4}' >"$work/body.json"
setups=("off:off:" "plain:on:sk-plain" "limited:on:sk-limited" "metered:on:sk-metered")
for round in $(seq 1 "$repeats"); do
    for setup in "${setups[@]}"; do
        IFS=: read -r name gateway key <<<"$setup"
        headers=(-H 'content-type: application/json')
        [[ -n $key ]] && headers+=(-H "authorization: Bearer $key")
        oha -z "${seconds}s" -c "$concurrency" -m POST "${headers[@]}" -D "$work/body.json" \
            --no-tui --output-format json "${url[$gateway]}" >"$work/$name-$round.json"
    done
done

python3 - "$work" "$repeats" "${setups[@]}" <<'PY'
import json, statistics, sys
work, repeats, setups = sys.argv[1], int(sys.argv[2]), [s.split(":")[0] for s in sys.argv[3:]]
def figures(name):
    runs = [json.load(open(f"{work}/{name}-{r}.json")) for r in range(1, repeats + 1)]
    rps = statistics.median(run["summary"]["requestsPerSec"] for run in runs)
    ok = all(set(run.get("statusCodeDistribution", {})) <= {"200"} for run in runs)
    p50 = statistics.median(run["latencyPercentiles"]["p50"] for run in runs) * 1000
    return rps, p50, ok
base = figures("off")[0]
print(f"{'setup':<10} {'req/s':>9} {'p50 ms':>8} {'vs off':>7} all-200")
for name in setups:
    rps, p50, ok = figures(name)
    print(f"{name:<10} {rps:>9.0f} {p50:>8.2f} {rps / base:>7.3f} {ok}")
PY
