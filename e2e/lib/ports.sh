# shellcheck shell=bash
# Ports on 127.0.0.1 for the test bed's and the benchmarks' processes. Sourced by e2e/cluster.sh
# and the scripts of e2e/bench.

# free_ports N: N distinct free ports, from sockets bound at the same time. Separate
# bind-to-0 calls may hand out the same port again once the first socket is closed, and a
# process that then fails to bind makes a whole run (or the local cluster) fail to start.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
PY
}

# fill_port_pool N fills the pool with N distinct ports; take_port VAR sets VAR to the next one.
# (A function rather than $(...): the pool must shrink in the calling shell.)
port_pool=()
fill_port_pool() {
    read -r -a port_pool < <(free_ports "$1")
}
take_port() {
    ((${#port_pool[@]} > 0)) || { echo "take_port: the port pool is empty" >&2; return 1; }
    printf -v "$1" %s "${port_pool[0]}"
    port_pool=("${port_pool[@]:1}")
}
