# shellcheck shell=bash
# Sourced by run-tests.sh and demo.sh: the cargo target directory lives in the cache, outside
# the checkout, so a fresh clone builds warm. Dependencies are shared by every checkout, but
# kinfer's own crates are rebuilt when the checkout moves: cargo takes a build made in another
# clone as fresh, and its tests then look for their fixtures under that clone's
# `env!("CARGO_MANIFEST_DIR")`. Needs $repo and $KINFER_CACHE.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"
kinfer_checkout_stamp="$CARGO_TARGET_DIR/kinfer-checkout"
if [[ -d $CARGO_TARGET_DIR && "$(cat "$kinfer_checkout_stamp" 2>/dev/null || true)" != "$repo" ]]; then
    echo "cargo target $CARGO_TARGET_DIR was built from another checkout: rebuilding kinfer's crates" >&2
    # Every workspace member, as Cargo.toml lists them.
    mapfile -t kinfer_members < <(cd "$repo" && cargo metadata --no-deps --format-version 1 |
        python3 -c 'import json, sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')
    (cd "$repo" && cargo clean --quiet "${kinfer_members[@]/#/--package=}")
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$repo" >"$kinfer_checkout_stamp"
