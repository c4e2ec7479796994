#!/usr/bin/env bash
# The quickstart in one command: builds castor and the quickstart, starts a worker on the
# default database (tasks.db in the repository root), runs the app, and stops the worker.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p castor-host -p quickstart
./target/release/castor ./target/release/libquickstart.so:manager &
worker=$!
trap 'kill -INT "$worker" 2>/dev/null || true; wait "$worker" || true' EXIT
./target/release/quickstart "$@"
