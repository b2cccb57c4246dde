#!/usr/bin/env bash
# Context switches and CPU per GiB served, for `ringport serve` and nginx
# (issue 7; BENCHMARKS.md, session 9). For each round, wrk (-t2) runs against
# each server in turn, the order reversed every other round. `perf stat`
# counts the server's task-clock and context switches (every process and
# thread), and wrk's. One line per run, per GiB that wrk received: server CPU
# ms, server switches, wrk CPU ms, wrk switches, and the counts of any extra
# perf events asked for in EV.
#
#   bench/serve-switches.sh ROUNDS CONNS FILE SERVER...
#   bench/serve-switches.sh 5 256 16m.bin nginx uring 'uring@--threads 4' epoll
#   EV=syscalls:sys_enter_sendfile64 bench/serve-switches.sh 2 256 16m.bin nginx uring
#
# SERVER: nginx (2 workers, sendfile on, as bench/vs-nginx.sh), or
# BACKEND[:BINARY][@ARGS] for `ringport serve` (BACKEND uring or epoll; BINARY
# another build; ARGS more flags). FILE: 1k.bin, 64k.bin or 16m.bin. DUR sets
# the seconds per run (4). Needs nginx, wrk and perf.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 2,18p "$0" >&2; exit 2; }
ROUNDS=$1 CONNS=$2 FILE=$3
shift 3
DUR=${DUR:-4}
for t in nginx wrk perf; do
    command -v $t >/dev/null || { echo "needs $t (bench/vs-nginx.sh installs nginx and wrk)" >&2; exit 1; }
done
cargo build --release --quiet --bin ringport
RINGPORT=$PWD/target/release/ringport

W=$(mktemp -d /tmp/ringport-serve-switches.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/www" "$W/ng/logs" "$W/ng/tmp"
head -c 1024 /dev/urandom >"$W/www/1k.bin"
head -c 65536 /dev/urandom >"$W/www/64k.bin"
head -c 16777216 /dev/urandom >"$W/www/16m.bin"
chmod -R a+rX "$W"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

declare -A PORT PID
for s in "$@"; do
    if [ "$s" = nginx ]; then
        PORT[$s]=$(free_port)
        cat >"$W/ng/nginx.conf" <<EOC
worker_processes 2; user root; pid $W/ng/nginx.pid; error_log $W/ng/logs/error.log warn;
worker_rlimit_nofile 65536; events { worker_connections 8192; }
http { access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
 keepalive_timeout 75s; keepalive_requests 1000000; default_type application/octet-stream;
 client_body_temp_path $W/ng/tmp/body; proxy_temp_path $W/ng/tmp/proxy;
 fastcgi_temp_path $W/ng/tmp/fastcgi; uwsgi_temp_path $W/ng/tmp/uwsgi; scgi_temp_path $W/ng/tmp/scgi;
 server { listen 127.0.0.1:${PORT[$s]}; root $W/www; } }
EOC
        nginx -p "$W/ng" -c "$W/ng/nginx.conf" -g 'daemon off;' &
    else
        spec=${s%%@*} args=
        [[ $s == *@* ]] && args=${s#*@}
        backend=${spec%%:*} bin=$RINGPORT
        [[ $spec == *:* ]] && bin=${spec#*:}
        out="$W/ringport-${#PIDS[@]}.out"
        # shellcheck disable=SC2086 # ARGS are flags, split on spaces
        "$bin" serve "$W/www" --listen 127.0.0.1:0 --backend "$backend" $args >"$out" 2>&1 &
    fi
    PID[$s]=$!
    PIDS+=($!)
    if [ "$s" != nginx ]; then
        for _ in $(seq 100); do grep -q http:// "$out" && break; sleep 0.1; done
        PORT[$s]=$(sed -nE 's#.*http://[^:]+:([0-9]+)/.*#\1#p' "$out")
        [ -n "${PORT[$s]}" ] || { echo "$s did not start:" >&2; cat "$out" >&2; exit 1; }
    fi
done
sleep 0.5

echo "round server MiB/s server_ms/GiB server_cs/GiB wrk_ms/GiB wrk_cs/GiB ${EV:+(EV per GiB)}"
for r in $(seq "$ROUNDS"); do
    order=("$@")
    [ $((r % 2)) = 0 ] && mapfile -t order < <(printf '%s\n' "$@" | tac)
    for s in "${order[@]}"; do
        pids=$(echo "${PID[$s]}" $(pgrep -P "${PID[$s]}" || true) | tr ' ' ,)
        perf stat -x, -e "task-clock,context-switches${EV:+,$EV}" -p "$pids" -o "$W/server.txt" \
            -- sleep $((DUR + 1)) 2>/dev/null &
        pp=$!
        sleep 0.3
        perf stat -x, -e task-clock,context-switches -o "$W/wrk.txt" -- \
            wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 30s "http://127.0.0.1:${PORT[$s]}/$FILE" >"$W/out.txt" 2>&1
        wait $pp
        python3 - "$r" "$s" "$DUR" "$W/server.txt" "$W/wrk.txt" "$W/out.txt" <<'PY'
import re, sys
r, s, dur, server, wrk, out = sys.argv[1:]
m = re.search(r"requests in [\d.]+\w+, ([\d.]+)(\w+) read", open(out).read())
if not m:
    sys.exit(f"wrk printed no transfer for {s}")
mib = float(m[1]) * {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1048576}[m[2]]
def counts(path):
    d = {}
    for line in open(path):
        p = line.strip().split(",")
        if len(p) > 3 and p[0][:1].isdigit():
            d[p[2]] = float(p[0])
    return d
a, b, g = counts(server), counts(wrk), mib / 1024
extra = " ".join(f"{k.split(':')[-1]}={v / g:.0f}" for k, v in a.items()
                 if k not in ("task-clock", "context-switches"))
print(f"{r} {s} {mib / float(dur):.0f} {a['task-clock'] / g:.0f} {a['context-switches'] / g:.0f} "
      f"{b['task-clock'] / g:.0f} {b['context-switches'] / g:.0f} {extra}")
PY
    done
done
