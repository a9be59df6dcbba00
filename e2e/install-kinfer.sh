#!/usr/bin/env bash
# Installs (or upgrades) kinfer with its Helm chart into the cluster KUBECONFIG
# points at, and waits until the operator and the gateway are ready.
#
#   e2e/install-kinfer.sh [extra helm args...]
#   KINFER_NAMESPACE   release namespace (default kinfer-system)
#   KINFER_VALUES      values file (default e2e/values-local.yaml, for the local test bed)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
export PATH="$CACHE/bin:$PATH"
ns="${KINFER_NAMESPACE:-kinfer-system}"
values="${KINFER_VALUES:-$repo/e2e/values-local.yaml}"
# A CRD applied outside Helm (`kinfer-operator crd | kubectl apply`, or the
# operator's integration tests) is adopted by the release instead of failing
# the install: Helm takes over objects carrying its ownership metadata.
crd=inferencemodels.kinfer.dev
if kubectl get crd "$crd" >/dev/null 2>&1 \
   && [ -z "$(kubectl get crd "$crd" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')" ]; then
  kubectl label crd "$crd" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
  kubectl annotate crd "$crd" meta.helm.sh/release-name=kinfer meta.helm.sh/release-namespace="$ns" --overwrite >/dev/null
fi
helm upgrade --install kinfer "$repo/charts/kinfer" --namespace "$ns" --create-namespace \
  -f "$values" --wait --timeout 120s "$@"
kubectl -n "$ns" rollout status deployment/kinfer-operator --timeout=60s
kubectl -n "$ns" rollout status deployment/kinfer-gateway --timeout=60s
# The chart turns gateway authentication on: an API key for the e2e suite and the demo, as a
# Secret labelled kinfer.dev/api-key (KINFER_API_KEY, default sk-kinfer-local).
kubectl -n "$ns" create secret generic local-api-key \
  --from-literal=key="${KINFER_API_KEY:-sk-kinfer-local}" --dry-run=client -o yaml \
  | kubectl label --local -f - kinfer.dev/api-key=true -o yaml \
  | kubectl apply -f - >/dev/null
