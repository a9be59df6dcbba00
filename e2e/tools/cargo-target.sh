# shellcheck shell=bash
# Sourced by run-tests.sh and demo.sh: the cargo target directory lives in the cache, outside
# the checkout, so a fresh clone builds warm. Dependencies are shared by every checkout, but
# kinfer's own crates are rebuilt when the checkout moves: cargo hashes workspace members by
# their path relative to the workspace, so a build made in another clone counts as fresh, and
# its tests would look for their fixtures under that clone's `env!("CARGO_MANIFEST_DIR")`.
# Needs $repo and $KINFER_CACHE.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"
kinfer_checkout_stamp="$CARGO_TARGET_DIR/kinfer-checkout"
if [[ -d $CARGO_TARGET_DIR && "$(cat "$kinfer_checkout_stamp" 2>/dev/null || true)" != "$repo" ]]; then
    echo "cargo target $CARGO_TARGET_DIR was built from another checkout: rebuilding kinfer's crates" >&2
    (cd "$repo" && cargo clean --quiet -p kinfer-crds -p kinfer-operator -p kinfer-gateway \
        -p kinfer-e2e -p kinfer-vllm-sim) || true
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$repo" >"$kinfer_checkout_stamp"
