#!/usr/bin/env bash
# Installs Chromium for the browser test (tests/browser.rs) when no Chromium
# or Chrome is on PATH and MERIDIAN_CHROMIUM is not set. Uses apt-get, with
# sudo only when not already root.
set -euo pipefail

if [ -n "${MERIDIAN_CHROMIUM:-}" ]; then
  exit 0
fi
for name in chromium chromium-browser google-chrome chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the browser test needs Chromium: install it, or set MERIDIAN_CHROMIUM to its executable" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== installing chromium for the browser test"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
