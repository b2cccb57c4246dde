#!/usr/bin/env bash
# Benchmark (c) of issue 6: 4 KiB random reads from a 1 GiB file at queue depth 1
# and 32, O_DIRECT and buffered (page cache warm), ringport beside fio's io_uring
# and psync engines on the same file in the same run, alternating within each
# round. Prints IOPS per cell (median over the rounds) and ringport's ratio to
# fio's best engine in that cell. Targets: >= 0.8 x for O_DIRECT at depth 32,
# >= 0.5 x for buffered reads.
#
#   bench/vs-fio.sh [DIR]                       # file in DIR (default /var/tmp)
#   DURATION=10 ROUNDS=5 BACKENDS=uring bench/vs-fio.sh /mnt/data
#
# fio: one job with iodepth=QD for io_uring; psync is synchronous (fio ignores
# iodepth for it), so at depth 32 it runs numjobs=32 threads of one pread each,
# reported together (group_reporting) — 32 reads in flight, as the others have.
# ringport: `ringport bench file` (one thread, QD reads in flight, through the
# port; O_DIRECT reads handed to the kernel one by one as fio does, buffered ones
# in batches: see run_ringport), on each backend in BACKENDS. Buffered runs: the page cache is warmed
# first and fio is told not to drop it (invalidate=0).
#
# Installs fio with apt-get when missing. The file (1 GiB of random bytes,
# ringport-vs-fio-1g) is made once and kept for later runs. DIR must not be a
# tmpfs (no O_DIRECT there, and "buffered" would be plain memory copies).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-/var/tmp}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-uring epoll}
DEPTHS=${DEPTHS:-1 32}
MODES=${MODES:-direct buffered}
BS=4096
FILE="$DIR/ringport-vs-fio-1g"

fstype=$(stat -f -c %T "$DIR")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
    echo "vs-fio: $DIR is a $fstype; give a directory on a disk (e.g. /var/tmp)" >&2
    exit 2
fi

if ! command -v fio >/dev/null; then
    echo "== installing fio"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi

echo "== building ringport (release)"
cargo build --release --quiet --bin ringport
RINGPORT=$PWD/target/release/ringport

if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -ne $((1 << 30)) ]; then
    echo "== making $FILE (1 GiB)"
    dd if=/dev/urandom of="$FILE.tmp" bs=1M count=1024 status=none
    mv "$FILE.tmp" "$FILE"
fi

RESULTS=$(mktemp /tmp/ringport-vs-fio.XXXXXX)
trap 'rm -f "$RESULTS"' EXIT

warm() { cat "$FILE" >/dev/null; }

# fio ENGINE DEPTH MODE -> IOPS
run_fio() {
    local engine=$1 qd=$2 mode=$3 jobs=1 depth=$2 direct=0 inval=0
    if [ "$engine" = psync ]; then
        jobs=$qd
        depth=1
    fi
    if [ "$mode" = direct ]; then
        direct=1
        inval=1
    fi
    fio --name=randread --filename="$FILE" --rw=randread --bs=$BS --direct=$direct \
        --invalidate=$inval --ioengine="$engine" --iodepth="$depth" --numjobs="$jobs" \
        --thread --group_reporting --norandommap --randrepeat=0 --time_based \
        --runtime="$DURATION" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

# ringport BACKEND DEPTH MODE -> IOPS
run_ringport() {
    local backend=$1 qd=$2 mode=$3 flags=()
    # O_DIRECT: each new read goes to the kernel at once, keeping the device's
    # queue full (fio's default too). Buffered: batched, which lets a burst of
    # page-cache reads run inline and the rest on the ring (src/sys/inline_read.rs);
    # unbatched, every one runs inline on the one thread (about 0.5 x fio psync's
    # 32 threads at depth 32; BENCHMARKS.md, session 4).
    if [ "$mode" = direct ]; then flags+=(--direct); else flags+=(--batch); fi
    "$RINGPORT" bench file --path "$FILE" --bs $BS --qd "$qd" --duration "$DURATION" \
        --backend "$backend" "${flags[@]}" | sed -n 's/^RESULT iops=\([0-9]*\).*/\1/p'
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        [ "$mode" = buffered ] && warm
        for qd in $DEPTHS; do
            for engine in io_uring psync; do
                iops=$(run_fio "$engine" "$qd" "$mode")
                echo -e "$mode\t$qd\tfio-$engine\t$iops" | tee -a "$RESULTS"
            done
            for backend in $BACKENDS; do
                iops=$(run_ringport "$backend" "$qd" "$mode")
                echo -e "$mode\t$qd\tringport-$backend\t$iops" | tee -a "$RESULTS"
            done
        done
    done
    echo "== round $round/$ROUNDS done"
done

python3 - "$RESULTS" "$ROUNDS" "$DURATION" <<'EOF'
import statistics, sys
from collections import defaultdict
path, rounds, duration = sys.argv[1], sys.argv[2], sys.argv[3]
cells = defaultdict(lambda: defaultdict(list))
order = []
for line in open(path):
    mode, qd, who, iops = line.rstrip("\n").split("\t")
    if (mode, qd) not in cells:
        order.append((mode, qd))
    cells[(mode, qd)][who].append(float(iops or 0))
print(f"\n4 KiB random reads, 1 GiB file; median IOPS of {rounds} rounds x {duration} s")
print(f"{'mode':<9} {'qd':>3} {'fio io_uring':>13} {'fio psync':>10} "
      f"{'ringport':<16} {'IOPS':>10} {'x fio best':>11}")
for mode, qd in order:
    c = cells[(mode, qd)]
    fu = statistics.median(c["fio-io_uring"])
    fp = statistics.median(c["fio-psync"])
    best = max(fu, fp)
    for who in sorted(k for k in c if k.startswith("ringport-")):
        r = statistics.median(c[who])
        ratio = r / best if best else float("nan")
        print(f"{mode:<9} {qd:>3} {fu:>13.0f} {fp:>10.0f} {who[9:]:<16} {r:>10.0f} {ratio:>11.2f}")
print("targets: >= 0.80 x for direct at qd 32; >= 0.50 x for buffered")
EOF
