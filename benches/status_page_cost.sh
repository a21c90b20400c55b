#!/usr/bin/env bash
# What serving the status page costs, against proxying a small response.
# Meridian (release build) runs pinned to core 0 in front of one nginx
# backend; nginx and wrk share core 1. wrk drives Meridian first while its
# region serves (a small proxied answer), then with the region drained (the
# status page, as HTML and as JSON). Reports requests/s, latency, and
# Meridian's CPU seconds per 100 000 requests from /proc/PID/stat.
#
#   bash benches/status_page_cost.sh [seconds per run, default 10]
#
# Needs wrk, nginx and curl (apt-get install wrk nginx curl).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install $tool" >&2; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d)
cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work;
  server {
    listen 127.0.0.1:18199;
    location / { return 200 "hello from the backend\n"; }
  }
}
NGINX
cat >"$work/meridian.toml" <<TOML
[listen]
http = "127.0.0.1:18180"
[admin]
listen = "127.0.0.1:18190"
[[region]]
name = "us"
backends = ["http://127.0.0.1:18199"]
[region.health]
path = "/"
interval = "1s"
TOML
taskset -c 1 nginx -c "$work/nginx.conf" &
nginx_pid=$!
RUST_LOG=warn taskset -c 0 target/release/meridian run -c "$work/meridian.toml" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid $nginx_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:18180/ && break
  sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

run() { # name, extra wrk/curl arguments...
  local name="$1"; shift
  local before after out rps total p50 p99 status
  status=$(curl -s -o /dev/null -w '%{http_code}' "$@" http://127.0.0.1:18180/ || true)
  before=$(cpu_ticks)
  out=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" --latency "$@" http://127.0.0.1:18180/)
  after=$(cpu_ticks)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  printf '| %-24s | %6s | %9s | %8s | %8s | %6.2f |\n' "$name" "$status" "$rps" "$p50" "$p99" \
    "$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {print d / hz / n * 100000}')"
}

echo "| answer | status | req/s | p50 | p99 | Meridian CPU s / 100k req |"
echo "|---|---|---|---|---|---|"
run "proxied small response"
curl -fs -X POST -o /dev/null http://127.0.0.1:18190/api/v1/regions/us/drain
curl -fs -X PUT -o /dev/null -d '{"title": "Scheduled maintenance", "message": "We are upgrading the database and will be back by 10:00 UTC.", "link": "https://status.example.com/"}' \
  http://127.0.0.1:18190/api/v1/incident
run "status page, HTML" -H "Accept: text/html"
run "status page, JSON" -H "Accept: application/json"
