#!/bin/bash
# vs-chat.sh: `ringport chat` (io_uring, epoll) against a tokio chat server
# (`peer-echo --server tokio-chat`) under `ringport bench chat`, alternating
# servers in each round. Server pinned to CPU 0, client to CPU 1. Prints, per
# cell, the paired median over rounds of each ringport server's ratio to tokio:
# lines said/s, and server CPU per delivered line (from /proc/PID/stat).
#
#   ROUNDS=5 DURATION=3 CELLS="64x1 64x8 1000x50" bench/vs-chat.sh
#   RESULTS_OUT=/tmp/chat.tsv bench/vs-chat.sh      # keep every run's figures
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CELLS=${CELLS:-"64x1 64x8 1000x50"}
SERVERS=${SERVERS:-"ringport-uring ringport-epoll tokio-chat"}
OUT=${RESULTS_OUT:-$(mktemp /tmp/vs-chat.XXXXXX.tsv)}
cargo build --release --workspace -q
RP=target/release/ringport
PEER=target/release/peer-echo
ulimit -n 65536 2>/dev/null || true
: >"$OUT"
tick=$(getconf CLK_TCK)
cpu_s() { awk -v t="$tick" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
start_server() { # NAME -> sets SPID, ADDR
  local log; log=$(mktemp)
  case $1 in
    ringport-uring) taskset -c 0 $RP chat --listen 127.0.0.1:0 --backend uring --max-conns 4096 >"$log" 2>&1 & ;;
    ringport-epoll) taskset -c 0 $RP chat --listen 127.0.0.1:0 --backend epoll --max-conns 4096 >"$log" 2>&1 & ;;
    tokio-chat) taskset -c 0 $PEER --server tokio-chat --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
  SPID=$!
  for _ in $(seq 100); do grep -q . "$log" && break; sleep 0.05; done
  ADDR=$(grep -oE '127\.0\.0\.1:[0-9]+' "$log" | head -1)
  [ -n "$ADDR" ] || { echo "$1 did not start: $(cat "$log")" >&2; exit 1; }
}
echo "== ringport bench chat, ${DURATION}s per run, $ROUNDS rounds, servers: $SERVERS"
for r in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    clients=${cell%x*}; rooms=${cell#*x}
    # Alternate the servers' order from round to round.
    order=$SERVERS; [ $((r % 2)) -eq 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for srv in $order; do
      start_server "$srv"
      c0=$(cpu_s "$SPID")
      json=$(taskset -c 1 $RP bench chat --target "$ADDR" --clients "$clients" --rooms "$rooms" --duration "$DURATION" --json || true)
      c1=$(cpu_s "$SPID")
      kill -INT "$SPID"; wait "$SPID" 2>/dev/null || true
      python3 - "$r" "$cell" "$srv" "$c0" "$c1" "$json" >>"$OUT" <<'PY'
import json, sys
r, cell, srv, c0, c1, js = sys.argv[1:7]
d = json.loads(js) if js.strip() else {}
lines = d.get("lines", 0); secs = d.get("duration_s", 1) or 1
dl = d.get("deliveries_per_s", 0) * secs
cpu = float(c1) - float(c0)
print("\t".join(map(str, [r, cell, srv, d.get("lines_per_s", 0), d.get("deliveries_per_s", 0),
    (cpu / dl * 1e6) if dl else 0, d.get("p50_us", 0), d.get("p99_us", 0), d.get("errors", -1), d.get("gaps", -1)])))
PY
      tail -1 "$OUT" | awk -F'\t' '{printf "   round %s  %-8s %-15s %10.0f lines/s %11.0f deliveries/s  %6.3f µs CPU/delivery  p50 %8.1f µs  p99 %8.1f µs  errors %s gaps %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
    done
  done
done
python3 - "$OUT" "$SERVERS" <<'PY'
import sys, statistics
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
servers = sys.argv[2].split()
base = "tokio-chat"
by = defaultdict(dict)
for r, cell, srv, lps, dps, cpu, p50, p99, err, gaps in rows:
    by[(cell, r)][srv] = (float(lps), float(cpu), float(p50), float(p99))
cells = []
for (cell, _) in by:
    if cell not in cells:
        cells.append(cell)
print("\n== paired: median over rounds of each round's ratio to tokio-chat (per-round ratios in brackets)")
print("| clients x rooms | server | lines/s | server CPU per delivery | p50 |")
print("|---|---|---|---|---|")
for cell in cells:
    for srv in servers:
        if srv == base:
            continue
        ratios = [[], [], []]
        for (c, r), d in sorted(by.items()):
            if c != cell or srv not in d or base not in d:
                continue
            a, b = d[srv], d[base]
            for k, (x, y) in enumerate([(a[0], b[0]), (a[1], b[1]), (a[2], b[2])]):
                if y:
                    ratios[k].append(x / y)
        fmt = lambda v: f"**{statistics.median(v):.2f}** [{' '.join(f'{x:.2f}' for x in v)}]" if v else "n/a"
        print(f"| {cell} | {srv} | {fmt(ratios[0])} | {fmt(ratios[1])} | {fmt(ratios[2])} |")
PY
echo "raw figures: $OUT"
