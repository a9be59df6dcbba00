#!/usr/bin/env bash
# The local test bed: a real Kubernetes control plane without Docker.
#
#   e2e/cluster.sh up       etcd, kube-apiserver, kube-controller-manager,
#                           kube-scheduler, kwok (4 fake GPU nodes) and the pod
#                           runner, all on 127.0.0.1; writes a kubeconfig
#   e2e/cluster.sh down     stops every process `up` started, frees the ports,
#                           removes the cluster's state
#   e2e/cluster.sh status   what runs, where, and the kubeconfig to export
#   e2e/cluster.sh env      prints `export KUBECONFIG=...` for eval
#   e2e/cluster.sh restart-runner   rebuild kinfer's binaries, restart the pod runner
#
# Environment:
#   KINFER_CACHE         tool cache (default ~/.cache/kinfer), see tools/install.sh
#   KINFER_CLUSTER_DIR   cluster state: certs, etcd data, logs, pids, kubeconfig
#                        (default $KINFER_CACHE/cluster)
#   KINFER_POD_NET       first two octets of the pod networks (default 127.1:
#                        node N gets 127.1.N.0/24); give a second cluster on the
#                        same machine another one, e.g. 127.2
#   KINFER_ENGINE        engine of engine pods: sim (vllm-sim, default) or vllm
#                        (real vLLM on CPU serving generated models: run
#                        `e2e/tools/install.sh vllm` first); one pod can pick
#                        its own with the annotation kinfer.dev/test-engine
#   KINFER_BIN_DIR       where kinfer-podrunner and vllm-sim are (default: built
#                        here with cargo into target/debug)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
DIR="${KINFER_CLUSTER_DIR:-$CACHE/cluster}"
TOOLS="$CACHE/bin"
LOGS="$DIR/logs"
PIDS="$DIR/pids"
KUBECONFIG_PATH="$DIR/kubeconfig"
POD_NET="${KINFER_POD_NET:-127.1}"
# Pod IPs must stay on loopback: test traffic never leaves this machine.
[[ "$POD_NET" =~ ^127\.[0-9]{1,3}$ ]] || { echo "KINFER_POD_NET must be 127.<n>, got $POD_NET" >&2; exit 2; }
NODE_COUNT=4
GPUS_PER_NODE=8
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok podrunner)

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[cluster %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# shellcheck source=lib/ports.sh
source "$here/lib/ports.sh"

pid_of() { cat "$PIDS/$1" 2>/dev/null || true; }
alive() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# start NAME CMD...: runs CMD in its own process group, logs to $LOGS/NAME.log.
start() {
  local name="$1"; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name"
}

# wait_for NAME TIMEOUT CHECK...: polls CHECK until it succeeds; fails naming
# the component and its log when the process died or the time ran out.
wait_for() {
  local name="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited during start-up; its log: $LOGS/$name.log"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name did not become ready within ${timeout}s; its log: $LOGS/$name.log"
    fi
    sleep 0.3
  done
}

kubectl() { "$TOOLS/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

gen_certs() {
  local c="$DIR/pki"; mkdir -p "$c"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kinfer-local-ca" \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  # sign NAME SUBJECT [SAN]
  sign() {
    local name="$1" subj="$2" san="${3:-}"
    openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$c/$name.key" -out "$c/$name.csr" 2>/dev/null
    local ext="$c/$name.ext"
    if [ -n "$san" ]; then
      printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$c/$name.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
      -days 3650 -extfile "$ext" -out "$c/$name.crt" 2>/dev/null
  }
  sign apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kinfer-admin"
  sign controller-manager "/CN=system:kube-controller-manager"
  sign scheduler "/CN=system:kube-scheduler"
  # kwok writes node and pod status for every fake node: cluster-admin.
  sign kwok "/O=system:masters/CN=kwok"
  # The pod runner plays the kubelets' part (pod status): cluster-admin too.
  sign podrunner "/O=system:masters/CN=kinfer-podrunner"
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
}

# kubeconfig_for NAME FILE: a kubeconfig with NAME's client certificate.
kubeconfig_for() {
  local name="$1" file="$2" c="$DIR/pki"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kinfer-local
  cluster:
    server: https://127.0.0.1:$(cat "$DIR/apiserver.port")
    certificate-authority: $c/ca.crt
users:
- name: $name
  user:
    client-certificate: $c/$name.crt
    client-key: $c/$name.key
contexts:
- name: kinfer-local
  context: {cluster: kinfer-local, user: $name}
current-context: kinfer-local
EOF
}

node_manifests() {
  local products=("NVIDIA-A100-SXM4-80GB" "NVIDIA-A100-SXM4-80GB" "NVIDIA-H100-80GB-HBM3" "NVIDIA-L4")
  local memory=(81920 81920 81559 23034)
  local zones=("zone-a" "zone-b" "zone-a" "zone-b")
  for i in $(seq 0 $((NODE_COUNT - 1))); do
    local taints="[]"
    # The NVIDIA GPU operator's usual taint, on half the pool.
    if [ $((i % 2)) -eq 0 ]; then taints='[{"key":"nvidia.com/gpu","value":"present","effect":"NoSchedule"}]'; fi
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: gpu-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: gpu-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: gpu-8x
    type: kwok
    topology.kubernetes.io/region: local
    topology.kubernetes.io/zone: ${zones[$i]}
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "$GPUS_PER_NODE"
    nvidia.com/gpu.product: ${products[$i]}
    nvidia.com/gpu.memory: "${memory[$i]}"
spec:
  podCIDR: $POD_NET.$i.0/24
  podCIDRs: [$POD_NET.$i.0/24]
  taints: $taints
status:
  addresses:
  - {type: InternalIP, address: $POD_NET.$i.254}
  - {type: Hostname, address: gpu-node-$i}
  allocatable: {cpu: "96", memory: 1000Gi, pods: "110", ephemeral-storage: 2Ti, nvidia.com/gpu: "$GPUS_PER_NODE"}
  capacity: {cpu: "96", memory: 1000Gi, pods: "110", ephemeral-storage: 2Ti, nvidia.com/gpu: "$GPUS_PER_NODE"}
EOF
  done
}

ensure_binaries() {
  BIN_DIR="${KINFER_BIN_DIR:-}"
  if [ -z "$BIN_DIR" ]; then
    log "building kinfer's binaries, the pod runner and vllm-sim (cargo build; cold: ~5-10 min on 2 cores)"
    (cd "$repo" && cargo build --quiet --workspace --bins) || die "cargo build --workspace --bins failed"
    BIN_DIR="$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
  fi
  [ -x "$BIN_DIR/kinfer-podrunner" ] || die "no kinfer-podrunner in $BIN_DIR"
  [ -x "$BIN_DIR/vllm-sim" ] || die "no vllm-sim in $BIN_DIR"
  # Pods of kinfer's own images (installed by the Helm chart) run these.
  IMAGE_BINS=()
  local name
  for name in operator gateway; do
    if [ -x "$BIN_DIR/kinfer-$name" ]; then IMAGE_BINS+=(--image-bin "kinfer/$name=$BIN_DIR/kinfer-$name"); fi
  done
}

up() {
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [ -x "$TOOLS/$b" ] || die "$TOOLS/$b is missing: run e2e/tools/install.sh first"
  done
  if alive kube-apiserver; then log "already up"; status; return; fi
  ensure_binaries
  down_quiet
  mkdir -p "$DIR" "$LOGS" "$PIDS"
  local t0=$SECONDS
  gen_certs
  local etcd_port peer_port api_port cm_port scheduler_port kwok_port
  read -r etcd_port peer_port api_port cm_port scheduler_port kwok_port < <(free_ports 6)
  echo "$api_port" >"$DIR/apiserver.port"
  local c="$DIR/pki"

  log "etcd on 127.0.0.1:$etcd_port"
  start etcd "$TOOLS/etcd" --name local --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "local=http://127.0.0.1:$peer_port" --unsafe-no-fsync --quota-backend-bytes 2147483648
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  log "kube-apiserver on https://127.0.0.1:$api_port"
  start kube-apiserver "$TOOLS/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --authorization-mode RBAC \
    --client-ca-file "$c/ca.crt" --tls-cert-file "$c/apiserver.crt" --tls-private-key-file "$c/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$c/sa.pub" --service-account-signing-key-file "$c/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,ResourceQuota,PodSecurity \
    --profiling=false
  wait_for kube-apiserver 90 curl -sf --cacert "$c/ca.crt" --cert "$c/admin.crt" --key "$c/admin.key" \
    "https://127.0.0.1:$api_port/readyz"

  kubeconfig_for admin "$KUBECONFIG_PATH"
  for name in controller-manager scheduler kwok podrunner; do kubeconfig_for "$name" "$DIR/$name.kubeconfig"; done

  log "kube-controller-manager"
  start kube-controller-manager "$TOOLS/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$c/sa.key" --root-ca-file "$c/ca.crt" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
    --allocate-node-cidrs=false --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --horizontal-pod-autoscaler-sync-period 5s --profiling=false
  log "kube-scheduler"
  start kube-scheduler "$TOOLS/kube-scheduler" \
    --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$scheduler_port" --leader-elect=false --profiling=false

  log "kwok: fake GPU nodes, pod lifecycle"
  local stages=() f
  for f in "$CACHE"/kwok-stages/*.yaml "$here/kwok/pod-start.yaml"; do stages+=(--config "$f"); done
  start kwok "$TOOLS/kwok" --kubeconfig "$DIR/kwok.kubeconfig" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --server-address "127.0.0.1:$kwok_port" \
    --node-lease-duration-seconds 40 "${stages[@]}"
  wait_for kwok 30 kubectl get --raw /api/v1/namespaces/default

  node_manifests | kubectl apply -f - >/dev/null
  wait_for kwok 60 kubectl wait --for=condition=Ready node --all --timeout=2s
  # Service accounts come from the controller manager; tests need "default".
  wait_for kube-controller-manager 60 kubectl get serviceaccount default -n default

  start_runner
  for name in kube-controller-manager kube-scheduler; do
    alive "$name" || die "$name exited during start-up; its log: $LOGS/$name.log"
  done
  check_loopback
  log "up in $((SECONDS - t0))s"
  status
}

# Every socket the test bed listens on must be a loopback address.
check_loopback() {
  local pids="" name p
  for name in "${COMPONENTS[@]}"; do
    p="$(pid_of "$name")"; [ -n "$p" ] && pids="$pids $p $(pgrep -g "$p" 2>/dev/null | tr '\n' ' ')"
  done
  local bad
  bad="$(ss -Hltnp 2>/dev/null | awk '{print $4, $6}' | grep -vE '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+ ' \
    | while read -r addr procs; do
        for p in $pids; do case "$procs" in *"pid=$p,"*) echo "$addr $procs" ;; esac; done
      done)" || true
  [ -z "$bad" ] || die "a test bed process listens on a non-loopback address: $bad"
}

start_runner() {
  local engine="${KINFER_ENGINE:-sim}" vllm=()
  # Real vLLM is offered to annotated pods whenever it is installed.
  if [ -x "$CACHE/vllm/bin/vllm" ] && [ -d "$CACHE/models/decoder" ]; then
    vllm=(--vllm-bin "$CACHE/vllm/bin/vllm" --models "$CACHE/models")
  elif [ "$engine" = vllm ]; then
    die "KINFER_ENGINE=vllm but real vLLM is not installed: run e2e/tools/install.sh vllm"
  fi
  log "pod runner: engines at pod IPs (default engine: $engine)"
  start podrunner "$BIN_DIR/kinfer-podrunner" --kubeconfig "$DIR/podrunner.kubeconfig" \
    --engine "$engine" "${vllm[@]}" \
    --engine-bin "$BIN_DIR/vllm-sim" --log-dir "$LOGS/pods" "${IMAGE_BINS[@]}" \
    --api-server "https://127.0.0.1:$(cat "$DIR/apiserver.port")" --api-ca "$DIR/pki/ca.crt"
  wait_for podrunner 30 grep -q "watching pods" "$LOGS/podrunner.log"
}

# Rebuilds and restarts the pod runner alone (after changing kinfer's
# binaries or the stand-in); running pods get their processes restarted.
restart_runner() {
  alive kube-apiserver || die "the cluster is not up"
  ensure_binaries
  stop_component podrunner
  start_runner
}

stop_component() {
  local name="$1" p
  p="$(pid_of "$name")"
  [ -n "$p" ] || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name"
}

down_quiet() {
  local i
  # Reverse start order: the pod runner stops its stand-ins first.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[$i]}"; done
}

down() {
  down_quiet
  # Nothing this cluster started may outlive it: every component names the
  # cluster folder on its command line (engine stand-ins die with the pod
  # runner's process group). Other clusters, with other folders, are left alone.
  local left
  left="$(pgrep -f -- "$DIR/" 2>/dev/null || true)"
  if [ -n "$left" ]; then
    log "stopping leftover processes: $(echo $left)"
    kill -KILL $left 2>/dev/null || true
  fi
  rm -rf "$DIR"
  log "down: every process stopped, state removed"
}

status() {
  local name any=0
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then printf '  %-24s running (pid %s)\n' "$name" "$(pid_of "$name")"; any=1
    else printf '  %-24s stopped\n' "$name"; fi
  done
  if [ $any -eq 1 ] && [ -f "$KUBECONFIG_PATH" ]; then
    echo "  logs: $LOGS"
    echo "  export KUBECONFIG=$KUBECONFIG_PATH"
  fi
}

case "${1:-}" in
  up) up ;;
  restart-runner) restart_runner ;;
  check) check_loopback; log "every test bed socket is on loopback" ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_PATH" ;;
  kubeconfig) echo "$KUBECONFIG_PATH" ;;
  *) echo "usage: $0 up|down|status|env|kubeconfig" >&2; exit 2 ;;
esac
