#!/usr/bin/env bash
# `make demo`: kinfer on a local simulated GPU cluster, serving an OpenAI
# endpoint on http://127.0.0.1:8080/v1. `make demo-down` undoes all of it.
#
#   e2e/demo.sh up|down
#   KINFER_DEMO_PORT   local port of the OpenAI endpoint (default 8080)
#   KINFER_ENGINE      sim (default: the vLLM stand-in) or vllm (real vLLM on CPU,
#                      serving small generated models; see docs/engines.md)
#
# The demo cluster is separate from the test suite's (its own folder and pod
# network), so `make test` can run while the demo is up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
export KINFER_CLUSTER_DIR="${KINFER_DEMO_DIR:-$KINFER_CACHE/demo}"
export KINFER_POD_NET="${KINFER_DEMO_POD_NET:-127.8}"
# shellcheck source=tools/cargo-target.sh
source "$repo/e2e/tools/cargo-target.sh"
export KUBECONFIG="$KINFER_CLUSTER_DIR/kubeconfig"
export PATH="$KINFER_CACHE/bin:$PATH"
PORT="${KINFER_DEMO_PORT:-8080}"
NAMESPACE=demo
# The API key e2e/install-kinfer.sh creates (a Secret labelled kinfer.dev/api-key).
API_KEY="${KINFER_API_KEY:-sk-kinfer-local}"
export KINFER_API_KEY="$API_KEY"
EXAMPLES=(chat-7b.yaml embedding.yaml lora-adapters.yaml)
LOG_DIR="$KINFER_CACHE/demo-logs"
mkdir -p "$LOG_DIR"

t0=$SECONDS
steps=0
current=""
step() {
  current="$1"
  printf '[%4ss] %s\n' "$((SECONDS - t0))" "$1"
}
# run NAME CMD...: runs a step with its output in a log; on failure names the
# step and shows the log's end.
run() {
  local name="$1"; shift
  steps=$((steps + 1))
  local log="$LOG_DIR/$steps-$(printf '%s' "$name" | tr -c 'a-zA-Z0-9' '-' | cut -c1-40).log"
  step "$name"
  if ! "$@" >"$log" 2>&1; then
    echo >&2
    echo "demo: step '$name' failed; its log: $log" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
}

wait_ready() {
  local f name
  for f in "${EXAMPLES[@]}"; do
    name="$(sed -n 's/^  name: //p' "$repo/examples/$f" | head -n 1)"
    # Real vLLM takes 1-2 minutes to start here (KINFER_ENGINE=vllm), the stand-in a second.
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "inferencemodel/$name" --timeout=600s
  done
}

start_forward() {
  local bin="$CARGO_TARGET_DIR/debug/kinfer-forward"
  setsid "$bin" --kubeconfig "$KUBECONFIG" "127.0.0.1:$PORT=kinfer-system/kinfer-gateway:80" \
    >"$LOG_DIR/forward.log" 2>&1 < /dev/null &
  echo $! >"$KINFER_CLUSTER_DIR/forward.pid"
  # Answered through the forward, the gateway and an engine: the demo works.
  local i
  for i in $(seq 1 60); do
    if curl -sf -H "Authorization: Bearer $API_KEY" "http://127.0.0.1:$PORT/v1/models" >/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "no answer on 127.0.0.1:$PORT/v1/models" >&2
  return 1
}

up() {
  # The installer's one line per tool (what it builds, how long a cold run
  # takes, its log) is shown as it goes: a first run spends minutes here.
  local what=tools; [ "${KINFER_ENGINE:-sim}" = vllm ] && what=all
  steps=$((steps + 1))
  step "install tools (cached in $KINFER_CACHE; a first run builds them: 5-15 min)"
  if ! bash "$here/tools/install.sh" "$what" 2>&1 >"$LOG_DIR/$steps-install-tools.log" | sed 's/^/    /'; then
    echo "demo: step 'install tools' failed; logs in $KINFER_CACHE/logs" >&2
    exit 1
  fi
  run "build kinfer and start the local GPU cluster (4 fake nodes x 8 GPUs)" bash "$here/cluster.sh" up
  run "install kinfer with its Helm chart" bash "$here/install-kinfer.sh"
  run "apply examples: ${EXAMPLES[*]}" bash -c "kubectl create namespace $NAMESPACE --dry-run=client -o yaml | kubectl apply -f - \
    && for f in ${EXAMPLES[*]}; do kubectl -n $NAMESPACE apply -f '$repo/examples/'\$f; done"
  run "wait until the models are Ready" wait_ready
  run "serve the gateway on 127.0.0.1:$PORT" start_forward
  step "ready in $((SECONDS - t0))s"
  cat <<EOF

kinfer is serving an OpenAI API on http://127.0.0.1:$PORT/v1

  kubectl (KUBECONFIG=$KUBECONFIG; tools in $KINFER_CACHE/bin):
    kubectl get inferencemodels -n $NAMESPACE

  models:
$(curl -s -H "Authorization: Bearer $API_KEY" "http://127.0.0.1:$PORT/v1/models" | python3 -c 'import json,sys; [print("    " + m["id"]) for m in json.load(sys.stdin)["data"]]')

  curl:
    curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
      -H 'Authorization: Bearer $API_KEY' \\
      -d '{"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "Hello!"}]}'

  Python (pip install openai):
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:$PORT/v1", api_key="$API_KEY")
    reply = client.chat.completions.create(
        model="Qwen/Qwen2.5-7B-Instruct",
        messages=[{"role": "user", "content": "Hello!"}],
    )
    print(reply.choices[0].message.content)

  API key: $API_KEY (the Secret kinfer-system/local-api-key, labelled kinfer.dev/api-key;
    add keys the same way: kubectl -n kinfer-system create secret generic team-a
    --from-literal=key=sk-... --from-literal=models='Qwen/*', then label it kinfer.dev/api-key=true).
  Engines are the vLLM stand-in (e2e/vllm-sim): no GPU, deterministic filler text.
  Stop everything: make demo-down
EOF
}

down() {
  if [ -f "$KINFER_CLUSTER_DIR/forward.pid" ]; then
    kill "$(cat "$KINFER_CLUSTER_DIR/forward.pid")" 2>/dev/null || true
  fi
  bash "$here/cluster.sh" down
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
