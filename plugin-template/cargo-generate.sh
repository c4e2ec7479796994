#!/usr/bin/env bash
# Prints the path of the cargo-generate that plugin-template/new.sh and the template test
# use: target/tools/bin/cargo-generate, else a `cargo-generate` on PATH, else cargo-generate
# VERSION installed into target/tools first (once; its build log goes to
# target/tools/install.log, not to the terminal).
set -euo pipefail
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# 0.24 and later need a newer rustc than 1.95; `.ci/run` and the tests use this release.
version=0.23.14
root="$checkout/target/tools"
installed="$root/bin/cargo-generate"

if [[ -x $installed ]]; then
    echo "$installed"
    exit 0
fi
if on_path="$(command -v cargo-generate)"; then
    echo "$on_path"
    exit 0
fi

# cargo-generate links libgit2 with SSH and HTTPS support, which need OpenSSL's headers.
if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl; then
    echo "cargo-generate $version cannot be built here: it needs pkg-config and OpenSSL's" \
        "headers; install them (Debian, Ubuntu: apt-get install pkg-config libssl-dev)" \
        "and run this again" >&2
    exit 1
fi

mkdir -p "$root"
log="$root/install.log"
echo "installing cargo-generate $version into target/tools (once, ~4 min; log: $log)" >&2
# A debug build without debug info: rendering a template needs no optimiser, and
# cargo-generate's own release profile (fat LTO, one codegen unit) took 2.3 times the CPU
# to compile (334 s against 148 s on the 2-core build machine; without LTO, 389 s).
if ! CARGO_PROFILE_DEV_DEBUG=false cargo install "cargo-generate@$version" --locked --debug \
    --root "$root" >"$log" 2>&1; then
    echo "installing cargo-generate $version failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
echo "$installed"
