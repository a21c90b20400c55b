#!/usr/bin/env bash
# Runs Meridian's whole test suite: unit tests, integration tests against real
# loopback backends, CLI and demo tests, and a one-pass run of the benchmarks
# (to prove they still work, not to measure). Installs what the tests need
# first, so that it passes on a fresh machine with only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test drives a real headless Chromium; the ACME test runs pebble.
scripts/ensure-test-tools.sh

cargo test --locked --all-targets
