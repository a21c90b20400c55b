#!/usr/bin/env bash
# Installs what the integration tests run besides Meridian, when missing:
# Chromium for the browser test (tests/browser.rs; skipped when
# MERIDIAN_CHROMIUM names an executable) and pebble, the test ACME CA, with
# its DNS server pebble-challtestsrv (tests/acme.rs). Uses apt-get, with sudo
# only when not already root.
set -euo pipefail

packages=()
if [ -z "${MERIDIAN_CHROMIUM:-}" ]; then
  found=""
  for name in chromium chromium-browser google-chrome chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      found=1
      break
    fi
  done
  [ -n "$found" ] || packages+=(chromium)
fi
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1; then
  packages+=(pebble)
fi
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the tests need ${packages[*]}: install them (Chromium can also be named by MERIDIAN_CHROMIUM)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== installing ${packages[*]} for the tests"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${packages[@]}"
