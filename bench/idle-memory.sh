#!/usr/bin/env bash
# Benchmark (a), memory: resident memory of an echo server holding N idle
# connections, each waiting to receive. For each server: start it, read its
# VmRSS (/proc/PID/status) once it listens, open N connections with
# `ringport bench idle` and hold them, wait until the server has accepted all
# of them (its descriptor count), read VmRSS again; the difference divided by
# N is the user memory per idle connection. Kernel memory (socket buffers,
# io_uring requests) is not in VmRSS and not counted.
#
#   bench/idle-memory.sh                  # 10,000 connections
#   CONNS=1000 bench/idle-memory.sh       # a quick run
#   SERVERS="multishot plain" bench/idle-memory.sh
#
# Servers: multishot / plain / multishot-epoll / plain-epoll / async (ringport
# echo: default multishot recv + provided-buffer pool, --plain-recv, the epoll
# backend, --async) and tokio (bench's peer-echo, tokio multi-thread, a 4 KiB
# buffer per connection).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-10000}
SERVERS=${SERVERS:-multishot plain multishot-epoll plain-epoll async tokio}
SETTLE=${SETTLE:-2}
HOLD=${HOLD:-20}

# The client and the server each need CONNS descriptors (and a few more).
need=$((CONNS + 256))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    ulimit -Hn "$need" 2>/dev/null || {
        echo "need $need descriptors per process; the hard limit is $hard and cannot be raised here" >&2
        exit 1
    }
fi
ulimit -n "$need"

echo "== building (release)"
cargo build --release --quiet --bin ringport
cargo build --release --quiet -p ringport-bench --bin peer-echo
RINGPORT=$PWD/target/release/ringport
PEER=$PWD/target/release/peer-echo

WORK=$(mktemp -d /tmp/ringport-idle.XXXXXX)
SERVER_PID=
CLIENT_PID=
cleanup() {
    [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

# Waits up to $3 seconds until file $1 has a line matching $2.
wait_line() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" >&2
    return 1
}

start_server() {
    local name=$1 out=$WORK/$1.out
    case $name in
        multishot) "$RINGPORT" echo --listen 127.0.0.1:0 --backend uring >"$out" 2>&1 & ;;
        plain) "$RINGPORT" echo --listen 127.0.0.1:0 --backend uring --plain-recv >"$out" 2>&1 & ;;
        multishot-epoll) "$RINGPORT" echo --listen 127.0.0.1:0 --backend epoll --multishot >"$out" 2>&1 & ;;
        plain-epoll) "$RINGPORT" echo --listen 127.0.0.1:0 --backend epoll >"$out" 2>&1 & ;;
        async) "$RINGPORT" echo --listen 127.0.0.1:0 --backend uring --async >"$out" 2>&1 & ;;
        tokio) "$PEER" --server tokio-mt --listen 127.0.0.1:0 >"$out" 2>&1 & ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    wait_line "$out" "listening on" 20
    ADDR=$(grep -o 'listening on [0-9.:]*' "$out" | head -1 | awk '{ print $3 }')
}

printf '\n%-17s %12s %14s %14s %16s\n' server "RSS before" "RSS with idle" "difference" "bytes / idle conn"
for name in $SERVERS; do
    start_server "$name"
    sleep 0.5
    base_fds=$(fds "$SERVER_PID")
    before=$(rss_kib "$SERVER_PID")
    # Held long enough to measure, then every connection must echo a byte.
    "$RINGPORT" bench idle --target "$ADDR" --conns "$CONNS" --hold "$HOLD" --verify \
        >"$WORK/client.out" 2>&1 &
    CLIENT_PID=$!
    wait_line "$WORK/client.out" "connected" 120
    for ((i = 0; i < 300; i++)); do
        [ "$(fds "$SERVER_PID")" -ge $((base_fds + CONNS)) ] && break
        sleep 0.1
    done
    got=$(($(fds "$SERVER_PID") - base_fds))
    sleep "$SETTLE"
    after=$(rss_kib "$SERVER_PID")
    per=$(((after - before) * 1024 / CONNS))
    printf '%-17s %9d KiB %11d KiB %11d KiB %16d\n' "$name" "$before" "$after" $((after - before)) "$per"
    [ "$got" -lt "$CONNS" ] && echo "  (warning: the server holds only $got of $CONNS connections)"
    if ! wait "$CLIENT_PID" || ! grep -q verified "$WORK/client.out"; then
        echo "  (warning: not every connection echoed after the hold:)"
        sed 's/^/    /' "$WORK/client.out"
    fi
    CLIENT_PID=
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
done
echo
echo "$CONNS idle connections per server; VmRSS from /proc/PID/status; $(uname -r)"
