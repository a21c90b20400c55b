#!/usr/bin/env bash
# Meridian, nginx and HAProxy as plain-HTTP reverse proxies side by side, and
# the backend alone ("direct"), in one command. One nginx backend (1 worker)
# answers `GET /` with "hello\n" and `GET /64k` with a 64 KiB file; it shares
# core 1 with the load generators, and each proxy is pinned to core 0. The
# targets take turns within each round (meridian, nginx, haproxy, direct), and
# every figure reported is the median over the rounds. Per target and round:
#
#   a. wrk -t1 -c64, GET /      req/s, p50, p99, proxy CPU s per 100k requests
#   b. wrk -t1 -c64, GET /64k   req/s, p99, CPU s per 100k requests
#   c. wrk -t1 -c1,  GET /      p50, p99 with one connection, and the p99
#                               added over direct (paired within each round)
#   d. h2load -c64 -m10 over h2c (HTTP/2 by prior knowledge), GET /
#                               req/s, CPU s per 100k requests
#   e. h2load --h1 -c64 at a fixed rate, half of Meridian's req/s in (a) of the
#      same round               p50, p99 from h2load's per-request log, and
#                               the p99 added over direct (paired in the round)
#   f. peak RSS of the proxy (VmHWM of the process and its children), read
#      after the load runs of the round, before the idle test
#   g. first round only, on a freshly started proxy: 10 000 keep-alive
#      connections that each get one `GET /` answered and then stay idle;
#      the proxy's VmRSS before and after, in KB per connection
#
# CPU is the proxy's utime+stime (/proc/PID/stat fields 14 and 15, over the
# process and its children) while the run lasts. The direct target has no
# proxy, so its CPU and memory cells are "—".
#
#   bash benches/compare.sh [--rounds N (3)] [--secs S (10)]
#   bash benches/compare.sh --soak [--minutes M (10)]
#
# The comparison is printed as Markdown and written to target/compare.md.
# --soak runs Meridian alone for M minutes under wrk -c64 on / and wrk -c8 on
# /64k at once, samples its VmRSS every second into target/soak-rss.csv
# (seconds,rss_kb), prints RSS after the warm-up (60 s, or half the run if that
# is shorter), min, max, last and spread, and whether it stayed flat (within
# 10%); the summary also goes to target/soak.md.
#
# MERIDIAN_BIN=path uses that binary instead of `cargo build --release`.
# Needs nginx, haproxy, wrk, h2load (nghttp2-client), python3, curl, taskset:
#   apt-get install nginx haproxy wrk nghttp2-client python3 curl util-linux
set -euo pipefail

usage() {
  echo "usage: bash benches/compare.sh [--rounds N] [--secs S] | --soak [--minutes M]" >&2
  exit 2
}
cmdline="bash benches/compare.sh${*:+ $*}"
[ -n "${MERIDIAN_BIN:-}" ] && cmdline="MERIDIAN_BIN=$MERIDIAN_BIN $cmdline"
rounds=3 secs=10 soak=0 minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || usage; rounds="$2"; shift 2 ;;
    --secs) [ $# -ge 2 ] || usage; secs="$2"; shift 2 ;;
    --soak) soak=1; shift ;;
    --minutes) [ $# -ge 2 ] || usage; minutes="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
for n in "$rounds" "$secs" "$minutes"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive whole number: $n" >&2; usage; }
done

# Resolve MERIDIAN_BIN against the directory the script was started in.
bin=""
if [ -n "${MERIDIAN_BIN:-}" ]; then
  bin=$(realpath "$MERIDIAN_BIN" 2>/dev/null || true)
  [ -n "$bin" ] && [ -x "$bin" ] || { echo "MERIDIAN_BIN=$MERIDIAN_BIN is not an executable" >&2; exit 1; }
fi
cd "$(dirname "$0")/.."

missing=()
for tool in nginx haproxy wrk h2load python3 curl taskset getconf awk sort pgrep realpath; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -n "$bin" ] || command -v cargo >/dev/null || missing+=(cargo)
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing tools: ${missing[*]}" >&2
  echo "  apt-get install nginx haproxy wrk nghttp2-client python3 curl util-linux procps" >&2
  exit 1
fi
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 cores (proxy on core 0, backend and load on core 1)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || {
  echo "cannot raise the open-files limit to 20000 (hard limit: $(ulimit -Hn)); the idle test needs it" >&2
  exit 1
}

if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="$PWD/target/release/meridian"
fi
mkdir -p target

# Ports: backend 18599 (HTTP/1.1) and 18598 (h2c); Meridian 18580 (HTTP/1.1
# and h2c on one listener); nginx 18581 and 18582 (h2c); HAProxy 18583 and
# 18584 (h2c).
backend=18599 backend_h2c=18598
for p in 18580 18581 18582 18583 18584 $backend $backend_h2c; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is already in use (another benchmark running?)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
pids=()
log() { echo "[compare] $*" >&2; }

# Ends a process and its children: TERM, then KILL after 5 s.
stop_pid() {
  local pid="$1" kids i state
  kids=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    [ "$state" = gone ] || [ "$state" = Z ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL "$pid" $kids 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The backend ----------------------------------------------------------
mkdir -p "$work/www"
head -c 65536 /dev/urandom >"$work/www/64k"
cat >"$work/backend.conf" <<NGINX
daemon off; worker_processes 1; worker_rlimit_nofile 20000;
pid $work/backend.pid; error_log $work/backend.log;
events { worker_connections 16000; }
http { access_log off; client_body_temp_path $work; sendfile on; tcp_nopush on;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$backend backlog=4096; listen 127.0.0.1:$backend_h2c http2;
           keepalive_requests 1000000; keepalive_timeout 300s;
           location = / { return 200 "hello\n"; }
           location = /64k { root $work/www; } } }
NGINX
taskset -c 1 nginx -c "$work/backend.conf" & pids+=($!)

# --- The proxies ------------------------------------------------------------
cat >"$work/meridian.toml" <<TOML
[listen]
http = "127.0.0.1:18580"
h2c = true
[[region]]
name = "us"
backends = ["http://127.0.0.1:$backend"]
[region.health]
path = "/"
[proxy]
region_header = false
[limits]
max_connections = 20000
keepalive_idle_timeout = "300s"
header_read_timeout = "300s"
shutdown_grace = "1s"
[log]
access = false
TOML
"$bin" check -c "$work/meridian.toml" >"$work/meridian-check.log" 2>&1 || {
  cat "$work/meridian-check.log" >&2; echo "the Meridian configuration is invalid" >&2; exit 1;
}

# Upstream keep-alive, HTTP/1.1 to the backend, buffers that hold a 64 KiB
# answer in memory (the defaults would spill it to a temporary file).
cat >"$work/nginx.conf" <<NGINX
daemon off; worker_processes 1; worker_rlimit_nofile 20000;
pid $work/nginx.pid; error_log $work/nginx.log;
events { worker_connections 16000; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work;
  upstream app { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18581 backlog=4096; listen 127.0.0.1:18582 http2;
           keepalive_requests 1000000; keepalive_timeout 300s;
           proxy_buffers 8 16k; proxy_buffer_size 16k;
           location / { proxy_pass http://app; proxy_http_version 1.1;
                        proxy_set_header Connection ""; } } }
NGINX

# HAProxy wants 2 x maxconn descriptors and refuses to start with fewer by
# default; 20 000 are plenty for 10 000 clients with reused server
# connections, hence "no strict-limits".
cat >"$work/haproxy.cfg" <<CFG
global
  nbthread 1
  no strict-limits
  ulimit-n 20000
  maxconn 15000
defaults
  mode http
  maxconn 15000
  timeout connect 5s
  timeout client 300s
  timeout server 30s
  timeout http-keep-alive 300s
  timeout http-request 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:18583
  bind 127.0.0.1:18584 proto h2
  default_backend be
backend be
  server app 127.0.0.1:$backend
CFG

# h1 and h2c ports of a target; "" when it has no h2c.
port_of() { case "$1" in meridian) echo 18580 ;; nginx) echo 18581 ;; haproxy) echo 18583 ;; direct) echo "$backend" ;; esac; }
h2c_port_of() { case "$1" in meridian) echo 18580 ;; nginx) echo 18582 ;; haproxy) echo 18584 ;; direct) echo "$backend_h2c" ;; esac; }

proxy_pid=""
start_target() { # name -> sets proxy_pid ("" for direct)
  case "$1" in
    meridian) RUST_LOG=warn taskset -c 0 "$bin" run -c "$work/meridian.toml" >"$work/meridian.log" 2>&1 & ;;
    nginx) taskset -c 0 nginx -c "$work/nginx.conf" & ;;
    haproxy) taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & ;;
    direct) proxy_pid=""; return 0 ;;
  esac
  proxy_pid=$!
  pids+=("$proxy_pid")
  local url i
  url="http://127.0.0.1:$(port_of "$1")/"
  for i in $(seq 100); do
    curl -fs -o /dev/null --max-time 1 "$url" && return 0
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$1 does not answer on $url; its log:" >&2
  cat "$work/$1.log" >&2 2>/dev/null || true
  exit 1
}
stop_target() {
  [ -n "$proxy_pid" ] || return 0
  stop_pid "$proxy_pid"
  local p kept=()
  for p in "${pids[@]}"; do [ "$p" = "$proxy_pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
  proxy_pid=""
  sleep 0.5
}

# CPU ticks of a process and its children (nginx's worker is a child).
hz=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# A /proc/PID/status field (kB) summed over a process and its children.
mem_kb() {
  local total=0 p v
  for p in "$1" $(pgrep -P "$1" || true); do
    v=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# CPU seconds per 100 000 requests.
cpu_per_100k() { awk -v t="$1" -v hz="$hz" -v n="$2" 'BEGIN { if (n > 0) printf "%.3f", t / hz / n * 100000; else print "n/a" }'; }

notes=()
note() { notes+=("$*"); log "warning: $*"; }

# A wrk latency ("450.12us", "1.20ms", "1.05s", "1.00m") in milliseconds.
to_ms() {
  awk -v s="$1" 'BEGIN {
    v = s + 0
    if (s ~ /us$/) v /= 1000; else if (s ~ /ms$/) v = v; else if (s ~ /m$/) v *= 60000
    else if (s ~ /s$/) v *= 1000; else if (s ~ /h$/) v *= 3600000
    printf "%.4f", v }'
}

# wrk: sets w_rps w_n w_p50 w_p99 (ms).
run_wrk() { # label conns url
  local out
  out=$(taskset -c 1 wrk -t1 -c"$2" -d"${secs}s" --latency "$3" 2>&1) || { echo "$out" >&2; echo "wrk failed: $1" >&2; exit 1; }
  w_rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  w_n=$(awk '/requests in/ {print $1}' <<<"$out")
  w_p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  w_p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  [ -n "$w_rps" ] && [ -n "$w_n" ] || { echo "$out" >&2; echo "cannot read wrk's output: $1" >&2; exit 1; }
  if grep -q 'Socket errors\|Non-2xx' <<<"$out"; then
    note "$1: $(grep 'Socket errors\|Non-2xx' <<<"$out" | tr -s ' ' | tr '\n' ';')"
  fi
}

# h2load over h2c: sets h_rps h_n.
run_h2c() { # label url
  local out
  out=$(taskset -c 1 h2load -c64 -m10 -D "$secs" "$2" 2>&1) || { echo "$out" >&2; echo "h2load failed: $1" >&2; exit 1; }
  h_rps=$(awk '/^finished in/ {printf "%.0f", $4}' <<<"$out")
  h_n=$(awk '/^requests:/ {print $8}' <<<"$out")
  local failed
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
  [ -n "$h_rps" ] && [ -n "$h_n" ] || { echo "$out" >&2; echo "cannot read h2load's output: $1" >&2; exit 1; }
  [ "$h_n" -gt 0 ] || { echo "$out" >&2; echo "$1: no request succeeded over h2c" >&2; exit 1; }
  [ "${failed:-0}" -eq 0 ] || note "$1: $failed requests failed, errored or timed out"
}

# h2load --h1 at a fixed total rate: sets r_p50 r_p99 (ms) from the log.
run_rate() { # label url rate
  local per=$(($3 / 64)) out logf="$work/rate.log" stats
  [ "$per" -ge 1 ] || per=1
  rm -f "$logf"
  out=$(taskset -c 1 h2load --h1 -c64 --rps="$per" -D "$secs" --log-file="$logf" "$2" 2>&1) || { echo "$out" >&2; echo "h2load failed: $1" >&2; exit 1; }
  stats=$(awk -F'\t' '$2 != 200 {bad++} {print $3} END {if (bad) print "bad", bad > "/dev/stderr"}' "$logf" 2>"$work/rate.bad" \
    | sort -n | awk '{a[NR] = $1} END {
        if (NR == 0) { print "n/a n/a"; exit }
        i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
        printf "%.4f %.4f\n", a[i50] / 1000, a[i99] / 1000 }')
  read -r r_p50 r_p99 <<<"$stats"
  [ -s "$work/rate.bad" ] && note "$1: $(awk '{print $2}' "$work/rate.bad") answers were not 200"
  [ "$r_p50" != n/a ] || note "$1: h2load logged no request"
}

# The idle-connection client: opens N keep-alive connections in batches, gets
# one `GET /` answered on each, prints "ready OK FAILED", keeps them open until
# SIGUSR1, then prints "alive N" (those the proxy has not closed).
cat >"$work/idle.py" <<'PY'
import errno, os, selectors, signal, socket, sys, time

host, port, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
sel = selectors.DefaultSelector()
kept, failed = [], 0


def complete(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    lines = buf[:end].decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise ValueError(lines[0])
    body = buf[end + 4:]
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            return len(body) >= int(value)
        if name == "transfer-encoding" and "chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    raise ValueError("no framing")


for start in range(0, total, batch):
    pending = {}
    for _ in range(min(batch, total - start)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            continue
        state = {"sent": False, "buf": b""}
        sel.register(s, selectors.EVENT_WRITE, state)
        pending[s] = state
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            s, state = key.fileobj, key.data
            try:
                if not state["sent"]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.sendall(request)
                    state["sent"] = True
                    sel.modify(s, selectors.EVENT_READ, state)
                    continue
                data = s.recv(65536)
                if not data:
                    raise OSError("closed before the answer")
                state["buf"] += data
                if complete(state["buf"]):
                    sel.unregister(s)
                    del pending[s]
                    kept.append(s)
            except (OSError, ValueError) as e:
                if failed < 3:
                    print("connection failed:", e, file=sys.stderr)
                sel.unregister(s)
                del pending[s]
                s.close()
                failed += 1
    for s in list(pending):
        sel.unregister(s)
        s.close()
        failed += 1

print("ready", len(kept), failed, flush=True)
signal.sigwait({signal.SIGUSR1})
alive = 0
for s in kept:
    try:
        if s.recv(1, socket.MSG_PEEK):
            alive += 1  # unexpected bytes, but still open
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print("alive", alive, flush=True)
PY

idle_conns=10000
# Idle keep-alive cost: sets i_before i_after i_later (kB, 2 s and 8 s after
# the connections are made), i_kb i_kb_later (kB per connection), i_ok.
idle_test() { # label port pid
  local cpid i line ok failed alive
  sleep 1
  i_before=$(mem_kb "$3" VmRSS)
  taskset -c 1 python3 "$work/idle.py" 127.0.0.1 "$2" "$idle_conns" 500 >"$work/idle.out" 2>"$work/idle.err" &
  cpid=$!
  pids+=("$cpid")
  line=""
  for i in $(seq 1200); do
    line=$(grep '^ready' "$work/idle.out" || true)
    [ -n "$line" ] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$line" ] || { cat "$work/idle.err" >&2; echo "$1: the idle client did not finish" >&2; exit 1; }
  read -r _ ok failed <<<"$line"
  sleep 2
  i_after=$(mem_kb "$3" VmRSS)
  # Again once every connection has long been idle: a proxy may give back
  # what a connection used for its request some time after the answer.
  sleep 6
  i_later=$(mem_kb "$3" VmRSS)
  kill -USR1 "$cpid"
  wait "$cpid" || true
  alive=$(awk '/^alive/ {print $2}' "$work/idle.out")
  stop_pid "$cpid"
  local kept=() p
  for p in "${pids[@]}"; do [ "$p" = "$cpid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
  i_ok="$ok"
  [ "$failed" -eq 0 ] || note "$1: $failed of $idle_conns idle connections failed ($(head -1 "$work/idle.err"))"
  [ "${alive:-0}" -eq "$ok" ] || note "$1: only ${alive:-0} of $ok idle connections were still open after the measurement"
  if [ "$ok" -gt 0 ]; then
    i_kb=$(awk -v a="$i_before" -v b="$i_after" -v n="$ok" 'BEGIN { printf "%.2f", (b - a) / n }')
    i_kb_later=$(awk -v a="$i_before" -v b="$i_later" -v n="$ok" 'BEGIN { printf "%.2f", (b - a) / n }')
  else
    i_kb="n/a" i_kb_later="n/a"
  fi
}

# Waits for the backend.
for i in $(seq 100); do
  curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$backend/" && break
  [ "$i" -lt 100 ] || { cat "$work/backend.log" >&2; echo "the backend nginx did not start" >&2; exit 1; }
  sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$backend/64k" || { echo "the backend does not serve /64k" >&2; exit 1; }

machine="$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -sr)"
versions="meridian $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(wrk --version 2>&1 | awk 'NR == 1 {print $1, $2}'), $(h2load --version | head -1)"

# --- Soak mode ----------------------------------------------------------------
if [ "$soak" -eq 1 ]; then
  duration=$((minutes * 60))
  warmup=60
  [ "$warmup" -le $((duration / 2)) ] || warmup=$((duration / 2))
  csv=target/soak-rss.csv
  log "soak: Meridian for $minutes min, RSS every second into $csv"
  start_target meridian
  start_rss=$(mem_kb "$proxy_pid" VmRSS)
  cpu0=$(cpu_ticks "$proxy_pid")
  taskset -c 1 wrk -t1 -c64 -d"${duration}s" --latency "http://127.0.0.1:18580/" >"$work/soak-small.out" 2>&1 &
  wrk_small=$!
  pids+=("$wrk_small")
  taskset -c 1 wrk -t1 -c8 -d"${duration}s" --latency "http://127.0.0.1:18580/64k" >"$work/soak-64k.out" 2>&1 &
  wrk_big=$!
  pids+=("$wrk_big")
  echo "seconds,rss_kb" >"$csv"
  t0=$(date +%s%N)
  for ((s = 1; s <= duration; s++)); do
    now=$(date +%s%N)
    wait_s=$(awk -v d=$((t0 + s * 1000000000 - now)) 'BEGIN { printf "%.3f", (d > 0 ? d : 0) / 1e9 }')
    sleep "$wait_s"
    kill -0 "$proxy_pid" 2>/dev/null || { echo "Meridian exited during the soak; its log:" >&2; cat "$work/meridian.log" >&2; exit 1; }
    echo "$s,$(mem_kb "$proxy_pid" VmRSS)" >>"$csv"
    [ $((s % 60)) -ne 0 ] || log "soak: $s s of $duration"
  done
  wait "$wrk_small" || true
  wait "$wrk_big" || true
  cpu1=$(cpu_ticks "$proxy_pid")
  read -r warm_rss min_rss max_rss last_rss <<<"$(awk -F, -v w="$warmup" 'NR > 1 && $1 >= w {
      if (!n++) { first = $2; min = $2; max = $2 }
      if ($2 < min) min = $2; if ($2 > max) max = $2; last = $2 }
      END { print first, min, max, last }' "$csv")"
  spread=$(awk -v a="$min_rss" -v b="$max_rss" 'BEGIN { printf "%.1f", (b / a - 1) * 100 }')
  verdict=$(awk -v s="$spread" 'BEGIN { print (s <= 10 ? "flat (within 10%)" : "NOT flat") }')
  small_rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/soak-small.out")
  big_rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/soak-64k.out")
  small_n=$(awk '/requests in/ {print $1}' "$work/soak-small.out")
  big_n=$(awk '/requests in/ {print $1}' "$work/soak-64k.out")
  errors=$(cat "$work/soak-small.out" "$work/soak-64k.out" | grep 'Socket errors\|Non-2xx' | tr -s ' ' | tr '\n' ';' || true)
  mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
  stop_target
  {
    echo "## Meridian soak"
    echo
    echo "Command: \`$cmdline\`  "
    echo "Duration: $minutes min ($duration s), warm-up $warmup s; load: \`wrk -t1 -c64\` on \`/\` and \`wrk -t1 -c8\` on \`/64k\` at once, both on core 1 with the backend; Meridian on core 0.  "
    echo "Machine: $machine  "
    echo "Versions: $versions"
    echo
    echo "| | value |"
    echo "|---|---|"
    echo "| requests/s, \`/\` (64 connections) | $small_rps |"
    echo "| requests/s, \`/64k\` (8 connections) | $big_rps |"
    echo "| Meridian CPU s / 100k requests | $(cpu_per_100k $((cpu1 - cpu0)) $((small_n + big_n))) |"
    echo "| RSS before load | $(mb "$start_rss") MB |"
    echo "| RSS after ${warmup} s warm-up | $(mb "$warm_rss") MB |"
    echo "| RSS min after warm-up | $(mb "$min_rss") MB |"
    echo "| RSS max after warm-up | $(mb "$max_rss") MB |"
    echo "| RSS last | $(mb "$last_rss") MB |"
    echo "| spread (max / min - 1) | $spread % |"
    echo "| verdict | **$verdict** |"
    echo
    echo "Samples: \`$csv\` (seconds,rss_kb)."
    [ -z "$errors" ] || echo "wrk reported: $errors"
  } >"$work/soak.md"
  cp "$work/soak.md" target/soak.md
  cat "$work/soak.md"
  exit 0
fi

# --- Comparison -----------------------------------------------------------------
targets=(meridian nginx haproxy direct)
declare -A res # "target metric" -> space-separated values, one per round
declare -A one_p99 # target -> its one-connection p99 in the current round
declare -A half_p99 # target -> its p99 at half rate in the current round
add() { res["$1 $2"]="${res["$1 $2"]:-} $3"; }

for ((round = 1; round <= rounds; round++)); do
  for t in "${targets[@]}"; do
    log "round $round/$rounds: $t"
    start_target "$t"
    port=$(port_of "$t") h2c=$(h2c_port_of "$t")
    base="http://127.0.0.1:$port"

    c0=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
    run_wrk "$t small" 64 "$base/"
    c1=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
    add "$t" rps "$w_rps"; add "$t" p50 "$w_p50"; add "$t" p99 "$w_p99"
    [ -z "$proxy_pid" ] || add "$t" cpu "$(cpu_per_100k $((c1 - c0)) "$w_n")"
    [ "$t" != meridian ] || rate=$((w_rps / 2))

    c0=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
    run_wrk "$t 64k" 64 "$base/64k"
    c1=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
    add "$t" big_rps "$w_rps"; add "$t" big_p99 "$w_p99"
    [ -z "$proxy_pid" ] || add "$t" big_cpu "$(cpu_per_100k $((c1 - c0)) "$w_n")"

    run_wrk "$t one connection" 1 "$base/"
    add "$t" one_p50 "$w_p50"; add "$t" one_p99 "$w_p99"
    one_p99["$t"]="$w_p99"

    if [ -n "$h2c" ]; then
      c0=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
      run_h2c "$t h2c" "http://127.0.0.1:$h2c/"
      c1=$([ -z "$proxy_pid" ] || cpu_ticks "$proxy_pid")
      add "$t" h2_rps "$h_rps"
      [ -z "$proxy_pid" ] || add "$t" h2_cpu "$(cpu_per_100k $((c1 - c0)) "$h_n")"
    else
      add "$t" h2_rps n/a; add "$t" h2_cpu n/a
    fi

    run_rate "$t half rate" "$base/" "$rate"
    add "$t" rate "$rate"; add "$t" rate_p50 "$r_p50"; add "$t" rate_p99 "$r_p99"
    half_p99["$t"]="$r_p99"

    if [ -n "$proxy_pid" ]; then
      add "$t" hwm "$(mem_kb "$proxy_pid" VmHWM)"
      if [ "$round" -eq 1 ]; then
        # A fresh process: memory the load runs freed would otherwise be
        # reused by the idle connections and hide their cost.
        log "round $round/$rounds: $t: $idle_conns idle keep-alive connections"
        stop_target
        start_target "$t"
        idle_test "$t idle" "$port" "$proxy_pid"
        add "$t" idle_before "$i_before"; add "$t" idle_after "$i_after"
        add "$t" idle_kb "$i_kb"; add "$t" idle_ok "$i_ok"
        add "$t" idle_later "$i_later"; add "$t" idle_kb_later "$i_kb_later"
      fi
    fi
    stop_target
  done
  # The p99 added over direct, with one connection and at half rate, each
  # paired within the round (all targets get the same rate in a round).
  for t in meridian nginx haproxy; do
    add "$t" added_p99 "$(awk -v a="${one_p99[$t]}" -v b="${one_p99[direct]}" 'BEGIN { printf "%.4f", a - b }')"
    add "$t" added_rate_p99 "$(awk -v a="${half_p99[$t]}" -v b="${half_p99[direct]}" \
      'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%.4f", a - b }')"
  done
done

# The median of a metric over the rounds ("—" when never measured, "n/a" when
# any round has n/a).
median() {
  local v="${res["$1 $2"]:-}"
  [ -n "${v// /}" ] || { echo "—"; return; }
  tr ' ' '\n' <<<"$v" | awk 'NF' | sort -g | awk '
    /n\/a/ { na = 1 } { a[NR] = $1 }
    END { if (na) { print "n/a"; exit }
          if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# Formats: whole numbers; milliseconds to about three significant digits.
num() { [[ "$1" =~ ^-?[0-9.]+$ ]]; }
fmt_int() { if num "$1"; then awk -v v="$1" 'BEGIN { printf "%.0f", v }'; else echo "$1"; fi; }
fmt_ms() {
  if num "$1"; then
    awk -v v="$1" 'BEGIN { a = v < 0 ? -v : v
      if (a < 1) printf "%.3f", v; else if (a < 10) printf "%.2f", v; else if (a < 100) printf "%.1f", v; else printf "%.0f", v }'
  else echo "$1"; fi
}
fmt_2() { if num "$1"; then awk -v v="$1" 'BEGIN { printf "%.2f", v }'; else echo "$1"; fi; }
fmt_mb() { if num "$1"; then awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; else echo "$1"; fi; }
ratio() {
  if num "$1" && num "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; else echo "n/a"; fi
}

{
  echo "## Meridian, nginx and HAProxy as reverse proxies"
  echo
  echo "Command: \`$cmdline\`  "
  echo "Rounds: $rounds, $secs s per run; medians over the rounds. Targets take turns within each round: ${targets[*]}.  "
  echo "Machine: $machine  "
  echo "Versions: $versions  "
  echo "Setup: each proxy alone on core 0 (\`taskset -c 0\`; nginx and HAProxy with one worker or thread); the backend (nginx, 1 worker) and the load generators on core 1. \"direct\" is the backend without a proxy. CPU is the proxy's user+system time per 100 000 requests."
  echo
  echo "### Throughput"
  echo
  echo "| target | small req/s | vs HAProxy | vs direct | CPU s / 100k | 64 KiB req/s | 64 KiB CPU s / 100k | h2c req/s | h2c CPU s / 100k |"
  echo "|---|---|---|---|---|---|---|---|---|"
  hap=$(median haproxy rps) dir=$(median direct rps)
  for t in "${targets[@]}"; do
    r=$(median "$t" rps)
    echo "| $t | $(fmt_int "$r") | $(ratio "$r" "$hap") | $(ratio "$r" "$dir") | $(fmt_2 "$(median "$t" cpu)") | $(fmt_int "$(median "$t" big_rps)") | $(fmt_2 "$(median "$t" big_cpu)") | $(fmt_int "$(median "$t" h2_rps)") | $(fmt_2 "$(median "$t" h2_cpu)") |"
  done
  echo
  echo "Small: \`wrk -t1 -c64 -d${secs}s\` on \`/\` (6 bytes); 64 KiB: the same on \`/64k\`; h2c: \`h2load -c64 -m10 -D $secs\`, HTTP/2 by prior knowledge."
  echo
  echo "### Latency (ms)"
  echo
  echo "| target | p50, 64 conns | p99, 64 conns | 64 KiB p99 | p50, 1 conn | p99, 1 conn | p99 added over direct, 1 conn | p50 at half rate | p99 at half rate | p99 added over direct, half rate |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for t in "${targets[@]}"; do
    echo "| $t | $(fmt_ms "$(median "$t" p50)") | $(fmt_ms "$(median "$t" p99)") | $(fmt_ms "$(median "$t" big_p99)") | $(fmt_ms "$(median "$t" one_p50)") | $(fmt_ms "$(median "$t" one_p99)") | $(fmt_ms "$(median "$t" added_p99)") | $(fmt_ms "$(median "$t" rate_p50)") | $(fmt_ms "$(median "$t" rate_p99)") | $(fmt_ms "$(median "$t" added_rate_p99)") |"
  done
  echo
  echo "1 conn: \`wrk -t1 -c1\` on \`/\`; an added p99 is the target's minus direct's in the same round, at the same rate. Half rate: \`h2load --h1 -c64 --rps=R/64 -D $secs\` at R = half of Meridian's small req/s in the same round (median R: $(fmt_int "$(median meridian rate)") req/s), percentiles of h2load's per-request log."
  echo
  echo "### Memory"
  echo
  echo "| target | peak RSS, MB | RSS before idle, MB | RSS with idle conns, MB | idle conns kept | KB / idle connection | RSS 6 s later, MB | KB / idle connection, 6 s later |"
  echo "|---|---|---|---|---|---|---|---|"
  for t in "${targets[@]}"; do
    echo "| $t | $(fmt_mb "$(median "$t" hwm)") | $(fmt_mb "$(median "$t" idle_before)") | $(fmt_mb "$(median "$t" idle_after)") | $(median "$t" idle_ok) | $(fmt_2 "$(median "$t" idle_kb)") | $(fmt_mb "$(median "$t" idle_later)") | $(fmt_2 "$(median "$t" idle_kb_later)") |"
  done
  echo
  echo "Peak RSS: VmHWM of the proxy and its children after the load runs (before the idle test). Idle: in the first round, on a freshly started proxy, $idle_conns keep-alive connections, each answered one \`GET /\` and then left idle; (VmRSS with them - VmRSS before) / connections, 2 s after the last was answered and again 6 s later."
  if [ ${#notes[@]} -gt 0 ]; then
    echo
    echo "Warnings:"
    for n in "${notes[@]}"; do echo "- $n"; done
  fi
} >"$work/compare.md"
cp "$work/compare.md" target/compare.md
cat "$work/compare.md"
