#!/usr/bin/env bash
# Meridian, nginx and HAProxy terminating TLS side by side: the same EC
# P-256 certificate, TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519, each
# proxy pinned to core 0 in front of one nginx backend; the load generator
# and the backend share core 1. Measures, for each proxy:
#   - HTTP/2 over TLS: h2load, 64 clients x 10 streams, small GET;
#   - HTTP/1.1 over TLS: wrk, 64 connections, small GET;
#   - full handshakes: batches of `h2load --h1 -c256 -n256` (one request per
#     new connection; each batch is a new process, so no session resumes);
# and reports requests/s and the proxy's CPU seconds (from /proc/PID/stat)
# per 100 000 requests and per 1 000 handshakes. The proxies take turns
# within each round, each freshly started, and each round starts with the
# next one. Every figure is the median over the rounds, printed as a
# Markdown table and written to target/tls-compare.md.
#
#   bash benches/tls_compare.sh [--rounds N (3)] [--secs S (10)]
#
# MERIDIAN_BIN=path uses that binary instead of `cargo build --release`.
# Needs nginx, haproxy, h2load (nghttp2-client), wrk and openssl:
#   apt-get install nginx haproxy nghttp2-client wrk openssl
set -euo pipefail

usage() { echo "usage: bash benches/tls_compare.sh [--rounds N] [--secs S]" >&2; exit 2; }
cmdline="bash benches/tls_compare.sh${*:+ $*}"
[ -n "${MERIDIAN_BIN:-}" ] && cmdline="MERIDIAN_BIN=$MERIDIAN_BIN $cmdline"
rounds=3 secs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || usage; rounds="$2"; shift 2 ;;
    --secs) [ $# -ge 2 ] || usage; secs="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
for n in "$rounds" "$secs"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive whole number: $n" >&2; usage; }
done
bin=""
if [ -n "${MERIDIAN_BIN:-}" ]; then
  bin=$(realpath "$MERIDIAN_BIN" 2>/dev/null || true)
  [ -n "$bin" ] && [ -x "$bin" ] || { echo "MERIDIAN_BIN=$MERIDIAN_BIN is not an executable" >&2; exit 1; }
fi
cd "$(dirname "$0")/.."
for tool in nginx haproxy h2load wrk openssl taskset curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/meridian"
fi
work=$(mktemp -d)
pids=()
proxy_pid=""
cleanup() {
  for p in "${pids[@]}" $proxy_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

backend=18399
cat >"$work/backend.conf" <<NGINX
daemon off; worker_processes 1; pid $work/backend.pid; error_log $work/backend.log;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work;
  server { listen 127.0.0.1:$backend; keepalive_requests 1000000;
           location / { return 200 "hello\n"; } } }
NGINX
taskset -c 1 nginx -c "$work/backend.conf" & pids+=($!)

cat >"$work/meridian.toml" <<TOML
[listen]
http = "127.0.0.1:18380"
https = "127.0.0.1:18443"
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[[region]]
name = "us"
backends = ["http://127.0.0.1:$backend"]
[region.health]
path = "/"
[proxy]
region_header = false
[log]
access = false
TOML

cat >"$work/nginx.conf" <<NGINX
daemon off; worker_processes 1; pid $work/nginx.pid; error_log $work/nginx.log;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:18444 ssl http2;
           ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
           ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; keepalive_requests 1000000;
           location / { proxy_pass http://app; proxy_http_version 1.1;
                        proxy_set_header Connection ""; } } }
NGINX

cat >"$work/haproxy.cfg" <<CFG
global
  nbthread 1
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-bind-curves X25519
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:18445 ssl crt $work/haproxy.pem alpn h2,http/1.1
  default_backend be
backend be
  server app 127.0.0.1:$backend
CFG

start_proxy() { # name -> sets proxy_pid
  case "$1" in
    meridian) RUST_LOG=warn taskset -c 0 "$bin" run -c "$work/meridian.toml" >/dev/null 2>&1 & ;;
    nginx) taskset -c 0 nginx -c "$work/nginx.conf" & ;;
    haproxy) taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & ;;
  esac
  proxy_pid=$!
  sleep 1.5
}
port_of() { case "$1" in meridian) echo 18443 ;; nginx) echo 18444 ;; haproxy) echo 18445 ;; esac; }

# CPU ticks of a process and its children (nginx's worker is a child).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
per() { awk -v t="$1" -v hz="$hz" -v n="$2" -v unit="$3" 'BEGIN { printf "%.2f", t / hz / n * unit }'; }

ciphers=(--tls13-ciphers=TLS_AES_128_GCM_SHA256)
proxies=(meridian nginx haproxy)
declare -A res # "proxy metric" -> space-separated values, one per round
add() { res["$1 $2"]="${res["$1 $2"]:-} $3"; }
log() { echo "[$(date +%T)] $*" >&2; }

for ((round = 1; round <= rounds; round++)); do
  # Each round starts with the next proxy, so that none always runs first.
  shift_by=$(((round - 1) % ${#proxies[@]}))
  order=("${proxies[@]:shift_by}" "${proxies[@]:0:shift_by}")
  for proxy in "${order[@]}"; do
    log "round $round/$rounds: $proxy"
    start_proxy "$proxy"
    url="https://127.0.0.1:$(port_of "$proxy")/"
    curl -fsk -o /dev/null "$url" || { echo "$proxy does not answer on $url" >&2; exit 1; }

    before=$(cpu_ticks "$proxy_pid")
    # No warm-up time: h2load would leave its requests out of the count
    # while the proxy's CPU time includes them.
    out=$(taskset -c 1 h2load "${ciphers[@]}" -c64 -m10 -D "$secs" "$url" 2>&1)
    after=$(cpu_ticks "$proxy_pid")
    h2_done=$(awk '/^requests:/ {print $8}' <<<"$out")
    add "$proxy" h2_rps "$(awk '/^finished in/ {print $4}' <<<"$out" | tr -d ,)"
    add "$proxy" h2_cpu "$(per $((after - before)) "$h2_done" 100000)"

    before=$(cpu_ticks "$proxy_pid")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" "$url")
    after=$(cpu_ticks "$proxy_pid")
    h1_done=$(awk '/requests in/ {print $1}' <<<"$out")
    add "$proxy" h1_rps "$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    add "$proxy" h1_cpu "$(per $((after - before)) "$h1_done" 100000)"

    batches=$((secs * 4))
    before=$(cpu_ticks "$proxy_pid")
    start=$(date +%s.%N)
    resumed=0
    for _ in $(seq "$batches"); do
      out=$(taskset -c 1 h2load --h1 "${ciphers[@]}" -c256 -n256 "$url" 2>&1)
      grep -q "256 succeeded" <<<"$out" || { echo "$proxy: handshake batch failed" >&2; exit 1; }
      r=$(grep -o 'resumed: [0-9]*' <<<"$out" | awk '{print $2}' || true)
      resumed=$((resumed + ${r:-0}))
    done
    end=$(date +%s.%N)
    after=$(cpu_ticks "$proxy_pid")
    handshakes=$((batches * 256))
    add "$proxy" hs_rate "$(awk -v n="$handshakes" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')"
    add "$proxy" hs_cpu "$(per $((after - before)) "$handshakes" 1000)"
    [ "$resumed" -eq 0 ] || echo "warning: $proxy resumed $resumed sessions" >&2

    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=""
    sleep 0.5
  done
done

# The median of a metric over the rounds; a metric that no round measured
# (output the script could not read) stops the report.
median() {
  tr ' ' '\n' <<<"${res["$1 $2"]:-}" | awk 'NF' | sort -g | awk -v what="$1 $2" '
    { a[NR] = $1 }
    END { if (NR == 0) { print "no value for " what > "/dev/stderr"; exit 1 }
          if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fmt_int() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
# The spread of a metric: "min–max" over the rounds.
spread() {
  tr ' ' '\n' <<<"${res["$1 $2"]}" | awk 'NF' | sort -g | awk -v f="$3" '
    NR == 1 { lo = $1 } { hi = $1 } END { printf (f ? "%.0f–%.0f" : "%.2f–%.2f"), lo, hi }'
}

mkdir -p target
{
  echo "Command: \`$cmdline\`  "
  echo "Rounds: $rounds, $secs s per run; medians over the rounds (range in brackets). Proxies take turns within each round, each round starting with the next: ${proxies[*]}.  "
  echo "Versions: $(nginx -v 2>&1 | sed 's/.*\///'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $("$bin" --version 2>/dev/null || echo meridian)"
  echo
  echo "| proxy | HTTP/2 over TLS, req/s | CPU s / 100k req | HTTP/1.1 over TLS, req/s | CPU s / 100k req | full handshakes/s | CPU s / 1000 handshakes |"
  echo "|---|---|---|---|---|---|---|"
  for p in "${proxies[@]}"; do
    echo "| $p | $(fmt_int "$(median "$p" h2_rps)") ($(spread "$p" h2_rps 1)) | $(fmt_2 "$(median "$p" h2_cpu)") | $(fmt_int "$(median "$p" h1_rps)") ($(spread "$p" h1_rps 1)) | $(fmt_2 "$(median "$p" h1_cpu)") | $(fmt_int "$(median "$p" hs_rate)") | $(fmt_2 "$(median "$p" hs_cpu)") |"
  done
} | tee target/tls-compare.md
