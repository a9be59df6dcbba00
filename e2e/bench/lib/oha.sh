# shellcheck shell=bash
# oha, the HTTP load generator of the benchmarks and of the gateway's profile-guided build,
# installed once into CACHE/bin with `cargo install`. Sourced by gateway.sh, instructions.sh and
# gateway/pgo/build.sh.

# ensure_oha CACHE: puts CACHE/bin on PATH and installs oha there unless one is on PATH.
ensure_oha() {
    local cache=$1
    mkdir -p "$cache/bin"
    export PATH="$cache/bin:$PATH"
    if ! command -v oha >/dev/null; then
        echo "== installing oha 1.16.0 into $cache/bin" >&2
        cargo install --locked --root "$cache" oha --version 1.16.0 >&2
    fi
}
