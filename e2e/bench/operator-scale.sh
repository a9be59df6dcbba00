#!/usr/bin/env bash
# Operator at scale: N InferenceModels (default 500) on a private local
# cluster; reports the time until every Deployment exists and the operator's
# memory (RSS now and peak) once it has settled. A benchmark, not a test.
#
#   e2e/bench/operator-scale.sh [N]
#
# Each model asks for one GPU: 32 fit on the four fake nodes and run the
# stand-in; the rest stay Pending (Unschedulable), which the operator also
# reports. The operator runs as a host process (release build) against the
# cluster, not through the chart, so its memory is measured alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
N="${1:-500}"
export KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
export KINFER_CLUSTER_DIR="${KINFER_BENCH_DIR:-/tmp/kinfer-bench-operator}"
export KINFER_POD_NET="${KINFER_BENCH_POD_NET:-127.6}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"
export KUBECONFIG="$KINFER_CLUSTER_DIR/kubeconfig"
export PATH="$KINFER_CACHE/bin:$PATH"
ns=bench-operator

bash "$repo/e2e/tools/install.sh" >/dev/null
(cd "$repo" && cargo build --quiet --release -p kinfer-operator)
bash "$repo/e2e/cluster.sh" up >/dev/null
cleanup() {
  [ -n "${op_pid:-}" ] && kill "$op_pid" 2>/dev/null || true
  bash "$repo/e2e/cluster.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$CARGO_TARGET_DIR/release/kinfer-operator" crd | kubectl apply --server-side -f - >/dev/null
kubectl create namespace "$ns" >/dev/null
"$CARGO_TARGET_DIR/release/kinfer-operator" run --leader-election=false --autoscaler=false \
  --admin-addr 127.0.0.1:0 --log-format json >"$KINFER_CLUSTER_DIR/operator.log" 2>&1 &
op_pid=$!
sleep 1
if ! kill -0 "$op_pid" 2>/dev/null; then
  echo "the operator exited at start; its log:" >&2
  cat "$KINFER_CLUSTER_DIR/operator.log" >&2
  exit 1
fi
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$op_pid/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$op_pid/status"; }
idle_rss=$(rss_kib)

manifests="$KINFER_CLUSTER_DIR/models.yaml"
for i in $(seq 1 "$N"); do
  cat <<EOY
---
apiVersion: kinfer.dev/v1alpha1
kind: InferenceModel
metadata: {name: m-$i}
spec:
  model: {name: bench/model-$i, source: hf://Qwen/Qwen2.5-0.5B-Instruct}
  resources: {gpus: 1}
  replicas: 1
EOY
done >"$manifests"

start=$(date +%s%N)
kubectl apply -n "$ns" --server-side -f "$manifests" >/dev/null
applied=$(date +%s%N)
until [ "$(kubectl get deployments -n "$ns" --no-headers 2>/dev/null | wc -l)" -ge "$N" ]; do sleep 0.5; done
created=$(date +%s%N)
# Settled: every model has a status for its current generation.
until [ "$(kubectl get im -n "$ns" -o jsonpath='{range .items[*]}{.status.observedGeneration}{"\n"}{end}' | grep -c .)" -ge "$N" ]; do sleep 0.5; done
settled=$(date +%s%N)
sleep 5
printf 'models: %s\n' "$N"
ms() { echo $(( ($1 - start) / 1000000 )); }
printf 'kubectl apply of %s models: %s ms\n' "$N" "$(ms "$applied")"
printf 'apply start -> all %s Deployments created: %s ms\n' "$N" "$(ms "$created")"
printf 'apply start -> every status written: %s ms\n' "$(ms "$settled")"
printf 'operator RSS idle: %d MiB; with %s models: %d MiB; peak: %d MiB\n' \
  "$((idle_rss / 1024))" "$N" "$(( $(rss_kib) / 1024 ))" "$(( $(hwm_kib) / 1024 ))"
printf 'ready models: %s; unschedulable: %s\n' \
  "$(kubectl get im -n "$ns" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" \
  "$(kubectl get im -n "$ns" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].reason}{"\n"}{end}' | grep -c Unschedulable)"
