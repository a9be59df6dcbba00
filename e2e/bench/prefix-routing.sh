#!/usr/bin/env bash
# Routing quality on a shared-prefix workload: RoundRobin vs LeastLoad vs PrefixCache through
# kinfer-gateway (static discovery) in front of 4 vllm-sim replicas with a simulated prefix
# cache. Everything on 127.0.0.1; bounded in requests and time.
#
#   e2e/bench/prefix-routing.sh
#
# Workload: 8 system prompts of 2k to 4k tokens (vllm-sim: 4 bytes per token), each request
# one of them (uniformly) plus a short user question, streamed, 8 output tokens, at a fixed
# concurrency. Each replica's KV cache holds about 2.5 of the 8 prompts, so where a prompt
# lands decides whether its prefill is cached.
#
# Reported per strategy: p50/p99 time to first token (first content chunk, client side),
# throughput, prefix cache hit rate (sum over replicas of vllm:prefix_cache_hits_total /
# vllm:prefix_cache_queries_total, tokens), and load balance: requests per replica (max/mean)
# and the peak of the busiest replica's running+waiting over the mean, sampled every 50 ms.
#
# Setups: kinfer:<strategy>, and the peers' cache-aware routers when their venvs exist
# (see /work/shared/PEERS.md): vllm-router:cache_aware (PyPI vllm-router 0.1.17, in
# $KINFER_CACHE/venv-vllm-router), sglang-router:cache_aware (sglang-router 0.3.2, binary smg,
# in $KINFER_CACHE/venv-sglang-router). Requests per replica are read from each engine's
# vllm:request_success_total.
#
# Environment: REQUESTS (default 480), CONCURRENCY (16), MAX_SECONDS per setup (90), SETUPS
# (default "kinfer:RoundRobin kinfer:LeastLoad kinfer:PrefixCache vllm-router:cache_aware
# sglang-router:cache_aware"), PREFIX_LOAD_FACTOR (kinfer's --prefix-load-factor, 1.5), KINFER_CACHE (venv-sdk for httpx), KINFER_PROFILE (release),
# CARGO_TARGET_DIR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/ports.sh
source "$here/../lib/ports.sh"
cache=${KINFER_CACHE:-$HOME/.cache/kinfer}
venv=$cache/venv-sdk
profile=${KINFER_PROFILE:-release}
target=${CARGO_TARGET_DIR:-$root/target}
requests=${REQUESTS:-480}
concurrency=${CONCURRENCY:-16}
max_seconds=${MAX_SECONDS:-90}
setups=${SETUPS:-kinfer:RoundRobin kinfer:LeastLoad kinfer:PrefixCache vllm-router:cache_aware sglang-router:cache_aware}

build_flags=()
[[ $profile == release ]] && build_flags+=(--release)
(cd "$root" && cargo build "${build_flags[@]}" -p kinfer-gateway -p kinfer-vllm-sim --bins)
bin=$target/$profile

if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check openai pytest
fi

work=$(mktemp -d)
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

wait_for() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}

model=bench/prefix-model
results=$work/results.jsonl
for setup in $setups; do
    front=${setup%%:*}
    strategy=${setup#*:}
    case $front in
        vllm-router) router_bin=$cache/venv-vllm-router/bin/vllm-router ;;
        sglang-router) router_bin=$cache/venv-sglang-router/bin/smg ;;
        *) router_bin= ;;
    esac
    if [[ -n $router_bin && ! -x $router_bin ]]; then
        echo "skipping $setup: $router_bin is not installed" >&2
        continue
    fi
    read -r s1 s2 s3 s4 listen admin < <(free_ports 6)
    sims=("$s1" "$s2" "$s3" "$s4")
    # Fresh engines per strategy: empty caches. 2k-4k-token prompts are 125-250 blocks of 16;
    # 600 blocks per replica hold about 2.5 of the 8.
    for port in "${sims[@]}"; do
        "$bin/vllm-sim" serve "$model" --host 127.0.0.1 --port "$port" --max-model-len 8192 \
            --max-num-seqs 8 --sim-kv-cache-blocks 600 --sim-ttft-ms 5 \
            --sim-prefill-ms-per-token 0.1 --sim-itl-ms 2 >"$work/sim-$port.log" 2>&1 &
        pids+=($!)
    done
    for port in "${sims[@]}"; do wait_for "http://127.0.0.1:$port/health"; done
    workers=()
    for port in "${sims[@]}"; do workers+=("http://127.0.0.1:$port"); done
    case $front in
        kinfer)
            {
                echo "models:"
                echo "  - id: $model"
                echo "    strategy: $strategy"
                echo "    endpoints:"
                for port in "${sims[@]}"; do
                    echo "      - url: http://127.0.0.1:$port"
                    echo "        name: r$port"
                done
            } >"$work/models.yaml"
            "$bin/kinfer-gateway" --discovery static --static-file "$work/models.yaml" \
                --listen "127.0.0.1:$listen" --admin-listen "127.0.0.1:$admin" --worker-threads 1 \
                --engine-metrics-interval 500ms --prefix-load-factor "${PREFIX_LOAD_FACTOR:-1.5}" \
                --log-filter warn >"$work/front-$strategy.log" 2>&1 &
            pids+=($!)
            wait_for "http://127.0.0.1:$admin/readyz"
            ;;
        vllm-router)
            "$router_bin" --host 127.0.0.1 --port "$listen" --worker-urls "${workers[@]}" \
                --policy "$strategy" --prometheus-host 127.0.0.1 --prometheus-port "$admin" \
                --log-level warning >"$work/front-$front.log" 2>&1 &
            pids+=($!)
            wait_for "http://127.0.0.1:$listen/health"
            ;;
        sglang-router)
            "$router_bin" launch --host 127.0.0.1 --port "$listen" --worker-urls "${workers[@]}" \
                --policy "$strategy" --prometheus-host 127.0.0.1 --prometheus-port "$admin" \
                --log-level warn >"$work/front-$front.log" 2>&1 &
            pids+=($!)
            wait_for "http://127.0.0.1:$listen/health"
            ;;
    esac

    STRATEGY="$front $strategy" GATEWAY="http://127.0.0.1:$listen" MODEL=$model \
    SIMS="${sims[*]}" REQUESTS=$requests CONCURRENCY=$concurrency MAX_SECONDS=$max_seconds \
        timeout $((max_seconds + 60)) "$venv/bin/python" - >>"$results" <<'PY'
import asyncio, json, os, random, re, statistics, time
try:
    import httpx
except ImportError:  # newer openai releases depend on httpx2, the same API
    import httpx2 as httpx

strategy = os.environ["STRATEGY"]
gateway = os.environ["GATEWAY"]
model = os.environ["MODEL"]
sims = os.environ["SIMS"].split()
total = int(os.environ["REQUESTS"])
concurrency = int(os.environ["CONCURRENCY"])
deadline = time.monotonic() + float(os.environ["MAX_SECONDS"])

rng = random.Random(7)
words = "the of and to in is that for it as was with be by on not he this are or his".split()
# 8 system prompts, 2k..4k tokens (8..16 KiB: vllm-sim counts 4 bytes per token).
prompts = []
for index in range(8):
    size = 8192 + index * 1170
    text = f"System prompt {index}. You are assistant number {index}. "
    while len(text) < size:
        text += rng.choice(words) + " "
    prompts.append(text[:size])
plan = [rng.randrange(8) for _ in range(total)]

def metric(text, name):
    return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))

async def sample_loads(client, stop, peaks):
    while not stop.is_set():
        loads = []
        for port in sims:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                loads.append(metric(text, "vllm:num_requests_running") + metric(text, "vllm:num_requests_waiting"))
            except httpx.HTTPError:
                pass
        # Only while the run is in full swing (not the ramp or the tail).
        if len(loads) == len(sims) and sum(loads) >= 0.75 * concurrency:
            peaks.append(max(loads) / (sum(loads) / len(loads)))
        await asyncio.sleep(0.05)

async def main():
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        ttfts, errors = [], 0
        queue = list(enumerate(plan))
        async def worker():
            nonlocal errors
            while queue and time.monotonic() < deadline:
                number, which = queue.pop(0)
                body = {"model": model, "stream": True, "max_tokens": 8, "messages": [
                    {"role": "system", "content": prompts[which]},
                    {"role": "user", "content": f"User {number}: {rng.choice(words)} {rng.choice(words)}?"},
                ]}
                start = time.monotonic()
                first = None
                async with client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        errors += 1
                        await response.aread()
                        continue
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                            first = time.monotonic() - start
                if first is not None:
                    ttfts.append(first)
        stop = asyncio.Event()
        peaks = []
        sampler = asyncio.create_task(sample_loads(client, stop, peaks))
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        stop.set()
        await sampler
        hits = queries = 0.0
        counts = []
        for port in sims:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            hits += metric(text, "vllm:prefix_cache_hits_total")
            queries += metric(text, "vllm:prefix_cache_queries_total")
            counts.append(int(metric(text, "vllm:request_success_total")))
    ttfts.sort()
    counts.sort(reverse=True)
    print(json.dumps({
        "strategy": strategy,
        "requests": len(ttfts),
        "errors": errors,
        "seconds": round(elapsed, 1),
        "req_per_s": round(len(ttfts) / elapsed, 1),
        "ttft_p50_ms": round(1000 * ttfts[len(ttfts) // 2], 1),
        "ttft_p99_ms": round(1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))], 1),
        "cache_hit_rate": round(hits / queries, 3) if queries else None,
        "requests_per_replica": counts,
        "share_max_over_mean": round(counts[0] / (sum(counts) / len(sims)), 2) if counts else None,
        "peak_load_max_over_mean_p95": round(sorted(peaks)[int(len(peaks) * 0.95)], 2) if peaks else None,
    }))

asyncio.run(main())
PY
    stop_all
done

"$venv/bin/python" - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'setup':<28} {'req':>5} {'err':>4} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'hit rate':>8} {'share max/mean':>14} {'peak load max/mean (p95)':>24}  per replica")
for r in rows:
    print(f"{r['strategy']:<28} {r['requests']:>5} {r['errors']:>4} {r['req_per_s']:>6} {r['ttft_p50_ms']:>7}ms {r['ttft_p99_ms']:>7}ms {r['cache_hit_rate']:>8} {r['share_max_over_mean']:>14} {r['peak_load_max_over_mean_p95']:>24}  {r['requests_per_replica']}")
PY
