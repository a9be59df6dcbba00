# shellcheck shell=bash
# Sourced by run-tests.sh, demo.sh and gateway/pgo/build.sh: the cargo target directory lives in
# the cache, outside the checkout, so a fresh clone builds warm. Dependencies are shared by every checkout, but
# kinfer's own crates are rebuilt when the checkout moves: cargo takes a build made in another
# clone as fresh, and its tests then look for their fixtures under that clone's
# `env!("CARGO_MANIFEST_DIR")`. Needs $repo and $KINFER_CACHE.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"
# kinfer_own_target DIR: DIR's builds of kinfer's crates are this checkout's (cleaned when the
# stamp names another). Also used for the profile-guided build's target directories.
kinfer_own_target() {
    local dir=$1 stamp=$1/kinfer-checkout members
    if [[ -d $dir && "$(cat "$stamp" 2>/dev/null || true)" != "$repo" ]]; then
        echo "cargo target $dir was built from another checkout: rebuilding kinfer's crates" >&2
        # Every workspace member, as Cargo.toml lists them.
        mapfile -t members < <(cd "$repo" && cargo metadata --no-deps --format-version 1 |
            python3 -c 'import json, sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')
        # `cargo clean --package` cleans one profile: the dev one unless told.
        (cd "$repo" && CARGO_TARGET_DIR=$dir cargo clean --quiet "${members[@]/#/--package=}" &&
            CARGO_TARGET_DIR=$dir cargo clean --quiet --release "${members[@]/#/--package=}")
    fi
    mkdir -p "$dir"
    echo "$repo" >"$stamp"
}
kinfer_own_target "$CARGO_TARGET_DIR"
