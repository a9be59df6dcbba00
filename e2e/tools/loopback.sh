# shellcheck shell=bash
# Helpers for scripts that run kinfer and stand-in engines on 127.0.0.1. Sourced by
# gateway/tests/openai_sdk/run.sh and gateway/pgo/build.sh.

# loopback_ports N: N distinct free ports, space-separated. They are taken below the kernel's
# ephemeral range: a port from bind(0) is free only until some outgoing connection (another
# test, a build) gets it as its source port before the server binds it.
loopback_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
ports = []
while len(ports) < int(sys.argv[1]):
    port = random.randrange(max(1024, low - 12000), low)
    if port in ports:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    ports.append(port)
print(" ".join(map(str, ports)))
PY
}

# wait_for URL [LOG...]: until URL answers 2xx (10 s); on timeout prints the logs, fails.
wait_for() {
    local url=$1
    shift
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    (($# == 0)) || tail -n 50 "$@" >&2
    return 1
}
