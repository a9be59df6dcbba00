#!/usr/bin/env bash
# Proxy overhead benchmark: the same two vllm-sim backends reached directly, through
# kinfer-gateway and through nginx (the keep-alive reverse-proxy floor), with oha.
# Everything on 127.0.0.1; every run bounded in time.
#
#   e2e/bench/gateway.sh [-d SECONDS] [-c "1 16 64"] [-r REPEATS] [-s "direct kinfer nginx"]
#
# Needs: oha (`cargo install oha --locked`), nginx (Debian `nginx`: `apt-get install nginx`),
# python3. Builds the release binaries of kinfer-gateway and vllm-sim.
#
# On a small machine the generator, the proxy and the backends share the CPUs: setups are
# alternated within each repetition and compared as medians and ratios of the same run, never
# against figures from another run (see shared/PEERS.md).
set -euo pipefail

duration=5
concurrency="1 16 64"
repeats=3
setups="direct kinfer nginx"
while getopts "d:c:r:s:" option; do
    case $option in
        d) duration=$OPTARG ;;
        c) concurrency=$OPTARG ;;
        r) repeats=$OPTARG ;;
        s) setups=$OPTARG ;;
        *) sed -n '2,12p' "$0"; exit 2 ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [[ " $setups " == *" nginx "* && ! -x $nginx_bin ]]; then
    echo "nginx not found: apt-get install nginx (or -s 'direct kinfer')" >&2
    exit 1
fi

(cd "$root" && cargo build --release -p kinfer-gateway -p kinfer-vllm-sim --bins)
bin=$target/release

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

read -r sim_a sim_b gateway admin nginx_port < <(python3 - <<'PY'
import socket
sockets = [socket.socket() for _ in range(5)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
PY
)

model=bench-model
for port in "$sim_a" "$sim_b"; do
    # Zero latencies: the backends answer as fast as they can, so the proxy is what is measured.
    "$bin/vllm-sim" serve "$model" --host 127.0.0.1 --port "$port" --max-num-seqs 4096 \
        --sim-ttft-ms 0 --sim-itl-ms 0 --sim-prefill-ms-per-token 0 >"$work/sim-$port.log" 2>&1 &
    pids+=($!)
done

cat >"$work/models.yaml" <<YAML
models:
  - id: $model
    strategy: RoundRobin
    endpoints: [127.0.0.1:$sim_a, 127.0.0.1:$sim_b]
YAML
"$bin/kinfer-gateway" --discovery static --static-file "$work/models.yaml" \
    --listen "127.0.0.1:$gateway" --admin-listen "127.0.0.1:$admin" --log-filter warn \
    ${KINFER_GATEWAY_BENCH_ARGS:-} \
    >"$work/gateway.log" 2>&1 &
gateway_pid=$!
pids+=($gateway_pid)

nginx_pid=
if [[ " $setups " == *" nginx "* ]]; then
    mkdir -p "$work/nginx/logs"
    cat >"$work/nginx/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream engines {
        server 127.0.0.1:$sim_a;
        server 127.0.0.1:$sim_b;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://engines;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
    "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
    nginx_pid=$!
    pids+=($nginx_pid)
fi

wait_for() {
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    cat "$work"/*.log >&2
    exit 1
}
wait_for "http://127.0.0.1:$sim_a/health"
wait_for "http://127.0.0.1:$sim_b/health"
wait_for "http://127.0.0.1:$admin/readyz"

url_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$sim_a/v1/chat/completions" ;;
        kinfer) echo "http://127.0.0.1:$gateway/v1/chat/completions" ;;
        nginx) echo "http://127.0.0.1:$nginx_port/v1/chat/completions" ;;
    esac
}
if [[ -n $nginx_pid ]]; then wait_for "http://127.0.0.1:$nginx_port/health"; fi

printf '{"model":"%s","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16}' "$model" >"$work/plain.json"
printf '{"model":"%s","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":32,"stream":true}' "$model" >"$work/stream.json"

# Sanity: every setup answers, and streams arrive as SSE.
for setup in $setups; do
    curl -fsS -o /dev/null -H 'content-type: application/json' -d @"$work/plain.json" "$(url_of "$setup")"
    curl -fsS -H 'content-type: application/json' -d @"$work/stream.json" "$(url_of "$setup")" | grep -q 'data: \[DONE\]'
done

results=$work/results.jsonl
for repeat in $(seq 1 "$repeats"); do
    for mode in plain stream; do
        for c in $concurrency; do
            for setup in $setups; do
                out=$work/oha.json
                timeout $((duration + 30)) oha -z "${duration}s" -c "$c" -m POST \
                    -H 'content-type: application/json' -d "$(cat "$work/$mode.json")" \
                    --no-tui --output-format json "$(url_of "$setup")" >"$out" 2>/dev/null || true
                python3 - "$out" "$setup" "$mode" "$c" "$repeat" >>"$results" <<'PY'
import json, sys
path, setup, mode, c, repeat = sys.argv[1:]
try:
    data = json.load(open(path))
    rps = data["summary"]["requestsPerSec"]
    p50 = data["latencyPercentiles"]["p50"]
    ok = data["summary"].get("successRate", 1.0)
    codes = data.get("statusCodeDistribution", {})
except Exception as error:  # a failed run is recorded, not fatal
    rps, p50, ok, codes = 0.0, None, 0.0, {"error": str(error)}
print(json.dumps({"setup": setup, "mode": mode, "c": int(c), "repeat": int(repeat),
                  "rps": rps, "p50_ms": None if p50 is None else p50 * 1000, "success": ok, "codes": codes}))
PY
                printf '.' >&2
            done
        done
    done
done
echo >&2

rss_kib() { [[ -n $1 ]] && ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
nginx_rss=0
if [[ -n $nginx_pid ]]; then
    # nginx: master plus workers.
    nginx_rss=$(ps -o rss= --ppid "$nginx_pid" 2>/dev/null | awk '{s+=$1} END {print s+0}')
    nginx_rss=$((nginx_rss + $(rss_kib "$nginx_pid")))
fi
python3 - "$results" "$(rss_kib "$gateway_pid")" "$nginx_rss" "$setups" "$concurrency" <<'PY'
import json, statistics, sys
path, gateway_rss, nginx_rss, setups, concurrency = sys.argv[1:]
rows = [json.loads(line) for line in open(path)]
setups, levels = setups.split(), [int(c) for c in concurrency.split()]
def median(mode, setup, c, key):
    values = [r[key] for r in rows if (r["mode"], r["setup"], r["c"]) == (mode, setup, c) and r[key] is not None]
    return statistics.median(values) if values else float("nan")
for mode, unit in (("plain", "req/s"), ("stream", "streams/s (32 chunks)")):
    print(f"\n{mode}: median {unit} | p50 ms, by concurrency")
    print(f"{'setup':8}" + "".join(f"{'c=' + str(c):>22}" for c in levels))
    for setup in setups:
        cells = "".join(f"{median(mode, setup, c, 'rps'):>12.0f} |{median(mode, setup, c, 'p50_ms'):>7.2f} ms" for c in levels)
        print(f"{setup:8}{cells}")
    if "kinfer" in setups and "nginx" in setups:
        ratios = "".join(f"{median(mode, 'kinfer', c, 'rps') / max(median(mode, 'nginx', c, 'rps'), 1e-9):>22.2f}" for c in levels)
        print(f"{'k/nginx':8}{ratios}")
failed = [r for r in rows if r["success"] < 1.0]
if failed:
    print(f"\n{len(failed)} runs had failed requests, e.g. {failed[0]}")
print(f"\nRSS after the runs: kinfer-gateway {int(gateway_rss) / 1024:.1f} MiB, nginx {int(nginx_rss) / 1024:.1f} MiB")
PY
