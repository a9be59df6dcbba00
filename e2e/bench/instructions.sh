#!/usr/bin/env bash
# CPU instructions per proxied request, counted by valgrind's callgrind: kinfer-gateway (one
# runtime worker thread, --worker-threads 1) and nginx (one worker), in front of the same two
# vllm-sim backends, with the same non-streaming chat request. Unlike requests/s on a shared
# 2-core machine, the count does not depend on what else runs, so it compares builds
# (before/after a change) exactly.
#
#   e2e/bench/instructions.sh [-n REQUESTS] [-s "kinfer nginx"] [-b BASELINE_BINARY] [-c 4] [-x] [-k|-m]
#
#   -n  requests of the long run (default 3000); a run of n/3 is subtracted, which removes
#       start-up and shutdown: the result is (I(n) - I(n/3)) / (n - n/3)
#   -s  setups (default "kinfer nginx"); `kinfer` is the plain release build that ships, or
#       with KINFER_BENCH_PGO=1 the optional profile-guided build (gateway/pgo/build.sh);
#       `kinfer-plain` is always the plain release build; -b adds `kinfer-base`, an older
#       gateway binary
#   -c  client connections (default 4)
#   -x  a new connection for every request (oha --disable-keepalive): adds accepting and
#       closing a connection to what is counted
#   -k  also simulate the caches and branch predictors (callgrind --cache-sim --branch-sim):
#       every event per request (D1mr/D1mw: first-level data misses on read/write, Bcm/Bim:
#       mispredicted conditional/indirect branches), in the host's cache geometry
#   -m  count memcpy/memmove calls and bytes per request instead, with lib/memcpy-count.c
#       preloaded (built here with cc; no valgrind); the copy sites that move the most bytes
#       per request go to stderr, named by addr2line where the binary has line tables (run
#       with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for kinfer-plain, and build a -b
#       binary the same way)
#
# Needs valgrind (apt-get install valgrind when root; not for -m) and oha (see gateway.sh).
# About 2 minutes per setup: callgrind runs the proxy some 50 times slower.
set -euo pipefail

requests=3000
setups="kinfer nginx"
baseline=
connections=4
simulate=()
copies=
keepalive=()
while getopts "n:s:b:c:xkm" option; do
    case $option in
        n) requests=$OPTARG ;;
        s) setups=$OPTARG ;;
        b) baseline=$OPTARG ;;
        c) connections=$OPTARG ;;
        k) simulate=(--cache-sim=yes --branch-sim=yes) ;;
        m) copies=1 ;;
        x) keepalive=(--disable-keepalive) ;;
        *) sed -n '2,29p' "$0"; exit 2 ;;
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

if [[ -z $copies ]] && ! command -v valgrind >/dev/null; then
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
kinfer_gateway=$bin/kinfer-gateway
if [[ " $setups " == *" kinfer "* && ${KINFER_BENCH_PGO:-0} == 1 ]]; then
    kinfer_gateway=$(CARGO_TARGET_DIR=$target KINFER_VLLM_SIM=$bin/vllm-sim bash "$root/gateway/pgo/build.sh")
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The launcher of a proxy under measurement: callgrind, or the memcpy counter preloaded.
if [[ -n $copies ]]; then
    "${CC:-cc}" -O2 -shared -fPIC -fno-builtin -fno-tree-loop-distribute-patterns \
        -o "$work/memcpy-count.so" "$here/lib/memcpy-count.c" -ldl
fi
# Run in the background (`measured ... &`): exec makes $! the proxy itself, which the signals
# that end the run must reach.
measured() {  # output file, command...
    local out=$1
    shift
    if [[ -n $copies ]]; then
        LD_PRELOAD="$work/memcpy-count.so" MEMCPY_OUT="$out" MEMCPY_SITES="$out.sites" exec "$@"
    else
        exec valgrind --tool=callgrind "${simulate[@]}" --callgrind-out-file="$out" "$@"
    fi
}

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

# Totals of one proxy process serving `count` requests: the `events:` and `totals:` lines (the
# file keeps its name, $work/callgrind.SETUP.COUNT, for the sites table of -m).
count_events() {  # setup, count
    local setup=$1 count=$2 port admin proxy out=$work/callgrind.$1.$2
    read -r port admin < <(free_ports 2)
    case $setup in
        kinfer | kinfer-plain | kinfer-base)
            local binary=$kinfer_gateway
            [[ $setup == kinfer-plain ]] && binary=$bin/kinfer-gateway
            [[ $setup == kinfer-base ]] && binary=$baseline
            measured "$out" "$binary" \
                --discovery static --static-file "$work/models.yaml" \
                --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --log-filter warn \
                --worker-threads 1 --engine-metrics-interval 0s >"$work/$setup.log" 2>&1 &
            ;;
        nginx)
            write_nginx_conf "$work/nginx" "$port" "$sim_a" "$sim_b" \
                "worker_processes 1; master_process off;"
            measured "$out" \
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
    timeout 600 oha -n "$count" -c "$connections" "${keepalive[@]}" -m POST -H 'content-type: application/json' -d "$body" \
        --no-tui --output-format json "http://127.0.0.1:$port/v1/chat/completions" \
        >"$work/oha.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["summary"]["successRate"]; sys.exit(0 if s == 1 else f"success rate {s}")' "$work/oha.json"
    # nginx finishes on QUIT, the gateway on TERM (QUIT would end it before the counts of -m
    # are written); both write the profile on exit.
    if [[ $setup == nginx ]]; then
        kill -QUIT "$proxy" 2>/dev/null || true
    else
        kill -TERM "$proxy" 2>/dev/null || true
    fi
    wait "$proxy" 2>/dev/null || true
    grep -E '^(events|totals):' "$out"
}

# -m: the copy sites of 16 bytes or more, per request ((many - few) / (requests - short)), the
# twelve that move the most bytes, with the function (and the functions inlined into it) that
# addr2line finds at each.
copy_sites() {  # setup
    local setup=$1
    echo "== $setup: memcpy/memmove sites, per request (calls, bytes, last size, where)"
    awk -v n=$((requests - short)) '
        /^#/ { next }
        FNR == NR { few[$4 " " $5] = $1 " " $2; next }
        {
            split(few[$4 " " $5], f, " ")
            calls = ($1 - f[1]) / n; bytes = ($2 - f[2]) / n
            if (bytes >= 1) printf "%.2f %.0f %d %s %s\n", calls, bytes, $3, $4, $5
        }' "$work/callgrind.$setup.$short.sites" "$work/callgrind.$setup.$requests.sites" |
        sort -k2,2nr | head -12 | while read -r calls bytes size module offset; do
            local where=
            if command -v addr2line >/dev/null && [[ -f $module ]]; then
                where=$(addr2line -e "$module" -f -C -i "$offset" 2>/dev/null | paste -sd ' ' |
                    sed -E 's/ [^ ]*:[0-9?]+( \(discriminator [0-9]+\))?//g' | cut -c1-160)
            fi
            printf '  %6s %7s %6s  %s %s\n' "$calls" "$bytes" "$size" "${module##*/}+$offset" "$where"
        done
}

# One row per setup: each event's (many - few) / (requests - short).
header=
for setup in $setups; do
    note "$setup: $short then $requests requests under callgrind ($connections connections)"
    few=$(count_events "$setup" "$short")
    many=$(count_events "$setup" "$requests")
    read -r -a names <<<"$(sed -n 's/^events: //p' <<<"$many")"
    read -r -a low <<<"$(sed -n 's/^totals: //p' <<<"$few")"
    read -r -a high <<<"$(sed -n 's/^totals: //p' <<<"$many")"
    if [[ -z $header ]]; then
        header=1
        if [[ ${#names[@]} == 1 ]]; then
            printf '| setup | instructions per request |\n|---|---:|\n'
        else
            printf '| setup |'; printf ' %s |' "${names[@]}"; printf '\n|---|'
            printf -- '---:|%.0s' "${names[@]}"; printf '\n'
        fi
    fi
    printf '| %s |' "$setup"
    for i in "${!names[@]}"; do
        awk -v a="${high[i]}" -v b="${low[i]}" -v n=$((requests - short)) \
            'BEGIN { v = (a - b) / n; printf (v >= 100 || v <= -100) ? " %d |" : " %.1f |", v }'
    done
    printf '\n'
    [[ -z $copies ]] || copy_sites "$setup" >&2
done
