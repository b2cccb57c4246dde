#!/usr/bin/env bash
# `ringport serve` against nginx (issue 7): the same folder served by both, wrk
# at 32 and 256 connections on a 1 KiB, a 64 KiB and a 16 MiB file, servers
# alternating within each round, at least 2 rounds. Prints requests/s (whole
# responses) and MiB/s (wrk's Transfer/sec: every byte received, so a 16 MiB
# response still in flight at the end counts too) per cell, averaged over the
# rounds, with ringport's ratios to nginx, for each ringport backend asked for.
#
#   bench/vs-nginx.sh                       # 5 s per run, 2 rounds, io_uring and epoll
#   DURATION=10 ROUNDS=3 BACKENDS=uring bench/vs-nginx.sh
#   ROUNDS=5 RESULTS_OUT=/tmp/raw.tsv bench/vs-nginx.sh   # keep the per-run figures
#
# nginx: 2 workers, sendfile on, access_log off, on a free port, with its own
# config, prefix and temp folders. Installs nginx and wrk with apt-get when
# missing. Everything runs on this machine's loopback; wrk shares the CPUs with
# the server under test (the same for both servers).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
BACKENDS=${BACKENDS:-uring epoll}
WRK_THREADS=${WRK_THREADS:-2}
CONNS=${CONNS:-32 256}
FILES=(1k.bin 64k.bin 16m.bin)

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "== installing nginx and wrk"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi

echo "== building ringport (release)"
cargo build --release --quiet --bin ringport
RINGPORT=$PWD/target/release/ringport

# shellcheck source=bench/serve-lib.sh
. bench/serve-lib.sh
serve_setup ringport-vs-nginx "${FILES[@]}"
start_server nginx
SERVERS=(nginx)
for b in $BACKENDS; do
    start_server "$b"
    PORT[ringport-$b]=${PORT[$b]}
    SERVERS+=("ringport-$b")
    echo "   ringport serve --backend $b at http://127.0.0.1:${PORT[$b]}/"
done

for s in "${SERVERS[@]}"; do
    for _ in $(seq 50); do
        curl -sf -o /dev/null "http://127.0.0.1:${PORT[$s]}/1k.bin" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:${PORT[$s]}/1k.bin" || {
        echo "$s does not answer on port ${PORT[$s]}" >&2
        exit 1
    }
done

# --- the runs ------------------------------------------------------------------
LOAD=$(cut -d" " -f1-3 /proc/loadavg)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
echo "== wrk -t$WRK_THREADS, ${DURATION}s per run, $ROUNDS rounds, servers: ${SERVERS[*]}"
for round in $(seq "$ROUNDS"); do
    # Alternate the order of the servers from one round to the next.
    order=("${SERVERS[@]}")
    if [ $((round % 2)) -eq 0 ]; then
        mapfile -t order < <(printf '%s\n' "${SERVERS[@]}" | tac)
    fi
    for f in "${FILES[@]}"; do
        for c in $CONNS; do
            for s in "${order[@]}"; do
                url="http://127.0.0.1:${PORT[$s]}/$f"
                out=$(wrk -t"$WRK_THREADS" -c"$c" -d"${DURATION}s" --timeout 30s "$url" 2>&1)
                rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
                # Transfer/sec in binary units (B, KB, MB, GB) → MiB/s.
                mib=$(awk '/^Transfer\/sec:/ {
                    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v)
                    f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576
                    printf "%.2f", v * f }' <<<"$out")
                bad=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
                [ -n "$bad" ] && echo "   warning: $s $f c=$c: $bad" >&2
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$f" "$c" "$s" "${rps:-0}" "${mib:-0}" >>"$RESULTS"
                printf '   round %s  %-8s c=%-4s %-15s %12s req/s %10s MiB/s\n' \
                    "$round" "$f" "$c" "$s" "${rps:-0}" "${mib:-0}"
            done
        done
    done
done

# --- the table -----------------------------------------------------------------
echo
echo "== mean of $ROUNDS rounds; ratios to nginx: requests/s (r) and MiB/s (m)"
echo "   load average before the runs: $LOAD"
awk -F'\t' -v servers="${SERVERS[*]}" '
    BEGIN { n = split(servers, S, " ") }
    {
        key = $2 SUBSEP $3 SUBSEP $4
        sum[key] += $5; mib[key] += $6; cnt[key]++
        if (!(($2 SUBSEP $3) in seen)) { seen[$2 SUBSEP $3] = 1; cells[++ncell] = $2 SUBSEP $3 }
    }
    END {
        printf "| %-7s | %5s |", "file", "conns"
        for (i = 1; i <= n; i++) printf " %s req/s | %s MiB/s |", S[i], S[i]
        for (i = 2; i <= n; i++) printf " %s / nginx (r, m) |", S[i]
        printf "\n|---|---|"
        for (i = 1; i <= n; i++) printf "---|---|"
        for (i = 2; i <= n; i++) printf "---|"
        printf "\n"
        for (k = 1; k <= ncell; k++) {
            split(cells[k], fc, SUBSEP)
            printf "| %-7s | %5s |", fc[1], fc[2]
            for (i = 1; i <= n; i++) {
                key = fc[1] SUBSEP fc[2] SUBSEP S[i]
                r[i] = cnt[key] ? sum[key] / cnt[key] : 0
                m[i] = cnt[key] ? mib[key] / cnt[key] : 0
                printf " %.0f | %.1f |", r[i], m[i]
            }
            for (i = 2; i <= n; i++)
                printf " %.2f, %.2f |", r[1] ? r[i] / r[1] : 0, m[1] ? m[i] / m[1] : 0
            printf "\n"
        }
    }' "$RESULTS"

# Paired: within each round, each ringport figure over nginx's in the same cell
# (run back to back), then the median of those ratios over the rounds — the
# machine's drift between rounds cancels out, which a ratio of means does not.
echo
echo "== paired: median over the $ROUNDS rounds of each round's ratio to nginx (requests/s, MiB/s); per-round ratios in brackets"
python3 - "$RESULTS" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
val = {(r, f, c, s): (float(q), float(m)) for r, f, c, s, q, m in rows}
cells, servers = [], []
for r, f, c, s, _, _ in rows:
    if (f, c) not in cells:
        cells.append((f, c))
    if s != "nginx" and s not in servers:
        servers.append(s)
rounds = sorted({r for r, *_ in rows}, key=int)
print("| file | conns | " + " | ".join(f"{s} / nginx req/s | {s} / nginx MiB/s" for s in servers) + " |")
print("|---|---:|" + "---:|---:|" * len(servers))
for f, c in cells:
    out = []
    for s in servers:
        rq, mb = [], []
        for r in rounds:
            a, b = val.get((r, f, c, s)), val.get((r, f, c, "nginx"))
            if a and b and b[0] > 0 and b[1] > 0:
                rq.append(a[0] / b[0]); mb.append(a[1] / b[1])
        if not rq:
            out += ["-", "-"]
            continue
        out.append(f"**{statistics.median(rq):.2f}** [{' '.join(f'{x:.2f}' for x in rq)}]")
        out.append(f"**{statistics.median(mb):.2f}**")
    print(f"| {f} | {c} | " + " | ".join(out) + " |")
PY
if [ -n "${RESULTS_OUT:-}" ]; then cp "$RESULTS" "$RESULTS_OUT"; fi
