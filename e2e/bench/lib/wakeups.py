"""Wake-ups at concurrency 1, from the scheduler trace that `gateway.sh -w` records.

At concurrency 1 a proxied request is a chain of hand-offs: generator -> proxy -> backend ->
proxy -> generator. Each hand-off wakes a sleeping thread. On the waker's own CPU that costs a
couple of microseconds; on another, idle vCPU it costs an inter-processor interrupt and the
vCPU's resumption, tens of microseconds on a VM. This reads the kernel's sched_waking,
sched_wakeup and sched_switch events (tracefs) and reports, per setup and mode, how many
wake-ups of each hop went to another CPU per request and how long the woken threads waited.

Usage: wakeups.py RESULTS.jsonl WORK_DIR WINDOW_SECONDS

RESULTS.jsonl holds gateway.sh's runs; a concurrency-1 run was traced when
WORK_DIR/wake-SETUP-MODE-REPEAT.trace exists, with WORK_DIR/wake-SETUP-MODE-REPEAT.roles ("TID
ROLE" lines: generator, proxy, backend) beside it. The requests of a window are the run's rate
times WINDOW_SECONDS.
"""

import collections
import json
import os
import re
import statistics
import sys

EVENT = re.compile(r"^\s*.+?-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(sched_\w+):\s+(.*)$")
FIELDS = re.compile(r"(\w+)=(\S+)")
NEXT = re.compile(r"next_comm=.*? next_pid=(\d+)")
SHORT = {"generator": "gen", "proxy": "proxy", "backend": "backend"}


def parse(trace_path, roles):
    """Yields (hop, remote, wait_us): each wake-up between two threads with a role."""
    waking = {}  # wakee tid -> (time, waker role, waker cpu)
    woken = {}  # wakee tid -> (time of sched_waking, hop, remote)
    with open(trace_path) as trace:
        for line in trace:
            match = EVENT.match(line)
            if not match:
                continue
            tid, cpu, time, event, rest = match.groups()
            cpu, time = int(cpu), float(time)
            if event == "sched_waking":
                wakee = dict(FIELDS.findall(rest)).get("pid")
                if tid in roles and wakee in roles:
                    waking[wakee] = (time, roles[tid], cpu)
            elif event == "sched_wakeup":
                fields = dict(FIELDS.findall(rest))
                wakee = fields.get("pid")
                if wakee in waking:
                    start, waker_role, waker_cpu = waking.pop(wakee)
                    hop = f"{SHORT[waker_role]}→{SHORT[roles[wakee]]}"
                    woken[wakee] = (start, hop, int(fields.get("target_cpu", -1)) != waker_cpu)
            elif event == "sched_switch":
                found = NEXT.search(rest)
                if found and found.group(1) in woken:
                    start, hop, remote = woken.pop(found.group(1))
                    yield hop, remote, (time - start) * 1e6


def main():
    results, work, window_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    windows = collections.defaultdict(list)  # (setup, mode) -> [(trace base, requests)]
    for line in open(results):
        run = json.loads(line)
        base = os.path.join(work, f"wake-{run['setup']}-{run['mode']}-{run['repeat']}")
        has_trace = os.path.exists(base + ".trace") and os.path.getsize(base + ".trace") > 0
        if run["c"] == 1 and has_trace:
            windows[(run["setup"], run["mode"])].append((base, run["rps"] * window_seconds))
    if not windows:
        return
    print("### wake-ups at concurrency 1 (scheduler trace)\n")
    print("From the kernel's scheduler events in the middle of each concurrency-1 run "
          "(`-w`): a wake-up is *remote* when the woken thread is placed on another CPU than "
          "its waker's. *Wait* is from the waker's `sched_waking` to the woken thread running, "
          "summed per request. Tracing itself moves the placement a little; compare setups.\n")
    print("| setup | mode | requests traced | remote wake-ups per request, by hop | local | "
          "wait per request (µs) | remote wake-up, median (µs) |")
    print("|---|---|---:|---|---:|---:|---:|")
    for (setup, mode), traced in windows.items():
        requests = sum(count for _, count in traced)
        if requests <= 0:
            continue
        remote_by_hop = collections.Counter()
        local = 0
        wait = 0.0
        remote_waits = []
        for base, _ in traced:
            roles = dict(line.split() for line in open(base + ".roles") if line.strip())
            for hop, remote, wait_us in parse(base + ".trace", roles):
                wait += wait_us
                if remote:
                    remote_by_hop[hop] += 1
                    remote_waits.append(wait_us)
                else:
                    local += 1
        hops = ", ".join(f"{hop} {count / requests:.2f}" for hop, count in sorted(remote_by_hop.items()))
        total = sum(remote_by_hop.values()) / requests
        median = f"{statistics.median(remote_waits):.0f}" if remote_waits else "–"
        print(f"| {setup} | {mode} | {requests:,.0f} | {total:.2f} ({hops}) | "
              f"{local / requests:.2f} | {wait / requests:.1f} | {median} |")
    print()


if __name__ == "__main__":
    main()
