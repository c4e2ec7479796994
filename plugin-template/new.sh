#!/usr/bin/env bash
# Creates a task library crate from this template in DIR, a new folder outside this Castor
# checkout, built against the checkout's castor-abi. Never prompts, never edits another
# Cargo.toml (the new crate is its own workspace), writes nothing outside DIR (but
# target/tools, if cargo-generate has to be installed first).
#
#   bash plugin-template/new.sh DIR [-d manager_name=NAME] [-d database=FILE]
#
# DIR's last component is the crate's name; its parent must exist. Any `-d KEY=VALUE` is
# passed to cargo-generate after this script's own, so it wins: `-d castor_abi_path=`
# (empty) builds against castor-abi from crates.io instead, once it is published there.
set -euo pipefail
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

usage() {
    echo "usage: bash plugin-template/new.sh DIR [-d manager_name=NAME] [-d database=FILE]" >&2
    exit 2
}
fail() {
    echo "new.sh: $*" >&2
    exit 1
}

[[ $# -ge 1 && $1 != -* ]] || usage
dir="${1%/}"
shift
name="$(basename "$dir")"
parent="$(dirname "$dir")"
[[ $name =~ ^[a-z][a-z0-9_-]*$ ]] ||
    fail "\"$name\" cannot be the crate's name (the last component of DIR): use lowercase letters, digits, - and _, starting with a letter"
[[ -d $parent ]] || fail "the folder $parent does not exist: create it, or choose another DIR"
parent="$(cd "$parent" && pwd -P)"
dir="$parent/$name"
[[ ! -e $dir ]] || fail "$dir already exists: choose a new folder"
case "$dir/" in
"$checkout"/*)
    fail "$dir is inside the Castor checkout $checkout: choose a folder outside it, such as $(dirname "$checkout")/$name"
    ;;
esac

cargo_generate="$(bash "$checkout/plugin-template/cargo-generate.sh")"

# cargo-generate always looks up an author (for templates that use one; this one does
# not) and fails without USER when git has no user.name, as in a fresh container.
export USER="${USER:-$(id -un)}"
# --no-workspace: never list the crate in a Cargo.toml around it. --silent: every value
# has a default, so nothing is asked. The absolute castor-abi path is this checkout's.
if ! RUST_LIB_BACKTRACE=0 "$cargo_generate" generate --path "$checkout/plugin-template" --name "$name" \
    --destination "$parent" --no-workspace --silent --vcs git \
    --define "castor_abi_path=$checkout/castor-abi" "$@" >/dev/null; then
    # cargo-generate creates the folder before it checks the values: do not leave it
    # behind empty, where it would block the retry.
    rmdir "$dir" 2>/dev/null || true
    exit 1
fi
[[ -f $dir/Cargo.toml ]] || fail "cargo-generate did not create $dir"

echo "created $dir: its README.md says how to build and run it"
if ! command -v castor >/dev/null; then
    echo "the castor worker is not on your PATH: install it with" \
        "cargo install --locked --path $checkout/castor-host"
fi
