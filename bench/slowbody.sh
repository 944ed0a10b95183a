#!/usr/bin/env bash
# bench/slowbody.sh: slow request bodies (slowhttptest -B style) against levee and nginx, in
# the same run, both in front of one lv-testupstream origin. For each proxy in turn: N clients
# send `POST /slow` with `Content-Length: 100000`, 3 body bytes and then nothing (or one byte
# every TRICKLE seconds); while they are open we measure (a) how many connections the origin
# holds open because of them, (b) whether normal requests still get through (wrk -t1 -c4
# -d3s), (c) how the slow clients are answered once the body timeout passes (408 or a close,
# and when). levee: bench/levee-slowbody.lua (upstream pool of 100, limits.body_timeout);
# nginx: proxy_pass with its default request buffering, client_body_timeout, keepalive pool.
#   N=500 BODY_TIMEOUT=5s TRICKLE=0 PROXIES="levee nginx" OUT_DIR=dir BUILD=1 bench/slowbody.sh
# BUILD=0 skips scripts/build.sh and uses the build/levee that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500} BODY_TIMEOUT=${BODY_TIMEOUT:-5s} TRICKLE=${TRICKLE:-0} PROXIES=${PROXIES:-"levee nginx"}
WRK_SECONDS=${WRK_SECONDS:-3}
BASE=${BASE_PORT:-18380}
ORIGIN_PORT=$BASE LEVEE_PORT=$((BASE + 1)) NGINX_PORT=$((BASE + 2))
# shellcheck source=bench/lib.sh
. bench/lib.sh   # med

# BODY_TIMEOUT as whole milliseconds, written the same way for levee and nginx ("5000ms").
case $BODY_TIMEOUT in
  *ms) body_ms=${BODY_TIMEOUT%ms} ;;
  *s) body_ms=$(awk -v s="${BODY_TIMEOUT%s}" 'BEGIN {printf "%d", s * 1000}') ;;
  *) body_ms=$(awk -v s="$BODY_TIMEOUT" 'BEGIN {printf "%d", s * 1000}') ;;
esac
if ! [[ $body_ms =~ ^[0-9]+$ ]] || ((body_ms == 0)); then
  echo "slowbody: BODY_TIMEOUT=$BODY_TIMEOUT: want e.g. 5s or 500ms" >&2; exit 2
fi
# How long the slow clients wait for an answer: a proxy that never applies a body timeout
# still has to be measured in bounded time (levee's route timeout, 15 s, is inside this).
SLOW_WAIT=${SLOW_WAIT:-$((body_ms / 1000 + 20))}

scripts/setup.sh --bench
[[ ${BUILD:-1} == 0 ]] || scripts/build.sh release >/dev/null
out=${OUT_DIR:-$(mktemp -d /tmp/levee-slowbody.XXXX)}
mkdir -p "$out"
# 500 client sockets, 500 proxy sockets and their upstream ones: more than a default 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# The slow client: connect N sockets, send the head and 3 bytes of a 100000-byte body, then
# watch every socket (non-blocking) until each is answered and closed or WAIT seconds pass.
# One TSV line per connection: index, status (or -), seconds to the first response byte and
# to the close (from that connection's head), and how it ended (closed, reset, open).
cat > "$out/slow-client.lua" <<'LUA'
local socket = require "socket"
local port, n, trickle, wait_s, status_path =
  tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4]), arg[5]
local head = "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc"
local now = socket.gettime
local conns, failed = {}, 0
for _ = 1, n do
  local s = socket.tcp4()
  s:settimeout(5)
  if s:connect("127.0.0.1", port) and s:send(head) then
    s:settimeout(0)
    local t = now()
    conns[#conns + 1] = { s = s, t0 = t, last = t, got = "" }
  else
    s:close()
    failed = failed + 1
  end
end
local f = assert(io.open(status_path, "w"))
f:write(("connected %d failed %d\n"):format(#conns, failed))
f:close()
local open, stop = #conns, now() + wait_s
while open > 0 and now() < stop do
  local t = now()
  for _, c in ipairs(conns) do
    if not c.t_close then
      local data, err, partial = c.s:receive(8192)
      data = data or partial
      if data and #data > 0 then
        c.t_first = c.t_first or t
        if #c.got < 64 then c.got = c.got .. data end   -- the status line is all we need
      end
      if err and err ~= "timeout" then
        c.t_close, c.how = t, err == "closed" and "closed" or "reset"
        c.s:close()
        open = open - 1
      elseif trickle > 0 and t - c.last >= trickle then
        c.s:send("x")
        c.last = t
      end
    end
  end
  socket.sleep(0.05)
end
local function secs(t, t0) return t and ("%.3f"):format(t - t0) or "-" end
for i, c in ipairs(conns) do
  print(("%d\t%s\t%s\t%s\t%s"):format(i, c.got:match("^HTTP/1%.%d (%d%d%d)") or "-",
    secs(c.t_first, c.t0), secs(c.t_close, c.t0), c.how or "open"))
  if not c.t_close then c.s:close() end
end
LUA

origin_open() {   # connections the origin has open right now (lv-testupstream /__stats "open")
  curl -sf "http://127.0.0.1:$ORIGIN_PORT/__stats" | grep -o '"open":[0-9]*' | cut -d: -f2
}

build/lv-testupstream --listen "127.0.0.1:$ORIGIN_PORT" --name origin >"$out/origin.log" 2>&1 & pids+=($!)
port_up "$ORIGIN_PORT"

# nginx as the peer: default request buffering (the whole body is read before the upstream is
# picked), client_body_timeout = BODY_TIMEOUT, an upstream keepalive pool of the same size as
# levee's. user root: the worker must write its temp files in $out, which is 0700.
mkdir -p "$out/nginx"
cat > "$out/nginx-proxy.conf" <<CONF
$( ((EUID == 0)) && echo "user root;" )
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid $out/nginx/nginx.pid;
error_log $out/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $out/nginx/client_body;
  proxy_temp_path $out/nginx/proxy_temp;
  fastcgi_temp_path $out/nginx/fastcgi_temp;
  uwsgi_temp_path $out/nginx/uwsgi_temp;
  scgi_temp_path $out/nginx/scgi_temp;
  client_body_timeout ${body_ms}ms;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 100; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
export ORIGIN_PORT EXTRA_PORT=$LEVEE_PORT BODY_TIMEOUT=${body_ms}ms
if [[ " $PROXIES " == *" levee "* ]] && ! build/levee check bench/levee-slowbody.lua >"$out/levee-check.log" 2>&1; then
  echo "slowbody: levee refuses bench/levee-slowbody.lua:" >&2; cat "$out/levee-check.log" >&2; exit 1
fi

start_proxy() {   # start_proxy NAME: start it, wait until it listens; sets proxy_pid and port
  case $1 in
    levee) build/levee -c bench/levee-slowbody.lua >"$out/levee.log" 2>&1 & proxy_pid=$!; port=$LEVEE_PORT ;;
    nginx) nginx -c "$out/nginx-proxy.conf" -p "$out/nginx" >"$out/nginx/stdout.log" 2>&1 & proxy_pid=$!; port=$NGINX_PORT ;;
    *) echo "slowbody: unknown proxy $1" >&2; exit 2 ;;
  esac
  pids+=("$proxy_pid")
  port_up "$port"
}

printf 'proxy\tslow_conns\torigin_conns_held\tnormal_rps\tnormal_non2xx\tnormal_sock_errors\tnormal_p99\tanswered_408\tmedian_s_to_408\tmedian_s_to_close\tother_endings\n' >"$out/slowbody.tsv"
for proxy in $PROXIES; do
  start_proxy "$proxy"
  base=$(origin_open)
  lua5.4 "$out/slow-client.lua" "$port" "$N" "$TRICKLE" "$SLOW_WAIT" "$out/$proxy-slow.status" \
    >"$out/$proxy-slow.tsv" 2>"$out/$proxy-slow.err" & client=$!
  pids+=("$client")
  for ((i = 0; i < 600; i++)); do [[ -s $out/$proxy-slow.status ]] && break; sleep 0.05; done
  [[ -s $out/$proxy-slow.status ]] || { echo "slowbody: $proxy: slow clients did not connect in 30 s" >&2; exit 1; }
  read -r _ slow _ failed <"$out/$proxy-slow.status"
  # (a) origin connections held by the slow clients: sample until the count is the same 5
  # times in a row (0.5 s) or 3 s pass — a proxy that streams opens them as the heads arrive.
  prev=-1 same=0 held=0
  for ((i = 0; i < 30 && same < 5; i++)); do
    held=$(($(origin_open) - base))
    if ((held == prev)); then same=$((same + 1)); else same=0 prev=$held; fi
    sleep 0.1
  done
  # (b) normal requests while the slow ones are open.
  wrk -t1 -c4 -d"$WRK_SECONDS"s --latency "http://127.0.0.1:$port/" >"$out/$proxy-wrk.txt" 2>&1 || true
  read -r rps non2xx sockerr p99 < <(awk '/^Requests\/sec/ {r = $2} /Non-2xx/ {e = $NF}
    /Socket errors/ {gsub(",", ""); s = $4 + $6 + $8 + $10} /^ +99%/ {p = $2}
    END {printf "%s %d %d %s\n", r == "" ? "-" : r, e, s, p == "" ? "-" : p}' "$out/$proxy-wrk.txt")
  # (c) how the slow clients were answered: the client exits when all are closed, or after
  # SLOW_WAIT seconds.
  wait "$client" || true
  t408=$(awk -F'\t' '$2 == 408 {print $3}' "$out/$proxy-slow.tsv")
  n408=$(grep -c . <<<"$t408" || true)
  m408=$( ((n408)) && med <<<"$t408" || echo -)
  tclose=$(awk -F'\t' '$4 != "-" {print $4}' "$out/$proxy-slow.tsv")
  mclose=$( [[ -n $tclose ]] && med <<<"$tclose" || echo -)
  other=$(awk -F'\t' '$2 != 408 {k = $2 != "-" ? $2 : ($5 == "open" ? "open" : "silent-" $5); c[k]++}
    END {for (k in c) printf "%s%s:%d", n++ ? "," : "", k, c[k]; if (!n) printf "none"}' "$out/$proxy-slow.tsv")
  ((failed == 0)) || other="$other,connect-failed:$failed"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$slow" "$held" "$rps" "$non2xx" "$sockerr" \
    "$p99" "$n408" "$m408" "$mclose" "$other" >>"$out/slowbody.tsv"
  stop_pid "$proxy_pid"
done

echo "slow bodies: N=$N, Content-Length 100000, 3 bytes sent, trickle ${TRICKLE}s, body timeout ${body_ms}ms; normal load wrk -t1 -c4 -d${WRK_SECONDS}s"
table "$out/slowbody.tsv" | tee "$out/slowbody.txt"
echo "(other_endings: status:count, silent-closed / silent-reset = closed with no answer, open = still open after ${SLOW_WAIT}s; raw data in $out)"
