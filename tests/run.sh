#!/usr/bin/env bash
# Every test: README's test command, and what `.ci/run` runs. First makes sure of the tool
# the tests cannot install themselves (cargo-generate, for tests/it/template.rs: installed
# into target/tools once, saying so), then runs `cargo test --workspace --locked` with any
# arguments given (e.g. `bash tests/run.sh -- --skip template`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash plugin-template/cargo-generate.sh >/dev/null
exec cargo test --workspace --locked "$@"
