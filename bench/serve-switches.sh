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
# SERVER: as bench/serve-lib.sh's start_server takes it: nginx, or
# BACKEND[:BINARY][@ARGS] for `ringport serve` ('uring@--threads 4'). FILE:
# 1k.bin, 64k.bin or 16m.bin. DUR sets the seconds per run (4). Needs nginx,
# wrk and perf.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 2,17p "$0" >&2; exit 2; }
ROUNDS=$1 CONNS=$2 FILE=$3
shift 3
DUR=${DUR:-4}
for t in nginx wrk perf; do
    command -v $t >/dev/null || { echo "needs $t (bench/vs-nginx.sh installs nginx and wrk)" >&2; exit 1; }
done
cargo build --release --quiet --bin ringport
RINGPORT=$PWD/target/release/ringport

# shellcheck source=bench/serve-lib.sh
. bench/serve-lib.sh
serve_setup ringport-serve-switches 1k.bin 64k.bin 16m.bin
for s in "$@"; do start_server "$s"; done
sleep 0.5

echo "round server MiB/s server_ms/GiB server_cs/GiB wrk_ms/GiB wrk_cs/GiB ${EV:+(EV per GiB)}"
for r in $(seq "$ROUNDS"); do
    order=("$@")
    [ $((r % 2)) = 0 ] && mapfile -t order < <(printf '%s\n' "$@" | tac)
    for s in "${order[@]}"; do
        pids=$(echo "${PID[$s]}" $(pgrep -P "${PID[$s]}" || true) | tr ' ' ,)
        perf stat -x, -e "task-clock,context-switches${EV:+,$EV}" -p "$pids" -o "$WORK/server.txt" \
            -- sleep $((DUR + 1)) 2>/dev/null &
        pp=$!
        sleep 0.3
        perf stat -x, -e task-clock,context-switches -o "$WORK/wrk.txt" -- \
            wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 30s "http://127.0.0.1:${PORT[$s]}/$FILE" >"$WORK/out.txt" 2>&1
        wait $pp
        python3 - "$r" "$s" "$DUR" "$WORK/server.txt" "$WORK/wrk.txt" "$WORK/out.txt" <<'PY'
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
