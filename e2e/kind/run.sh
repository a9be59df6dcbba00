#!/usr/bin/env bash
# The e2e suite on kind (needs Docker and kind; cannot run on Docker-less
# machines, where e2e/cluster.sh is the test bed instead).
#
#   e2e/kind/run.sh          create the cluster, build + load images, run the suite
#   e2e/kind/run.sh down     delete the cluster
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
name=kinfer-e2e
tag="${KINFER_IMAGE_TAG:-e2e}"

if [ "${1:-}" = "down" ]; then kind delete cluster --name "$name"; exit 0; fi

kind get clusters | grep -qx "$name" || kind create cluster --config "$here/kind-config.yaml" --wait 120s
export KUBECONFIG="${KUBECONFIG_KIND:-$HOME/.kube/kind-$name}"
kind get kubeconfig --name "$name" >"$KUBECONFIG"

# Advertise 8 GPUs on each labelled worker, as the NVIDIA device plugin would.
# Node status is patched through the API (a JSON patch on the status
# subresource); the capacity stays until the kubelet re-registers the node.
for node in $(kubectl get nodes -l nvidia.com/gpu.present=true -o name); do
  kubectl patch "$node" --subresource=status --type=json -p \
    '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"},
      {"op":"add","path":"/status/allocatable/nvidia.com~1gpu","value":"8"}]'
done

# kinfer's images and the vLLM stand-in's (engine pods run it: no GPU here).
for target in operator gateway vllm-sim; do
  docker build -f "$repo/Dockerfile" --target "$target" -t "kinfer/$target:$tag" "$repo"
  kind load docker-image --name "$name" "kinfer/$target:$tag"
done

# The suite names the stand-in's image as every InferenceModel's engine image.
export KINFER_E2E_ENGINE_IMAGE="kinfer/vllm-sim:$tag"
export KINFER_E2E_IMAGE_TAG="$tag"
cd "$repo" && cargo test --locked -p kinfer-e2e -- --test-threads 4
