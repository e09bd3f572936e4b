#!/usr/bin/env bash
# The project's test command (README, CI): installs what the tests need on a fresh
# Debian 12 machine, builds the test guests, then runs format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-host-deps.sh
bash scripts/build-guests.sh
bash scripts/build-k8s.sh
bash scripts/build-web.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast -- --test-threads 2
