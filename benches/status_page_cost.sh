#!/usr/bin/env bash
# What serving the status page costs, against proxying a small response:
# runs `meridian demo` (release build) pinned to core 0, drives it with wrk
# pinned to core 1, first while its regions serve (a small proxied answer),
# then with both regions drained (the status page, as HTML and as JSON).
# Reports requests/s, latency and Meridian's CPU seconds per 100 000 requests.
#
#   bash benches/status_page_cost.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
taskset -c 0 target/release/meridian demo >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:8080/ && break
  sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

run() { # name, extra wrk args...
  local name="$1"; shift
  local before after out rps
  before=$(cpu_ticks)
  out=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" --latency "$@" http://127.0.0.1:8080/)
  after=$(cpu_ticks)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local total p50 p99
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' "$@" http://127.0.0.1:8080/ || true)
  printf '| %-28s | %6s | %9s | %8s | %8s | %6.2f |\n' "$name" "$status" "$rps" "$p50" "$p99" \
    "$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {print d / hz / n * 100000}')"
}

echo "| answer | status | req/s | p50 | p99 | CPU s / 100k req |"
echo "|---|---|---|---|---|---|"
run "proxied small response"
for r in us eu; do curl -fs -X POST -o /dev/null "http://127.0.0.1:9901/api/v1/regions/$r/drain"; done
run "status page, HTML" -H "Accept: text/html"
run "status page, JSON" -H "Accept: application/json"
for r in us eu; do curl -fs -X POST -o /dev/null "http://127.0.0.1:9901/api/v1/regions/$r/undrain"; done
