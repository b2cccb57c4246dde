#!/usr/bin/env bash
# Per-request cost of `ringport serve` and nginx (issue 7), measured so that a
# busy machine matters less than for wrk's requests/s: the servers' CPU time
# (utime + stime of every process and thread, from /proc/<pid>/stat, io_uring
# io-wq workers included) divided by the requests wrk completed, and with
# STRACE=1 the system calls per request (`strace -c -f` attached for one more
# run; strace slows the server, but the count per request is what matters).
#
#   bench/serve-cost.sh                          # 5 s runs, c=32, all files, nginx + both backends
#   DURATION=2 FILES=64k.bin CONNS=32 SERVERS="nginx uring" STRACE=1 bench/serve-cost.sh
#   RINGPORT=/path/to/other/ringport bench/serve-cost.sh   # another build
#   SERVERS="uring:/tmp/old/ringport uring epoll:/tmp/old/ringport epoll" bench/serve-cost.sh  # A/B
#
# nginx: the configuration in bench/serve-lib.sh (2 workers, sendfile, tcp_nopush).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
FILES=${FILES:-1k.bin 64k.bin 16m.bin}
SERVERS=${SERVERS:-nginx uring epoll}
STRACE=${STRACE:-0}
WRK_THREADS=${WRK_THREADS:-2}

for t in nginx wrk; do
    command -v $t >/dev/null || { echo "needs $t (see bench/vs-nginx.sh)" >&2; exit 1; }
done
[ "$STRACE" = 1 ] && { command -v strace >/dev/null || { echo "needs strace" >&2; exit 1; }; }
if [ -z "${RINGPORT:-}" ]; then
    cargo build --release --quiet --bin ringport
    RINGPORT=$PWD/target/release/ringport
fi
TICK=$(getconf CLK_TCK)

# shellcheck source=bench/serve-lib.sh
. bench/serve-lib.sh
# shellcheck disable=SC2086 # FILES is a list
serve_setup ringport-serve-cost $FILES
for s in $SERVERS; do start_server "$s"; done
sleep 0.5
for s in $SERVERS; do
    curl -sf -o /dev/null "http://127.0.0.1:${PORT[$s]}/$(set -- $FILES; echo "$1")" \
        || { echo "$s does not answer" >&2; exit 1; }
done

# The server's processes: nginx's master and workers, or ringport's one process.
procs() {
    local p=$1
    echo "$p"
    pgrep -P "$p" || true
}
# utime + stime of the processes, in clock ticks (every thread, dead ones too).
cpu_ticks() {
    local sum=0 p f
    for p in "$@"; do
        f=$(sed -E 's/^.*\) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
run_wrk() {
    wrk -t"$WRK_THREADS" -c"$1" -d"${DURATION}s" --timeout 30s "$2" 2>&1
}
requests() { awk '/requests in/ {print $1}' <<<"$1"; }
# MiB wrk received (responses still in flight at the end included).
mib_read() {
    awk '/requests in/ { v = $5; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v)
        f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576
        printf "%.3f", v * f }' <<<"$1"
}

printf '%-7s %-6s %-24s %10s %12s %12s %14s\n' file conns server requests "cpu-us/req" "cpu-us/MiB" "syscalls/req"
for f in $FILES; do
    for c in $CONNS; do
        for s in $SERVERS; do
            url="http://127.0.0.1:${PORT[$s]}/$f"
            mapfile -t ps < <(procs "${PID[$s]}")
            t0=$(cpu_ticks "${ps[@]}")
            out=$(run_wrk "$c" "$url")
            t1=$(cpu_ticks "${ps[@]}")
            n=$(requests "$out")
            mib=$(mib_read "$out")
            usm=$(awk -v d=$((t1 - t0)) -v m="$mib" -v hz="$TICK" 'BEGIN { printf "%.1f", (m > 0 ? d * 1e6 / hz / m : 0) }')
            us=$(awk -v d=$((t1 - t0)) -v n="$n" -v hz="$TICK" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')
            sc=-
            if [ "$STRACE" = 1 ]; then
                st=()
                for p in "${ps[@]}"; do
                    strace -c -f -p "$p" -o "$WORK/strace.$p" 2>/dev/null &
                    st+=($!)
                done
                sleep 1
                out=$(run_wrk "$c" "$url")
                for p in "${st[@]}"; do kill -INT "$p" 2>/dev/null || true; done
                for p in "${st[@]}"; do wait "$p" 2>/dev/null || true; done
                n2=$(requests "$out")
                calls=0
                for p in "${ps[@]}"; do
                    # The `total` line: % time, seconds, usecs/call, calls, [errors].
                    k=$(awk '$NF == "total" { print $4 }' "$WORK/strace.$p" 2>/dev/null || true)
                    calls=$((calls + ${k:-0}))
                done
                sc=$(awk -v k="$calls" -v n="$n2" 'BEGIN { printf "%.2f", n ? k / n : 0 }')
                if [ -n "${STRACE_SHOW:-}" ]; then
                    cat "$WORK"/strace.* >&2
                fi
                rm -f "$WORK"/strace.*
            fi
            printf '%-7s %-6s %-24s %10s %12s %12s %14s\n' "$f" "$c" "$s" "$n" "$us" "$usm" "$sc"
        done
    done
done
