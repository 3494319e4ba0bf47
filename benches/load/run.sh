#!/usr/bin/env bash
# Load harness for issue 6: portcullis against the outpost ceiling, the nginx auth-proxy tier and
# Caddy forward_auth, interleaved, same load generator, same pinning, loopback only.
# See benches/load/README.md. Usage (from anywhere):
#   bash benches/load/run.sh
#   DURATION=2s RUNS=1 bash benches/load/run.sh          # smoke test
# Environment (defaults): DURATION=10s CONNS=64 RUNS=3 WARMUP=1s DELAY_US=500 LOAD_CORE=0
#   SUT_CORE=1 BASE_PORT=18100 SESSIONS=10000 MEM_ENTRIES=100000 BH_COUNT=3 ONLY="" (space-separated
#   configuration names to run, default all) SKIP_BUILD=0 SKIP_EXTRA=0 (1: no black-hole/memory part)
#   ACCESS_LOG=0 (1: nginx access log to a file, portcullis at info with its access log).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
RUNS="${RUNS:-3}"
WARMUP="${WARMUP:-1s}"
DELAY_US="${DELAY_US:-500}"
LOAD_CORE="${LOAD_CORE:-0}"
SUT_CORE="${SUT_CORE:-1}"
BASE_PORT="${BASE_PORT:-18100}"
SESSIONS="${SESSIONS:-10000}"
MEM_ENTRIES="${MEM_ENTRIES:-100000}"
BH_COUNT="${BH_COUNT:-3}"
ONLY="${ONLY:-}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SKIP_EXTRA="${SKIP_EXTRA:-0}"
ACCESS_LOG="${ACCESS_LOG:-0}"

OUTPOST_PORT=$((BASE_PORT + 1))
CLOSED_PORT=$((BASE_PORT + 3))
PC_PORT=$((BASE_PORT + 10))
PC_ADMIN=$((BASE_PORT + 11))
NGINX_PORT=$((BASE_PORT + 20))
CADDY_PORT=$((BASE_PORT + 30))
FALLBACK_USER="loaduser"
FALLBACK_PASSWORD="load-harness-password"
AUTH_PATH="/outpost.goauthentik.io/auth/traefik"

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "run.sh: $*" >&2; }

# ---- tools -------------------------------------------------------------------------------------
for tool in cargo wrk nginx caddy taskset curl python3 pgrep awk base64; do
  command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' is not installed"
done
[[ "$(getconf CLK_TCK)" =~ ^[0-9]+$ ]] || die "cannot read CLK_TCK"
CLK_TCK="$(getconf CLK_TCK)"
taskset -c "$LOAD_CORE" true 2>/dev/null || die "cannot pin to core $LOAD_CORE"
taskset -c "$SUT_CORE" true 2>/dev/null || die "cannot pin to core $SUT_CORE"

RUN="$(mktemp -d /tmp/portcullis-load.XXXXXX)"
chmod 755 "$RUN"
RESULTS="$RUN/results.tsv"
: >"$RESULTS"
PIDS=()

# ---- process control ---------------------------------------------------------------------------
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && stop_pid "$pid"
  done
  PIDS=()
}

cleanup() {
  local rc=$?
  stop_all
  if [[ $rc -eq 0 && "${KEEP_RUN_DIR:-0}" != 1 ]]; then rm -rf "$RUN"; else log "run dir kept: $RUN"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" on the system-under-test core, in the background; sets STARTED_PID.
start_sut() {
  local logfile="$1"; shift
  taskset -c "$SUT_CORE" "$@" >"$logfile" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Polls URL until it answers any HTTP status; bounded.
wait_http() {
  local url="$1" pid="$2" deadline=$((SECONDS + 15))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || die "process for $url exited early (see $RUN)"
    if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
    sleep 0.05
  done
  die "$url not answering after 15 s"
}

# ---- /proc readings ----------------------------------------------------------------------------
pid_tree() { # the pid and its children (nginx master + workers)
  local pid="$1"
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}

cpu_ticks() { # utime+stime summed over the given pids
  local total=0 pid t
  for pid in "$@"; do
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

preemptions() { # involuntary context switches summed over every thread of the given pids
  local total=0 pid v
  for pid in "$@"; do
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    v="$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '$1 == "nonvoluntary_ctxt_switches:" { n += $2 } END { print n + 0 }')"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

status_kb() { # FIELD pids...: VmHWM / VmRSS summed, kB
  local field="$1" total=0 pid v; shift
  for pid in "$@"; do
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

outpost_stat() { # FIELD: connections | requests (0 when the outpost is not running)
  curl -s --max-time 2 "http://127.0.0.1:$OUTPOST_PORT/load/stats" 2>/dev/null \
    | awk -v f="$1" '$1 == f { print $2 }' | grep . || echo 0
}

# ---- build and shared files --------------------------------------------------------------------
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --bin portcullis --example load_outpost) >&2
fi
PORTCULLIS="$ROOT/target/release/portcullis"
OUTPOST="$ROOT/target/release/examples/load_outpost"
[[ -x "$PORTCULLIS" && -x "$OUTPOST" ]] || die "release binaries missing under $ROOT/target/release"

for port in "$OUTPOST_PORT" "$CLOSED_PORT" "$PC_PORT" "$PC_ADMIN" "$NGINX_PORT" "$CADDY_PORT"; do
  port_free "$port" || die "127.0.0.1:$port is in use; set BASE_PORT"
done

printf '%s\n' "$FALLBACK_PASSWORD" | "$PORTCULLIS" hash-password "$FALLBACK_USER" >"$RUN/htpasswd" \
  || die "portcullis hash-password failed"
chmod 644 "$RUN/htpasswd"
printf 'Basic %s\n' "$(printf '%s:%s' "$FALLBACK_USER" "$FALLBACK_PASSWORD" | base64 -w0)" >"$RUN/basic.txt"
mkdir -p "$RUN/nginx-tmp" "$RUN/nginx-fallback"
printf 'authenticated' >"$RUN/nginx-fallback/ok"
export LOAD_DIR="$HERE"

if [[ "$ACCESS_LOG" == 1 ]]; then
  NGINX_ACCESS_LOG="$RUN/nginx-access.log"; PC_LOG_LEVEL="info"; CADDY_LOG="log default { output file $RUN/caddy-access.log }"
else
  NGINX_ACCESS_LOG="off"; PC_LOG_LEVEL="warn"; CADDY_LOG=""
fi

render() { # TEMPLATE OUT KEY=VALUE...
  local tmpl="$1" out="$2" kv; shift 2
  local text; text="$(cat "$tmpl")"
  for kv in "$@"; do text="${text//@${kv%%=*}@/${kv#*=}}"; done
  if grep -q '@[A-Z_]\+@' <<<"$text"; then die "unrendered placeholder in $out"; fi
  printf '%s\n' "$text" >"$out"
}

# ---- the systems -------------------------------------------------------------------------------
# start_outpost DELAY_US [extra args]: sets OUTPOST_PID; writes $RUN/cookies.txt and $RUN/cookie1.txt.
start_outpost() {
  local delay="$1"; shift
  start_sut "$RUN/outpost.log" "$OUTPOST" --listen "127.0.0.1:$OUTPOST_PORT" --delay-us "$delay" \
    --sessions "$SESSIONS" --cookie-file "$RUN/cookies.txt" "$@"
  OUTPOST_PID=$STARTED_PID
  wait_http "http://127.0.0.1:$OUTPOST_PORT/outpost.goauthentik.io/ping" "$OUTPOST_PID"
  head -n1 "$RUN/cookies.txt" >"$RUN/cookie1.txt"
}

start_portcullis() { # OUTPOST_PORT CACHE_TTL [CAPACITY]: sets SUT_PID
  render "$HERE/portcullis.toml.tmpl" "$RUN/portcullis.toml" PORT="$PC_PORT" ADMIN_PORT="$PC_ADMIN" \
    OUTPOST_PORT="$1" CACHE_TTL="$2" CACHE_CAPACITY="${3:-100000}" RUN="$RUN" LOG_LEVEL="$PC_LOG_LEVEL"
  start_sut "$RUN/portcullis.log" "$PORTCULLIS" serve --config "$RUN/portcullis.toml"
  SUT_PID=$STARTED_PID
  wait_http "http://127.0.0.1:$PC_ADMIN/readyz" "$SUT_PID"
}

start_nginx() { # OUTPOST_PORT KEEPALIVE: sets SUT_PID
  render "$HERE/nginx.conf.tmpl" "$RUN/nginx.conf" PORT="$NGINX_PORT" OUTPOST_PORT="$1" \
    KEEPALIVE="$2" RUN="$RUN" ACCESS_LOG="$NGINX_ACCESS_LOG"
  start_sut "$RUN/nginx.log" nginx -c "$RUN/nginx.conf" -p "$RUN" -e "$RUN/nginx-error.log"
  SUT_PID=$STARTED_PID
  wait_http "http://127.0.0.1:$NGINX_PORT/healthz" "$SUT_PID"
}

start_caddy() { # OUTPOST_PORT: sets SUT_PID
  render "$HERE/Caddyfile.tmpl" "$RUN/Caddyfile" PORT="$CADDY_PORT" OUTPOST_PORT="$1" CADDY_LOG="$CADDY_LOG"
  start_sut "$RUN/caddy.log" caddy run --config "$RUN/Caddyfile" --adapter caddyfile
  SUT_PID=$STARTED_PID
  wait_http "http://127.0.0.1:$CADDY_PORT/" "$SUT_PID"
}

# One request as wrk sends it; prints "STATUS USERNAME_HEADER_PRESENT".
probe() { # URL FILE HEADER
  local line; line="$(head -n1 "$2")"
  curl -s -o /dev/null -D "$RUN/probe.headers" --max-time 30 -w '%{http_code}' \
    -H "X-Forwarded-Proto: https" -H "X-Forwarded-Host: app.example.test" \
    -H "X-Forwarded-Uri: /dashboard?tab=1" -H "X-Forwarded-Method: GET" -H "$3: $line" "$1"
}

# ---- one measured run --------------------------------------------------------------------------
# measure NAME RUN URL FILE HEADER EXPECT_IDENTITY(1|0) [WARMUP]: SUT_PID (may equal OUTPOST_PID)
# and OUTPOST_PID (empty when the outpost is down) must be set. WARMUP 0 skips the warm-up (the
# nginx fallback: its bcrypt backlog from a warm-up would eat the measured run).
measure() {
  local name="$1" run="$2" url="$3" file="$4" header="$5" expect_id="$6" warm="${7:-$WARMUP}"
  local code
  code="$(probe "$url" "$file" "$header")" || true
  [[ "$code" == 200 ]] || die "$name: preflight answered ${code:-nothing}, expected 200 (see $RUN)"
  if [[ "$expect_id" == 1 ]] && ! grep -qi '^x-authentik-username: .' "$RUN/probe.headers"; then
    die "$name: preflight 200 without X-authentik-username"
  fi
  if [[ "$warm" != 0 ]]; then
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$warm" --timeout 30s -s "$HERE/headers.lua" "$url" \
      -- "$file" "$header" >/dev/null
  fi
  local sut_pids out_pids=() t0 o0 c0 r0 p0 t1 o1 c1 r1 p1 hwm
  read -r -a sut_pids <<<"$(pid_tree "$SUT_PID" | tr '\n' ' ')"
  [[ -n "${OUTPOST_PID:-}" && "$OUTPOST_PID" != "$SUT_PID" ]] && out_pids=("$OUTPOST_PID")
  t0="$(cpu_ticks "${sut_pids[@]}")"; o0="$(cpu_ticks "${out_pids[@]:-}")"
  c0="$(outpost_stat connections)"; r0="$(outpost_stat requests)"; p0="$(preemptions "${sut_pids[@]}")"
  local out="$RUN/wrk-$name-$run.txt"
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" --latency --timeout 30s \
    -s "$HERE/headers.lua" "$url" -- "$file" "$header" >"$out"
  t1="$(cpu_ticks "${sut_pids[@]}")"; o1="$(cpu_ticks "${out_pids[@]:-}")"
  c1="$(outpost_stat connections)"; r1="$(outpost_stat requests)"; p1="$(preemptions "${sut_pids[@]}")"
  hwm="$(status_kb VmHWM "${sut_pids[@]}")"
  # The /load/stats reading itself is one request and maybe one connection.
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$run" "$out" "$((t1 - t0))" "$((o1 - o0))" \
    "$hwm" "$((r1 - r0 - 1))" "$((c1 - c0))" "$((p1 - p0))" >>"$RESULTS"
  log "$name run $run: $(awk '/Requests\/sec/ { print $2 " req/s" }' "$out")"
}

# ---- configurations ----------------------------------------------------------------------------
# Each function runs one configuration once, from fresh processes, and stops them.
cfg_ceiling() { start_outpost 0; SUT_PID=$OUTPOST_PID
  measure ceiling "$1" "http://127.0.0.1:$OUTPOST_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_ceiling_d() { start_outpost "$DELAY_US"; SUT_PID=$OUTPOST_PID
  measure "ceiling-d$DELAY_US" "$1" "http://127.0.0.1:$OUTPOST_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_pc_hit() { start_outpost 0; start_portcullis "$OUTPOST_PORT" 10s
  measure pc-hit "$1" "http://127.0.0.1:$PC_PORT$AUTH_PATH" "$RUN/cookie1.txt" Cookie 1; stop_all; }
cfg_pc_miss() { start_outpost 0; start_portcullis "$OUTPOST_PORT" 0s
  measure pc-miss "$1" "http://127.0.0.1:$PC_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_pc_miss_d() { start_outpost "$DELAY_US"; start_portcullis "$OUTPOST_PORT" 0s
  measure "pc-miss-d$DELAY_US" "$1" "http://127.0.0.1:$PC_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_pc_fallback() { OUTPOST_PID=""; start_portcullis "$CLOSED_PORT" 10s
  measure pc-fallback "$1" "http://127.0.0.1:$PC_PORT$AUTH_PATH" "$RUN/basic.txt" Authorization 1; stop_all; }
cfg_nginx_k32() { start_outpost 0; start_nginx "$OUTPOST_PORT" 32
  measure nginx-k32 "$1" "http://127.0.0.1:$NGINX_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_nginx_k32_d() { start_outpost "$DELAY_US"; start_nginx "$OUTPOST_PORT" 32
  measure "nginx-k32-d$DELAY_US" "$1" "http://127.0.0.1:$NGINX_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_nginx_k32_fallback() { OUTPOST_PID=""; start_nginx "$CLOSED_PORT" 32
  measure nginx-k32-fallback "$1" "http://127.0.0.1:$NGINX_PORT$AUTH_PATH" "$RUN/basic.txt" Authorization 1 0; stop_all; }
cfg_nginx_k128() { start_outpost 0; start_nginx "$OUTPOST_PORT" 128
  measure nginx-k128 "$1" "http://127.0.0.1:$NGINX_PORT$AUTH_PATH" "$RUN/cookies.txt" Cookie 1; stop_all; }
cfg_caddy() { start_outpost 0; start_caddy "$OUTPOST_PORT"
  measure caddy "$1" "http://127.0.0.1:$CADDY_PORT/dashboard" "$RUN/cookies.txt" Cookie 0; stop_all; }

ALL_CONFIGS="ceiling ceiling_d pc_hit pc_miss pc_miss_d pc_fallback nginx_k32 nginx_k32_d nginx_k32_fallback nginx_k128 caddy"
CONFIGS="${ONLY:-$ALL_CONFIGS}"
for c in $CONFIGS; do declare -F "cfg_$c" >/dev/null || die "unknown configuration '$c' (known: $ALL_CONFIGS)"; done

log "run dir $RUN; load on core $LOAD_CORE, systems under test on core $SUT_CORE"
log "wrk -t1 -c$CONNS -d$DURATION, $RUNS run(s) each, interleaved; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
START_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
  for c in $CONFIGS; do "cfg_$c" "$run"; done
done

# ---- black-holed outpost -----------------------------------------------------------------------
EXTRA="$RUN/extra.tsv"
: >"$EXTRA"
time_basic() { # URL: seconds to the answer, with the fallback credentials
  curl -s -o /dev/null --max-time 30 -w '%{time_total} %{http_code}\n' \
    -H "X-Forwarded-Proto: https" -H "X-Forwarded-Host: app.example.test" -H "X-Forwarded-Uri: /" \
    -H "Authorization: $(cat "$RUN/basic.txt")" -H "Cookie: $1" "$2"
}
if [[ "$SKIP_EXTRA" != 1 ]]; then
  log "black-holed outpost: portcullis"
  start_sut "$RUN/blackhole.log" "$OUTPOST" --listen "127.0.0.1:$OUTPOST_PORT" --blackhole
  OUTPOST_PID=$STARTED_PID
  for i in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$OUTPOST_PORT") 2>/dev/null && break; sleep 0.05; done
  start_portcullis "$OUTPOST_PORT" 10s
  # Distinct cookies, so the tripping requests are distinct outpost exchanges (not coalesced).
  for i in 1 2 3 4; do time_basic "authentik_proxy_x=trip$i" "http://127.0.0.1:$PC_PORT$AUTH_PATH" >"$RUN/trip$i.txt" & done
  wait_trips=$((SECONDS + 20))
  while ((SECONDS < wait_trips)) && [[ "$(cat "$RUN"/trip*.txt 2>/dev/null | wc -l)" -lt 4 ]]; do sleep 0.1; done
  for i in 1 2 3 4; do awk -v i="$i" '{ print "bh-trip\t" i "\t" $1 "\t" $2 }' "$RUN/trip$i.txt" >>"$EXTRA"; done
  for i in $(seq 1 9); do
    time_basic "authentik_proxy_x=open$i" "http://127.0.0.1:$PC_PORT$AUTH_PATH" \
      | awk -v i="$i" '{ print "bh-portcullis\t" i "\t" $1 "\t" $2 }' >>"$EXTRA"
  done
  stop_pid "$SUT_PID"
  log "black-holed outpost: nginx tier ($BH_COUNT requests of ~5 s, in parallel)"
  start_nginx "$OUTPOST_PORT" 32
  for i in $(seq 1 "$BH_COUNT"); do
    time_basic "authentik_proxy_x=bh$i" "http://127.0.0.1:$NGINX_PORT$AUTH_PATH" >"$RUN/bhn$i.txt" &
  done
  wait_bh=$((SECONDS + 40))
  while ((SECONDS < wait_bh)) && [[ "$(cat "$RUN"/bhn*.txt 2>/dev/null | wc -l)" -lt "$BH_COUNT" ]]; do sleep 0.2; done
  for i in $(seq 1 "$BH_COUNT"); do awk -v i="$i" '{ print "bh-nginx\t" i "\t" $1 "\t" $2 }' "$RUN/bhn$i.txt" >>"$EXTRA"; done
  stop_all

  # ---- memory ----------------------------------------------------------------------------------
  for jwt in 0 1024; do
    log "memory: $MEM_ENTRIES cache entries, X-authentik-jwt of ~$jwt bytes"
    SESSIONS_SAVED=$SESSIONS; SESSIONS=$MEM_ENTRIES
    start_outpost 0 --jwt-bytes "$jwt"
    SESSIONS=$SESSIONS_SAVED
    # Capacity above the entry count, so uneven LRU shards evict nothing.
    start_portcullis "$OUTPOST_PORT" 10m $((MEM_ENTRIES * 2))
    idle="$(status_kb VmRSS "$SUT_PID")"
    hdr="$(curl -s -D - -o /dev/null -H "Cookie: $(head -n1 "$RUN/cookies.txt")" \
      -H "X-Forwarded-Proto: https" -H "X-Forwarded-Host: app.example.test" -H "X-Forwarded-Uri: /" \
      "http://127.0.0.1:$OUTPOST_PORT$AUTH_PATH" | tr -d '\r' \
      | awk -F': ' 'tolower($1) ~ /^x-authentik-/ { n += length($2) } END { print n + 0 }')"
    # wrk keeps running for -d even after fill.lua stopped sending: poll the cache gauge and end
    # this wrk (by its pid) once every entry is in or the count stops growing for 2 s.
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d120s --timeout 30s -s "$HERE/fill.lua" \
      "http://127.0.0.1:$PC_PORT$AUTH_PATH" -- "$RUN/cookies.txt" Cookie >"$RUN/fill-$jwt.txt" &
    fill_pid=$!
    PIDS+=("$fill_pid")
    last=-1; still=0; fill_end=$((SECONDS + 120))
    while ((SECONDS < fill_end)) && kill -0 "$fill_pid" 2>/dev/null; do
      sleep 0.2
      entries="$(curl -s "http://127.0.0.1:$PC_ADMIN/metrics" | awk '$1 == "portcullis_cache_entries" { print $2 }')"
      ((${entries:-0} >= MEM_ENTRIES)) && break
      if [[ "${entries:-0}" == "$last" ]]; then ((++still >= 10)) && break; else still=0; last="${entries:-0}"; fi
    done
    stop_pid "$fill_pid"
    sleep 0.5 # let the last answers settle before reading RSS
    full="$(status_kb VmRSS "$SUT_PID")"
    entries="$(curl -s "http://127.0.0.1:$PC_ADMIN/metrics" | awk '$1 == "portcullis_cache_entries" { print $2 }')"
    printf 'mem\t%s\t%s\t%s\t%s\t%s\n' "$jwt" "$idle" "$full" "${entries:-0}" "$hdr" >>"$EXTRA"
    stop_all
  done
fi

# ---- report ------------------------------------------------------------------------------------
END_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" "$EXTRA" "$CLK_TCK" "$DELAY_US" <<'PY'
import re, statistics, sys
results, extra, clk, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]

def parse(path):
    t = open(path).read()
    get = lambda rx, d="0": (re.search(rx, t, re.M) or [None, d])[1]
    reqs = int(get(r"(\d+) requests in"))
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", get(r"Socket errors: (.*)", "")))
    return dict(rps=float(get(r"Requests/sec:\s+([\d.]+)")), p50=us(get(r"^\s+50%\s+(\S+)\s*$", "0us")),
                p99=us(get(r"^\s+99%\s+(\S+)\s*$", "0us")), reqs=reqs,
                errors=errs + int(get(r"Non-2xx or 3xx responses: (\d+)")))

runs = {}
for line in open(results):
    name, run, path, sut, out, hwm, calls, conns, preempt = line.rstrip("\n").split("\t")
    r = parse(path)
    n = max(r["reqs"], 1)
    r.update(cpu=int(sut) * 1e6 / clk / n, ocpu=int(out) * 1e6 / clk / n, hwm=int(hwm) / 1024,
             calls=int(calls) / n, conns=int(conns), preempt=int(preempt) / n)
    runs.setdefault(name, []).append(r)

med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
ceil, ceil_d, nginx = med.get("ceiling"), med.get(f"ceiling-d{delay}"), med.get("nginx-k32")
ratio = lambda a, b: f"{a['rps'] / b['rps']:.2f}" if b and b["rps"] else "-"
print()
print(f"| configuration | runs | req/s | p50 ms | p99 ms | CPU µs/req | preempted/req | outpost CPU µs/req | peak RSS MiB | outpost calls/req | outpost conns/run | × (1) ceiling | × ceiling same delay | × (5) nginx k32 | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, m in med.items():
    same = ceil_d if name.endswith(f"-d{delay}") else ceil
    print(f"| {name} | {len(runs[name])} | {m['rps']:.0f} | {m['p50'] / 1e3:.3f} | {m['p99'] / 1e3:.3f} | "
          f"{m['cpu']:.1f} | {m['preempt']:.2f} | {m['ocpu']:.1f} | {m['hwm']:.1f} | {m['calls']:.2f} | {m['conns']:.0f} | "
          f"{ratio(m, ceil)} | {ratio(m, same)} | {ratio(m, nginx)} | {m['errors']:.0f} |")

rows = [l.rstrip("\n").split("\t") for l in open(extra)]
bh = {}
for r in rows:
    if r[0].startswith("bh-"):
        bh.setdefault(r[0], []).append((float(r[2]), r[3]))
if bh:
    print()
    print("| black-holed outpost | requests | median answer ms | max ms | statuses |")
    print("|---|---|---|---|---|")
    for k, v in bh.items():
        t = [x[0] * 1e3 for x in v]
        print(f"| {k} | {len(v)} | {statistics.median(t):.1f} | {max(t):.1f} | {' '.join(sorted(set(x[1] for x in v)))} |")
mem = [r for r in rows if r[0] == "mem"]
if mem:
    print()
    print("| portcullis memory | idle RSS MiB | RSS with entries MiB | cache entries | bytes/entry | identity header value bytes | bytes/entry beyond them |")
    print("|---|---|---|---|---|---|---|")
    for _, jwt, idle, full, entries, hdr in mem:
        e = max(float(entries), 1)
        per = (int(full) - int(idle)) * 1024 / e
        print(f"| X-authentik-jwt ~{jwt} B | {int(idle) / 1024:.1f} | {int(full) / 1024:.1f} | {float(entries):.0f} | "
              f"{per:.0f} | {hdr} | {per - int(hdr):.0f} |")
PY
echo
echo "wrk -t1 -c$CONNS -d$DURATION --latency, $RUNS run(s) interleaved, wrk on core $LOAD_CORE, servers + outpost on core $SUT_CORE;" \
  "outpost delay for -d rows: $DELAY_US µs; load average at start $START_LOAD, at end $END_LOAD; $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ)"
